/**
 * Events that tell the truth, as a CI tool counting them sees them: build-started/build-finished bracket a
 * build's slot time (never more running than maxJobs), goals stopped by another's failure are `stopped`
 * (not dependency-failed, not in `failures`, not counted as failed builds), every event carries a
 * monotonic time. And the JSON log and trace of such a run: every activity stopped, one track per slot.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import type { BuildEngineEventName } from '../../src/scheduler/events.js';
import { attachNixJsonLog, NixJsonLog } from '../../src/observe/nix-json.js';
import { recordTrace } from '../../src/observe/trace.js';
import { analyseTrace } from '../../src/observe/report.js';
import { LocalStore } from '../../src/store/local-store.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, settle, writeTestDrv } from '../scheduler/helpers.js';
import { parseStream, progressUpdates } from './nix-stream.js';

const EVENTS: BuildEngineEventName[] = [
  'goal-created',
  'goal-started',
  'goal-waiting',
  'goal-finished',
  'build-started',
  'build-log',
  'build-waiting',
  'build-lock-acquired',
  'build-finished',
  'substitution-started',
  'substitution-finished',
  'post-build-hook-log',
  'progress',
  'warning',
];

let root: string;
let store: LocalStore;
beforeAll(async () => {
  root = tempDir('realise-obs-events-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
});
afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

/** Every event of an engine, in order, with its name. */
function recordAll(engine: BuildEngine): { name: string; e: { time: number; drvPath?: string; path?: string; [k: string]: unknown } }[] {
  const all: { name: string; e: { time: number; [k: string]: unknown } }[] = [];
  for (const name of EVENTS) (engine.on as (n: string, f: (e: { time: number }) => void) => void)(name, (e) => all.push({ name, e }));
  return all;
}

