/**
 * Benchmark: scheduler overhead is linear. A layered goal graph of 100,000 derivations against one of
 * 1,000, built with a fake instant Sandbox (it writes an empty file at each output's real path and exits 0)
 * into a plain LocalStore (SQLite, real locks, real build dirs and logs: everything but the builder process).
 * Reported: wall and CPU ms per goal, the ratio big/small per goal (target <= 1.5), and peak RSS of the
 * big run (sampled every 20 ms; target < 1 GB). Each size runs in its own child process so that the
 * peak memory and the per-goal figures of one are not polluted by the other.
 *
 * The .drv files are generated directly (printDerivation + our hashDerivationModulo for output paths),
 * written into the store dir and registered in batches; creating them through addTextToStore one by one
 * would take far longer than the run being measured.
 *
 *   npx tsx bench/scheduler-overhead.ts                 # 1,000 vs 100,000
 *   REALISE_BENCH_SMALL=1 npx tsx bench/scheduler-overhead.ts   # 1,000 vs 10,000
 *   REALISE_BENCH_OVERHEAD_SIZES=1000,20000 npx tsx bench/scheduler-overhead.ts
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { rng } from './dag.js';
import { emitRow, num } from './_report.js';
import { hostSystem } from '../src/scheduler/options.js';
import { LocalStore } from '../src/store/local-store.js';
import { Hash } from '../src/store/hash.js';
import { narOfRegularFile } from '../src/store/nar.js';
import type { PathInfo } from '../src/store/store-api.js';
import type { StorePath } from '../src/store/store-path.js';
import type { Sandbox, SandboxExit, SandboxRequest } from '../src/platform/sandbox.js';
import {
  computeDerivationPath,
  computeOutputPaths,
  derivationReferences,
  DerivationHasher,
  printDerivation,
  type Derivation,
} from '../src/derivation/derivation.js';

const SMALL = process.env.REALISE_BENCH_SMALL === '1';

/** A Sandbox that runs nothing: it creates each output as an empty file and reports success. */
export class InstantSandbox implements Sandbox {
  readonly name = 'fake-instant';
  readonly isolated = false;
  runs = 0;
  constructor(private readonly toRealPath: (p: string) => string) {}
  async run(request: SandboxRequest): Promise<SandboxExit> {
    this.runs++;
    for (const p of request.outputPaths) writeFileSync(this.toRealPath(p), '');
    return { kind: 'exited', code: 0 };
  }
}

export interface GeneratedGraph {
  readonly dir: string;
  readonly store: LocalStore;
  /** Every .drv, layer by layer (inputs before their users). */
  readonly drvs: StorePath[];
  /** The `out` path of each .drv, same order. */
  readonly outputs: StorePath[];
  readonly layers: number;
  readonly width: number;
}

/**
 * Generate a layered graph of `n` trivial derivations (fan-in `fanIn` from the previous layer) straight
 * into a fresh plain LocalStore: .drv text printed as Nix prints it, output paths from
 * hashDerivationModulo, files written with canonical metadata, registered in batches.
 */
