/**
 * The store over time: build three derivations, keep two with GC roots, collect the garbage (the third
 * output goes; the rooted ones and their closures stay), then hard-link the identical files of the two
 * kept outputs with the optimiser.
 *
 *   npx tsx examples/gc.ts
 *
 * Equivalent commands: `realise gc --print-dead`, `realise gc`, `realise store optimise`.
 */
import { mkdirSync, rmSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { BuildEngine, LocalStore, derivation, nix } from '../src/index.js';
import { openDemoStore } from './common.js';

const demo = await openDemoStore();
const store = demo.store as LocalStore;
const stamp = String(Date.now());
const make = (name: string) =>
  derivation(store, {
    name,
    system: 'x86_64-linux',
    builder: demo.sh,
    stamp,
    args: ['-c', nix`echo "the same text in every output" > $out`],
  });
const kept = await make('gc-demo-kept');
const twin = await make('gc-demo-twin');
const dropped = await make('gc-demo-dropped');
const engine = new BuildEngine({ store, sandbox: demo.sandboxed });
await engine.buildPaths([kept.drvPath, twin.drvPath, dropped.drvPath]);
await engine.close();

// GC roots: symlinks to two outputs under <state>/gcroots (what `realise build --add-root` makes).
const roots = path.join(store.layout.stateDir, 'gcroots', 'examples');
mkdirSync(roots, { recursive: true });
for (const d of [kept, twin]) {
  const link = path.join(roots, path.basename(d.out.path).slice(33));
  rmSync(link, { force: true });
  symlinkSync(d.out.path, link);
}
await store.close(); // this process's temporary roots go with it: unrooted paths are garbage now

const { storeDir, realStoreDir, stateDir, logDir } = store.layout;
const s = await LocalStore.open({ storeDir, realStoreDir, stateDir, logDir });
try {
  const dead = await s.collectGarbage({ action: 'print-dead' });
  console.log(`dead: ${dead.paths.length} paths, among them ${dead.paths.includes(dropped.out.path) ? 'the dropped output' : '?'}`);
  const r = await s.collectGarbage({
    onEvent: (e) => {
      if (e.type === 'deleted' && e.path === dropped.out.path) console.log(`deleting ${e.path}`);
    },
  });
  console.log(`deleted ${r.paths.length} paths, ${r.bytesFreed} bytes freed`);
  console.log(`kept output still valid: ${await s.isValidPath(kept.out.path)}; dropped output valid: ${await s.isValidPath(dropped.out.path)}`);
  const stats = await s.optimiseStore();
  console.log(`optimised: ${stats.filesLinked} files hard-linked, ${stats.bytesFreed} bytes freed`);
} finally {
  await s.close();
}
