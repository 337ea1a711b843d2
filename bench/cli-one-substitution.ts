/**
 * Benchmark: `realise build` of one path from an HTTP binary cache into a fresh chroot store, as a whole
 * process, with the cache's `nix-cache-info` and narinfo not yet known ("cold": the narinfo disk cache
 * deleted first) and remembered from an earlier run ("warm": as a user's second run), side by
 * side with `nix-store --realise` of Nix 2.8 in the same two states (its disk cache is in
 * `$XDG_CACHE_HOME/nix`, ours in `$XDG_CACHE_HOME/realise`). The cache (xz, Nix's default) is written by
 * `nix copy`; the server on 127.0.0.1 answers each request after `REALISE_BENCH_LATENCY_MS` (default 0),
 * as a distant cache would. Every command runs in a fresh store; the order rotates every round.
 *
 *   npx tsx bench/cli-one-substitution.ts            # bundles the CLI first (scripts/bundle-cli.mjs)
 *   REALISE_BENCH_LATENCY_MS=50 REALISE_BENCH_RUNS=10 npx tsx bench/cli-one-substitution.ts
 */
import { spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { emitRow } from './_report.js';
import { fmt, median, nixEnv } from './dag.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'bin/realise');
const RUNS = Number(process.env.REALISE_BENCH_RUNS ?? 10);
const LATENCY = Number(process.env.REALISE_BENCH_LATENCY_MS ?? 0);

const readdirSafe = (d: string): string[] => (existsSync(d) ? readdirSync(d) : []);

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let [stdout, stderr] = ['', ''];
    c.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    c.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

async function must(cmd: string, args: string[], env: NodeJS.ProcessEnv = nixEnv()): Promise<string> {
  const r = await run(cmd, args, env);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stderr}`);
  return r.stdout.trim();
}

async function main(): Promise<void> {
  // The bundle of the current sources, as bench/cli-startup.ts and bench/cli-dag.ts make it first: with a
  // stale bundle, bin/realise runs the sources through tsx, seconds per command.
  const bundled = await run(process.execPath, [path.join(root, 'scripts/bundle-cli.mjs')], process.env);
  if (bundled.status !== 0) throw new Error(`scripts/bundle-cli.mjs failed:\n${bundled.stderr}`);
  const dir = mkdtempSync(path.join(tmpdir(), 'realise-bench-subst1-'));
  const file = path.join(dir, 'e.nix');
  writeFileSync(file, `derivation { name = "bench-one"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo one > $out" ]; }`);
  const src = path.join(dir, 'src');
  const drv = await must('nix-instantiate', ['--store', src, file]);
  const out = await must('nix-store', ['--store', src, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', '--realise', drv]);
  const cache = path.join(dir, 'cache');
  await must('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--store', src, '--to', `file://${cache}`, out]);
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    const rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '');
    const f = path.join(cache, rel);
    setTimeout(() => {
      if (!f.startsWith(cache + path.sep) || !existsSync(f)) res.writeHead(404).end();
      else createReadStream(f).pipe(res);
    }, LATENCY);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const opts = ['--option', 'substituters', url, '--option', 'require-sigs', 'false'];
  // One $XDG_CACHE_HOME for every run (it also holds our compiled native helpers): a cold run first
  // deletes the narinfo disk cache there (Nix's `nix/binary-cache-v6.sqlite`, our `realise/…`).
  const xdg = path.join(dir, 'xdg');
  let n = 0;
  /** One run in a fresh store: its wall time (ms) and the requests it made. */
  const once = async (ours: boolean, warm: boolean): Promise<[number, number]> => {
    const store = path.join(dir, `s${++n}`);
    if (!warm)
      for (const f of readdirSafe(path.join(xdg, ours ? 'realise' : 'nix')))
        if (f.startsWith('binary-cache-v6.sqlite')) rmSync(path.join(xdg, ours ? 'realise' : 'nix', f));
    const env = { ...nixEnv(), XDG_CACHE_HOME: xdg };
    const [cmd, args] = ours ? [cli, ['build', '--store', store, out, ...opts]] : ['nix-store', ['--store', store, '--realise', out, ...opts]];
    const before = requests;
    const t0 = performance.now();
    const r = await run(cmd, args, env);
    const ms = performance.now() - t0;
    if (r.status !== 0 || r.stdout.trim() !== out) throw new Error(`${cmd} failed (${r.status}):\n${r.stderr}`);
    rmSync(store, { recursive: true, force: true });
    return [ms, requests - before];
  };
  // The warm state: one run of each first.
  await once(true, true);
  await once(false, true);
  const kinds = [
    ['nix cold', false, false],
    ['nix warm', false, true],
    ['ours cold', true, false],
    ['ours warm', true, true],
  ] as const;
  const times = new Map<string, number[]>(kinds.map(([k]) => [k, []]));
  const reqs = new Map<string, number>();
  for (let i = 0; i < RUNS; i++) {
    for (let j = 0; j < kinds.length; j++) {
      const [k, ours, warm] = kinds[(i + j) % kinds.length]!;
      const [ms, made] = await once(ours, warm);
      times.get(k)!.push(ms);
      reqs.set(k, made);
    }
  }
  server.close();
  console.log(`one-path substitution over HTTP, ${RUNS} runs each, server latency ${LATENCY} ms per request (median wall ms, requests per run):`);
  for (const [k] of kinds) console.log(`  ${k.padEnd(10)} ${fmt(median(times.get(k)!)).padStart(8)} ms  ${reqs.get(k)} requests`);
  const reqText = (k: number) => `${k} request${k === 1 ? '' : 's'}`;
  for (const state of ['cold', 'warm'] as const) {
    const [ours, nix] = [times.get(`ours ${state}`)!, times.get(`nix ${state}`)!];
    const rs = ours.map((x, i) => x / nix[i]!);
    emitRow({
      area: 'One path from an HTTP cache, through the CLI',
      measure: `latency ${LATENCY} ms per request, ${state}`,
      unit: 'ms',
      realise: median(ours),
      realiseNote: reqText(reqs.get(`ours ${state}`)!),
      nix: median(nix),
      nixNote: reqText(reqs.get(`nix ${state}`)!),
      ratio: median(rs),
      ratioMin: Math.min(...rs),
      ratioMax: Math.max(...rs),
    });
  }
  rmSync(dir, { recursive: true, force: true });
}

await main();
