/**
 * Reference scanning (RefScanner / scanForReferences / scanBufferForReferences) against a naive model: every occurrence of a
 * candidate's 32-character hash part anywhere in the stream, whatever the chunking.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { RefScanner, scanBufferForReferences, scanForReferences } from '../../src/store/references.js';
import { toNixBase32 } from '../../src/store/hash.js';
import { streamOf } from '../../src/store/nar.js';

const B32 = '0123456789abcdfghijklmnpqrsvwxyz';
const hashPartArb = fc.string({ unit: fc.constantFrom(...B32.split('')), minLength: 32, maxLength: 32 });

function model(data: Buffer, candidates: string[]): Set<string> {
  return new Set(candidates.filter((c) => data.includes(Buffer.from(c, 'latin1'))));
}
function scanChunks(chunks: Uint8Array[], candidates: string[]): Set<string> {
  const s = new RefScanner(candidates);
  for (const c of chunks) s.update(c);
  return s.result();
}
function split(data: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    const e = Math.min(c, data.length);
    if (e >= at) {
      out.push(data.subarray(at, e));
      at = e;
    }
  }
  out.push(data.subarray(at));
  return out;
}
function randomHash(seed: number): string {
  const b = new Uint8Array(20);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < 20; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return toNixBase32(b);
}

describe('RefScanner', () => {
  const h = 'ars58snfqasl4q7h0z2lj22fnipbf2q1';
  it('finds a hash straddling a chunk boundary at every split offset', () => {
    for (const ctx of [
      ['/nix/store/', '-foo\n'],
      ['', ''],
      ['\0\xff', 'x'],
      ['abcd', 'abcd'],
    ]) {
      const data = Buffer.from(ctx[0] + h + ctx[1], 'latin1');
      for (let a = 0; a <= data.length; a++) {
        expect(scanChunks(split(data, [a]), [h]), `split at ${a}`).toEqual(new Set([h]));
        for (const w of [1, 2, 5, 30, 31, 32]) {
          expect(scanChunks(split(data, [a, a + w]), [h]), `split at ${a} and ${a + w}`).toEqual(new Set([h]));
        }
      }
      // one byte at a time
      expect(
        scanChunks(
          [...data].map((b) => Uint8Array.of(b)),
          [h],
        ),
      ).toEqual(new Set([h]));
    }
  });

  it('agrees with the naive model on random data, candidates and chunking', () => {
    const piece = (cands: string[]) =>
      fc.oneof(
        fc.constantFrom(...cands),
        fc.constantFrom(...cands).map((c) => c.slice(0, 31)),
        fc.constantFrom(...cands).map((c) => c.slice(1)),
        fc.constantFrom(...cands).map((c) => c.slice(0, 10) + 'e' + c.slice(11)),
        fc.constantFrom(...cands).map((c) => c.toUpperCase()),
        fc.string({ unit: fc.constantFrom(...B32.split('')), maxLength: 40 }),
        fc.string({ unit: fc.constantFrom('e', 'o', 't', 'u', '/', '-', '\0', '\xff', ' '), maxLength: 3 }),
      );
    fc.assert(
      fc.property(
        fc
          .uniqueArray(hashPartArb, { minLength: 1, maxLength: 6 })
          .chain((cands) => fc.tuple(fc.constant(cands), fc.array(piece(cands), { maxLength: 20 }), fc.array(fc.nat(700), { maxLength: 6 }))),
        ([cands, pieces, cuts]) => {
          const data = Buffer.from(pieces.join(''), 'latin1');
          expect(scanChunks(split(data, cuts), cands)).toEqual(model(data, cands));
        },
      ),
      { numRuns: 500 },
    );
  });

  it('1000 candidates: finds exactly the ones present, no false positives', () => {
    const cands = Array.from({ length: 1000 }, (_, i) => randomHash(i + 1));
    const present = cands.filter((_, i) => i % 20 === 0);
    const parts: string[] = [];
    for (const [i, c] of cands.entries()) {
      if (i % 20 === 0) parts.push(`/nix/store/${c}-pkg-${i}/lib\0`);
      else parts.push(`${c.slice(0, 31)}-x`, `${c.slice(1)}\0`, `${c.slice(0, 5)}E${c.slice(6)}`, `${randomHash(100000 + i)}`);
    }
    const data = Buffer.from(parts.join('\n'), 'latin1');
    for (const cuts of [[], [1 << 10, 1 << 14, 1 << 15], Array.from({ length: 300 }, (_, k) => k * 97)]) {
      expect(scanChunks(split(data, cuts), cands)).toEqual(new Set(present));
    }
  });

  it('candidates sharing a four-character prefix are told apart', () => {
    const a = 'aaaa' + 'b'.repeat(28);
    const b = 'aaaa' + 'c'.repeat(28);
    const c = 'aaaa' + 'd'.repeat(28);
    const data = Buffer.from(`x${a}y ${c} ${a}`);
    expect(scanChunks([data], [a, b, c])).toEqual(new Set([a, c]));
  });

  it('finds hashes embedded in longer base-32 runs, as Nix does', () => {
    expect(scanChunks([Buffer.from('00000' + h + '11111')], [h])).toEqual(new Set([h]));
  });

  it('ignores strings that are not hash parts and handles empty input', () => {
    const s = new RefScanner(['short', 'e'.repeat(32), h]);
    s.update(new Uint8Array(0));
    s.update(Buffer.from('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeshort'));
    expect(s.result()).toEqual(new Set());
    expect(s.complete).toBe(false);
    s.update(Buffer.from(h));
    expect(s.complete).toBe(true);
  });

  it('does not modify the chunks it is given', () => {
    const data = Buffer.from(`/nix/store/${h}-x`);
    const copy = Buffer.from(data);
    scanChunks(split(data, [13]), [h]);
    expect(data).toEqual(copy);
  });

  it('scanForReferences maps hash parts back to store paths and drains the stream', async () => {
    const p1 = `/nix/store/${h}-dep`;
    const p2 = `/nix/store/${randomHash(9)}-other`;
    let drained = false;
    async function* src() {
      yield Buffer.from(`ref ${p1}/bin`);
      yield Buffer.from('more');
      drained = true;
    }
    expect(await scanForReferences(src(), [p1, p2])).toEqual(new Set([p1]));
    expect(drained).toBe(true);
    expect(await scanForReferences(streamOf(), [p1])).toEqual(new Set());
  });

  it('scanBufferForReferences agrees with the naive model, also past its limit of hash-like strings', () => {
    const store = (c: string, i: number) => `/nix/store/${c}-p${i}`;
    const noise = fc.string({ unit: fc.constantFrom(...B32.split(''), '-', '\0'), maxLength: 40 });
    const piecesOf = (cands: string[]) => fc.array(fc.oneof(fc.constantFrom(...cands), noise), { maxLength: 12 });
    fc.assert(
      fc.property(
        fc.uniqueArray(hashPartArb, { minLength: 1, maxLength: 6 }).chain((cands) => fc.tuple(fc.constant(cands), piecesOf(cands))),
        ([cands, pieces]) => {
          const data = Buffer.from(pieces.join(''), 'latin1');
          const paths = cands.map(store);
          const want = new Set([...model(data, cands)].map((c) => paths[cands.indexOf(c)]!));
          expect(scanBufferForReferences(data, paths)).toEqual(want);
        },
      ),
      { numRuns: 300 },
    );
    // Past 4,096 distinct hash-like strings (one long base-32 run), the candidates are scanned for instead.
    const cands = Array.from({ length: 50 }, (_, i) => randomHash(i + 1));
    const run = Array.from({ length: 200 }, (_, i) => randomHash(5000 + i)).join('') + cands[7] + cands[31];
    expect(scanBufferForReferences(Buffer.from(`x${run}\0`), cands.map(store))).toEqual(new Set([store(cands[7]!, 7), store(cands[31]!, 31)]));
    expect(scanBufferForReferences(Buffer.from('nix-archive-1\0dag-3-4\n'), cands.map(store))).toEqual(new Set());
  });
});
