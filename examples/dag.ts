/**
 * The main job: describe a small derivation graph in TypeScript (a diamond with a shared dependency and a
 * multi-output derivation), build it with the BuildEngine on the embedded default store, and show the result.
 *
 *   npx tsx examples/dag.ts
 *
 * With bubblewrap and a static busybox (Debian: bubblewrap busybox-static) it builds sandboxed in the
 * embedded default store (a chroot store, logical /nix/store, as Nix's). Without them it falls back to an
 * unsandboxed plain store next to it, using the host's /bin/sh, and says so.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { BuildEngine, LinuxSandbox, LocalStore, defaultStoreRoot, derivation, addPath, nix, type Store } from '../src/index.js';

async function openStoreForDemo(): Promise<{ store: Store; sandboxed: boolean }> {
  let sandboxOk = existsSync('/bin/busybox');
  try { new LinuxSandbox(); } catch { sandboxOk = false; }
  if (sandboxOk) return { store: await LocalStore.openDefault(), sandboxed: true };
  const base = path.join(path.dirname(defaultStoreRoot()), 'plain');
  console.log(`note: bubblewrap or /bin/busybox is missing, so this demo builds unsandboxed in the plain store ${base}/store`);
  console.log('      (apt-get install -y bubblewrap busybox-static for the sandboxed default store)');
  return {
    store: await LocalStore.open({ storeDir: path.join(base, 'store'), stateDir: path.join(base, 'state'), logDir: path.join(base, 'log') }),
    sandboxed: false,
  };
}

const { store, sandboxed } = await openStoreForDemo();
// The builder: a static busybox added to the store as a tiny tree (bin/busybox, bin/sh -> busybox),
// as builtins.path would, or the host shell.
async function busyboxTree(): Promise<string> {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'realise-busybox-'));
  fs.mkdirSync(path.join(dir, 'bin'));
  fs.copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(dir, 'bin', 'sh'));
  return dir;
}
const sh = sandboxed ? nix`${await addPath(store, await busyboxTree(), { name: 'busybox' })}/bin/sh` : '/bin/sh';
const args = (script: string) => ['-c', script];

const system = 'x86_64-linux';
const stamp = String(Date.now());
const base = await derivation(store, { name: 'demo-base', system, builder: sh, args: args('echo "base built at $stamp" > $out'), stamp });
const left = await derivation(store, { name: 'demo-left', system, builder: sh, args: [...args(`cat ${'$'}base > $out; echo left >> $out`)], base: base.out });
const right = await derivation(store, {
  name: 'demo-right', system, builder: sh, outputs: ['out', 'doc'],
  args: args('mkdir -p $out $doc; echo right > $out/value; echo "docs for $out" > $doc/README'),
});
const top = await derivation(store, {
  name: 'demo-top', system, builder: sh,
  args: args('cat $left $right/value > $out; echo "doc at $doc" >> $out'),
  left: left.out, right: right.out, doc: right.output('doc'),
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
console.log('\ncontents:\n' + (await import('node:fs')).readFileSync(store.toRealPath(out), 'utf8'));
await store.close();
