/**
 * NAR hash throughput: `hashPath` (dump + sha256 in one pass) over a generated tree of large and small
 * files, against node:crypto sha256 over the same file bytes read from the same files (the reference).
 *
 *   npx tsx bench/nar-hash.ts          # NARHASH_MB=1024 (tree size), NARHASH_RUNS=3, NARHASH_DIR=<reuse a tree>
 *
 * The tree: 45% in 8 large files, 20% in 2 MiB files, 35% in ~15 KiB files spread over directories of
 * 100 entries, plus symlinks and empty files. It is created once in a temp dir (deleted afterwards unless
 * NARHASH_DIR was given). Runs alternate between the two contenders so both see the same cache state.
 * Target: ours >= 85% of the reference. `nix-hash --type sha256` is timed once for information.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, promises as fsp, constants as FS } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { hashPath } from '../src/store/nar.js';
import { emitRow, num } from './_report.js';

const MB = Number(process.env.NARHASH_MB ?? 1024);
const RUNS = Number(process.env.NARHASH_RUNS ?? 3);
const total = MB << 20;

/** Random-looking contents without paying for randomBytes per file: slices of one 32 MiB pool. */
const POOL = randomBytes(32 << 20);
let poolAt = 0;
function contents(size: number): Buffer {
  if (size > POOL.length) return Buffer.concat(Array.from({ length: Math.ceil(size / POOL.length) }, () => POOL)).subarray(0, size);
  poolAt = (poolAt + 4099) % (POOL.length - size + 1);
  return POOL.subarray(poolAt, poolAt + size);
}

function generate(root: string): void {
  mkdirSync(root);
  const large = Math.floor((total * 0.45) / 8);
  mkdirSync(path.join(root, 'large'));
  for (let i = 0; i < 8; i++) writeFileSync(path.join(root, 'large', `blob${i}.bin`), contents(large));
  mkdirSync(path.join(root, 'medium'));
  const nMedium = Math.floor((total * 0.2) / (2 << 20));
  for (let i = 0; i < nMedium; i++) writeFileSync(path.join(root, 'medium', `m${i}.dat`), contents(2 << 20), { mode: i % 3 ? 0o644 : 0o755 });
  let small = Math.floor(total * 0.35);
  let d = 0;
  while (small > 0) {
    const dir = path.join(root, 'small', `d${String(d++).padStart(4, '0')}`);
    mkdirSync(dir, { recursive: true });
    for (let i = 0; i < 100 && small > 0; i++) {
      const size = Math.min(small, 1 + ((i * 7919 + d * 104729) % 30000));
      writeFileSync(path.join(dir, `f${i}.txt`), contents(size));
      small -= size;
    }
    writeFileSync(path.join(dir, 'empty'), '');
    symlinkSync('f0.txt', path.join(dir, 'link'));
  }
}

/** All regular files in NAR order (byte-sorted names, depth first), as the reference reads them. */
async function listFiles(p: string, out: string[]): Promise<string[]> {
  const st = await fsp.lstat(p);
  if (st.isFile()) out.push(p);
  else if (st.isDirectory()) {
    const names = (await fsp.readdir(p, { encoding: 'buffer' })).sort(Buffer.compare);
    for (const n of names) await listFiles(path.join(p, n.toString()), out);
  }
  return out;
}

