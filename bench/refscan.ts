/**
 * Reference scanning throughput: RefScanner with 1000 candidate hash parts over realistic data
 * (binary, text, and many base-32-ish runs: store paths of other packages, hex digests, base-32 hashes).
 *
 *   npx tsx bench/refscan.ts            # REFSCAN_MB=64 (data per pass), REFSCAN_RUNS=7, REFSCAN_CHUNK_KB=1024
 *
 * Prints the median of the runs for: our scanner; the previous implementation (Nix's loop with a Set
 * prefix filter and a Buffer.concat per chunk) as the baseline; and node:crypto sha256 over the same
 * bytes as a yardstick (scanning runs next to NAR hashing). Target: >= 1 GiB/s.
 */
import { createHash } from 'node:crypto';
import { RefScanner } from '../src/store/references.js';
import { toNixBase32 } from '../src/store/hash.js';
import { emitRow, num } from './_report.js';

const MB = Number(process.env.REFSCAN_MB ?? 64);
const RUNS = Number(process.env.REFSCAN_RUNS ?? 7);
const CHUNK = Number(process.env.REFSCAN_CHUNK_KB ?? 1024) * 1024;

let seed = 0x12345678;
function rnd(): number {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed;
}
function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
}
const hashPart = () => toNixBase32(randomBytes(20));

const candidates = Array.from({ length: 1000 }, hashPart);
const others = Array.from({ length: 2000 }, hashPart);
const words =
  'the of and to in is it you that he was for on are with as his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find'.split(
    ' ',
  );
const pick = <T>(a: T[]): T => a[rnd() % a.length]!;

function makeData(size: number): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  while (n < size) {
    const r = rnd() % 100;
    let p: Buffer;
    if (r < 35)
      p = randomBytes(512 + (rnd() % 4096)); // machine code / compressed data
    else if (r < 45)
      p = Buffer.alloc(64 + (rnd() % 512)); // zero padding, tables
    else if (r < 70)
      p = Buffer.from(Array.from({ length: 50 + (rnd() % 200) }, () => pick(words)).join(' ') + '.\n'); // prose, comments
    else if (r < 90)
      p = Buffer.from(
        Array.from({ length: 4 + (rnd() % 20) }, () => `/nix/store/${pick(others)}-${pick(words)}-${rnd() % 10}.${rnd() % 20}/lib/lib${pick(words)}.so\0`).join(
          '',
        ),
      ); // RPATHs, store paths
    else if (r < 97)
      p = Buffer.from(
        Array.from(
          { length: 8 },
          () =>
            createHash('sha256')
              .update(String(rnd()))
              .digest(rnd() & 1 ? 'hex' : 'base64') + '\n',
        ).join(''),
      ); // digests
    else p = Buffer.from(`${'abcdfghijklmnpqrsvwxyz0123456789'.repeat(3 + (rnd() % 8))}\n`); // long base-32 runs
    parts.push(p);
    n += p.length;
  }
  // A few real references, placed at random.
  const data = Buffer.concat(parts).subarray(0, size);
  for (let k = 0; k < 20; k++) {
    const at = rnd() % (size - 64);
    data.write(`/nix/store/${candidates[k * 7]!}-dep`, at, 'latin1');
  }
  return data;
}

