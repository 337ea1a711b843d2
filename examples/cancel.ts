/**
 * Cancellation with an AbortSignal: a long build is started, then cancelled after half a second. The
 * builder is killed, its locks released, and nothing is registered: the output path stays invalid.
 *
 *   npx tsx examples/cancel.ts
 */
import { BuildCancelledError, BuildEngine, derivation } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();
const slow = await derivation(store, {
  name: 'cancel-me',
  system: 'x86_64-linux',
  builder: sh,
  stamp: String(Date.now()),
  args: ['-c', 'echo started; sleep 30; echo never > $out'],
});

const engine = new BuildEngine({ store, sandbox: sandboxed });
engine.on('build-log', (e) => console.log(`  | ${e.line}`));
const controller = new AbortController();
setTimeout(() => {
  console.log('cancelling...');
  controller.abort();
}, 500);
const t0 = performance.now();
try {
  await engine.buildPaths([slow.drvPath], { signal: controller.signal });
} catch (e) {
  if (!(e instanceof BuildCancelledError)) throw e;
  console.log(`${e.code}: ${e.message} after ${(performance.now() - t0).toFixed(0)} ms`);
}
console.log(`output ${slow.out.path} valid: ${await store.isValidPath(slow.out.path)}`);
await store.close();
