/**
 * Multiple outputs: one derivation with `out`, `dev` and `doc` outputs, and a consumer that depends
 * on `dev` only. Interpolating `lib.output('dev')` records exactly that output in the consumer's
 * inputDrvs, as Nix's string contexts do.
 *
 *   npx tsx examples/multiple-outputs.ts
 */
import { readFileSync } from 'node:fs';
import { BuildEngine, derivation, nix } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();

const system = 'x86_64-linux';

const lib = await derivation(store, {
  name: 'libgreet',
  system,
  builder: sh,
  outputs: ['out', 'dev', 'doc'],
  args: [
    '-c',
    'mkdir -p $out/lib $dev/include $doc; echo "int greet(void);" > $dev/include/greet.h; echo code > $out/lib/libgreet; echo "read me" > $doc/README',
  ],
});
for (const name of lib.outputNames) console.log(`${lib.name}.${name} -> ${lib.output(name).path}`);

const app = await derivation(store, {
  name: 'app',
  system,
  builder: sh,
  args: ['-c', nix`cat ${lib.output('dev')}/include/greet.h > $out`],
});
console.log(`\n${app.drvPath}\n  inputDrvs: ${JSON.stringify(Object.fromEntries(app.drv.inputDrvs))}`);

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 2 });
engine.on('build-started', (e) => console.log(`building ${e.drvPath}`));
const [result] = await engine.buildPaths([{ drvPath: app.drvPath, outputs: ['out'] }]);
console.log(`${result!.result.status}: ${app.outPath}`);
console.log(readFileSync(store.toRealPath(app.outPath), 'utf8').trimEnd());
// Only the outputs someone needed are guaranteed; ask for the others explicitly:
const [docs] = await engine.buildPaths([{ drvPath: lib.drvPath, outputs: ['doc'] }]);
console.log(`${docs!.result.status}: ${lib.output('doc').path}`);
await store.close();
