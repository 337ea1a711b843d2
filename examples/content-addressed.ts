/**
 * Content-addressed derivations (Nix 2.8's `ca-derivations`): a floating CA derivation's output path is
 * known only once it is built (it is the hash of the content), so a derivation that depends on it is
 * "deferred" until then. The engine builds the CA input, resolves the dependent (its placeholder for the
 * input is replaced by the real path, as Nix does), builds the resolved derivation, and records its
 * outputs as the dependent's.
 *
 *   npx tsx examples/content-addressed.ts
 *
 * Sandboxed in the embedded default store when bubblewrap and /bin/busybox are there; otherwise
 * unsandboxed in a plain store next to it, with the host's /bin/sh.
 */
import { readFileSync } from 'node:fs';
import { BuildEngine, derivation, nix } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();

const lib = await derivation(
  store,
  {
    name: 'ca-lib',
    system: 'x86_64-linux',
    builder: sh,
    args: ['-c', 'echo "a library" > $out'],
    __contentAddressed: true,
    outputHashMode: 'recursive',
    outputHashAlgo: 'sha256',
  },
  { experimentalFeatures: ['ca-derivations'] },
); // as Nix, CA derivations need the experimental feature
const app = await derivation(
  store,
  {
    name: 'ca-app',
    system: 'x86_64-linux',
    builder: sh,
    args: ['-c', nix`read l < ${lib.out}; echo "app using: $l (from ${lib.out})" > $out`],
  },
  { experimentalFeatures: ['ca-derivations'] },
);
console.log(`instantiated ${lib.drvPath} (floating: its output path is not known yet)`);
console.log(`instantiated ${app.drvPath} (deferred: it depends on a floating output)`);

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 1 });
engine.on('build-started', (e) => console.log(`building ${e.drvPath}`));
const [result] = await engine.buildPaths([{ drvPath: app.drvPath, outputs: ['out'] }]);
const out = result!.result.builtOutputs.out!;
console.log(`${result!.result.status}: ${app.drvPath}\n  -> ${out}`);
console.log(readFileSync(store.toRealPath(out), 'utf8').trimEnd());
await store.close();
