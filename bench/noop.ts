/**
 * Benchmark: the no-op build. Every output of a 2,000-derivation closure is already valid; how long does
 * `engine.buildPaths(all 2,000 .drv paths)` take in-process? Target < 30 ms.
 *
 * The graph is the layered one of bench/scheduler-overhead.ts, written straight into a plain LocalStore,
 * with every output registered as valid. Measured three ways, several runs each, medians:
 *   - cold: a new BuildEngine per call (every .drv is read and parsed again);
 *   - warm: the same BuildEngine called again (its .drv cache is filled);
 *   - top: a new BuildEngine, only the top layer as targets (the rest of the closure is not visited
 *     because the wanted outputs are valid, as in Nix).
 * Reference in the same run: real Nix 2.8 `nix-store --realise` of the same 2,000 .drv paths on the same
 * store (a whole process: start-up included, so the ratio only says how far apart the two are).
 *
 *   npx tsx bench/noop.ts
 *   REALISE_BENCH_SMALL=1 npx tsx bench/noop.ts     # 200 derivations, fewer runs
 */
import { spawnSync } from 'node:child_process';
import { rmSync, utimesSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { Hash } from '../src/store/hash.js';
import { narOfRegularFile } from '../src/store/nar.js';
import type { PathInfo } from '../src/store/store-api.js';
import { generateGraph, median } from './scheduler-overhead.js';
import { emitRow, num } from './_report.js';

const SMALL = process.env.REALISE_BENCH_SMALL === '1';

function nixEnv(): NodeJS.ProcessEnv {
  return { ...process.env, NIX_REMOTE: '', NIX_CONFIG: 'build-users-group =\nsubstituters =\n', NIX_USER_CONF_FILES: '/dev/null' };
}

function stats(xs: number[]): string {
  return `median ${median(xs).toFixed(1)} ms (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`;
}

async function main(): Promise<void> {
  const n = Number(process.env.REALISE_BENCH_NOOP_SIZE ?? (SMALL ? 200 : 2000));
  const runs = Number(process.env.REALISE_BENCH_RUNS ?? (SMALL ? 5 : 15));
  const g = await generateGraph(n, { layers: n >= 2000 ? 20 : 10, prefix: `realise-bench-noop-${n}-` });
  try {
    // Make every output valid: an empty file each, registered with its deriver.
    const nar = narOfRegularFile('');
    const infos: PathInfo[] = g.outputs.map((p, i) => ({ path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [], deriver: g.drvs[i] }));
    for (const p of g.outputs) {
      const real = g.store.toRealPath(p);
      writeFileSync(real, '', { mode: 0o444 });
      utimesSync(real, 1, 1);
    }
    await g.store.registerValidPaths(infos, { canonicalise: false });
    const top = g.drvs.slice(g.drvs.length - g.width);
    console.log(`# noop: ${n} derivations (${g.layers} layers x ${g.width}), every output valid, plain LocalStore, in-process; ${runs} runs each`);

    const check = (rs: Awaited<ReturnType<BuildEngine['buildPaths']>>, want: number) => {
      const ok = rs.filter((r) => r.result.status === 'already-valid').length;
      if (ok !== want) throw new Error(`expected ${want} already-valid results, got ${ok}`);
    };
    const cold: number[] = [];
    const warm: number[] = [];
    const topOnly: number[] = [];
    const nix: number[] = [];
    // One warm-up call (JIT, page cache), not counted.
    check(await new BuildEngine({ store: g.store, sandbox: false, maxJobs: 2 }).buildPaths(g.drvs), n);
    const warmEngine = new BuildEngine({ store: g.store, sandbox: false, maxJobs: 2 });
    check(await warmEngine.buildPaths(g.drvs), n);
    const uri = `local?store=${g.store.layout.storeDir}&state=${g.store.layout.stateDir}&log=${g.store.layout.logDir}`;
    let nixOk = true;
    for (let i = 0; i < runs; i++) {
      let t0 = performance.now();
      check(await new BuildEngine({ store: g.store, sandbox: false, maxJobs: 2 }).buildPaths(g.drvs), n);
      cold.push(performance.now() - t0);
      t0 = performance.now();
      check(await warmEngine.buildPaths(g.drvs), n);
      warm.push(performance.now() - t0);
      t0 = performance.now();
      check(await new BuildEngine({ store: g.store, sandbox: false, maxJobs: 2 }).buildPaths(top), top.length);
      topOnly.push(performance.now() - t0);
      if (nixOk) {
        t0 = performance.now();
        const r = spawnSync('nix-store', ['--store', uri, '--realise', ...g.drvs, '--max-jobs', '2', '--option', 'sandbox', 'false'], {
          env: nixEnv(),
          encoding: 'utf8',
          maxBuffer: 1 << 26,
        });
        const ms = performance.now() - t0;
        if (r.status === 0 && r.stdout.split('\n').filter(Boolean).length === n) nix.push(ms);
        else {
          nixOk = false;
          console.log(`(nix-store --realise failed, no reference: ${r.stderr.slice(-300)})`);
        }
      }
    }
    console.log(`ours, cold engine, ${n} targets: ${stats(cold)}; target < 30 ms`);
    console.log(`ours, warm engine, ${n} targets: ${stats(warm)}`);
    console.log(`ours, cold engine, top layer (${top.length} targets): ${stats(topOnly)}`);
    if (nix.length) {
      console.log(`nix-store --realise, ${n} targets (whole process): ${stats(nix)}`);
      console.log(`ratio ours cold / nix: ${(median(cold) / median(nix)).toFixed(3)}`);
    }
    const area = 'Scheduler: no-op build and overhead';
    const spread = (xs: number[]) => `${num(Math.min(...xs))}–${num(Math.max(...xs))}`;
    emitRow({
      area,
      measure: `no-op, ${n.toLocaleString('en-US')}-path closure through its top (cold engine, ${top.length} targets)`,
      unit: 'ms',
      realise: median(topOnly),
      realiseNote: spread(topOnly),
      target: '< 30 ms',
      met: median(topOnly) < 30,
    });
    emitRow({
      area,
      measure: `no-op, all ${n.toLocaleString('en-US')} \`.drv\` as targets, warm engine`,
      unit: 'ms',
      realise: median(warm),
      realiseNote: `${num((median(warm) / n) * 1000)} µs per target`,
      target: '< 30 ms',
      met: median(warm) < 30,
    });
    const rs = nix.length === cold.length ? cold.map((x, i) => x / nix[i]!) : [];
    emitRow({
      area,
      measure: `no-op, all ${n.toLocaleString('en-US')} \`.drv\` as targets, cold engine`,
      unit: 'ms',
      realise: median(cold),
      nix: nix.length ? median(nix) : undefined,
      nixNote: nix.length ? 'whole process' : undefined,
      ratio: rs.length ? median(rs) : undefined,
      ratioMin: rs.length ? Math.min(...rs) : undefined,
      ratioMax: rs.length ? Math.max(...rs) : undefined,
    });
  } finally {
    await g.store.close();
    rmSync(g.dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
