/**
 * Reference scanning: which candidate store-path hash parts (32 nix-base32 characters) occur in a byte
 * stream, as Nix's RefScanSink. Matches may straddle chunk boundaries.
 *
 * How it stays fast (see docs/formats.md and bench/refscan.ts):
 * - Boyer–Moore-like skipping on the alphabet, as Nix: test the last byte of a 32-byte window first and
 *   jump past any byte that is not nix-base32; bytes already known to be base-32 are not re-tested, so a
 *   long base-32 run costs one test per byte instead of 32.
 * - A bit filter indexed by the first four characters of a window (4 × 5 bits, folded to the filter's
 *   size) rejects almost all windows that are base-32 but no candidate, before any string is built. It
 *   is sized to the candidates (64 bits per candidate, 2^10 to 2^20 bits), so a scanner for a handful of
 *   candidates (one per build output) costs a few hundred bytes, not a 128 KiB allocation.
 * - No concatenation per chunk: only the last 31 bytes are kept and the junction with the next chunk is
 *   scanned on its own (at most 62 bytes).
 */
import { HASH_PART_LENGTH, storePathHashPart, type StorePath } from './store-path.js';

const L = HASH_PART_LENGTH;
/** nix-base32 digit value of a byte, or -1. */
const DIGIT = new Int8Array(256).fill(-1);
'0123456789abcdfghijklmnpqrsvwxyz'.split('').forEach((c, i) => {
  DIGIT[c.charCodeAt(0)] = i;
});

function key(s: Uint8Array, i: number): number {
  return (DIGIT[s[i]!]! << 15) | (DIGIT[s[i + 1]!]! << 10) | (DIGIT[s[i + 2]!]! << 5) | DIGIT[s[i + 3]!]!;
}

export class RefScanner {
  private readonly remaining = new Map<string, string>();
  /** Bit set over the (folded) 20-bit prefix keys of the candidates not found yet. */
  private readonly filter: Int32Array;
  /** `filter` has `mask + 1` bits. */
  private readonly mask: number;
  /** Candidates not found yet per folded key. */
  private readonly perKey = new Map<number, number>();
  private readonly found = new Set<string>();
  private tail: Buffer = Buffer.alloc(0);

  /** `hashParts`: the 32-character hash parts to look for; other strings are ignored. */
  constructor(hashParts: Iterable<string>) {
    const keys: number[] = [];
    for (const h of hashParts) {
      if (h.length !== L || this.remaining.has(h)) continue;
      const b = Buffer.from(h, 'latin1');
      let ok = true;
      for (const c of b) if (DIGIT[c]! < 0) ok = false;
      if (!ok) continue; // cannot occur in a scan anyway
      this.remaining.set(h, h);
      keys.push(key(b, 0));
    }
    let bits = 1 << 10;
    while (bits < keys.length * 64 && bits < 1 << 20) bits <<= 1;
    this.mask = bits - 1;
    this.filter = new Int32Array(bits >>> 5);
    for (const k0 of keys) {
      const k = k0 & this.mask;
      this.filter[k >>> 5]! |= 1 << (k & 31);
      this.perKey.set(k, (this.perKey.get(k) ?? 0) + 1);
    }
  }

  /** True once every candidate has been seen (further input is ignored). */
  get complete(): boolean {
    return this.remaining.size === 0;
  }

