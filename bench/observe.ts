/**
 * Benchmark: what seeing a build costs. The 200-node DAG of bench/dag.ts (unsandboxed, plain store,
 * maxJobs 2), built by our engine plain and with Nix's internal-json stream written to a file (as
 * `--log-format internal-json` / `--json-log-path` do) and a trace recorded and written (`--trace-file`),
 * alternating pair by pair on the same store state. Target (issue #21): at most 5% more. Reported as wall
 * time and as this process's CPU time (user + system): the observers' cost is CPU in this process, and CPU
 * time is far less disturbed than wall time by other work on a loaded machine. Last, the observers' own
 * cost measured directly: the events of one run, recorded, replayed through them (best of 5), as a share
 * of the plain run (best of 15).
 *
 *   npx tsx bench/observe.ts
 *   REALISE_BENCH_SMALL=1 npx tsx bench/observe.ts        # 3 pairs
 *   REALISE_BENCH_OBSERVE_RUNS=9 REALISE_BENCH_OBSERVE_N=500 npx tsx bench/observe.ts
 */
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { EventEmitter } from 'eventemitter3';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { LocalStore } from '../src/store/local-store.js';
import { NixJsonLog } from '../src/observe/nix-json.js';
import { recordTrace } from '../src/observe/trace.js';
import { openJsonSink, type JsonSink } from '../src/cli/log-format.js';
import { fmt, instantiateDag, median, resetDag, SMALL, type InstantiatedDag } from './dag.js';
import { atMost, emitRow, num } from './_report.js';

const EVENTS = [
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
  'query-started',
  'query-finished',
  'download-started',
  'download-progress',
  'download-finished',
  'remote-step',
  'remote-log',
  'derivation-resolved',
  'post-build-hook-started',
  'post-build-hook-log',
  'progress',
  'warning',
] as const;

/** Every event of a plain run, to replay through the observers. */
async function recordEvents(d: InstantiatedDag): Promise<[string, unknown][]> {
  const store = await LocalStore.open({ storeDir: d.storeDir, stateDir: d.stateDir, logDir: d.logDir });
  const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
  const events: [string, unknown][] = [];
  for (const name of EVENTS) (engine.on as (n: string, f: (e: unknown) => void) => void)(name, (e) => events.push([name, e]));
  await engine.buildPaths(d.drvs);
  await store.close();
  return events;
}

/** Milliseconds to push `events` through a JSON log (to a file) and a trace recorder (written at the end). */
async function replay(d: InstantiatedDag, events: [string, unknown][]): Promise<number> {
  const fake = new EventEmitter();
  const engine = fake as unknown as BuildEngine;
  const t0 = performance.now();
  const sink = openJsonSink(path.join(d.dir, 'replay.json'));
  const json = new NixJsonLog(engine, (l) => sink.write(l));
  const trace = recordTrace(engine);
  json.startRealise();
  for (const [name, e] of events) fake.emit(name, e);
  json.close();
  await sink.close();
  await trace.writeFile(path.join(d.dir, 'replay-trace.json'));
  return performance.now() - t0;
}

async function run(d: InstantiatedDag, observed: boolean): Promise<{ wall: number; cpu: number }> {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const store = await LocalStore.open({ storeDir: d.storeDir, stateDir: d.stateDir, logDir: d.logDir });
  const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
  let sink: JsonSink | undefined;
  let json: NixJsonLog | undefined;
  let trace: ReturnType<typeof recordTrace> | undefined;
  if (observed) {
    sink = openJsonSink(path.join(d.dir, 'log.json'));
    json = new NixJsonLog(engine, (l) => sink!.write(l));
    trace = recordTrace(engine);
    json.startRealise();
  }
  const results = await engine.buildPaths(d.drvs);
  if (observed) {
    json!.close();
    await sink!.close();
    await trace!.writeFile(path.join(d.dir, 'trace.json'));
  }
  await store.close();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const built = results.filter((r) => r.result.status === 'built').length;
  if (built !== d.drvs.length) throw new Error(`built ${built} of ${d.drvs.length}`);
  return { wall, cpu: (c.user + c.system) / 1000 };
}

