/**
 * The main job: describe a small derivation graph in TypeScript (a diamond with a shared dependency and a
 * multi-output derivation), build it with the BuildEngine on the embedded default store, and show the result.
 *
 *   npx tsx examples/dag.ts
 *
 * Sandboxed in the embedded default store when bubblewrap and /bin/busybox are there (see common.ts).
 */
import { readFileSync } from 'node:fs';
import { BuildEngine, derivation } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();
const args = (script: string) => ['-c', script];

const system = 'x86_64-linux';
const stamp = String(Date.now());
const base = await derivation(store, { name: 'demo-base', system, builder: sh, args: args('echo "base built at $stamp" > $out'), stamp });
const left = await derivation(store, { name: 'demo-left', system, builder: sh, args: args('cat $base > $out; echo left >> $out'), base: base.out });
const right = await derivation(store, {
  name: 'demo-right',
  system,
  builder: sh,
  outputs: ['out', 'doc'],
  args: args('mkdir -p $out $doc; echo right > $out/value; echo "docs for $out" > $doc/README'),
});
const top = await derivation(store, {
  name: 'demo-top',
  system,
  builder: sh,
  args: args('cat $left $right/value > $out; echo "doc at $doc" >> $out'),
  left: left.out,
  right: right.out,
  doc: right.output('doc'),
});

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 2 });
engine.on('build-started', (e) => console.log(`building ${e.drvPath}`));
engine.on('build-log', (e) => console.log(`  | ${e.line}`));
const t0 = performance.now();
const [result] = await engine.buildPaths([{ drvPath: top.drvPath, outputs: ['out'] }]);
const out = result!.result.builtOutputs.out!;
console.log(`\n${top.drvPath}\n  -> ${out} (${result!.result.status}, ${(performance.now() - t0).toFixed(0)} ms)`);
const info = await store.queryPathInfo(out);
console.log(`  narHash ${info!.narHash.toString('base32')}, ${info!.narSize} bytes, references:`);
for (const r of info!.references) console.log(`    ${r}`);
console.log('\ncontents:\n' + readFileSync(store.toRealPath(out), 'utf8'));
await store.close();
