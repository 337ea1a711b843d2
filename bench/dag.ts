/**
 * Benchmark: a layered DAG of trivial derivations (each `echo $name > $out`, builder /bin/sh, each
 * depending on 3 derivations of the previous layer), built unsandboxed at maxJobs 2 into a plain store
 * (logical store dir = physical dir), by this engine and by real Nix 2.8 (`nix-store --realise`).
 *
 * Both work on the SAME store directory and the same instantiated state: the graph is instantiated once
 * with real `nix-instantiate`, the state dir is snapshotted, and before every run the built outputs,
 * locks and logs are deleted and the state dir is restored from the snapshot. Runs alternate
 * (ours, Nix, ours, Nix, ...), so a drift of the machine's speed hits both; the ratio is taken pair by pair.
 *
 *   npx tsx bench/dag.ts                  # 200 and 2,000 derivations
 *   REALISE_BENCH_SMALL=1 npx tsx bench/dag.ts   # 200 only, 3 runs
 *   REALISE_BENCH_SIZES=200 REALISE_BENCH_RUNS=5 npx tsx bench/dag.ts
 *   REALISE_BENCH_ONLY=ours npx tsx bench/dag.ts   # skip Nix (e.g. for profiling)
 *   REALISE_BENCH_WARMUP=10 npx tsx bench/dag.ts   # 10 untimed runs of ours first: V8's optimising compiler
 *     takes a function only after it ran a while, so a fresh process's first ~1,000 builds run colder code;
 *     this measures a process past its first builds (the rows say "warm"); each run is still a new store
 *     and engine, opened and closed inside the clock, so per-engine costs (the sandbox helper server's start,
 *     the pools' clean-up at close) stay counted
 *   REALISE_BENCH_SANDBOX=1 npx tsx bench/dag.ts   # the same DAG sandboxed (issue #4's measure; also bench/dag-sandboxed.ts)
 *
 * Sandboxed (`REALISE_BENCH_SANDBOX=1`): the builder is a static busybox added to the store by the
 * expression (`./bb`, so both sandboxes see it as an input), the store is a chroot store (`--store ROOT`:
 * logical /nix/store, physical ROOT/nix/store, which Nix 2.8 always builds sandboxed), Nix gets
 * `--option sandbox true` and we `sandbox: true`.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { LocalStore } from '../src/store/local-store.js';
import { LinuxSandbox } from '../src/platform/linux-sandbox.js';
import { flushRemovals } from '../src/platform/chroot.js';
import { NoSandbox } from '../src/platform/no-sandbox.js';
import type { Sandbox, SandboxRequest } from '../src/platform/sandbox.js';
import { atMost, emitRow, num } from './_report.js';

export const SMALL = process.env.REALISE_BENCH_SMALL === '1';
export const SANDBOXED = process.env.REALISE_BENCH_SANDBOX === '1';

/** Environment for real Nix on a private store: no daemon, no user config, no build users, no caches. */
export function nixEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    NIX_REMOTE: '',
    NIX_CONFIG: 'build-users-group =\nsubstituters =\n',
    NIX_USER_CONF_FILES: '/dev/null',
    HOME: process.env.HOME ?? '/root',
  };
}

/** Deterministic PRNG (mulberry32), so every run and both engines see the same graph. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Layers × width for a graph of `n` derivations: 200 = 10 × 20, 2,000 = 20 × 100. */
export function shapeOf(n: number): { layers: number; width: number } {
  const layers = n >= 2000 ? 20 : n >= 200 ? 10 : Math.max(1, Math.round(Math.sqrt(n)));
  return { layers, width: Math.ceil(n / layers) };
}

