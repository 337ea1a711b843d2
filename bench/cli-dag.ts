/**
 * Benchmark: `realise build` of a fresh layered DAG as a whole process (start-up, store open, every build,
 * exit), side by side with `nix-store --realise` of the same `.drv` files in the same run. The DAG is
 * bench/dag.ts's (200 derivations, 10 layers × 20, fan-in 3, maxJobs 2), instantiated once with real
 * `nix-instantiate`; its `.drv` closure is also written to a `file://` binary cache by Nix 2.8 itself
 * (`nix copy --derivation`, uncompressed, as `nix copy` leaves it).
 *
 * Three commands per round, the order rotating every round, after one warm-up round that is not counted:
 *   - nix: `nix-store --realise` on the instantiated store (the `.drv` files in the store);
 *   - ours, drv in store: `realise build` on the same store, reset the same way;
 *   - ours, drv in cache: `realise build` on an EMPTY store with the cache as its substituter, so it
 *     first substitutes the 200 `.drv` files (and the builder, when sandboxed), then builds. Nix 2.8's
 *     `nix-store --realise` cannot do this ("cannot build missing derivation"), so its figure is the
 *     instantiated store's. The empty store has the instantiated store's directories (they are moved
 *     aside for the run), as the store dir is part of every path.
 *
 * Unsandboxed: a plain store (`local?store=…`), `/bin/sh` as the builder, `--option sandbox false`.
 * Sandboxed: a chroot store (`--store ROOT`), a static busybox in the store as the builder, sandbox true.
 *
 *   npx tsx bench/cli-dag.ts                       # both, 200 derivations, 3 pairs each
 *   REALISE_BENCH_CLI_MODES=sandboxed REALISE_BENCH_RUNS=5 npx tsx bench/cli-dag.ts
 *   REALISE_BENCH_SIZES=50 npx tsx bench/cli-dag.ts
 *
 * The CLI run is `bin/realise` (the launcher an installed `realise` is), after `node scripts/bundle-cli.mjs`
 * (so it runs the bundle of the current sources, as an installed `realise` does).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { atMost, emitRow } from './_report.js';
import { fmt, instantiateDag, median, nixEnv, resetDag, runNix, SMALL, type InstantiatedDag } from './dag.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'bin/realise');

/** Nix 2.8 writes the `.drv` closure (not the outputs) to an uncompressed `file://` cache. */
function makeCache(d: InstantiatedDag): string {
  const cache = path.join(d.dir, 'cache');
  const r = spawnSync(
    'nix',
    [
      '--extra-experimental-features',
      'nix-command',
      'copy',
      '--derivation',
      '--store',
      d.uri,
      '--to',
      `file://${cache}?compression=none${d.root ? '' : `&store=${d.storeDir}`}`,
      ...d.drvs,
    ],
    { env: nixEnv(), encoding: 'utf8', maxBuffer: 1 << 28 },
  );
  if (r.status !== 0) throw new Error(`nix copy --derivation failed (${r.status}):\n${r.stderr.slice(-2000)}`);
  return cache;
}

function runCli(uri: string, drvs: readonly string[], sandboxed: boolean, substituters: string): number {
  const args = ['build', '--store', uri, '--max-jobs', '2', '--option', 'sandbox', String(sandboxed), '--option', 'substituters', substituters, ...drvs];
  const t0 = performance.now();
  const r = spawnSync(cli, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`realise build failed (${r.status}):\n${r.stderr.slice(0, 3000)}`);
  const outs = r.stdout.split('\n').filter(Boolean).length;
  if (outs !== drvs.length) throw new Error(`realise printed ${outs} outputs for ${drvs.length} derivations`);
  return ms;
}

let aside = 0;
/** `realise build` into an empty store at the instantiated store's place, the `.drv` files coming from `cache`. */
function runOursFromCache(d: InstantiatedDag, cache: string, sandboxed: boolean): number {
  const saved = path.join(d.dir, 'aside', String(aside++));
  mkdirSync(saved, { recursive: true });
  // The instantiated store's directories go aside; an empty store takes their place; then they come back.
  const moved = d.root ? [d.root] : [d.storeDir, d.stateDir, d.logDir];
  for (const p of moved) if (existsSync(p)) renameSync(p, path.join(saved, path.basename(p)));
  try {
    if (d.root) mkdirSync(d.root, { recursive: true });
    return runCli(d.uri, d.drvs, sandboxed, `file://${cache}${d.root ? '' : `?store=${d.storeDir}`}`);
  } finally {
    const fresh = path.join(saved, 'fresh');
    mkdirSync(fresh);
    for (const p of moved) {
      if (existsSync(p)) renameSync(p, path.join(fresh, path.basename(p)));
      renameSync(path.join(saved, path.basename(p)), p);
    }
  }
}