/** Reference: sha256 over the file contents, read sequentially (small files whole, large in 1 MiB chunks). */
async function reference(files: string[]): Promise<number> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  let bytes = 0;
  for (const f of files) {
    const fh = await fsp.open(f, FS.O_RDONLY);
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        h.update(buf.subarray(0, bytesRead));
        bytes += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  h.digest();
  return bytes;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const reuse = process.env.NARHASH_DIR;
const base = reuse ?? mkdtempSync(path.join(tmpdir(), 'realise-bench-nar-'));
const root = path.join(base, 'tree');
try {
  let t = performance.now();
  if (!existsSync(root)) {
    generate(root);
    console.log(`generated ${MB} MiB tree in ${((performance.now() - t) / 1000).toFixed(1)} s at ${root}`);
  }
  let overall = 0;
  for (const [label, dir, runs] of [
    ['whole tree', root, RUNS],
    ['large files only', path.join(root, 'large'), RUNS],
    ['small files only', path.join(root, 'small'), RUNS],
  ] as const) {
    const files = await listFiles(dir, []);
    const fileBytes = await reference(files); // warm the page cache
    const { size: narSize } = await hashPath(dir);
    const ours: number[] = [];
    const ref: number[] = [];
    const oursCpu: number[] = [];
    const refCpu: number[] = [];
    const timed = async (f: () => Promise<unknown>, wall: number[], cpu: number[]) => {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      await f();
      const c = process.cpuUsage(c0);
      wall.push(fileBytes / ((performance.now() - t0) / 1000) / 2 ** 20);
      cpu.push(fileBytes / ((c.user + c.system) / 1e6) / 2 ** 20);
    };
    for (let r = 0; r < runs; r++) {
      await timed(() => reference(files), ref, refCpu);
      await timed(() => hashPath(dir), ours, oursCpu);
    }
    const mo = median(ours);
    const mr = median(ref);
    console.log(
      `\n${label}: ${files.length} files, ${(fileBytes / 2 ** 20).toFixed(0)} MiB of contents, NAR ${(narSize / 2 ** 20).toFixed(0)} MiB; ${runs} runs each`,
    );
    console.log(
      `  reference: read files + node:crypto sha256   median ${mr.toFixed(0)} MiB/s of file contents (min ${Math.min(...ref).toFixed(0)}, max ${Math.max(...ref).toFixed(0)})`,
    );
    console.log(
      `  hashPath (NAR dump + sha256, one pass)      median ${mo.toFixed(0)} MiB/s of file contents (min ${Math.min(...ours).toFixed(0)}, max ${Math.max(...ours).toFixed(0)})`,
    );
    console.log(`  per CPU second (user+sys of all threads): reference ${median(refCpu).toFixed(0)} MiB, hashPath ${median(oursCpu).toFixed(0)} MiB`);
    console.log(
      `  ratio ${((100 * mo) / mr).toFixed(0)}% of the reference by wall clock, ${((100 * median(oursCpu)) / median(refCpu)).toFixed(0)}% per CPU second`,
    );
    emitRow({
      area: 'Store formats',
      reference: 'reference (same run)',
      measure: `\`hashPath\`, ${label} (${(fileBytes / 2 ** 20).toFixed(0)} MiB in ${files.length.toLocaleString('en-US')} files)`,
      unit: 'MiB/s',
      realise: mo,
      realiseNote: `${num(median(oursCpu))} per CPU second`,
      nix: mr,
      nixNote: `sha256 of the files, ${num(median(refCpu))} per CPU second`,
      ratio: mo / mr,
      ratioNote: 'throughput, higher is better',
      target: '≥ 0.85',
      met: mo / mr >= 0.85,
    });
    if (dir === root) overall = mo / mr;
  }
  console.log(
    `\nwhole tree: ${(100 * overall).toFixed(0)}% of the reference by wall clock (target >= 85%): ${overall >= 0.85 ? 'met' : 'NOT met'}; load average ${loadavg()[0]!.toFixed(1)}`,
  );
  const fileBytes = await listFiles(root, []).then(reference);

  t = performance.now();
  for (let k = 0; k < 8; k++) createHash('sha256').update(POOL).digest();
  console.log(`for information: sha256 of 256 MiB in memory ${(256 / ((performance.now() - t) / 1000)).toFixed(0)} MiB/s`);
  if (spawnSync('sh', ['-c', 'command -v nix-hash']).status === 0) {
    t = performance.now();
    spawnSync('nix-hash', ['--type', 'sha256', root]);
    console.log(`for information: nix-hash --type sha256 (Nix 2.8) ${(fileBytes / ((performance.now() - t) / 1000) / 2 ** 20).toFixed(0)} MiB/s`);
  }
} finally {
  if (!reuse) rmSync(base, { recursive: true, force: true });
}