/** A Nix expression for a layered DAG; each node depends on `fanIn` nodes of the previous layer. */
export function dagExpr(n: number, fanIn = 3, seed = 1, sandboxed = false): string {
  const { layers, width } = shapeOf(n);
  const rand = rng(seed);
  const lines = [
    ...(sandboxed ? ['let bb = ./bb; in'] : []),
    'let mk = name: deps: derivation {',
    `  inherit name deps; system = builtins.currentSystem; builder = ${sandboxed ? '"${bb}/bin/sh"' : '"/bin/sh"'};`,
    '  args = [ "-c" "echo $name > $out" ];',
    '}; in rec {',
  ];
  let made = 0;
  const perLayer: number[] = [];
  for (let l = 0; l < layers && made < n; l++) {
    const w = Math.min(width, n - made);
    perLayer.push(w);
    for (let i = 0; i < w; i++) {
      const deps = new Set<number>();
      if (l > 0) {
        const prev = perLayer[l - 1]!;
        while (deps.size < Math.min(fanIn, prev)) deps.add(Math.floor(rand() * prev));
      }
      lines.push(
        `  n${l}_${i} = mk "dag-${l}-${i}" [ ${[...deps]
          .sort((a, b) => a - b)
          .map((d) => `n${l - 1}_${d}`)
          .join(' ')} ];`,
      );
      made++;
    }
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

export interface PlainStoreDirs {
  readonly dir: string;
  /** Root of a chroot store (sandboxed mode), else undefined. */
  readonly root?: string;
  readonly storeDir: string;
  readonly stateDir: string;
  readonly logDir: string;
  /** Nix's `--store` argument for this plain store. */
  readonly uri: string;
}

export function plainStoreDirs(dir: string): PlainStoreDirs {
  const storeDir = path.join(dir, 'store');
  const stateDir = path.join(dir, 'state');
  const logDir = path.join(dir, 'log');
  return { dir, storeDir, stateDir, logDir, uri: `local?store=${storeDir}&state=${stateDir}&log=${logDir}` };
}

export interface InstantiatedDag extends PlainStoreDirs {
  readonly drvs: string[];
  /** Pristine copy of the state dir, right after instantiation. */
  readonly pristineState: string;
  /** Names in the store dir right after instantiation (the .drv files). */
  readonly pristineNames: ReadonlySet<string>;
}

/** A chroot store under `dir/root` (logical /nix/store), as `--store ROOT` gives real Nix. */
export function chrootStoreDirs(dir: string): PlainStoreDirs {
  const root = path.join(dir, 'root');
  return {
    dir,
    root,
    storeDir: path.join(root, 'nix/store'),
    stateDir: path.join(root, 'nix/var/nix'),
    logDir: path.join(root, 'nix/var/log/nix'),
    uri: root,
  };
}

/**
 * Instantiate a DAG of `n` derivations with real nix-instantiate into a fresh plain store (sandboxed: a
 * chroot store, with a static busybox as the builder).
 */
export function instantiateDag(n: number, prefix = 'realise-bench-dag-', sandboxed = false): InstantiatedDag {
  const dir = mkdtempSync(path.join(tmpdir(), `${prefix}${n}-`));
  const dirs = sandboxed ? chrootStoreDirs(dir) : plainStoreDirs(dir);
  const expr = path.join(dir, 'dag.nix');
  if (sandboxed) {
    mkdirSync(path.join(dir, 'bb/bin'), { recursive: true });
    cpSync('/bin/busybox', path.join(dir, 'bb/bin/busybox'));
    symlinkSync('busybox', path.join(dir, 'bb/bin/sh'));
  }
  writeFileSync(expr, dagExpr(n, 3, 1, sandboxed));
  const r = spawnSync('nix-instantiate', ['--store', dirs.uri, expr], { env: nixEnv(), encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`nix-instantiate failed (${r.status}):\n${r.stderr}`);
  const drvs = r.stdout.split('\n').filter(Boolean);
  if (sandboxed) mkdirSync(dirs.logDir, { recursive: true });
  if (drvs.length !== n) throw new Error(`expected ${n} derivations, nix-instantiate printed ${drvs.length}`);
  const pristineState = path.join(dir, 'state.pristine');
  cpSync(dirs.stateDir, pristineState, { recursive: true, preserveTimestamps: true });
  return { ...dirs, drvs, pristineState, pristineNames: new Set(readdirSync(dirs.storeDir)) };
}

/**
 * Back to the instantiated state: built outputs, locks and logs moved away; the state dir restored.
 * They are moved into `<dir>/trash` (renamed, not deleted) so that the next run does not follow a mass
 * deletion: on ext4 without a journal every new inode skips, one by one, the inodes deleted in the last
 * 30 seconds, which made each run slower than the one before (docs/performance.md). The trash goes with
 * the benchmark's directory at the end.
 */
let trashSeq = 0;
export function resetDag(d: InstantiatedDag): void {
  const trash = path.join(d.dir, 'trash', String(trashSeq++));
  mkdirSync(path.join(trash, 'store'), { recursive: true });
  for (const name of readdirSync(d.storeDir)) {
    if (!d.pristineNames.has(name)) renameSync(path.join(d.storeDir, name), path.join(trash, 'store', name));
  }
  if (existsSync(d.stateDir)) renameSync(d.stateDir, path.join(trash, 'state'));
  if (existsSync(d.logDir)) renameSync(d.logDir, path.join(trash, 'log'));
  const r = spawnSync('cp', ['-a', d.pristineState, d.stateDir]);
  if (r.status !== 0) throw new Error(`cp -a failed: ${r.stderr}`);
  mkdirSync(d.logDir, { recursive: true });
}

/**
 * Our engine, in-process: open the store, build every derivation, close the engine and the store, as a
 * program that runs one engine does (the CLI among them). Returns wall ms.
 */
export async function runOurs(d: InstantiatedDag, maxJobs = 2): Promise<number> {
  const t0 = performance.now();
  const store = d.root ? await LocalStore.open({ root: d.root }) : await LocalStore.open({ storeDir: d.storeDir, stateDir: d.stateDir, logDir: d.logDir });
  const engine = new BuildEngine({ store, sandbox: d.root !== undefined, maxJobs });
  const results = await engine.buildPaths(d.drvs);
  // What the engine keeps between builds goes here, on the clock: its chroot skeletons and build directories.
  await engine.close();
  await store.close();
  const ms = performance.now() - t0;
  const built = results.filter((r) => r.result.status === 'built').length;
  if (built !== d.drvs.length) throw new Error(`ours built ${built} of ${d.drvs.length}`);
  return ms;
}

/** Real Nix: `nix-store --realise` of every derivation, max-jobs 2, no sandbox (sandboxed mode: sandbox). Returns wall ms. */
export function runNix(d: InstantiatedDag, maxJobs = 2): number {
  const t0 = performance.now();
  const r = spawnSync(
    'nix-store',
    ['--store', d.uri, '--realise', ...d.drvs, '--max-jobs', String(maxJobs), '--option', 'sandbox', d.root ? 'true' : 'false'],
    {
      env: nixEnv(),
      encoding: 'utf8',
      maxBuffer: 1 << 28,
    },
  );
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`nix-store --realise failed (${r.status}):\n${r.stderr.slice(-2000)}`);
  const outs = r.stdout.split('\n').filter(Boolean).length;
  if (outs !== d.drvs.length) throw new Error(`nix-store printed ${outs} outputs for ${d.drvs.length} derivations`);
  return ms;
}

/**
 * The floor: the same number of builders (`sh -c 'echo NAME > $out'`), two at a time, started by the
 * sandbox layer alone (the helper server; no goals, locks, database, logs or registration). What no
 * engine on this machine can go below with this launcher; the engine's own cost is ours minus this.
 */
export async function runFloor(d: InstantiatedDag, n: number, maxJobs = 2): Promise<number> {
  const scratch = mkdtempSync(path.join(d.dir, 'floor-'));
  const sandbox: Sandbox = d.root ? new LinuxSandbox() : new NoSandbox();
  const bb = d.root ? [...d.pristineNames].find((x) => x.endsWith('-bb')) : undefined;
  const request = (i: number): SandboxRequest => {
    const buildDir = mkdtempSync(path.join(scratch, 'b-'));
    const hash = (i + 1).toString(32).padStart(32, '0');
    const out = d.root ? `/nix/store/${hash}-floor-${i}` : path.join(scratch, `o${i}`);
    return {
      drvPath: `/nix/store/${hash}-floor-${i}.drv`,
      builder: bb ? `/nix/store/${bb}/bin/sh` : '/bin/sh',
      args: ['-c', `echo floor-${i} > $out`],
      env: { PATH: '/path-not-set', HOME: '/homeless-shelter', NIX_BUILD_TOP: d.root ? '/build' : buildDir, out },
      buildDir,
      sandboxBuildDir: d.root ? '/build' : buildDir,
      storeDir: d.root ? '/nix/store' : d.storeDir,
      realStoreDir: d.storeDir,
      inputPaths: bb ? [`/nix/store/${bb}`] : [],
      outputPaths: d.root ? [out] : [],
      network: false,
    };
  };
  const one = async (i: number) => {
    const r = request(i);
    const e = await sandbox.run(r);
    if (e.kind !== 'exited' || e.code !== 0) throw new Error(`floor build ${i}: ${JSON.stringify(e)}`);
    rmSync(r.buildDir, { recursive: true, force: true });
  };
  await one(-1); // starts the helper server
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: maxJobs }, async () => {
      while (next < n) await one(next++);
    }),
  );
  const ms = performance.now() - t0;
  // Off the clock (the floor's builders alone), but finished before the next run starts, which its
  // deletions would otherwise slow down.
  await sandbox.close?.();
  await flushRemovals();
  // Moved away rather than deleted, like everything resetDag clears (see there).
  const trash = path.join(d.dir, 'trash', String(trashSeq++));
  mkdirSync(trash, { recursive: true });
  renameSync(scratch, path.join(trash, 'scratch'));
  for (const name of readdirSync(d.storeDir)) if (name.includes('-floor-')) renameSync(path.join(d.storeDir, name), path.join(trash, name));
  return ms;
}

