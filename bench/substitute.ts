/**
 * Substitution from a file:// binary cache: realise vs `nix copy --from file://...`, same closure, same run.
 *
 *   npx tsx bench/substitute.ts [--prepare]   (--prepare: only generate the fixture and caches)
 *
 * Environment:
 *   REALISE_BENCH_SUBST_PATHS  number of paths in the closure            (default 500)
 *   REALISE_BENCH_SUBST_MB     total NAR size in MB                        (default 500)
 *   REALISE_BENCH_SUBST_RUNS   timed runs per contender                    (default 3)
 *   REALISE_BENCH_SUBST_JOBS   parallel substitutions (maxSubstitutionJobs) (default 16, Nix's default)
 *   REALISE_BENCH_SUBST_COMPRESSIONS  e.g. "xz,zstd"                      (default xz,zstd)
 *
 * The closure is `top` referencing N-1 source paths with NAR-like data (a quarter incompressible, the rest
 * text and repetitive binary-ish bytes). Real Nix writes an uncompressed signed cache (`nix copy --to
 * file://DIR?compression=none&secret-key=...`); the xz/zstd caches are derived from it with the `xz -6` /
 * `zstd -3` CLIs (see prepare()). Everything is kept under $TMPDIR for later runs.
 * Decompression alone is compared with `xz -dc` / `zstd -dc` over the same NAR files.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { LocalStore } from '../src/store/local-store.js';
import type { StorePath } from '../src/store/store-path.js';
import { BinaryCacheSubstituter } from '../src/substituter/binary-cache.js';
import { recycleDecoded } from '../src/substituter/compression.js';
import { substitutePath, type SubstitutablePathInfo } from '../src/substituter/substituter.js';
import { atMost, emitRow, num } from './_report.js';

const N = Number(process.env.REALISE_BENCH_SUBST_PATHS ?? 500);
const MB = Number(process.env.REALISE_BENCH_SUBST_MB ?? 500);
const RUNS = Number(process.env.REALISE_BENCH_SUBST_RUNS ?? 3);
const JOBS = Number(process.env.REALISE_BENCH_SUBST_JOBS ?? 16);
const COMPRESSIONS = (process.env.REALISE_BENCH_SUBST_COMPRESSIONS ?? 'xz,zstd').split(',').filter(Boolean);

const env = {
  ...process.env,
  NIX_REMOTE: '',
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n',
  NIX_USER_CONF_FILES: '/dev/null',
};
const run = (cmd: string, args: string[], input?: string) =>
  execFileSync(cmd, args, { env, encoding: 'utf8', maxBuffer: 1 << 28, ...(input !== undefined ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] }).trim();

const WORK = path.join(tmpdir(), `realise-bench-subst-${N}-${MB}`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmt = (s: number) => `${s.toFixed(2)} s`;

/** Deterministic pseudo-random bytes (xorshift32). */
function prng(seed: number): (n: number) => Buffer {
  let x = seed >>> 0 || 1;
  return (n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b.writeUInt32LE(x, i < n - 3 ? i : n - 4);
    }
    return b;
  };
}

function makeSources(dir: string): void {
  const perPath = Math.floor((MB * 1e6) / (N - 1));
  const words = 'the quick brown fox jumps over lazy dog lib share include bin usr nix store glibc gcc hello world static const int return void struct'.split(
    ' ',
  );
  for (let i = 0; i < N - 1; i++) {
    const rnd = prng(i + 1);
    const d = path.join(dir, `p${String(i).padStart(4, '0')}`);
    mkdirSync(path.join(d, 'lib'), { recursive: true });
    mkdirSync(path.join(d, 'share'), { recursive: true });
    // a quarter incompressible ("compressed assets"), the rest text and structured binary
    writeFileSync(path.join(d, 'lib', 'blob.bin'), rnd(Math.floor(perPath / 4)));
    const r = rnd(Math.floor(perPath / 2));
    for (let k = 0; k < r.length; k++) r[k] = r[k]! & 0x0f ? r[k]! & 0x3f : 0; // low entropy binary
    writeFileSync(path.join(d, 'lib', 'libx.so'), r);
    let text = '';
    const tr = rnd(4096);
    let j = 0;
    while (text.length < perPath / 4) text += words[tr[j++ % tr.length]! % words.length] + ((j & 15) === 0 ? '\n' : ' ');
    writeFileSync(path.join(d, 'share', 'doc.txt'), text);
  }
}

