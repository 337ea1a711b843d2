/**
 * Our bzip2 encoder against two readers: our decoder and Debian's bzip2 (the format as libbz2 reads it).
 * Edge cases of the run-length stage (runs of 4, 5, 255, 256 bytes), periodic input (rotations that never
 * become distinct), every byte value, several blocks, and random inputs.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compressBzip2, compressBzip2Async, decompressBzip2 } from '../../src/store/bzip2.js';

const systemBzip2 = (z: Uint8Array): Buffer => execFileSync('bzip2', ['-dc'], { input: z, maxBuffer: 1 << 28 });

describe('compressBzip2', () => {
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['one byte', Buffer.from('a')],
    ['short text', Buffer.from('abracadabra\n')],
    ['a run of 4', Buffer.from('aaaa')],
    ['a run of 5', Buffer.from('aaaaab')],
    ['a run of 255', Buffer.alloc(255, 98)],
    ['a run of 256', Buffer.alloc(256, 98)],
    ['a run of 100,000 zeros', Buffer.alloc(100000, 0)],
    ['periodic', Buffer.from('ab'.repeat(5000))],
    ['every byte value', Buffer.from(Array.from({ length: 256 * 4 }, (_, i) => i & 255))],
    ['log-like text', Buffer.from(Array.from({ length: 3000 }, (_, i) => `line ${i}: building \x1b[1mthing\x1b[0m\r\n`).join(''))],
  ];
  for (const [name, data] of cases) {
    it(`${name}: read back the same by our decoder and by bzip2`, () => {
      const z = compressBzip2(data);
      expect(z.subarray(0, 4).toString()).toBe('BZh9');
      expect(Buffer.from(decompressBzip2(z)).equals(data)).toBe(true);
      expect(systemBzip2(z).equals(data)).toBe(true);
    });
  }

  it('no data: byte for byte what bzip2 -LEVEL writes for empty input, at every level, sync and async', async () => {
    for (const level of [1, 5, 9]) {
      const expected = execFileSync('bzip2', [`-${level}`], { input: Buffer.alloc(0) });
      expect(compressBzip2(Buffer.alloc(0), level).equals(expected)).toBe(true);
      expect((await compressBzip2Async(Buffer.alloc(0), { level })).equals(expected)).toBe(true);
    }
    expect(() => compressBzip2(Buffer.alloc(0), 10)).toThrow(RangeError);
  });

  it('several blocks (level 1: 100,000-byte blocks), and compresses text', () => {
    const data = Buffer.concat([randomBytes(150000), Buffer.alloc(120000, 7), Buffer.from('hello world\n'.repeat(20000))]);
    const z = compressBzip2(data, 1);
    expect(z.subarray(0, 4).toString()).toBe('BZh1');
    expect(systemBzip2(z).equals(data)).toBe(true);
    expect(Buffer.from(decompressBzip2(z)).equals(data)).toBe(true);
    expect(z.length).toBeLessThan(160000);
  });

  it('async: small blocks under a level-9 header, the same data back', async () => {
    const data = Buffer.from(Array.from({ length: 20000 }, (_, i) => `row ${i % 97} ${i}\n`).join(''));
    const z = await compressBzip2Async(data, { blockBytes: 30000 });
    expect(z.subarray(0, 4).toString()).toBe('BZh9');
    expect(systemBzip2(z).equals(data)).toBe(true);
  });

  it('random inputs (and runs-heavy ones over three byte values) round-trip through our decoder', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 3000 }),
          fc.array(fc.integer({ min: 0, max: 2 }), { maxLength: 3000 }).map((a) => Uint8Array.from(a)),
        ),
        fc.integer({ min: 1, max: 9 }),
        (bytes, level) => {
          const data = Buffer.from(bytes);
          expect(Buffer.from(decompressBzip2(compressBzip2(data, level))).equals(data)).toBe(true);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('refuses a level outside 1..9', () => {
    expect(() => compressBzip2(Buffer.from('x'), 0)).toThrow(RangeError);
  });
});