  update(chunk: Uint8Array): void {
    if (this.remaining.size === 0 || chunk.length === 0) return;
    const c = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.tail.length > 0) {
      // Windows that start in the kept tail and end in this chunk.
      this.scan(Buffer.concat([this.tail, c.subarray(0, L - 1)]));
      if (this.remaining.size === 0) return;
    }
    this.scan(c);
    if (c.length >= L - 1) this.tail = Buffer.from(c.subarray(c.length - (L - 1)));
    else {
      const t = Buffer.concat([this.tail, c]);
      this.tail = Buffer.from(t.subarray(Math.max(0, t.length - (L - 1))));
    }
  }

  private scan(s: Buffer): void {
    const n = s.length;
    const filter = this.filter;
    const mask = this.mask;
    let i = 0;
    /** s[i, goodTo) is known to be nix-base32 whenever goodTo > i. */
    let goodTo = 0;
    while (i + L <= n) {
      const end = i + L;
      let k = end - 1;
      const stop = goodTo > i ? goodTo : i;
      while (k >= stop && DIGIT[s[k]!]! >= 0) k--;
      goodTo = end;
      if (k >= stop) {
        i = k + 1; // s[k] is not base-32: no window containing it can match
        continue;
      }
      const f = ((DIGIT[s[i]!]! << 15) | (DIGIT[s[i + 1]!]! << 10) | (DIGIT[s[i + 2]!]! << 5) | DIGIT[s[i + 3]!]!) & mask;
      if ((filter[f >>> 5]! >>> (f & 31)) & 1) {
        const h = s.toString('latin1', i, end);
        if (this.remaining.delete(h)) {
          this.found.add(h);
          const left = this.perKey.get(f)! - 1;
          this.perKey.set(f, left);
          if (left === 0) filter[f >>> 5]! &= ~(1 << (f & 31));
          if (this.remaining.size === 0) return;
        }
      }
      i++;
    }
  }

  /** Hash parts seen so far. */
  result(): Set<string> {
    return new Set(this.found);
  }
}

/** Scan a stream for references to any of `candidates` (full store paths); returns the ones found. */
export async function scanForReferences(source: AsyncIterable<Uint8Array>, candidates: Iterable<StorePath>): Promise<Set<StorePath>> {
  const byHash = byHashPart(candidates);
  const scanner = new RefScanner(byHash.keys());
  for await (const chunk of source) scanner.update(chunk); // drains the source even when complete
  return pathsOf(scanner, byHash);
}

/** Beyond this many distinct hash-like strings in a buffer, scanBufferForReferences scans for the candidates instead. */
const MAX_WINDOWS = 4096;

/**
 * The distinct hash-like strings of `data` (every 32 consecutive nix-base32 characters), or undefined when
 * there are more than MAX_WINDOWS of them.
 */
function hashLikeWindows(data: Uint8Array): Set<string> | undefined {
  const out = new Set<string>();
  const s = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let run = 0; // base-32 characters ending at i
  for (let i = 0; i < s.length; i++) {
    if (DIGIT[s[i]!]! < 0) {
      run = 0;
      continue;
    }
    if (++run < L) continue;
    out.add(s.toString('latin1', i + 1 - L, i + 1));
    if (out.size > MAX_WINDOWS) return undefined;
  }
  return out;
}

/**
 * scanForReferences over bytes already in memory (e.g. the NAR of a small file), synchronously. The bytes
 * are read first for what could be a hash part at all, so that an output naming no store path (or few)
 * costs nothing per candidate: builds deep in a graph have thousands of inputs in their closure.
 */
export function scanBufferForReferences(data: Uint8Array, candidates: Iterable<StorePath>): Set<StorePath> {
  const windows = hashLikeWindows(data);
  if (windows) {
    const out = new Set<StorePath>();
    if (windows.size === 0) return out;
    for (const p of candidates) if (windows.has(storePathHashPart(p))) out.add(p);
    return out;
  }
  const byHash = byHashPart(candidates);
  const scanner = new RefScanner(byHash.keys());
  scanner.update(data);
  return pathsOf(scanner, byHash);
}

function byHashPart(paths: Iterable<StorePath>): Map<string, StorePath> {
  const byHash = new Map<string, StorePath>();
  for (const p of paths) byHash.set(storePathHashPart(p), p);
  return byHash;
}

function pathsOf(scanner: RefScanner, byHash: ReadonlyMap<string, StorePath>): Set<StorePath> {
  const out = new Set<StorePath>();
  for (const h of scanner.result()) out.add(byHash.get(h)!);
  return out;
}