/** The previous implementation, kept as the baseline. */
class BaselineScanner {
  private remaining = new Map<string, string>();
  private prefixes = new Set<number>();
  private found = new Set<string>();
  private tail = Buffer.alloc(0);
  private static IS = (() => {
    const t = new Uint8Array(256);
    for (const c of '0123456789abcdfghijklmnpqrsvwxyz') t[c.charCodeAt(0)] = 1;
    return t;
  })();
  constructor(hs: string[]) {
    for (const h of hs) {
      this.remaining.set(h, h);
      this.prefixes.add(Buffer.from(h, 'latin1').readUInt32LE(0));
    }
  }
  update(chunk: Buffer) {
    const data = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    const IS = BaselineScanner.IS;
    const n = data.length;
    let i = 0;
    outer: while (i + 32 <= n) {
      for (let j = 31; j >= 0; j--)
        if (!IS[data[i + j]!]) {
          i += j + 1;
          continue outer;
        }
      if (this.prefixes.has(data.readUInt32LE(i))) {
        const h = data.toString('latin1', i, i + 32);
        if (this.remaining.delete(h)) this.found.add(h);
      }
      i++;
    }
    this.tail = Buffer.from(data.subarray(data.length - Math.min(31, data.length)));
  }
  result() {
    return this.found;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const t0 = performance.now();
const data = makeData(MB << 20);
const chunks: Buffer[] = [];
for (let i = 0; i < data.length; i += CHUNK) chunks.push(data.subarray(i, i + CHUNK));
console.log(
  `data: ${MB} MiB in ${chunks.length} chunks of ${CHUNK >> 10} KiB (generated in ${((performance.now() - t0) / 1000).toFixed(1)} s), 1000 candidates, ${RUNS} runs`,
);

/**
 * Median throughput by wall clock and by CPU time of this process. On a shared, overloaded machine the
 * wall-clock figure mostly measures the other tenants; the scan is single-threaded, so bytes per CPU
 * second is what it would do on an idle core.
 */
function measure(name: string, run: () => number): { wall: number; cpu: number } {
  const wall: number[] = [];
  const cpu: number[] = [];
  let found = run(); // warm-up, not counted
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now();
    const c = process.cpuUsage();
    found = run();
    const cs = process.cpuUsage(c);
    wall.push(data.length / ((performance.now() - t) / 1000) / 2 ** 30);
    cpu.push(data.length / ((cs.user + cs.system) / 1e6) / 2 ** 30);
  }
  const m = { wall: median(wall), cpu: median(cpu) };
  console.log(
    `${name.padEnd(34)} median ${m.wall.toFixed(2)} GiB/s wall (min ${Math.min(...wall).toFixed(2)}, max ${Math.max(...wall).toFixed(2)}), ${m.cpu.toFixed(2)} GiB/s per CPU second; found ${found}`,
  );
  return m;
}

const ours = measure('RefScanner (src/store/references)', () => {
  const s = new RefScanner(candidates);
  for (const c of chunks) s.update(c);
  return s.result().size;
});
const base = measure('baseline (previous implementation)', () => {
  const s = new BaselineScanner(candidates);
  for (const c of chunks) s.update(c);
  return s.result().size;
});
const sha = measure('node:crypto sha256 (yardstick)', () => {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  h.digest();
  return 0;
});
console.log(
  `ratio ours/baseline ${(ours.wall / base.wall).toFixed(2)}x wall, ${(ours.cpu / base.cpu).toFixed(2)}x CPU; ours/sha256 ${(ours.wall / sha.wall).toFixed(2)}x wall, ${(ours.cpu / sha.cpu).toFixed(2)}x CPU`,
);
emitRow({
  area: 'Store formats',
  reference: 'reference (same run)',
  measure: `\`RefScanner\`, ${MB} MiB, 1,000 candidates`,
  unit: 'GiB/s',
  realise: ours.wall,
  realiseNote: `${num(ours.cpu)} GiB/s per CPU second`,
  nix: sha.wall,
  nixNote: 'sha256 of the same bytes',
  ratio: ours.wall / sha.wall,
  ratioNote: 'throughput, higher is better',
  target: '≥ 1 GiB/s',
  met: ours.wall >= 1,
});
console.log(
  `target >= 1 GiB/s: ${ours.wall >= 1 ? 'met' : 'NOT met'} by wall clock (${ours.wall.toFixed(2)}), ${ours.cpu >= 1 ? 'met' : 'NOT met'} per CPU second (${ours.cpu.toFixed(2)}); load average ${(await import('node:os')).loadavg()[0]!.toFixed(1)}`,
);