type Who = 'nix' | 'store' | 'cache';

async function measure(n: number, sandboxed: boolean, runs: number): Promise<void> {
  const t0 = performance.now();
  const d = instantiateDag(n, 'realise-bench-cli-', sandboxed);
  const cache = makeCache(d);
  console.log(
    `\n## ${n} derivations, ${sandboxed ? 'sandboxed, chroot store, static busybox builder' : 'unsandboxed, plain store'}; instantiated and cached in ${fmt((performance.now() - t0) / 1000, 2)} s; ${runs} rounds`,
  );
  const times: Record<Who, number[]> = { nix: [], store: [], cache: [] };
  const ratios: Record<'store' | 'cache', number[]> = { store: [], cache: [] };
  const all: Who[] = ['nix', 'store', 'cache'];
  try {
    // One warm-up round, not counted: the page cache, and the CLI's first runs of each kind, which write the
    // V8 code caches (engine, engine with substituters) that later runs take, as after a user's first build.
    for (const who of all) {
      resetDag(d);
      if (who === 'nix') runNix(d);
      else if (who === 'store') runCli(d.uri, d.drvs, sandboxed, '');
      else runOursFromCache(d, cache, sandboxed);
    }
    for (let i = 0; i < runs; i++) {
      const order = [...all.slice(i % 3), ...all.slice(0, i % 3)];
      const got: Partial<Record<Who, number>> = {};
      for (const who of order) {
        resetDag(d);
        if (who === 'nix') got.nix = runNix(d);
        else if (who === 'store') got.store = runCli(d.uri, d.drvs, sandboxed, '');
        else got.cache = runOursFromCache(d, cache, sandboxed);
        times[who].push(got[who]!);
      }
      ratios.store.push(got.store! / got.nix!);
      ratios.cache.push(got.cache! / got.nix!);
      console.log(
        `round ${i + 1} (${order.join(', ')}): nix ${fmt(got.nix!, 0)} ms; realise, drv in store ${fmt(got.store!, 0)} ms (${fmt(ratios.store.at(-1)!, 3)}); drv in cache ${fmt(got.cache!, 0)} ms (${fmt(ratios.cache.at(-1)!, 3)})`,
      );
    }
  } finally {
    rmSync(d.dir, { recursive: true, force: true });
  }
  const line = (what: string, xs: number[]) => `${what}: median ${fmt(median(xs), 0)} ms (min ${fmt(Math.min(...xs), 0)}, max ${fmt(Math.max(...xs), 0)})`;
  const ratio = (xs: number[]) => `median of pairs ${fmt(median(xs), 3)} (min ${fmt(Math.min(...xs), 3)}, max ${fmt(Math.max(...xs), 3)})`;
  const target = sandboxed ? 0.3 : 0.5;
  console.log(line('nix-store --realise       ', times.nix));
  console.log(line('realise build, drv in store', times.store));
  console.log(line('realise build, drv in cache', times.cache));
  console.log(`ratio realise/nix, drv in store: ${ratio(ratios.store)}; target <= ${target}`);
  console.log(`ratio realise/nix, drv in cache: ${ratio(ratios.cache)}; target <= ${target}`);
  for (const who of ['store', 'cache'] as const) {
    const rs = ratios[who];
    emitRow({
      area: 'The CLI: `realise build` of a fresh DAG',
      measure: `${n} derivations, ${sandboxed ? 'sandboxed, chroot store' : 'unsandboxed, plain store'}, ${who === 'store' ? '`.drv` in the store' : `\`.drv\`${sandboxed ? ' (and busybox)' : ''} from the \`file://\` cache into an empty store`}`,
      unit: 's',
      realise: median(times[who]) / 1000,
      nix: median(times.nix) / 1000,
      ratio: median(rs),
      ratioMin: Math.min(...rs),
      ratioMax: Math.max(...rs),
      target: `≤ ${target}`,
      met: atMost(median(rs), target),
    });
  }
}

export async function main(): Promise<void> {
  const sizes = process.env.REALISE_BENCH_SIZES ? process.env.REALISE_BENCH_SIZES.split(',').map(Number) : [SMALL ? 50 : 200];
  const modes = (process.env.REALISE_BENCH_CLI_MODES ?? 'unsandboxed,sandboxed').split(',');
  const runs = Number(process.env.REALISE_BENCH_RUNS ?? 3);
  const b = spawnSync(process.execPath, [path.join(root, 'scripts/bundle-cli.mjs')], { stdio: 'inherit' });
  if (b.status !== 0) throw new Error('bundling the CLI failed');
  console.log(`# cli-dag: whole-process 'realise build' of a fresh layered DAG (maxJobs 2) vs 'nix-store --realise' (Nix 2.8), same run`);
  for (const n of sizes) for (const m of modes) await measure(n, m === 'sandboxed', runs);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
