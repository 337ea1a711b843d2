/**
 * NarFromPath of both protocols (ProtocolConnection.streamNar), against real Nix 2.8 on a private chroot
 * store: `nix-daemon --stdio` (worker protocol) and `nix-store --serve --write` (serve protocol). A NAR
 * read to its end is the bytes Nix has; a consumer that stops after the first chunk leaves the connection
 * usable (the rest is read off the wire), and the next operation answers on it.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServeConnection } from '../../src/remote/serve-protocol.js';
import { StdioTransport } from '../../src/remote/transport.js';
import { WorkerConnection } from '../../src/remote/worker-protocol.js';
import { collect, dumpPath } from '../../src/store/nar.js';
import { nix, nixOk, removeTreeSync, tempDir } from '../helpers/nix.js';
import { remoteEnv } from './fixture.js';

describe.skipIf(!nixOk())('NAR streaming of both protocols (Nix 2.8)', () => {
  let dir: string;
  let root: string;
  let big: string;
  let small: string;
  beforeAll(() => {
    dir = tempDir('realise-nar-stream-');
    root = path.join(dir, 'store');
    // 3 MiB: more than one chunk of the reader (256 KiB), so stopping after the first leaves most unread.
    const file = path.join(dir, 'big');
    writeFileSync(file, Buffer.alloc(3 << 20, 'x'));
    big = nix('nix-store', ['--store', root, '--add', file]);
    writeFileSync(path.join(dir, 'small'), 'small\n');
    small = nix('nix-store', ['--store', root, '--add', path.join(dir, 'small')]);
  });
  afterAll(() => removeTreeSync(dir));

  const open = {
    worker: () => WorkerConnection.connect(StdioTransport.spawn('nix-daemon', ['--stdio', '--store', root], { env: remoteEnv() }), { name: 'daemon' }),
    serve: () => ServeConnection.connect(StdioTransport.spawn('nix-store', ['--serve', '--write', '--store', root], { env: remoteEnv() }), { name: 'serve' }),
  };

  for (const protocol of ['worker', 'serve'] as const)
    it(`${protocol}: a full read is Nix's NAR; stopping after the first chunk keeps the connection usable`, async () => {
      const c = await open[protocol]();
      try {
        const want = await collect(dumpPath(path.join(root, big)));
        expect((await collect(c.narFromPath(big))).equals(want)).toBe(true);
        let chunks = 0;
        for await (const chunk of c.narFromPath(big)) {
          expect(chunk.length).toBeLessThan(want.length);
          chunks++;
          break;
        }
        expect(chunks).toBe(1);
        expect(c.usable).toBe(true);
        expect(await c.queryValidPaths([big, small])).toEqual(new Set([big, small]));
        expect((await collect(c.narFromPath(small))).equals(await collect(dumpPath(path.join(root, small))))).toBe(true);
      } finally {
        await c.close();
      }
    });
});
