/**
 * The worker protocol client against a real `nix-daemon --stdio` of Nix 2.8 over a private chroot store,
 * at our pinned version (1.34) and at 1.21 (Nix 2.3's) to exercise the old-peer code paths.
 */
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Hash } from '../../src/store/hash.js';
import { collect, narOfRegularFile } from '../../src/store/nar.js';
import { computeTextPath } from '../../src/store/store-path.js';
import { InvalidStorePathError } from '../../src/store/errors.js';
import { RemoteConnectionError, RemoteDaemonError } from '../../src/remote/errors.js';
import { StdioTransport } from '../../src/remote/transport.js';
import { WORKER_PROTOCOL_VERSION, WorkerConnection } from '../../src/remote/worker-protocol.js';
import { nix, nixOk, tempDir } from '../helpers/nix.js';
import { remoteEnv } from './fixture.js';

describe.skipIf(!nixOk())('worker protocol against nix-daemon --stdio (Nix 2.8)', () => {
  const conns: WorkerConnection[] = [];
  afterAll(async () => { await Promise.all(conns.map((c) => c.close())); });

  async function open(root: string, clientVersion?: number): Promise<WorkerConnection> {
    const t = StdioTransport.spawn('nix-daemon', ['--stdio', '--store', root], { env: remoteEnv() });
    const c = await WorkerConnection.connect(t, { clientVersion, name: `daemon(${root})` });
    conns.push(c);
    return c;
  }

  for (const [label, version] of [['1.34', WORKER_PROTOCOL_VERSION], ['1.21', (1 << 8) | 21]] as const) {
    it(`handshake, AddToStoreNar, queries and NarFromPath at protocol ${label}`, async () => {
      const root = path.join(tempDir('realise-worker-'), 'store');
      const c = await open(root, version);
      expect(c.daemonVersion).toBe((1 << 8) | 34);
      expect(c.version).toBe(version);
      expect(c.daemonNixVersion).toBe(version >= 0x121 ? '2.8.0' : undefined);

      const contents = `hello from ${label}\n`;
      const p = computeTextPath('hello.txt', contents);
      const nar = narOfRegularFile(contents);
      const info = { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [], ca: `text:${Hash.of('sha256', contents).toString('base32')}` };
      expect(await c.isValidPath(p)).toBe(false);
      expect(await c.queryPathInfo(p)).toBeUndefined();
      await c.addToStoreNar(info, (async function* () { yield nar.subarray(0, 10); yield nar.subarray(10); })());
      expect(await c.isValidPath(p)).toBe(true);
      expect(await c.queryValidPaths([p, computeTextPath('other', 'x')])).toEqual(new Set([p]));
      const got = await c.queryPathInfo(p);
      expect(got?.narHash.equals(info.narHash)).toBe(true);
      expect(got?.narSize).toBe(nar.length);
      expect(got?.ca).toBe(info.ca);
      expect((await collect(c.narFromPath(p))).equals(nar)).toBe(true);
      // Real Nix sees the path with the same hash.
      expect(nix('nix-store', ['--store', root, '-q', '--hash', p])).toBe(info.narHash.toString('base32', true));

      // A wrong NAR hash is refused by the daemon; the connection stays usable.
      const bad = narOfRegularFile('tampered');
      const q = computeTextPath('bad.txt', 'tampered');
      const err = await c.addToStoreNar({ path: q, narHash: Hash.of('sha256', 'nope'), narSize: bad.length, references: [] }, (async function* () { yield bad; })()).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(RemoteDaemonError);
      expect((err as Error).message).toMatch(/hash mismatch/);
      expect(await c.isValidPath(q)).toBe(false);
      expect(await c.isValidPath(p)).toBe(true);
    });
  }

  it('validates paths before sending and reports a dead daemon as a connection error', async () => {
    const c = await open(path.join(tempDir('realise-worker-'), 'store'));
    await expect(c.isValidPath('/tmp/not-a-store-path')).rejects.toBeInstanceOf(InvalidStorePathError);
    expect(c.usable).toBe(true);
    await c.close();
    await expect(c.isValidPath(computeTextPath('x', 'y'))).rejects.toBeInstanceOf(RemoteConnectionError);
  });

  it('a program that is not a Nix daemon fails the handshake with a clear error', async () => {
    const t = StdioTransport.spawn('sh', ['-c', 'echo "bash: nix-daemon: command not found" >&2; exit 127']);
    const err = await WorkerConnection.connect(t, { name: 'ssh-ng://nowhere' }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(RemoteConnectionError);
    expect((err as Error).message).toContain("cannot open a connection to 'ssh-ng://nowhere'");
    expect((err as Error).message).toContain('command not found');
  });
});
