/**
 * Progress events rendered on the terminal: a status line with Nix-style counters (builds done/running/
 * expected) and the latest log line, from the engine's typed events.
 *
 *   npx tsx examples/progress.ts
 */
import { BuildEngine, derivation, type Progress } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();
const stamp = String(Date.now());
// Eight independent slow-ish builds and one that depends on all of them.
const leaves = [];
for (let i = 0; i < 8; i++) {
  leaves.push(
    await derivation(store, {
      name: `progress-leaf-${i}`,
      system: 'x86_64-linux',
      builder: sh,
      stamp,
      args: ['-c', `for s in 1 2 3; do echo "leaf ${i} step $s"; sleep 0.2; done; echo ${i} > $out`],
    }),
  );
}
const top = await derivation(store, {
  name: 'progress-top',
  system: 'x86_64-linux',
  builder: sh,
  args: ['-c', 'cat $leaves > $out'],
  leaves: leaves.map((l) => l.out),
});

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 3 });
let lastLine = '';
const render = (p: Progress) => {
  const b = p.builds;
  const line = `[${b.done}/${b.expected} built, ${b.running} running, ${b.failed} failed] ${lastLine}`;
  process.stdout.write(process.stdout.isTTY ? `\r\x1b[K${line.slice(0, (process.stdout.columns || 80) - 1)}` : line + '\n');
};
engine.on('build-log', (e) => {
  lastLine = e.line;
});
// Another process (or engine) building the same outputs holds their locks: this build waits, then uses them.
engine.on('build-waiting', (e) => {
  lastLine = `waiting for lock on ${e.lockedPaths.join(', ')}`;
});
engine.on('progress', render);
engine.on('goal-finished', (e) => {
  if (e.kind === 'derivation' && e.result.status === 'built') lastLine = `built ${e.path}`;
});

await engine.buildPaths([top.drvPath]);
render(engine.progress());
process.stdout.write('\n');
await engine.close(); // stops the sandbox's helper process and drops its prepared chroots
await store.close();