export async function generateGraph(n: number, opts: { fanIn?: number; layers?: number; prefix?: string } = {}): Promise<GeneratedGraph> {
  const fanIn = opts.fanIn ?? 3;
  const layers = opts.layers ?? Math.max(1, Math.round(Math.sqrt(n) / 3.16));
  const width = Math.ceil(n / layers);
  const dir = mkdtempSync(path.join(tmpdir(), opts.prefix ?? `realise-bench-graph-${n}-`));
  const storeDir = path.join(dir, 'store');
  const store = await LocalStore.open({ storeDir, stateDir: path.join(dir, 'state'), logDir: path.join(dir, 'log') });
  const hasher = new DerivationHasher(
    async (p) => {
      throw new Error(`unexpected read of ${p}`);
    },
    { storeDir },
  );
  const system = hostSystem();
  const rand = rng(42);
  const drvs: StorePath[] = [];
  const outputs: StorePath[] = [];
  let batch: PathInfo[] = [];
  let outs: Array<[StorePath, StorePath]> = [];
  const flush = async () => {
    await store.registerValidPaths(batch, { canonicalise: false });
    for (const [d, o] of outs) await store.registerDerivationOutputs(d, new Map([['out', o]]));
    batch = [];
    outs = [];
  };
  let prevStart = 0;
  let prevCount = 0;
  for (let l = 0; l < layers && drvs.length < n; l++) {
    const start = drvs.length;
    const count = Math.min(width, n - start);
    for (let i = 0; i < count; i++) {
      const name = `g-${l}-${i}`;
      const inputDrvs = new Map<StorePath, string[]>();
      if (l > 0) {
        const picks = new Set<number>();
        while (picks.size < Math.min(fanIn, prevCount)) picks.add(prevStart + Math.floor(rand() * prevCount));
        for (const k of picks) inputDrvs.set(drvs[k]!, ['out']);
      }
      const base: Omit<Derivation, 'outputs'> = {
        name,
        inputDrvs,
        inputSrcs: [],
        platform: system,
        builder: '/bin/sh',
        args: ['-c', 'echo > $out'],
        env: new Map([
          ['builder', '/bin/sh'],
          ['name', name],
          ['system', system],
        ]),
      };
      const drv = await computeOutputPaths(hasher, base, new Map([['out', { type: 'input-addressed' }]]));
      const drvPath = computeDerivationPath(drv, storeDir);
      hasher.remember(drvPath, await hasher.hashModulo(drv, false));
      const text = printDerivation(drv);
      const real = store.toRealPath(drvPath);
      writeFileSync(real, text, { mode: 0o444 });
      utimesSync(real, 1, 1);
      const nar = narOfRegularFile(text);
      batch.push({
        path: drvPath,
        narHash: Hash.of('sha256', nar),
        narSize: nar.length,
        references: derivationReferences(drv),
        ca: `text:${Hash.of('sha256', text).toString('base32')}`,
      });
      const out = drv.env.get('out')!;
      outs.push([drvPath, out]);
      drvs.push(drvPath);
      outputs.push(out);
    }
    if (batch.length >= 2000) await flush();
    prevStart = start;
    prevCount = count;
  }
  if (batch.length) await flush();
  return { dir, store, drvs, outputs, layers, width };
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface RunFigures {
  n: number;
  layers: number;
  width: number;
  genMs: number;
  wallMs: number;
  cpuMs: number;
  peakRssMb: number;
  rssBeforeMb: number;
  /** Live heap after the call, after a full GC, with the engine and its results still referenced. */
  heapAfterMb: number;
  sandboxRuns: number;
}

/** Generate a graph (in its own process, so that its garbage is not in the measured process's RSS). */
async function generateOnly(n: number): Promise<void> {
  const g0 = performance.now();
  const g = await generateGraph(n);
  const genMs = performance.now() - g0;
  writeFileSync(path.join(g.dir, 'drvs.txt'), g.drvs.join('\n'));
  await g.store.close();
  process.stderr.write(`  [${n} goals] generated in ${(genMs / 1000).toFixed(1)} s\n`);
  console.log(JSON.stringify({ dir: g.dir, layers: g.layers, width: g.width, genMs }));
}

/** One measured run in this process: open the generated store, build everything with the instant sandbox. */
async function measure(n: number, gen: { dir: string; layers: number; width: number; genMs: number }): Promise<RunFigures> {
  const genMs = gen.genMs;
  const store = await LocalStore.open({ storeDir: path.join(gen.dir, 'store'), stateDir: path.join(gen.dir, 'state'), logDir: path.join(gen.dir, 'log') });
  const g = { dir: gen.dir, store, layers: gen.layers, width: gen.width, drvs: readFileSync(path.join(gen.dir, 'drvs.txt'), 'utf8').split('\n') };
  try {
    const sandbox = new InstantSandbox((p) => g.store.toRealPath(p));
    const engine = new BuildEngine({ store: g.store, sandbox, maxJobs: 2 });
    globalThis.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const timer = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 20);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    // Progress on stderr every 30 s (a long run that is cut short still says how far it got, and how fast).
    const progress = setInterval(() => {
      const s = (performance.now() - t0) / 1000;
      process.stderr.write(
        `  [${n} goals] ${s.toFixed(0)} s: ${sandbox.runs} built (${((s * 1000) / Math.max(1, sandbox.runs)).toFixed(2)} ms/goal so far), rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MB, peak ${(peak / 2 ** 20).toFixed(0)} MB\n`,
      );
    }, 30_000);
    const results = await engine.buildPaths(g.drvs);
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(c0);
    clearInterval(timer);
    clearInterval(progress);
    peak = Math.max(peak, process.memoryUsage().rss);
    globalThis.gc?.();
    const heapAfter = process.memoryUsage().heapUsed;
    const built = results.filter((r) => r.result.status === 'built').length;
    if (built !== n || sandbox.runs !== n) throw new Error(`expected ${n} builds, got ${built} results 'built' and ${sandbox.runs} sandbox runs`);
    return {
      n,
      layers: g.layers,
      width: g.width,
      genMs,
      wallMs,
      cpuMs: (cpu.user + cpu.system) / 1000,
      peakRssMb: peak / 2 ** 20,
      rssBeforeMb: rssBefore / 2 ** 20,
      heapAfterMb: heapAfter / 2 ** 20,
      sandboxRuns: sandbox.runs,
    };
  } finally {
    await g.store.close();
  }
}

