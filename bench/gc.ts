/**
 * Garbage collection and optimisation against real Nix 2.8 on twin stores (run: npx tsx bench/gc.ts):
 *  - collect: a chroot store of GC_BENCH_PATHS paths (default 20,000; every tenth a directory of four
 *    files, the rest single files), in chains of 100 linked by references; half of the chains rooted
 *    in gcroots, half dead. The store is made once and copied (`cp -a`); `nix-store --gc` runs on one
 *    copy, `store.collectGarbage()` (opening the store included) on the other. Both must delete the
 *    same paths.
 *  - optimise: OPT_BENCH_FILES files (default 10,000) in 1,000 paths, half of them identical to a file
 *    of another path; `nix-store --optimise` vs `store.optimiseStore()` on twin copies; the same number
 *    of files must be linked.
 * Each measurement is the median of GC_BENCH_RUNS runs (default 3) on fresh copies. Prints the times
 * and the ratios ours/Nix (target ≤ 0.5), and the CPU times (user + system: Nix's process, read from
 * /proc/self/stat's children times; ours in-process, every thread), which a loaded machine moves less
 * than wall times. REALISE_BENCH_SMALL=1: 2,000 paths and 1,000 files. GC_BENCH_ONLY=collect or
 * GC_BENCH_ONLY=optimise: that measurement alone.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { compileOptimiseAddon } from '../src/platform/native-optimise.js';
import { LocalStore } from '../src/store/local-store.js';
import { Hash } from '../src/store/hash.js';
import { hashPath, narOfRegularFile } from '../src/store/nar.js';
import { makeStorePath, type StorePath } from '../src/store/store-path.js';
import type { PathInfo } from '../src/store/store-api.js';
import { atMost, emitRow, num } from './_report.js';

const SMALL = process.env.REALISE_BENCH_SMALL === '1';
const PATHS = Number(process.env.GC_BENCH_PATHS ?? (SMALL ? 2_000 : 20_000));
const FILES = Number(process.env.OPT_BENCH_FILES ?? (SMALL ? 1_000 : 10_000));
const RUNS = Number(process.env.GC_BENCH_RUNS ?? 3);
const ONLY = process.env.GC_BENCH_ONLY;
const CHAIN = 100;

const nixEnv = { ...process.env, NIX_REMOTE: '', NIX_CONFIG: 'build-users-group =\nsubstituters =\n', NIX_USER_CONF_FILES: '/dev/null' };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** CPU time (user + system, ms) of this process's children that have been waited for (/proc/self/stat cutime + cstime). */
function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[13]) + Number(f[14])) * 1000) / 100; // fields 16 and 17, in clock ticks of 1/100 s
}

/** This process's CPU time (user + system, ms; all its threads). */
function ownCpuMs(): number {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
}

