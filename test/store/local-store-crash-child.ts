/**
 * Child process for local-store-crash.test.ts: opens a chroot store and adds paths from NAR streams
 * until it is killed. Mode `half`: one path whose NAR stalls halfway (prints HALF, then hangs).
 * Mode `loop`: adds many multi-file paths back to back (prints each path when it is registered).
 */
import { LocalStore } from '../../src/store/local-store.js';
import { writeFileSync } from 'node:fs';
import { makeTreeNar, freshPath } from './conformance.js';

const [root, mode] = process.argv.slice(2) as [string, string];
const store = await LocalStore.open({ root });
if (mode === 'half') {
  const { nar, hash } = await makeTreeNar('crash');
  const p = freshPath('crash');
  process.stdout.write(`PATH ${p}\n`);
  async function* stall() {
    yield nar.subarray(0, Math.floor(nar.length / 2));
    process.stdout.write('HALF\n');
    // Hang until killed. A bare never-settling promise would not keep the event loop alive: once the store's
    // own handles are idle, Node would exit ("unsettled top-level await") and the writer would die on its own.
    setInterval(() => {}, 1 << 30);
    await new Promise(() => {});
  }
  await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, stall());
} else {
  let prev: string | undefined;
  for (let i = 0; ; i++) {
    const { nar, hash } = await makeTreeNar(`loop${i}`.repeat(200), (dir) => {
      for (let k = 0; k < 20; k++) writeFileSync(`${dir}/f${k}`, `file ${k} of ${i}\n`.repeat(500));
    });
    const p = freshPath(`loop${i}`);
    await store.addToStore(
      { path: p, narHash: hash, narSize: nar.length, references: prev ? [prev] : [] },
      (async function* () {
        for (let o = 0; o < nar.length; o += 4096) yield nar.subarray(o, o + 4096);
      })(),
    );
    process.stdout.write(`DONE ${p}\n`);
    prev = p;
  }
}
