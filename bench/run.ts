/**
 * `npm run bench`: run every benchmark in bench/, each in its own child process, one after the other
 * (they measure wall time: never in parallel). A benchmark that fails is reported and the others still run.
 *
 *   npm run bench                      # full sizes
 *   npm run bench -- --small           # small sizes: REALISE_BENCH_SMALL=1 for every benchmark, and the
 *                                      # size variables other benchmarks document (NARHASH_MB, ...) set small
 *   npm run bench -- --only dag,noop   # a subset, by file name without .ts
 *   npm run bench -- --markdown FILE   # also write the tables to FILE
 *
 * Known benchmarks run first in this order; any other bench/*.ts (not starting with '.' or '_', and not
 * this file) runs after them. Each benchmark prints its results as `BENCH-ROW {json}` lines
 * (bench/_report.ts); they are collected (not echoed) and, at the end, printed as the Markdown tables of
 * docs/performance.md under a line describing the machine. Exit status: 0 when every benchmark exited 0,
 * else 1.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { currentLoad, machineLine, markdownReport, runBenchmark, type CollectedRow } from './_report.js';

const KNOWN = [
  'dag',
  'dag-sandboxed',
  'cli-dag',
  'noop',
  'cli-startup',
  'scheduler-overhead',
  'nar-hash',
  'refscan',
  'query-valid-paths',
  'gc',
  'substitute',
  'sandbox',
  'process-floor',
  'remote',
  'fetchurl',
  'observe',
];

/** `--small`: REALISE_BENCH_SMALL=1 for all, plus the documented size variables of individual benchmarks. */
const SMALL_KNOBS: Record<string, string> = {
  NARHASH_MB: '64',
  NARHASH_RUNS: '3',
  REFSCAN_MB: '16',
  REFSCAN_RUNS: '3',
  BENCH_SANDBOX_BUILDS: '20',
  BENCH_FLOOR_N: '100',
  REMOTE_BENCH_N: '5',
  REMOTE_BENCH_DAG: '50',
  GC_BENCH_PATHS: '2000',
  OPT_BENCH_FILES: '1000',
  GC_BENCH_RUNS: '1',
  REALISE_BENCH_SUBST_PATHS: '50',
  REALISE_BENCH_SUBST_MB: '50',
  REALISE_BENCH_SUBST_RUNS: '1',
};

function usage(): never {
  console.error('usage: tsx bench/run.ts [--small] [--only NAME[,NAME...]] [--markdown FILE]');
  process.exit(2);
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let small = process.env.REALISE_BENCH_SMALL === '1';
  let only: Set<string> | undefined;
  let markdown: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--small') small = true;
    else if (a === '--only') only = new Set((args[++i] ?? usage()).split(',').filter(Boolean));
    else if (a.startsWith('--only=')) only = new Set(a.slice(7).split(',').filter(Boolean));
    else if (a === '--markdown') markdown = args[++i] ?? usage();
    else if (a.startsWith('--markdown=')) markdown = a.slice(11);
    else if (a === '--help' || a === '-h') usage();
    else usage();
  }
  const dir = path.dirname(fileURLToPath(import.meta.url));
  const self = path.basename(fileURLToPath(import.meta.url), '.ts');
  const others = readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.startsWith('.') && !f.startsWith('_'))
    .map((f) => f.slice(0, -3))
    .filter((n) => n !== self && !KNOWN.includes(n))
    .sort();
  const names = [...KNOWN.filter((n) => existsSync(path.join(dir, `${n}.ts`))), ...others].filter((n) => !only || only.has(n));
  if (only) for (const n of only) if (!names.includes(n)) console.error(`bench: no benchmark named '${n}' in ${dir}`);

  const env: NodeJS.ProcessEnv = { ...process.env };
  if (small) {
    env.REALISE_BENCH_SMALL = '1';
    // The size knobs the other benchmarks document, set small unless the caller chose a value.
    for (const [k, v] of Object.entries(SMALL_KNOBS)) env[k] ??= v;
  }
  const summary: { name: string; status: string; seconds: number }[] = [];
  const rows: CollectedRow[] = [];
  const loadStart = currentLoad();
  console.log(`# realise benchmarks (${small ? 'small sizes' : 'full sizes'}): ${names.join(', ')}`);
  console.log(`# node ${process.version}, ${new Date().toISOString()}\n`);
  for (const name of names) {
    console.log(`\n======== ${name} ========`);
    const t0 = performance.now();
    const r = await runBenchmark(path.join(dir, `${name}.ts`), env);
    const seconds = (performance.now() - t0) / 1000;
    if (r.status !== 'ok') console.log(`bench ${name}: ${r.status}; continuing with the next one`);
    summary.push({ name, status: r.status, seconds });
    rows.push(...r.rows);
  }
  console.log('\n======== summary ========');
  for (const s of summary) console.log(`${s.name.padEnd(20)} ${s.status.padEnd(22)} ${s.seconds.toFixed(1)} s`);
  const report = markdownReport(rows, machineLine({ start: loadStart, end: currentLoad() }));
  console.log(`\n======== tables (docs/performance.md) ========\n\n${report}`);
  if (markdown) writeFileSync(markdown, report);
  return summary.every((s) => s.status === 'ok') ? 0 : 1;
}

main().then(
  (code) => (process.exitCode = code),
  (e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  },
);
