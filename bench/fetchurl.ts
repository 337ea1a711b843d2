/**
 * builtin:fetchurl: N files of M MB from a loopback HTTP server, fetched through `import <nix/fetchurl.nix>`
 * derivations by realise's engine and by `nix-store --realise` (Nix 2.8), in the same run.
 *
 *   npx tsx bench/fetchurl.ts
 *
 * Environment:
 *   REALISE_BENCH_FETCH_FILES  number of files                       (default 200; 20 with REALISE_BENCH_SMALL=1)
 *   REALISE_BENCH_FETCH_MB     size of each file in MB               (default 1)
 *   REALISE_BENCH_FETCH_JOBS   parallel builds, both sides (max-jobs) (default 16)
 *
 * The server is a separate Node process (node:http, files streamed from disk, keep-alive), so neither
 * contender shares its event loop with it. The derivations are instantiated by nix-instantiate into two
 * fresh chroot stores (same .drv paths); Nix builds sandboxed there (a chroot store always is, and so
 * Nix runs each built-in in its own sandboxed child), realise runs the built-ins in the engine. Each side
 * fetches everything once, from a cold store; the time is the whole realise call / nix-store process.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { LocalStore } from '../src/store/local-store.js';
import { atMost, emitRow } from './_report.js';

const SMALL = process.env.REALISE_BENCH_SMALL === '1';
const FILES = Number(process.env.REALISE_BENCH_FETCH_FILES ?? (SMALL ? 20 : 200));
const MB = Number(process.env.REALISE_BENCH_FETCH_MB ?? 1);
const JOBS = Number(process.env.REALISE_BENCH_FETCH_JOBS ?? 16);

const env = {
  ...process.env,
  NIX_REMOTE: '',
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n',
  NIX_USER_CONF_FILES: '/dev/null',
};

/** Deterministic pseudo-random bytes (xorshift32): incompressible, different per file. */
function bytes(seed: number, n: number): Buffer {
  let x = seed >>> 0 || 1;
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}

const SERVER = `
const http = require('node:http'), fs = require('node:fs'), path = require('node:path');
const dir = process.argv[1];
const server = http.createServer((req, res) => {
  const file = path.join(dir, path.basename(new URL(req.url, 'http://x').pathname));
  fs.stat(file, (err, st) => {
    if (err) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': st.size });
    fs.createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res);
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\\n'));
`;

async function startServer(dir: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', SERVER, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim()));
    child.once('exit', (c) => reject(new Error(`server exited (${c})`)));
  });
  return { url: `http://127.0.0.1:${port}`, child };
}

function runNix(args: string[]): Promise<{ status: number; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('nix-store', args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    c.on('close', (code) => resolve({ status: code ?? -1, stderr }));
  });
}

async function main(): Promise<void> {
  const work = mkdtempSync(path.join(tmpdir(), 'realise-bench-fetchurl-'));
  const srv = path.join(work, 'srv');
  mkdirSync(srv);
  const attrs: string[] = [];
  for (let i = 0; i < FILES; i++) {
    const data = bytes(i + 1, MB * 1024 * 1024);
    writeFileSync(path.join(srv, `f${i}`), data);
    attrs.push(`f${i} = fetchurl { url = "URL/f${i}"; sha256 = "${createHash('sha256').update(data).digest('hex')}"; };`);
  }
  const { url, child } = await startServer(srv);
  try {
    const expr = path.join(work, 'e.nix');
    writeFileSync(expr, `let fetchurl = import <nix/fetchurl.nix>; in { ${attrs.join('\n').replaceAll('URL', url)} }`);
    const instantiate = (store: string) =>
      execFileSync('nix-instantiate', ['--store', store, expr], { env, encoding: 'utf8', maxBuffer: 1 << 26 })
        .trim()
        .split('\n');
    const N = path.join(work, 'N');
    const O = path.join(work, 'O');
    const drvs = instantiate(N);
    if (instantiate(O).join() !== drvs.join()) throw new Error('the twin stores got different derivations');
    console.log(`fetching ${FILES} × ${MB} MB from ${url} (loopback), max-jobs ${JOBS}, cold chroot stores`);

    const t0 = performance.now();
    const r = await runNix(['--store', N, '--realise', ...drvs, '-j', String(JOBS), '--option', 'sandbox', 'true']);
    const nixSeconds = (performance.now() - t0) / 1000;
    if (r.status !== 0) throw new Error(`nix-store failed (${r.status}): ${r.stderr.slice(-2000)}`);

    const store = await LocalStore.open({ root: O });
    const engine = new BuildEngine({ store, maxJobs: JOBS, sandbox: true });
    const t1 = performance.now();
    await engine.buildPaths(drvs);
    const ourSeconds = (performance.now() - t1) / 1000;
    await engine.close();
    await store.close();

    const mbps = (s: number) => ((FILES * MB) / s).toFixed(0);
    console.log(`  Nix 2.8 (nix-store --realise): ${nixSeconds.toFixed(2)} s  (${mbps(nixSeconds)} MB/s)`);
    console.log(`  realise (BuildEngine):         ${ourSeconds.toFixed(2)} s  (${mbps(ourSeconds)} MB/s)`);
    console.log(`  ratio realise / Nix: ${(ourSeconds / nixSeconds).toFixed(2)} (≤ 1 is the goal)`);
    emitRow({
      area: 'Built-in fetchurl',
      measure: `${FILES} × ${MB} MB, max-jobs ${JOBS}`,
      unit: 's',
      realise: ourSeconds,
      realiseNote: `${mbps(ourSeconds)} MB/s`,
      nix: nixSeconds,
      nixNote: `${mbps(nixSeconds)} MB/s`,
      ratio: ourSeconds / nixSeconds,
      target: '≤ 1',
      met: atMost(ourSeconds / nixSeconds, 1),
    });
  } finally {
    child.kill();
    execFileSync('chmod', ['-R', 'u+w', work]);
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
