/**
 * Fixed-output derivations: the output path depends only on the declared hash and name, not on how
 * it is built (two different builders give the same path), and a build whose result does not match the
 * hash is rejected. Builders of fixed-output derivations get the network (e.g. to download a source).
 *
 *   npx tsx examples/fixed-output.ts
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BuildEngine, derivation } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();

const system = 'x86_64-linux';
const content = 'hello, fixed world\n';
const sri = 'sha256-' + createHash('sha256').update(content).digest('base64');

// Flat: the output is a single file whose sha256 is `sri`.
const viaPrintf = await derivation(store, {
  name: 'greeting.txt',
  system,
  builder: sh,
  outputHash: sri,
  args: ['-c', `printf '${content.replace('\n', '\\n')}' > $out`],
});
const viaEcho = await derivation(store, {
  name: 'greeting.txt',
  system,
  builder: sh,
  outputHash: sri,
  args: ['-c', `echo '${content.trimEnd()}' > $out`],
});
console.log(`two builders, two .drv files:\n  ${viaPrintf.drvPath}\n  ${viaEcho.drvPath}`);
console.log(`one output path: ${viaPrintf.out.path} (same: ${viaPrintf.out.path === viaEcho.out.path})`);

// Build both: the second finds the output already valid (same path).
const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 2, keepGoing: true });
const [a, b] = await engine.buildPaths([
  { drvPath: viaPrintf.drvPath, outputs: ['out'] },
  { drvPath: viaEcho.drvPath, outputs: ['out'] },
]);
console.log(`\n${a!.result.status} / ${b!.result.status}: ${readFileSync(store.toRealPath(viaPrintf.out.path), 'utf8').trimEnd()}`);

// Recursive (NAR hash of a tree) with a wrong nix-base32 hash: the build runs and its output is rejected (Nix's "hash mismatch in fixed-output derivation").
const wrong = await derivation(store, {
  name: 'wrong',
  system,
  builder: sh,
  outputHashAlgo: 'sha256',
  outputHashMode: 'recursive',
  outputHash: '0000000000000000000000000000000000000000000000000000',
  args: ['-c', 'mkdir $out; echo surprise > $out/file'],
});
const [bad] = await engine.buildPathsWithResults([{ drvPath: wrong.drvPath, outputs: ['out'] }]);
console.log(`\n${wrong.drvPath}: ${bad!.result.status}${bad!.result.hashMismatch ? ' (hash mismatch)' : ''}`);
console.log((bad!.result.errorMsg ?? '').split('\n').slice(0, 3).join('\n'));
await store.close();
