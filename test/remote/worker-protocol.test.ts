/**
 * The worker protocol client against a real `nix-daemon --stdio` of Nix 2.8 over a private chroot store,
 * at our pinned version (1.35, answered at 2.8's 1.34) and at 1.21 (Nix 2.3's) to exercise the old-peer code paths.
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
  afterAll(async () => {
    await Promise.all(conns.map((c) => c.close()));
  });

  async function open(root: string, clientVersion?: number): Promise<WorkerConnection> {
    const t = StdioTransport.spawn('nix-daemon', ['--stdio', '--store', root], { env: remoteEnv() });
    const c = await WorkerConnection.connect(t, { clientVersion, name: `daemon(${root})` });
    conns.push(c);
    return c;
  }

  for (const [label, version] of [
    ['1.35', WORKER_PROTOCOL_VERSION],
    ['1.21', (1 << 8) | 21],
  ] as const) {
    it(`handshake, AddToStoreNar, queries and NarFromPath at protocol ${label}`, async () => {
      const root = path.join(tempDir('realise-worker-'), 'store');
      const c = await open(root, version);
      expect(c.daemonVersion).toBe((1 << 8) | 34);
      expect(c.version).toBe(Math.min(version, (1 << 8) | 34)); // answered at the lower version
      expect(c.remoteTrustsUs).toBeUndefined(); // 2.8 does not tell
      expect(c.daemonNixVersion).toBe(version >= 0x121 ? '2.8.0' : undefined);

      const contents = `hello from ${label}\n`;
      const p = computeTextPath('hello.txt', contents);
      const nar = narOfRegularFile(contents);
      const info = {
        path: p,
        narHash: Hash.of('sha256', nar),
        narSize: nar.length,
        references: [],
        ca: `text:${Hash.of('sha256', contents).toString('base32')}`,
      };
      expect(await c.isValidPath(p)).toBe(false);
      expect(await c.queryPathInfo(p)).toBeUndefined();
      await c.addToStoreNar(
        info,
        (async function* () {
          yield nar.subarray(0, 10);
          yield nar.subarray(10);
        })(),
      );
      expect(await c.isValidPath(p)).toBe(true);
      expect(await c.queryValidPaths([p, computeTextPath('other', 'x')])).toEqual(new Set([p]));
      const missing = await c.queryMissing([p, computeTextPath('other', 'x')]);
      expect(missing.unknown).toEqual([computeTextPath('other', 'x')]);
      expect(missing.willBuild).toEqual([]);
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
      const err = await c
        .addToStoreNar(
          { path: q, narHash: Hash.of('sha256', 'nope'), narSize: bad.length, references: [] },
          (async function* () {
            yield bad;
          })(),
        )
        .then(
          () => undefined,
          (e: unknown) => e,
        );
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
    const err = await WorkerConnection.connect(t, { name: 'ssh-ng://nowhere' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteConnectionError);
    // Nix 2.8's words for an ssh-ng:// store whose stream ended; what the remote said is kept beside them.
    expect((err as Error).message).toContain("cannot open connection to remote store 'ssh-ng://nowhere': error: unexpected end-of-file");
    expect((err as RemoteConnectionError).remoteStderr).toBe('bash: nix-daemon: command not found');
  });
});

/** A scripted peer over in-memory streams: the 1.35 handshake (Lix / Nix 2.18) and the log stream. */
describe('worker protocol against a scripted 1.35 daemon', () => {
  it('reads the trust status, forwards activities, results and messages, and parses errors with traces', async () => {
    const { PassThrough } = await import('node:stream');
    const { WireReader, WireWriter } = await import('../../src/remote/wire.js');
    const toClient = new PassThrough();
    const toServer = new PassThrough();
    let closed!: (x: { message: string }) => void;
    const transport = {
      input: toClient,
      output: toServer,
      description: 'fake',
      stderrTail: () => '',
      closed: new Promise<{ message: string }>((r) => {
        closed = r;
      }),
      close: async () => {
        toClient.end();
        closed({ message: 'closed' });
      },
    };
    const sr = new WireReader(toServer);
    const sw = new WireWriter(toClient);
    const server = (async () => {
      expect(await sr.u64()).toBe(0x6e697863);
      await sw.u64(0x6478696f).u64(0x123).flush();
      expect(await sr.u64()).toBe(0x123);
      expect(await sr.u64()).toBe(0); // cpu affinity
      expect(await sr.u64()).toBe(0); // reserveSpace
      await sw.string('2.18.9').u64(1).u64(0x616c7473).flush();
      expect(await sr.u64()).toBe(19); // SetOptions
      for (let i = 0; i < 12; i++) await sr.u64();
      expect([...(await sr.stringMap())]).toEqual([['sandbox', 'relaxed']]);
      await sw.u64(0x616c7473).flush();
      // IsValidPath with a log stream.
      expect(await sr.u64()).toBe(1);
      await sr.string();
      sw.u64(0x53545254)
        .u64(2n ** 60n)
        .u64(3)
        .u64(105)
        .string('building x')
        .u64(2)
        .u64(1)
        .string('/nix/store/x.drv')
        .u64(0)
        .u64(7)
        .u64(0);
      sw.u64(0x52534c54)
        .u64(2n ** 60n)
        .u64(101)
        .u64(1)
        .u64(1)
        .string('a log line');
      sw.u64(0x6f6c6d67).string('a message\n');
      sw.u64(0x53544f50).u64(2n ** 60n);
      await sw.u64(0x616c7473).u64(1).flush();
      // An error with a trace.
      expect(await sr.u64()).toBe(1);
      await sr.string();
      await sw
        .u64(0x63787470)
        .string('Error')
        .u64(0)
        .string('Error')
        .string('\x1b[31;1merror:\x1b[0m boom')
        .u64(0)
        .u64(1)
        .u64(0)
        .string('while doing x')
        .flush();
    })();
    const events: unknown[] = [];
    const c = await WorkerConnection.connect(transport, { name: 'fake', overrides: { sandbox: 'relaxed' }, onLog: (e) => events.push(e) });
    expect(c.version).toBe(0x123);
    expect(c.daemonNixVersion).toBe('2.18.9');
    expect(c.remoteTrustsUs).toBe(true);
    const p = computeTextPath('x', 'y');
    const { buildLogLine } = await import('../../src/remote/worker-protocol.js');
    const ok = await c.isValidPath(p);
    expect(ok).toBe(true);
    expect(events).toEqual([
      { type: 'start-activity', id: 2n ** 60n, level: 3, activityType: 105, text: 'building x', fields: ['/nix/store/x.drv', 7], parent: 0n },
      { type: 'result', id: 2n ** 60n, resultType: 101, fields: ['a log line'] },
      { type: 'message', text: 'a message' },
      { type: 'stop-activity', id: 2n ** 60n },
    ]);
    expect(events.map((e) => buildLogLine(e as never)).filter(Boolean)).toEqual(['a log line']);
    const err = await c.isValidPath(p).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteDaemonError);
    expect((err as RemoteDaemonError).message).toBe("'fake': error: boom");
    expect((err as RemoteDaemonError).traces).toEqual(['while doing x']);
    expect(c.usable).toBe(true);
    await server;
    await c.close();
  });
});