async function main(): Promise<void> {
  const n = Number(process.env.REALISE_BENCH_OBSERVE_N ?? 200);
  const runs = Number(process.env.REALISE_BENCH_OBSERVE_RUNS ?? (SMALL ? 3 : 7));
  console.log(
    `# observe: ${n}-node DAG, maxJobs 2, unsandboxed; plain vs internal-json to a file (the CLI's --json-log-path sink) + a trace file; ${runs} pairs, alternating`,
  );
  const d = instantiateDag(n, 'realise-bench-observe-');
  const wall = { plain: [] as number[], observed: [] as number[], ratios: [] as number[] };
  const cpu = { plain: [] as number[], observed: [] as number[], ratios: [] as number[] };
  try {
    // One warm-up pair, not counted (first builds pay for module loading and the page cache).
    for (const o of [false, true]) {
      resetDag(d);
      await run(d, o);
    }
    for (let i = 0; i < runs; i++) {
      const order = i % 2 === 0 ? [false, true] : [true, false];
      const got: Record<string, { wall: number; cpu: number }> = {};
      for (const obs of order) {
        resetDag(d);
        got[obs ? 'observed' : 'plain'] = await run(d, obs);
      }
      const { plain: p, observed: o } = got as { plain: { wall: number; cpu: number }; observed: { wall: number; cpu: number } };
      for (const [acc, k] of [
        [wall, 'wall'],
        [cpu, 'cpu'],
      ] as const) {
        acc.plain.push(p[k]);
        acc.observed.push(o[k]);
        acc.ratios.push(o[k] / p[k]);
      }
      console.log(
        `run ${i + 1}: wall plain ${fmt(p.wall, 0)} ms, observed ${fmt(o.wall, 0)} ms (${fmt(o.wall / p.wall, 3)}); cpu plain ${fmt(p.cpu, 0)} ms, observed ${fmt(o.cpu, 0)} ms (${fmt(o.cpu / p.cpu, 3)})`,
      );
    }
    for (const [name, acc] of [
      ['wall', wall],
      ['cpu', cpu],
    ] as const) {
      emitRow({
        area: 'Observability overhead',
        measure: `observed / plain build, ${n} nodes, ${name === 'wall' ? 'wall time' : "this process's CPU time"}, ratio of medians`,
        unit: 'ms',
        realise: median(acc.observed),
        realiseNote: `plain ${num(median(acc.plain))} ms`,
        ratio: median(acc.observed) / median(acc.plain),
        ratioMin: Math.min(...acc.ratios),
        ratioMax: Math.max(...acc.ratios),
        ratioNote: 'observed / plain',
        target: '≤ 1.05',
        met: atMost(median(acc.observed) / median(acc.plain), 1.05),
      });
      console.log(
        `${name}: plain median ${fmt(median(acc.plain), 0)} ms, observed median ${fmt(median(acc.observed), 0)} ms; ratio of medians ${fmt(median(acc.observed) / median(acc.plain), 3)}, median of pair ratios ${fmt(median(acc.ratios), 3)} (min ${fmt(Math.min(...acc.ratios), 3)}, max ${fmt(Math.max(...acc.ratios), 3)}); target <= 1.05`,
      );
    }
    resetDag(d);
    const events = await recordEvents(d);
    const replays: number[] = [];
    for (let i = 0; i < 15; i++) replays.push(await replay(d, events));
    const best = Math.min(...replays);
    console.log(
      `observers alone: ${events.length} events through the JSON log and the trace (written) in ${fmt(best, 1)} ms (best of 15; median ${fmt(median(replays), 1)} ms) = ${fmt((100 * best) / Math.min(...wall.plain), 2)}% of the fastest plain run (${fmt(Math.min(...wall.plain), 0)} ms), ${fmt((100 * best) / Math.min(...cpu.plain), 2)}% of its least CPU time (${fmt(Math.min(...cpu.plain), 0)} ms)`,
    );
    const share = (100 * best) / Math.min(...wall.plain);
    emitRow({
      area: 'Observability overhead',
      measure: `the observers alone, ${events.length} events replayed, JSON log and trace written (best of 15)`,
      unit: 'ms',
      realise: best,
      realiseNote: `${num(share)}% of the fastest plain run's wall, ${num((100 * best) / Math.min(...cpu.plain))}% of its CPU`,
      target: '≤ 5% of a plain build',
      met: share <= 5,
    });
  } finally {
    rmSync(d.dir, { recursive: true, force: true });
  }
}

await main();