interface Fixture {
  top: StorePath;
  pub: string;
  caches: Record<string, string>;
}

function prepare(): Fixture {
  const marker = path.join(WORK, 'fixture.json');
  const fx: Fixture = existsSync(marker) ? JSON.parse(readFileSync(marker, 'utf8')) : { top: '', pub: '', caches: {} };
  const root = path.join(WORK, 'src-root');
  if (!fx.top) {
    rmSync(WORK, { recursive: true, force: true });
    mkdirSync(WORK, { recursive: true });
    console.error(`generating ${N} paths, ${MB} MB ...`);
    const srcDir = path.join(WORK, 'src');
    makeSources(srcDir);
    const dirs = readdirSync(srcDir)
      .sort()
      .map((d) => path.join(srcDir, d));
    const added: string[] = [];
    for (let i = 0; i < dirs.length; i += 100) added.push(...run('nix-store', ['--store', root, '--add', ...dirs.slice(i, i + 100)]).split('\n'));
    const refs = path.join(WORK, 'refs.txt');
    writeFileSync(refs, added.join('\n') + '\n');
    // top: a text file referencing every source path (builtins.toFile with string context).
    const expr = `let paths = builtins.filter (x: x != "") (builtins.split "\\n" (builtins.readFile ${refs})); in
      builtins.toFile "top" (builtins.concatStringsSep "\\n" (map (p: builtins.storePath p) (builtins.filter builtins.isString paths)))`;
    fx.top = run('nix-instantiate', ['--store', root, '--eval', '--read-write-mode', '--expr', expr]).replace(/^"|"$/g, '');
    rmSync(srcDir, { recursive: true, force: true });
    run('nix-store', ['--generate-binary-cache-key', 'bench-1', path.join(WORK, 'key.sec'), path.join(WORK, 'key.pub')]);
    fx.pub = readFileSync(path.join(WORK, 'key.pub'), 'utf8').trim();
    writeFileSync(marker, JSON.stringify(fx));
  }
  // Nix writes an uncompressed cache once (fast); each compressed cache is derived from it by compressing
  // every NAR with the CLI tool (`xz -6`, `zstd -3`: Nix's default levels), two files at a time, and
  // rewriting URL/Compression/FileHash/FileSize in the narinfos. Signatures cover only the store path,
  // NAR hash, NAR size and references, so Nix's signatures stay valid. (Writing the 500 MB xz cache with
  // `nix copy --to ...?compression=xz` took ~25 min on the shared machine.)
  const noneDir = path.join(WORK, 'cache-none');
  if (COMPRESSIONS.some((c) => !fx.caches[c]) && !existsSync(path.join(noneDir, '.complete'))) {
    rmSync(noneDir, { recursive: true, force: true });
    console.error(`nix copy --to file://${noneDir}?compression=none ...`);
    const t0 = performance.now();
    run('nix', ['copy', '--store', root, '--to', `file://${noneDir}?compression=none&secret-key=${path.join(WORK, 'key.sec')}`, fx.top]);
    writeFileSync(path.join(noneDir, '.complete'), '');
    console.error(`  took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  for (const c of COMPRESSIONS) {
    if (fx.caches[c]) continue;
    const dir = path.join(WORK, `cache-${c}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(path.join(dir, 'nar'), { recursive: true });
    console.error(`compressing the NARs with ${c} CLI into ${dir} ...`);
    const t0 = performance.now();
    const tool = c === 'xz' ? 'xz -6 -T1 -c' : c === 'zstd' ? 'zstd -3 -q -c' : undefined;
    if (!tool) throw new Error(`no CLI to write a ${c} cache`);
    const ext = c === 'xz' ? '.xz' : '.zst';
    execFileSync('sh', ['-c', `cd "$1/nar" && ls | xargs -P2 -I{} sh -c '${tool} "$0" > "$1/nar/$0${ext}"' {} "$2"`, 'sh', noneDir, dir], { stdio: 'inherit' });
    writeFileSync(path.join(dir, 'nix-cache-info'), readFileSync(path.join(noneDir, 'nix-cache-info')));
    const infos = readdirSync(noneDir).filter((f) => f.endsWith('.narinfo'));
    const files = infos.map((f) => /^URL: nar\/(.*)$/m.exec(readFileSync(path.join(noneDir, f), 'utf8'))![1]! + ext);
    const hashes = run('nix', ['hash', 'file', '--type', 'sha256', '--base32', ...files.map((f) => path.join(dir, 'nar', f))]).split('\n');
    infos.forEach((f, i) => {
      const text = readFileSync(path.join(noneDir, f), 'utf8');
      const file = path.join(dir, 'nar', files[i]!);
      const url = `nar/${hashes[i]}.nar${ext}`;
      renameSync(file, path.join(dir, url));
      writeFileSync(
        path.join(dir, f),
        text
          .replace(/^URL: .*$/m, `URL: ${url}`)
          .replace(/^Compression: .*$/m, `Compression: ${c}`)
          .replace(/^FileHash: .*$/m, `FileHash: sha256:${hashes[i]}`)
          .replace(/^FileSize: .*$/m, `FileSize: ${statSync(path.join(dir, url)).size}`),
      );
    });
    console.error(`  took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    fx.caches[c] = dir;
    writeFileSync(marker, JSON.stringify(fx));
  }
  return fx;
}

interface Timing {
  wall: number;
  cpu: number;
}

async function ours(fx: Fixture, cache: string): Promise<Timing> {
  const root = path.join(WORK, 'ours-root');
  rmSync(root, { recursive: true, force: true });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const store = await LocalStore.open({ root });
  const sub = new BinaryCacheSubstituter(pathToFileURL(cache).href, { trustedPublicKeys: [fx.pub] });
  const top = (await sub.queryPathInfos([fx.top])).get(fx.top)!;
  const refs = top.references.filter((r) => r !== fx.top);
  const infos = await sub.queryPathInfos(refs);
  // What the engine does: a bounded pool of substitutions, references before referrers.
  const queue: SubstitutablePathInfo[] = [...infos.values()];
  await Promise.all(
    Array.from({ length: JOBS }, async () => {
      for (let i = queue.pop(); i; i = queue.pop()) await substitutePath(store, sub, i);
    }),
  );
  await substitutePath(store, sub, top);
  await sub.close();
  await store.close();
  const cpu = process.cpuUsage(cpu0);
  return { wall: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6 };
}

function nixCopy(fx: Fixture, cache: string): Timing {
  const root = path.join(WORK, 'nix-root');
  rmSync(root, { recursive: true, force: true });
  const t0 = performance.now();
  // /usr/bin/time reports the CPU time of nix (all its threads) on the last line of stderr.
  const r = spawnSync(
    '/usr/bin/time',
    ['-f', 'CPU %U %S', 'nix', 'copy', '--store', root, '--from', `file://${cache}`, '--option', 'trusted-public-keys', fx.pub, fx.top],
    { env, encoding: 'utf8', maxBuffer: 1 << 28 },
  );
  const wall = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`nix copy failed:\n${r.stderr}`);
  const m = /CPU ([0-9.]+) ([0-9.]+)\s*$/.exec(r.stderr);
  return { wall, cpu: m ? Number(m[1]) + Number(m[2]) : NaN };
}

function verify(fx: Fixture): void {
  const root = path.join(WORK, 'ours-root');
  const r = spawnSync('nix-store', ['--store', root, '--verify', '--check-contents'], { env, encoding: 'utf8' });
  if (r.status !== 0 || /error|modified/.test(r.stderr)) throw new Error(`nix-store --verify rejected our store:\n${r.stderr}`);
  const n = run('nix-store', ['--store', root, '-qR', fx.top]).split('\n').length;
  if (n !== N) throw new Error(`expected ${N} valid paths, nix sees ${n}`);
}

/**
 * Our decoding path alone, sequentially over all NARs: BinaryCacheSubstituter.fetchNar (read + decompress,
 * no hashing, no restoring), decoded buffers handed back as substitution into a LocalStore does.
 */
async function decompressOurs(fx: Fixture, cache: string): Promise<Timing> {
  const sub = new BinaryCacheSubstituter(pathToFileURL(cache).href, { trustedPublicKeys: [fx.pub] });
  const top = (await sub.queryPathInfos([fx.top])).get(fx.top)!;
  const infos = [...(await sub.queryPathInfos(top.references)).values()];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (const info of infos) {
    const chunks: Uint8Array[] = [];
    for await (const chunk of sub.fetchNar(info)) chunks.push(chunk);
    recycleDecoded(chunks);
  }
  const cpu = process.cpuUsage(cpu0);
  await sub.close();
  return { wall: (performance.now() - t0) / 1000, cpu: (cpu.user + cpu.system) / 1e6 };
}

/** One `xz -dc f1 f2 ...` (or zstd) process over all files, so process start-up does not count. */
function decompressTool(files: string[], c: string): Timing {
  const tool = c === 'xz' ? 'xz' : 'zstd';
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', 'CPU %U %S', 'sh', '-c', `${tool} -dcq "$@" > /dev/null`, 'sh', ...files], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${tool} -dc failed: ${r.stderr}`);
  const m = /CPU ([0-9.]+) ([0-9.]+)\s*$/.exec(r.stderr);
  return { wall: (performance.now() - t0) / 1000, cpu: m ? Number(m[1]) + Number(m[2]) : NaN };
}

async function main(): Promise<void> {
  const fx = prepare();
  if (process.argv.includes('--prepare')) return; // only generate the caches
  const lines: string[] = [];
  const say = (s: string) => {
    console.log(s);
    lines.push(s);
  };
  say(
    `closure: ${N} paths, ${MB} MB of NARs; ${RUNS} runs each; ${JOBS} parallel substitutions; medians; load average ${(await import('node:os')).loadavg()[0]!.toFixed(1)} on ${(await import('node:os')).cpus().length} cores`,
  );
  for (const c of COMPRESSIONS) {
    const cache = fx.caches[c]!;
    const narDir = path.join(cache, 'nar');
    const files = readdirSync(narDir).map((f) => path.join(narDir, f));
    const compressed = files.reduce((s, f) => s + statSync(f).size, 0);
    const o: Timing[] = [];
    const n: Timing[] = [];
    for (let i = 0; i < RUNS; i++) {
      // pairs alternate who goes first
      if (i % 2 === 1) n.push(nixCopy(fx, cache));
      o.push(await ours(fx, cache));
      if (i === 0) verify(fx);
      if (i % 2 === 0) n.push(nixCopy(fx, cache));
    }
    const mo = median(o.map((t) => t.wall));
    const mn = median(n.map((t) => t.wall));
    const co = median(o.map((t) => t.cpu));
    const cn = median(n.map((t) => t.cpu));
    const pairs = o.map((t, i) => t.wall / n[i]!.wall);
    say(
      `${c}: cache ${(compressed / 1e6).toFixed(0)} MB compressed | wall: realise ${fmt(mo)} (${(MB / mo).toFixed(0)} MB/s of NAR) vs nix copy --from ${fmt(mn)} (${(MB / mn).toFixed(0)} MB/s), ratio ${(mo / mn).toFixed(2)} (target <= 0.8); per pair ${pairs.map((r) => r.toFixed(2)).join(', ')} | CPU: realise ${fmt(co)} vs nix ${fmt(cn)}, ratio ${(co / cn).toFixed(2)}`,
    );
    const area = 'Substitution';
    emitRow({
      area,
      measure: `${N} paths, ${MB} MB, ${c} cache, ${RUNS} pairs`,
      unit: 's',
      realise: mo,
      realiseNote: `wall; CPU ${num(co)} s`,
      nix: mn,
      nixNote: `\`nix copy --from\`; CPU ${num(cn)} s`,
      ratio: mo / mn,
      ratioMin: Math.min(...pairs),
      ratioMax: Math.max(...pairs),
      target: '≤ 0.8',
      met: atMost(mo / mn, 0.8),
    });
    const d1 = await decompressOurs(fx, cache);
    const d2 = decompressTool(files, c);
    emitRow({
      area,
      measure: `decompression alone, ${c}, CPU time`,
      unit: 's',
      realise: d1.cpu,
      nix: d2.cpu,
      nixNote: `\`${c === 'xz' ? 'xz' : 'zstd'} -dc\``,
      ratio: d1.cpu / d2.cpu,
    });
    say(
      `${c}: decompression alone, sequential, same NAR files: realise (fetchNar: read + decode) ${fmt(d1.wall)} wall / ${fmt(d1.cpu)} CPU (${(MB / d1.cpu).toFixed(0)} MB/s per CPU second) | ${c === 'xz' ? 'xz' : 'zstd'} -dc ${fmt(d2.wall)} wall / ${fmt(d2.cpu)} CPU (${(MB / d2.cpu).toFixed(0)} MB/s per CPU second) | CPU ratio ${(d1.cpu / d2.cpu).toFixed(2)}`,
    );
  }
  rmSync(path.join(WORK, 'ours-root'), { recursive: true, force: true });
  rmSync(path.join(WORK, 'nix-root'), { recursive: true, force: true });
  console.log('\n' + lines.map((l) => `    ${l}`).join('\n'));
}

await main();
