/**
 * Hello world: describe one derivation in TypeScript, instantiate it (the .drv is byte-identical to
 * what `nix-instantiate` writes for the same attributes), build it, and print the output.
 *
 *   npx tsx examples/hello.ts
 *
 * Builds sandboxed in the embedded default store when bubblewrap and /bin/busybox are there; otherwise
 * unsandboxed in a plain store next to it, with the host's /bin/sh.
 */
import { existsSync, mkdtempSync, mkdirSync, copyFileSync, chmodSync, symlinkSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { BuildEngine, LinuxSandbox, LocalStore, addPath, addText, defaultStoreRoot, derivation, nix, type Store } from '../src/index.js';

async function openStore(): Promise<{ store: Store; sandboxed: boolean }> {
  let sandboxed = existsSync('/bin/busybox');
  try { new LinuxSandbox(); } catch { sandboxed = false; }
  if (sandboxed) return { store: await LocalStore.openDefault(), sandboxed };
  const base = path.join(path.dirname(defaultStoreRoot()), 'plain');
  console.log(`note: no bubblewrap or /bin/busybox: building unsandboxed in ${base}/store`);
  return { store: await LocalStore.open({ storeDir: `${base}/store`, stateDir: `${base}/state`, logDir: `${base}/log` }), sandboxed };
}

/** A tiny tree with a static busybox as bin/sh, added to the store like builtins.path. */
async function busybox(store: Store) {
  const dir = mkdtempSync(path.join(tmpdir(), 'realise-busybox-'));
  mkdirSync(path.join(dir, 'bin'));
  copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  symlinkSync('busybox', path.join(dir, 'bin', 'sh'));
  return addPath(store, dir, { name: 'busybox' });
}

const { store, sandboxed } = await openStore();
const sh = sandboxed ? nix`${await busybox(store)}/bin/sh` : '/bin/sh';

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
