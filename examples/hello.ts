/**
 * Hello world: describe one derivation in TypeScript, instantiate it (the .drv is byte-identical to
 * what `nix-instantiate` writes for the same attributes), build it, and print the output.
 *
 *   npx tsx examples/hello.ts
 *
 * Builds sandboxed in the embedded default store when bubblewrap and /bin/busybox are there; otherwise
 * unsandboxed in a plain store next to it, with the host's /bin/sh.
 */
import { readFileSync } from 'node:fs';
import { BuildEngine, addText, derivation, nix } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();

// A source file (builtins.toFile) and a derivation that uses it: the string context of `greeting`
// puts it into the derivation's inputSrcs without listing it by hand.
const greeting = await addText(store, 'greeting.txt', 'Hello, world!\n');
const hello = await derivation(store, {
  name: 'hello',
  system: 'x86_64-linux',
  builder: sh,
  args: ['-c', nix`read line < ${greeting}; echo "$line (built by $name)" > $out`],
});
console.log(`instantiated ${hello.drvPath}`);
console.log(`  output out -> ${hello.out.path}`);

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 1 });
engine.on('build-log', (e) => console.log(`  | ${e.line}`));
const [result] = await engine.buildPaths([{ drvPath: hello.drvPath, outputs: ['out'] }]);
console.log(`${result!.result.status}: ${hello.out.path}`);
console.log(readFileSync(store.toRealPath(hello.out.path), 'utf8').trimEnd());
await store.close();