function nixStore(root: string, args: string[]): { ms: number; cpuMs: number; stdout: string; stderr: string } {
  const c0 = childrenCpuMs();
  const t0 = performance.now();
  const r = spawnSync('nix-store', ['--store', root, ...args], { env: nixEnv, encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`nix-store ${args.join(' ')} failed: ${r.stderr}`);
  return { ms, cpuMs: childrenCpuMs() - c0, stdout: r.stdout, stderr: r.stderr };
}

/** A twin copy, written back to disk before anything is timed (pending write-back would weigh on whichever runs next). */
function copy(from: string, to: string): void {
  const r = spawnSync('cp', ['-a', from, to]);
  if (r.status !== 0) throw new Error(`cp -a ${from} ${to} failed`);
  spawnSync('sync');
}

/** Write `count` paths in chains of CHAIN (each references the previous one); returns the chain tops. */
async function makeGcStore(root: string, count: number): Promise<StorePath[]> {
  const store = await LocalStore.open({ root });
  const tops: StorePath[] = [];
  try {
    let batch: PathInfo[] = [];
    let prev: StorePath | undefined;
    for (let i = 0; i < count; i++) {
      if (i % CHAIN === 0) prev = undefined;
      const p = makeStorePath('output:out', Hash.of('sha256', `gc-bench-${i}`), `pkg-${i}`);
      const real = store.toRealPath(p);
      let narHash: Hash;
      let narSize: number;
      const text = `package ${i}${prev ? ` needs ${prev}` : ''}\n`;
      if (i % 10 === 0) {
        mkdirSync(real);
        for (let f = 0; f < 4; f++) writeFileSync(path.join(real, `f${f}`), text.repeat(f + 1));
        ({ hash: narHash, size: narSize } = await hashPath(real));
      } else {
        writeFileSync(real, text);
        const nar = narOfRegularFile(text);
        narHash = Hash.of('sha256', nar);
        narSize = nar.length;
      }
      batch.push({ path: p, narHash, narSize, references: prev ? [prev] : [] });
      prev = p;
      if (i % CHAIN === CHAIN - 1) tops.push(p);
      if (batch.length >= 1000) {
        await store.registerValidPaths(batch);
        batch = [];
      }
    }
    if (batch.length) await store.registerValidPaths(batch);
  } finally {
    await store.close();
  }
  return tops;
}

/** FILES files in paths of ten; every other path's files are copies of an earlier path's. */
async function makeOptStore(root: string, files: number): Promise<void> {
  const src = mkdtempSync(path.join(tmpdir(), 'realise-bench-opt-src-'));
  try {
    const paths = Math.ceil(files / 10);
    const store = await LocalStore.open({ root });
    try {
      let batch: PathInfo[] = [];
      for (let i = 0; i < paths; i++) {
        const p = makeStorePath('output:out', Hash.of('sha256', `opt-bench-${i}`), `opt-${i}`);
        const real = store.toRealPath(p);
        mkdirSync(real);
        const content = i % 2 === 1 ? i - 1 : i;
        for (let f = 0; f < 10; f++) {
          writeFileSync(path.join(real, `file${f}`), `content ${content}/${f}\n`.repeat(20 + f));
          chmodSync(path.join(real, `file${f}`), f === 0 ? 0o555 : 0o444);
        }
        chmodSync(real, 0o555);
        const { hash, size } = await hashPath(real);
        batch.push({ path: p, narHash: hash, narSize: size, references: [] });
        if (batch.length >= 500) {
          await store.registerValidPaths(batch);
          batch = [];
        }
      }
      if (batch.length) await store.registerValidPaths(batch);
    } finally {
      await store.close();
    }
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
}

function rm(dir: string): void {
  spawnSync('chmod', ['-R', 'u+w', dir]);
  rmSync(dir, { recursive: true, force: true });
}

/**
 * RUNS times on fresh twin copies of `src`: nix-store with `nixArgs` on one, `ours` (store opened and
 * closed inside the timing) on the other, alternating which goes first so that neither always meets a
 * warmer or colder cache. Returns the medians and the last outputs of both.
 */
async function twinRuns<T>(
  base: string,
  src: string,
  nixArgs: string[],
  ours: (store: LocalStore) => Promise<T>,
): Promise<{ nixMs: number; ourMs: number; nixCpuMs: number; ourCpuMs: number; nix: { stdout: string; stderr: string }; our: T }> {
  const nixMs: number[] = [];
  const ourMs: number[] = [];
  const nixCpuMs: number[] = [];
  const ourCpuMs: number[] = [];
  let nix = { stdout: '', stderr: '' };
  let our: T | undefined;
  for (let r = 0; r < RUNS; r++) {
    const n = path.join(base, `${path.basename(src)}-n${r}`);
    const o = path.join(base, `${path.basename(src)}-o${r}`);
    copy(src, n);
    copy(src, o);
    const runNix = () => {
      const res = nixStore(n, nixArgs);
      nixMs.push(res.ms);
      nixCpuMs.push(res.cpuMs);
      nix = res;
    };
    const runOurs = async () => {
      const c0 = ownCpuMs();
      const t0 = performance.now();
      const store = await LocalStore.open({ root: o });
      our = await ours(store);
      await store.close();
      ourMs.push(performance.now() - t0);
      ourCpuMs.push(ownCpuMs() - c0);
    };
    if (r % 2 === 0) {
      runNix();
      spawnSync('sync');
      await runOurs();
    } else {
      await runOurs();
      spawnSync('sync');
      runNix();
    }
    rm(n);
    rm(o);
  }
  return { nixMs: median(nixMs), ourMs: median(ourMs), nixCpuMs: median(nixCpuMs), ourCpuMs: median(ourCpuMs), nix, our: our! };
}

/** The result row of one twin run (wall times in seconds; the ratio of medians, with the CPU times' ratio). */
function row(measure: string, r: { nixMs: number; ourMs: number; nixCpuMs: number; ourCpuMs: number }): void {
  emitRow({
    area: 'Garbage collection and optimisation',
    measure,
    unit: 's',
    realise: r.ourMs / 1000,
    realiseNote: `CPU ${num(r.ourCpuMs / 1000)} s`,
    nix: r.nixMs / 1000,
    nixNote: `CPU ${num(r.nixCpuMs / 1000)} s`,
    ratio: r.ourMs / r.nixMs,
    ratioNote: `CPU ${num(r.ourCpuMs / r.nixCpuMs)}`,
    target: '≤ 0.5',
    met: atMost(r.ourMs / r.nixMs, 0.5),
  });
}

/** The CPU times (user + system, all threads; Nix's whole process, ours in-process as the wall time): steadier than wall times under load. */
function cpu(r: { nixCpuMs: number; ourCpuMs: number }): string {
  return `CPU time: Nix ${r.nixCpuMs.toFixed(0)} ms, ours ${r.ourCpuMs.toFixed(0)} ms, ratio ${(r.ourCpuMs / r.nixCpuMs).toFixed(2)}`;
}

async function main(): Promise<void> {
  const base = mkdtempSync(path.join(tmpdir(), 'realise-bench-gc-'));
  try {
    if (ONLY !== 'optimise') await benchCollect(base);
    if (ONLY !== 'collect') await benchOptimise(base);
  } finally {
    rm(base);
  }
}

async function benchCollect(base: string): Promise<void> {
  const gcStore = path.join(base, 'gc');
  const tops = await makeGcStore(gcStore, PATHS);
  for (const [i, t] of tops.entries()) if (i % 2 === 0) symlinkSync(t, path.join(gcStore, 'nix/var/nix/gcroots', `root-${i}`));
  const gc = await twinRuns(base, gcStore, ['--gc'], (s) => s.collectGarbage());
  const nixDeleted = gc.nix.stdout.trim();
  if (!nixDeleted.startsWith(`${gc.our.paths.length} store paths deleted`)) throw new Error(`Nix: '${nixDeleted}', we deleted ${gc.our.paths.length}`);
  console.log(
    `collect ${PATHS} paths (${gc.our.paths.length} dead): nix-store --gc ${gc.nixMs.toFixed(0)} ms, collectGarbage ${gc.ourMs.toFixed(0)} ms, ratio ${(gc.ourMs / gc.nixMs).toFixed(2)}; ${cpu(gc)}`,
  );
  row(`collect ${PATHS.toLocaleString('en-US')} paths, ${gc.our.paths.length.toLocaleString('en-US')} dead`, gc);
}

async function benchOptimise(base: string): Promise<void> {
  const optStore = path.join(base, 'opt');
  await makeOptStore(optStore, FILES);
  if (process.env.REALISE_NATIVE_OPTIMISE !== '0') await compileOptimiseAddon(); // (once per machine, as an installation's first use; not timed)
  const opt = await twinRuns(base, optStore, ['--optimise'], (s) => s.optimiseStore());
  const nixLinked = /hard-linking (\d+) files/.exec(opt.nix.stderr)?.[1] ?? '?';
  if (String(opt.our.filesLinked) !== nixLinked) throw new Error(`Nix linked ${nixLinked} files, we linked ${opt.our.filesLinked}`);
  console.log(
    `optimise ${FILES} files (${opt.our.filesLinked} linked): nix-store --optimise ${opt.nixMs.toFixed(0)} ms, optimiseStore ${opt.ourMs.toFixed(0)} ms, ratio ${(opt.ourMs / opt.nixMs).toFixed(2)}; ${cpu(opt)}`,
  );
  const loop = process.env.REALISE_NATIVE_OPTIMISE === '0' ? ', the JavaScript loop (`REALISE_NATIVE_OPTIMISE=0`)' : '';
  row(`optimise ${FILES.toLocaleString('en-US')} files, ${opt.our.filesLinked.toLocaleString('en-US')} linked${loop}`, opt);
}

await main();
