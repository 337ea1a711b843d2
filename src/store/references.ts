/**
 * Reference scanning: which candidate store-path hash parts (32 nix-base32 characters) occur in a byte
 * stream. Matches may straddle chunk boundaries. Same skipping strategy as Nix's RefScanSink: test the last
 * character of a 32-byte window first and jump past any byte that is not in the nix-base32 alphabet.
 */
import { HASH_PART_LENGTH, storePathHashPart, type StorePath } from './store-path.js';

const IS_B32 = new Uint8Array(256);
for (const c of '0123456789abcdfghijklmnpqrsvwxyz') IS_B32[c.charCodeAt(0)] = 1;

export class RefScanner {
  private readonly remaining: Map<string, string>;
  /** Prefix filter: first 4 bytes of each candidate as a uint32. */
  private readonly prefixes: Set<number>;
  private readonly found = new Set<string>();
  private tail: Buffer = Buffer.alloc(0);

  /** `hashParts` maps a 32-char hash part to whatever the caller wants back (usually the store path). */
  constructor(hashParts: Iterable<string>) {
    this.remaining = new Map();
    this.prefixes = new Set();
    for (const h of hashParts) {
      if (h.length !== HASH_PART_LENGTH) continue;
      this.remaining.set(h, h);
      this.prefixes.add(Buffer.from(h, 'latin1').readUInt32LE(0));
    }
  }

  update(chunk: Uint8Array): void {
    if (this.remaining.size === 0) return;
    const L = HASH_PART_LENGTH;
    const data = this.tail.length
      ? Buffer.concat([this.tail, chunk])
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.scan(data);
    const keep = Math.min(L - 1, data.length);
    this.tail = Buffer.from(data.subarray(data.length - keep));
  }

  private scan(s: Buffer): void {
    const L = HASH_PART_LENGTH;
    const n = s.length;
    let i = 0;
    outer: while (i + L <= n) {
      for (let j = L - 1; j >= 0; j--) {
        if (!IS_B32[s[i + j]!]) {
          i += j + 1;
          continue outer;
        }
      }
      // A window of 32 base-32 characters: check prefix, then the whole candidate.
      if (this.prefixes.has(s.readUInt32LE(i))) {
        const h = s.toString('latin1', i, i + L);
        if (this.remaining.has(h)) {
          this.found.add(h);
          this.remaining.delete(h);
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
  const byHash = new Map<string, StorePath>();
  for (const p of candidates) byHash.set(storePathHashPart(p), p);
  const scanner = new RefScanner(byHash.keys());
  for await (const chunk of source) scanner.update(chunk);
  const out = new Set<StorePath>();
  for (const h of scanner.result()) out.add(byHash.get(h)!);
  return out;
}
