/**
 * Benchmark: CLI start-up and the no-op build, whole processes, beside Nix 2.8 in the same run.
 *   - `realise --version` against `nix-store --version`, with `node -e 0` (Node's own start) as the floor;
 *   - a no-op `realise build` of bench/dag.ts's 200-node DAG (10 layers × 20, instantiated by real
 *     `nix-instantiate` into a plain store and built once by `nix-store --realise`, so every output is
 *     valid) against `nix-store --realise` of the same 200 `.drv` files on the same store.
 * Each round runs every command once, in an order that rotates every round (so no command always follows
 * the same one); figures are medians over the rounds, with min–max of the per-round ratios.
 *
 *   npx tsx bench/cli-startup.ts                              # 21 rounds
 *   REALISE_BENCH_RUNS=41 npx tsx bench/cli-startup.ts
 *   REALISE_BENCH_SMALL=1 npx tsx bench/cli-startup.ts        # 7 rounds
 *
 * `realise` is `node bin/realise.js`, after `node scripts/bundle-cli.mjs` (the bundle of the current
 * sources, as an installed `realise` runs it). Targets: `--version` ≤ 70 ms, the no-op ≤ 80 ms (issue #20).
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { fmt, instantiateDag, median, nixEnv, SMALL } from './dag.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'bin/realise.js');

interface Command {
  readonly label: string;
  readonly file: string;
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
}

/** Wall milliseconds of one run; throws when the command fails or prints something unexpected. */
function timed(c: Command, check: (stdout: string) => boolean): number {
  const t0 = performance.now();
  const r = spawnSync(c.file, c.args, { env: c.env, encoding: 'utf8', maxBuffer: 1 << 26 });
  const ms = performance.now() - t0;
  if (r.status !== 0 || !check(r.stdout)) throw new Error(`${c.label} failed (${r.status}):\n${r.stderr.slice(-1000)}`);
  return ms;
}

function main(): void {
  const rounds = Number(process.env.REALISE_BENCH_RUNS ?? (SMALL ? 7 : 21));
  const bundled = spawnSync(process.execPath, [path.join(root, 'scripts/bundle-cli.mjs')], { stdio: 'inherit' });
  if (bundled.status !== 0) throw new Error('scripts/bundle-cli.mjs failed');
  const d = instantiateDag(200, 'realise-bench-cli-startup-');
  const nixStore = (args: string[]): Command => ({ label: `nix-store ${args[0]}`, file: 'nix-store', args, env: nixEnv() });
  const build = ['--store', d.uri, '--realise', ...d.drvs, '--option', 'sandbox', 'false', '--max-jobs', '2'];
  const first = spawnSync('nix-store', build, { env: nixEnv(), encoding: 'utf8', maxBuffer: 1 << 26 });
  if (first.status !== 0) throw new Error(`nix-store --realise failed (${first.status}):\n${first.stderr.slice(-2000)}`);
  const realise = (args: string[]): Command => ({ label: `realise ${args[0]}`, file: process.execPath, args: [cli, ...args], env: process.env });
  const commands: [string, Command, (out: string) => boolean][] = [
    ['node -e 0', { label: 'node -e 0', file: process.execPath, args: ['-e', '0'], env: process.env }, () => true],
    ['realise --version', realise(['--version']), (o) => o.startsWith('realise ')],
    ['nix-store --version', nixStore(['--version']), (o) => o.startsWith('nix-store ')],
    [
      'realise build (no-op, 200)',
      realise(['build', '--store', d.uri, '--option', 'substituters', '', '--option', 'sandbox', 'false', ...d.drvs]),
      (o) => o.split('\n').filter(Boolean).length === 200,
    ],
    ['nix-store --realise (no-op, 200)', nixStore(build), (o) => o.split('\n').filter(Boolean).length === 200],
  ];
  const times = new Map<string, number[]>(commands.map(([l]) => [l, []]));
  const loads: number[] = [];
  // One warm-up round (page cache, the bundle's first compile), not counted.
  for (const [, c, check] of commands) timed(c, check);
  for (let i = 0; i < rounds; i++) {
    loads.push(loadavg()[0]!);
    for (let k = 0; k < commands.length; k++) {
      const [label, c, check] = commands[(i + k) % commands.length]!;
      times.get(label)!.push(timed(c, check));
    }
  }
  const med = (l: string) => median(times.get(l)!);
  const ratios = (a: string, b: string) => times.get(a)!.map((x, i) => x / times.get(b)![i]!);
  const spread = (xs: number[]) => `${fmt(Math.min(...xs), 2)}–${fmt(Math.max(...xs), 2)}`;
  console.log(`# CLI start-up: whole processes, ${rounds} rounds, medians (load avg ${fmt(Math.min(...loads))}–${fmt(Math.max(...loads))})`);
  for (const [label] of commands) console.log(`${label.padEnd(34)} ${fmt(med(label))} ms (min ${fmt(Math.min(...times.get(label)!))})`);
  const row = (what: string, a: string, b: string) => {
    const r = ratios(a, b);
    console.log(`${what.padEnd(34)} ${fmt(median(r), 2)} (${spread(r)})`);
  };
  row('ratio --version / node -e 0', 'realise --version', 'node -e 0');
  row('ratio --version / nix-store', 'realise --version', 'nix-store --version');
  row('ratio no-op / nix-store', 'realise build (no-op, 200)', 'nix-store --realise (no-op, 200)');
  row('ratio no-op / node -e 0', 'realise build (no-op, 200)', 'node -e 0');
  console.log(`targets: --version ≤ 70 ms (median ${fmt(med('realise --version'))}), no-op ≤ 80 ms (median ${fmt(med('realise build (no-op, 200)'))})`);
  spawnSync('rm', ['-rf', d.dir]);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
