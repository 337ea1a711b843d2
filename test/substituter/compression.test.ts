import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { collect, streamOf } from '../../src/store/nar.js';
import { compressionOf, compressStream, decompressStream, DecompressionError, peek } from '../../src/substituter/compression.js';

const data = Buffer.concat([randomBytes(100_000), Buffer.from('abc'.repeat(150_000)), randomBytes(1000)]);
const tools: Record<string, [string[], string[]]> = {
  xz: [
    ['xz', '-c'],
    ['xz', '-dc'],
  ],
  zstd: [
    ['zstd', '-c', '-q'],
    ['zstd', '-dc', '-q'],
  ],
  gzip: [
    ['gzip', '-c'],
    ['gzip', '-dc'],
  ],
  bzip2: [
    ['bzip2', '-c'],
    ['bzip2', '-dc'],
  ],
};
const sh = (cmd: string[], input: Buffer) => execFileSync(cmd[0]!, cmd.slice(1), { input, maxBuffer: 1 << 28 });

function chunks(b: Buffer, size: number): AsyncIterable<Uint8Array> {
  return (async function* () {
    for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
  })();
}

describe('NAR compression', () => {
  for (const [c, [comp, decomp]] of Object.entries(tools)) {
    it(`${c}: decompresses what the system tool compressed, in odd chunk sizes`, async () => {
      const z = sh(comp, data);
      expect((await collect(decompressStream(c, chunks(z, 777)))).equals(data)).toBe(true);
    });
    it(`${c}: compresses what the system tool decompresses (input in odd chunk sizes)`, async () => {
      const z = await collect(compressStream(c as 'xz', chunks(data, 70_001)));
      expect(sh(decomp, z).equals(data)).toBe(true);
    });
    it(`${c}: a truncated stream is a DecompressionError`, async () => {
      const z = sh(comp, data);
      const err = await collect(decompressStream(c, streamOf(z.subarray(0, Math.floor(z.length * 0.6))))).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DecompressionError);
    });
  }

  it('br: round-trips through node:zlib', async () => {
    const z = await collect(compressStream('br', streamOf(data)));
    expect(z.length).toBeLessThan(data.length);
    expect((await collect(decompressStream('br', chunks(z, 1000)))).equals(data)).toBe(true);
  });

  it('passes source errors through unchanged', async () => {
    const boom = new Error('source failed');
    const src = (async function* () {
      yield sh(tools.xz![0], data).subarray(0, 100);
      throw boom;
    })();
    expect(await collect(decompressStream('xz', src)).catch((e: unknown) => e)).toBe(boom);
  });

  it('bzip2: an aborted signal stops the decompressor', async () => {
    const ac = new AbortController();
    const z = sh(tools.bzip2![0], data);
    const src = (async function* () {
      yield z.subarray(0, 1000);
      await new Promise((r) => setTimeout(r, 200));
      yield z.subarray(1000);
    })();
    setTimeout(() => ac.abort(), 50);
    const err = await collect(decompressStream('bzip2', src, { signal: ac.signal })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
  });

  it('refuses unknown compressions', () => {
    expect(() => decompressStream('lz4', streamOf(data))).toThrow(/unsupported compression 'lz4'/);
  });

  it('bzip2: a run of one byte across chunk boundaries and blocks', async () => {
    const runs = Buffer.concat([Buffer.alloc(1_000_003, 0x61), Buffer.from('b'), Buffer.alloc(300, 0x61)]);
    const z = await collect(compressStream('bzip2', chunks(runs, 254)));
    expect(sh(tools.bzip2![1], z).equals(runs)).toBe(true);
  });
});

describe('compressionOf and peek', () => {
  it('compressionOf finds what the real tools wrote from its first bytes, and nothing in plain data or brotli', async () => {
    for (const c of ['xz', 'zstd', 'gzip', 'bzip2'] as const) {
      const packed = c === 'bzip2' ? execFileSync('bzip2', ['-c'], { input: data }) : execFileSync(tools[c]![0][0]!, tools[c]![0].slice(1), { input: data });
      expect(compressionOf(packed.subarray(0, 6)), c).toBe(c);
    }
    expect(compressionOf(Buffer.from('nix-archive-1'))).toBeUndefined();
    expect(compressionOf(Buffer.from([0xfd, 0x37, 0x7a]))).toBeUndefined();
    expect(compressionOf(await collect(compressStream('br', streamOf(data))))).toBeUndefined();
  });

  it('peek gives at least n bytes, then the whole body again; returning the rest returns the body', async () => {
    let returned = false;
    const body = (async function* () {
      try {
        for (const s of ['ab', 'cd', 'ef', 'gh']) yield Buffer.from(s);
      } finally {
        returned = true;
      }
    })();
    const { head, rest } = await peek(body, 3);
    expect(head.toString()).toBe('abcd');
    expect((await rest.next()).value).toEqual(Buffer.from('abcd'));
    expect((await rest.next()).value).toEqual(Buffer.from('ef'));
    await rest.return?.();
    expect(returned).toBe(true);

    const short = await peek(streamOf(Buffer.from('x')), 6);
    expect(short.head.toString()).toBe('x');
    expect((await collect(short.rest)).toString()).toBe('x');
    const empty = await peek(streamOf(Buffer.alloc(0)), 6);
    expect(empty.head.length).toBe(0);
    expect((await collect(empty.rest)).length).toBe(0);
  });
});