/**
 * CPU time of this process's main thread so far, in ms (utime + stime from /proc, clock ticks of 10 ms):
 * steadier than wall time on a loaded machine, where other jobs take the CPUs from both engines.
 */
export function mainThreadCpuMs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function fmt(x: number, digits = 1): string {
  return x.toFixed(digits);
}

export async function main(sandboxed = SANDBOXED): Promise<void> {
  const sizes = process.env.REALISE_BENCH_SIZES ? process.env.REALISE_BENCH_SIZES.split(',').map(Number) : SMALL ? [200] : [200, 2000];
  const only = process.env.REALISE_BENCH_ONLY; // 'ours' | 'nix' | undefined
  const keep = process.env.REALISE_BENCH_KEEP === '1';
  const warmup = Number(process.env.REALISE_BENCH_WARMUP ?? 0);
  console.log(
    sandboxed
      ? `# dag: layered DAG of trivial derivations, maxJobs 2, SANDBOXED, chroot store, static busybox builder; ours vs nix-store --realise --option sandbox true (Nix 2.8)`
      : `# dag: layered DAG of trivial derivations, maxJobs 2, unsandboxed, plain store; ours vs nix-store --realise (Nix 2.8)`,
  );
  for (const n of sizes) {
    const runs = Number(process.env.REALISE_BENCH_RUNS ?? (SMALL ? 3 : n >= 2000 ? 3 : 5));
    const { layers, width } = shapeOf(n);
    const t0 = performance.now();
    const d = instantiateDag(n, undefined, sandboxed);
    console.log(
      `\n## ${n} derivations (${layers} layers × ${width}, fan-in 3); instantiated in ${fmt((performance.now() - t0) / 1000, 2)} s; ${runs} runs each, alternating`,
    );
    const ours: number[] = [];
    const nix: number[] = [];
    const floor: number[] = [];
    const ratios: number[] = [];
    /** Main-thread CPU of each of our runs and of each floor run, in ms. */
    const oursCpu: number[] = [];
    const floorCpu: number[] = [];
    for (let i = 0; i < warmup; i++) {
      resetDag(d);
      console.log(`warm-up ${i + 1} of ${warmup} (not counted): ours ${fmt(await runOurs(d), 0)} ms`);
    }
    for (let i = 0; i < runs; i++) {
      // Alternate which goes first, so neither always follows the other's page-cache and disk work.
      const order = i % 2 === 0 ? ['ours', 'nix'] : ['nix', 'ours'];
      let o = NaN;
      let x = NaN;
      for (const who of order) {
        if (only && only !== who) continue;
        resetDag(d);
        if (who === 'ours') {
          const c0 = mainThreadCpuMs();
          o = await runOurs(d);
          oursCpu.push(mainThreadCpuMs() - c0);
        } else x = runNix(d);
      }
      if (!only) {
        const c0 = mainThreadCpuMs();
        floor.push(await runFloor(d, n));
        floorCpu.push(mainThreadCpuMs() - c0);
      }
      if (!Number.isNaN(o)) ours.push(o);
      if (!Number.isNaN(x)) nix.push(x);
      if (!Number.isNaN(o) && !Number.isNaN(x)) ratios.push(o / x);
      console.log(
        `run ${i + 1}: ours ${Number.isNaN(o) ? '-' : fmt(o, 0) + ' ms'}  nix ${Number.isNaN(x) ? '-' : fmt(x, 0) + ' ms'}${ratios.length === i + 1 ? `  ratio ${fmt(o / x, 3)}` : ''}`,
      );
    }
    const line = (who: string, xs: number[]) =>
      xs.length
        ? `${who}: median ${fmt(median(xs), 0)} ms (min ${fmt(Math.min(...xs), 0)}, max ${fmt(Math.max(...xs), 0)}) = ${fmt(median(xs) / n, 2)} ms per build`
        : `${who}: not run`;
    console.log(line('ours', ours));
    console.log(line('nix ', nix));
    if (floor.length)
      console.log(
        `${line('floor', floor)} (builders alone through the ${sandboxed ? 'sandbox' : 'launcher'}, 2 at a time; ratio to nix ${fmt(median(floor) / median(nix), 3)})`,
      );
    if (oursCpu.length && floorCpu.length)
      console.log(
        `above the floor per build (medians): wall ${fmt((median(ours) - median(floor)) / n, 2)} ms; main-thread CPU ours ${fmt(median(oursCpu) / n, 2)} ms, floor ${fmt(median(floorCpu) / n, 2)} ms: ${fmt((median(oursCpu) - median(floorCpu)) / n, 2)} ms`,
      );
    if (ratios.length)
      console.log(
        `ratio ours/nix: median of pairs ${fmt(median(ratios), 3)} (min ${fmt(Math.min(...ratios), 3)}, max ${fmt(Math.max(...ratios), 3)}); target <= ${sandboxed ? '0.2 (issue #4)' : '0.15 (issue #3)'}`,
      );
    if (ours.length) {
      const perBuild = (xs: number[]) => (xs.length ? median(xs) / n : undefined);
      const above = floor.length ? perBuild(ours)! - perBuild(floor)! : undefined;
      const cpuAbove = oursCpu.length && floorCpu.length ? perBuild(oursCpu)! - perBuild(floorCpu)! : undefined;
      emitRow({
        area: sandboxed ? 'Sandbox' : 'Scheduler: layered DAG, unsandboxed',
        measure: `${sandboxed ? `DAG of ${n.toLocaleString('en-US')}, sandboxed` : `${n.toLocaleString('en-US')} derivations (${layers} layers × ${width})`}, maxJobs 2, per build${warmup ? `, warm (after ${warmup} untimed runs)` : ''}`,
        unit: 'ms',
        realise: perBuild(ours)!,
        realiseNote:
          above === undefined
            ? undefined
            : `${num(above)} ms above the floor; main-thread CPU ${num(perBuild(oursCpu)!)} ms, ${num(cpuAbove!)} above the floor's`,
        nix: perBuild(nix),
        ratio: ratios.length ? median(ratios) : undefined,
        ratioMin: ratios.length ? Math.min(...ratios) : undefined,
        ratioMax: ratios.length ? Math.max(...ratios) : undefined,
        floor: perBuild(floor),
        target: 'engine ≤ 0.5 ms per build above the floor',
        met: atMost(above, 0.5),
      });
    }
    if (!keep) rmSync(d.dir, { recursive: true, force: true });
    else console.log(`kept ${d.dir}`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
