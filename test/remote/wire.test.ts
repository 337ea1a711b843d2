import { mkdirSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { collect, dumpPath } from '../../src/store/nar.js';
import { RemoteConnectionError, RemoteProtocolError } from '../../src/remote/errors.js';
import { encodeString, encodeU64, WireReader, WireWriter } from '../../src/remote/wire.js';
import { tempDir } from '../helpers/nix.js';

function pipe(): { r: WireReader; w: WireWriter; s: PassThrough } {
  const s = new PassThrough();
  return { r: new WireReader(s), w: new WireWriter(s), s };
}

describe('wire format', () => {
  it('encodes integers little-endian and strings padded to 8 bytes', () => {
    expect(encodeU64(0x0102).toString('hex')).toBe('0201000000000000');
    expect(encodeString('abc').toString('hex')).toBe('0300000000000000' + '6162630000000000');
    expect(encodeString('').length).toBe(8);
    expect(encodeString('12345678').length).toBe(16);
  });

  it('round-trips values through a stream, whatever the chunking', async () => {
    // Re-chunk byte by byte to exercise buffering across chunks.
    const { r: r2, s: s2 } = pipe();
    const s = new PassThrough();
    s.on('data', (b: Buffer) => {
      for (const byte of b) s2.write(Buffer.from([byte]));
    });
    const w = new WireWriter(s);
    w.u64(42)
      .u64(true)
      .string('héllo')
      .strings(['a', 'bb', ''])
      .stringMap([['k', 'v']])
      .u64(2n ** 40n);
    await w.flush();
    expect(await r2.u64()).toBe(42);
    expect(await r2.bool()).toBe(true);
    expect(await r2.string()).toBe('héllo');
    expect(await r2.strings()).toEqual(['a', 'bb', '']);
    expect([...(await r2.stringMap())]).toEqual([['k', 'v']]);
    expect(await r2.u64()).toBe(2 ** 40);
  });

  it('refuses non-zero padding and reports a closed stream as a connection error', async () => {
    const { r, s } = pipe();
    s.write(Buffer.concat([encodeU64(1), Buffer.from([0x61, 1, 0, 0, 0, 0, 0, 0])]));
    await expect(r.string()).rejects.toBeInstanceOf(RemoteProtocolError);
    const p2 = pipe();
    p2.s.end(encodeU64(5).subarray(0, 4));
    await expect(p2.r.u64()).rejects.toBeInstanceOf(RemoteConnectionError);
  });

  it('finds the end of a NAR in a stream (Nix copyNAR) and passes its bytes through unchanged', async () => {
    const dir = tempDir('realise-wire-');
    const root = path.join(dir, 'tree');
    mkdirSync(path.join(root, 'sub', 'empty'), { recursive: true });
    writeFileSync(path.join(root, 'a.txt'), 'hello\n');
    writeFileSync(path.join(root, 'sub', 'big.bin'), Buffer.alloc(3 << 20, 7));
    writeFileSync(path.join(root, 'sub', 'zero'), '');
    writeFileSync(path.join(root, 'exe'), '#!/bin/sh\n');
    chmodSync(path.join(root, 'exe'), 0o755);
    symlinkSync('a.txt', path.join(root, 'link'));
    const single = path.join(dir, 'file');
    writeFileSync(single, 'x');
    for (const p of [root, single, path.join(root, 'link'), path.join(root, 'sub', 'empty')]) {
      const nar = await collect(dumpPath(p));
      const { r, s } = pipe();
      // NAR followed by trailing protocol data that must not be consumed.
      s.write(Buffer.concat([nar, encodeU64(0xabcdef)]));
      const got = await collect(r.nar(1 << 16));
      expect(got.equals(nar)).toBe(true);
      expect(await r.u64()).toBe(0xabcdef);
    }
  });

  it('rejects a malformed NAR', async () => {
    const { r, s } = pipe();
    s.write(Buffer.concat([encodeString('nix-archive-1'), encodeString('('), encodeString('type'), encodeString('fifo')]));
    await expect(collect(r.nar())).rejects.toBeInstanceOf(RemoteProtocolError);
  });

  it('writes and reads framed streams', async () => {
    const { r, w } = pipe();
    const data = Buffer.alloc(600_000, 3);
    async function* src(): AsyncGenerator<Uint8Array> {
      yield data.subarray(0, 100);
      yield data.subarray(100);
    }
    const writing = w.framed(src(), 1 << 18);
    const frames: Buffer[] = [];
    for await (const f of r.framed()) frames.push(f);
    await writing;
    expect(frames.length).toBe(4); // 100, 262144, 262144, rest
    expect(Buffer.concat(frames).equals(data)).toBe(true);
  });
});