function child<T>(env: Record<string, string>, what: string): T {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', self], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    maxBuffer: 1 << 26,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`${what} failed (status ${r.status})`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  if (!line) throw new Error(`${what} printed no figures:\n${r.stdout}`);
  return JSON.parse(line) as T;
}

/** Generate in one child process, measure in another (fresh heap), return the figures. */
function measureInChild(n: number): RunFigures {
  const gen = child<{ dir: string }>({ REALISE_BENCH_OVERHEAD_GEN: String(n) }, `generating ${n} goals`);
  try {
    return child<RunFigures>({ REALISE_BENCH_OVERHEAD_CHILD: String(n), REALISE_BENCH_OVERHEAD_DIR: JSON.stringify(gen) }, `the run of ${n} goals`);
  } finally {
    rmSync(gen.dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.env.REALISE_BENCH_OVERHEAD_GEN) {
    await generateOnly(Number(process.env.REALISE_BENCH_OVERHEAD_GEN));
    return;
  }
  const run = process.env.REALISE_BENCH_OVERHEAD_CHILD;
  if (run) {
    console.log(JSON.stringify(await measure(Number(run), JSON.parse(process.env.REALISE_BENCH_OVERHEAD_DIR!))));
    return;
  }
  const [small, big] = process.env.REALISE_BENCH_OVERHEAD_SIZES
    ? (process.env.REALISE_BENCH_OVERHEAD_SIZES.split(',').map(Number) as [number, number])
    : SMALL
      ? [1000, 10_000]
      : [1000, 100_000];
  const smallRuns = Number(process.env.REALISE_BENCH_RUNS ?? 3);
  console.log(`# scheduler-overhead: ${small} vs ${big} goals, fake instant sandbox, plain LocalStore, maxJobs 2`);
  const per = (f: RunFigures) =>
    `${f.n} goals (${f.layers} layers x ${f.width}, fan-in 3): generated in ${(f.genMs / 1000).toFixed(1)} s; built in ${(f.wallMs / 1000).toFixed(2)} s = ${(f.wallMs / f.n).toFixed(3)} ms/goal wall, ${(f.cpuMs / f.n).toFixed(3)} ms/goal cpu; peak RSS ${f.peakRssMb.toFixed(0)} MB (${f.rssBeforeMb.toFixed(0)} MB before; live heap after ${f.heapAfterMb.toFixed(0)} MB)`;
  const smalls: RunFigures[] = [];
  for (let i = 0; i < smallRuns; i++) {
    const f = measureInChild(small);
    smalls.push(f);
    console.log(`small run ${i + 1}: ${per(f)}`);
  }
  const b = measureInChild(big);
  console.log(`big run:     ${per(b)}`);
  const sWall = median(smalls.map((f) => f.wallMs / f.n));
  const sCpu = median(smalls.map((f) => f.cpuMs / f.n));
  console.log(
    `per-goal ratio ${big}/${small}: wall ${(b.wallMs / b.n / sWall).toFixed(2)}x, cpu ${(b.cpuMs / b.n / sCpu).toFixed(2)}x (small: median of ${smallRuns}); target <= 1.5x`,
  );
  console.log(`peak RSS at ${big} goals: ${b.peakRssMb.toFixed(0)} MB; target < 1024 MB`);
  const area = 'Scheduler: no-op build and overhead';
  const [wall, cpu] = [b.wallMs / b.n / sWall, b.cpuMs / b.n / sCpu];
  emitRow({
    area,
    measure: `${big.toLocaleString('en-US')} goals vs ${small.toLocaleString('en-US')}, cost per goal (fake instant sandbox)`,
    unit: 'ms',
    realise: b.wallMs / b.n,
    realiseNote: `wall; ${num(b.cpuMs / b.n)} ms CPU per goal; ${small.toLocaleString('en-US')} goals: ${num(sWall)} ms wall`,
    ratio: wall,
    ratioNote: `per goal, ${big.toLocaleString('en-US')} / ${small.toLocaleString('en-US')}; CPU ${num(cpu)}`,
    target: '≤ 1.5×',
    met: wall <= 1.5 && cpu <= 1.5,
  });
  emitRow({
    area,
    measure: `${big.toLocaleString('en-US')} goals, peak RSS`,
    unit: 'MB',
    realise: b.peakRssMb,
    realiseNote: `${num(b.rssBeforeMb)} MB before the call; live heap after ${num(b.heapAfterMb)} MB`,
    target: '< 1 GB',
    met: b.peakRssMb < 1024,
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