describe('engine events', () => {
  it('build-started/build-finished bracket the slot: never more running than maxJobs; every event has a monotonic time', async () => {
    const sb = new FakeSandbox((p) => store.toRealPath(p));
    const leaves = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => writeTestDrv(store, `slot-leaf${i}`)));
    const top = await writeTestDrv(store, 'slot-top', leaves);
    const engine = new BuildEngine({ store, sandbox: sb, maxJobs: 2 });
    const all = recordAll(engine);
    const jsonLines: string[] = [];
    const json = new NixJsonLog(engine, (l) => jsonLines.push(l));
    const trace = recordTrace(engine);
    let running = 0;
    let most = 0;
    engine.on('build-started', () => {
      running++;
      most = Math.max(most, running);
    });
    engine.on('build-finished', () => {
      running--;
    });
    json.startRealise();
    const call = engine.buildPaths([top]);
    let built = 0;
    while (built < 7) {
      const pending = await sb.waitPending(built === 0 ? 2 : 1);
      // Finish both at once: the next builds' starts race the finished ones' registration.
      await Promise.all(
        pending.map((r) => {
          r.log(`log of ${r.request.drvPath}\n`);
          return r.finish();
        }),
      );
      built += pending.length;
    }
    await call;
    json.close();
    trace.close();
    expect(most).toBe(2);
    expect(running).toBe(0);
    const times = all.map((x) => x.e.time);
    expect(times.every((t) => typeof t === 'number')).toBe(true);
    expect(times).toEqual([...times].sort((a, b) => a - b));
    // Each build: started, its log lines, finished (success), in that order.
    for (const d of [...leaves, top]) {
      const mine = all.filter((x) => x.e.drvPath === d && x.name.startsWith('build-')).map((x) => `${x.name}${x.e.outcome ? ` ${String(x.e.outcome)}` : ''}`);
      expect(mine).toEqual(['build-started', 'build-log', 'build-finished success']);
    }
    // The JSON log: every activity stopped, the log lines inside their build activities.
    const s = parseStream(jsonLines.join(''));
    expect(s.problems).toEqual([]);
    expect([...s.activities.values()].filter((a) => a.type === 105).map((a) => a.lines.length)).toEqual([1, 1, 1, 1, 1, 1, 1]);
    // The trace: two build slot tracks, the top derivation last on the critical path.
    const a = analyseTrace(await trace.finish());
    expect(a.tracks).toEqual(['build slot 1', 'build slot 2']);
    expect(a.items.filter((i) => i.kind === 'build')).toHaveLength(7);
    expect(a.criticalPath).toHaveLength(2);
    expect(a.criticalPath[1]).toBe(top);
  });

  it("a call ending with an error silences the JSON log's results for that call only: the engine's next call has its progress", async () => {
    const sb = new FakeSandbox((p) => store.toRealPath(p));
    sb.auto = () => 0;
    // A required feature this machine lacks: Nix's setup error, which ends the call.
    const unbuildable = await writeTestDrv(store, 'ending-feature', [], { env: { requiredSystemFeatures: 'no-such-feature' } });
    const fine = await writeTestDrv(store, 'ending-next');
    const engine = new BuildEngine({ store, sandbox: sb, maxJobs: 1 });
    const ended: unknown[] = [];
    engine.on('call-ending', (e) => ended.push(e.error));
    const lines: string[] = [];
    const json = attachNixJsonLog(engine, (l) => lines.push(l));
    json.startRealise();
    await expect(engine.buildPaths([unbuildable])).rejects.toThrow(/no-such-feature/);
    json.stopRealise();
    expect(ended).toHaveLength(1);
    lines.length = 0;
    json.startRealise();
    await engine.buildPaths([fine]);
    json.stopRealise();
    json.close();
    // Nix's worker's progress of the second call: its Builds activity's Progress results, 1 of 1 done at the end.
    const updates = progressUpdates(lines.join(''));
    expect(updates.length).toBeGreaterThan(0);
    expect(updates).toContain('builds [1,1,0,0]');
  });

  it('hook-asked: each build Nix would offer to its hook, before its build-started; not one preferring a local build it can have', async () => {
    const sb = new FakeSandbox((p) => store.toRealPath(p));
    sb.auto = () => 0;
    const offered = await writeTestDrv(store, 'hook-offered');
    const local = await writeTestDrv(store, 'hook-local', [], { env: { preferLocalBuild: '1' } });
    const top = await writeTestDrv(store, 'hook-top', [offered, local]);
    const engine = new BuildEngine({ store, sandbox: sb, maxJobs: 1 });
    const seen: string[] = [];
    engine.on('hook-asked', (e) => seen.push(`asked ${e.drvPath}`));
    engine.on('hook-started', () => seen.push('hook'));
    engine.on('build-started', (e) => seen.push(`started ${e.drvPath}`));
    await engine.buildPaths([top]);
    expect(seen.filter((x) => x.startsWith('asked')).sort()).toEqual([`asked ${offered}`, `asked ${top}`].sort());
    // Nix starts its hook at the first offer; each offered build is asked about before it starts here.
    expect(seen[0]).toMatch(/^asked /);
    expect(seen[1]).toBe('hook');
    for (const d of [offered, top]) expect(seen.indexOf(`asked ${d}`)).toBeLessThan(seen.indexOf(`started ${d}`));
    expect(seen).toContain(`started ${local}`);
  });

  it('a failure without keepGoing: the others are stopped (own status, not dependency-failed), not failures, not counted as failed', async () => {
    const sb = new FakeSandbox((p) => store.toRealPath(p));
    const bad = await writeTestDrv(store, 'stop-bad');
    const slow = await writeTestDrv(store, 'stop-slow');
    const above = await writeTestDrv(store, 'stop-above', [slow]);
    const engine = new BuildEngine({ store, sandbox: sb, maxJobs: 2 });
    const all = recordAll(engine);
    const call = engine.buildPaths([bad, above]).then(
      () => undefined,
      (e: unknown) => e,
    );
    await sb.waitPending(2);
    await sb.find('stop-bad')!.finish(1);
    const err = await call;
    await settle(20);
    expect(err).toBeInstanceOf(BuildFailedError);
    expect((err as BuildFailedError).failures.map((f) => f.path)).toEqual([bad]);
    const finished = new Map(all.filter((x) => x.name === 'goal-finished').map((x) => [x.e.path, (x.e.result as { status: string }).status]));
    expect(finished.get(bad)).toBe('permanent-failure');
    expect(finished.get(slow)).toBe('stopped');
    expect(finished.get(above)).toBe('stopped');
    const outcomes = all.filter((x) => x.name === 'build-finished').map((x) => [x.e.drvPath, x.e.outcome]);
    expect(outcomes).toEqual(
      expect.arrayContaining([
        [bad, 'failure'],
        [slow, 'stopped'],
      ]),
    );
    expect(outcomes).toHaveLength(2);
    const p = engine.progress();
    expect(p.builds.failed).toBe(1);
    expect(p.builds.running).toBe(0);
    expect(p.builds.done).toBe(0);

    // Through buildPathsWithResults, the target that was stopped says so.
    const sb2 = new FakeSandbox((q) => store.toRealPath(q));
    const bad2 = await writeTestDrv(store, 'stop-bad2');
    const slow2 = await writeTestDrv(store, 'stop-slow2');
    const above2 = await writeTestDrv(store, 'stop-above2', [slow2]);
    const e2 = new BuildEngine({ store, sandbox: sb2, maxJobs: 2 });
    const r = e2.buildPathsWithResults([bad2, above2]);
    await sb2.waitPending(2);
    await sb2.find('stop-bad2')!.finish(1);
    expect((await r).map((x) => x.result.status)).toEqual(['permanent-failure', 'stopped']);
  });
});
