/**
 * RemoteBuilder end to end against real Nix 2.8: `nix-daemon --stdio` (ssh-ng://) and
 * `nix-store --serve --write` (ssh://) over private chroot stores, run locally the way Nix runs
 * `localhost` machines (bash -c instead of ssh). Outputs must equal real Nix's own build.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../../src/store/local-store.js';
import { RemoteBuildError } from '../../src/remote/errors.js';
import { machine } from '../../src/remote/machines.js';
import { buildOnRemote, MachineBuilder } from '../../src/remote/remote-builder.js';
import { loadExeca, StdioTransport, type Transport } from '../../src/remote/transport.js';
import { nix, nixOk } from '../helpers/nix.js';
import { cloneLocal, makeFixture, referenceBuild, remoteEnv, type Fixture } from './fixture.js';

/**
 * A transport whose stderr lines come as late as ssh may pass them on: each line is held until the next chunk
 * of stdout has been passed on, and given just after it (before the chunk after that), as ssh, reading the
 * remote's two pipes apart, may write what the remote wrote to stderr after what it wrote to stdout since.
 */
function stderrAfterStdout(onStderr: (line: string) => void, spawn: (held: (line: string) => void) => Transport): Transport {
  let held: string[] = [];
  let late: string[] = [];
  const giveLate = (): void => {
    const lines = late;
    late = [];
    for (const l of lines) onStderr(l);
  };
  const inner = spawn((line) => held.push(line));
  const input = new PassThrough();
  inner.input.on('data', (chunk: Buffer) => {
    giveLate();
    late = held;
    held = [];
    input.write(chunk);
    setImmediate(giveLate);
  });
  inner.input.on('end', () => {
    giveLate();
    late = held;
    held = [];
    giveLate();
    input.end();
  });
  return {
    input,
    output: inner.output,
    description: inner.description,
    closed: inner.closed,
    stderrTail: () => inner.stderrTail(),
    close: () => inner.close(),
  };
}

describe.skipIf(!nixOk())('RemoteBuilder with real Nix 2.8 remotes', () => {
  let fx: Fixture;
  let store: LocalStore;
  let ref: Map<string, { path: string; narHash: string }>;
  const builders: MachineBuilder[] = [];

  beforeAll(async () => {
    fx = makeFixture();
    ref = referenceBuild(fx, 'top');
    store = await LocalStore.open({ root: fx.localRoot });
  });
  afterAll(async () => {
    await Promise.all(builders.map((b) => b.close()));
    await store?.close();
  });

  function builder(uri: string, opts: { maxJobs?: number; speedFactor?: number } = {}): MachineBuilder {
    const b = new MachineBuilder(machine({ storeUri: uri, maxJobs: opts.maxJobs ?? 1, speedFactor: opts.speedFactor }), { env: remoteEnv() });
    builders.push(b);
    return b;
  }

  it('builds over ssh-ng:// (nix-daemon --stdio): copies the missing inputs, streams the log, copies outputs back equal to a local Nix build', async () => {
    const remoteRoot = path.join(fx.dir, 'remote-ng');
    const b = builder(`ssh-ng://localhost?remote-store=${encodeURIComponent(remoteRoot)}`);
    const drv = fx.readDrv(fx.drvs.top);
    const lines: string[] = [];
    const r = await b.build(fx.drvs.top, drv, { store, onLog: (l) => lines.push(l) });
    expect(r.errorMsg).toBe('');
    expect(r.status).toBe('built');
    expect(r.machine).toBe(b.name);
    expect(lines).toContain('building top');
    // The dependency output and the helper source were missing on the remote and got copied.
    const depOut = nix('nix-store', ['--store', fx.localRoot, '-q', '--outputs', fx.drvs.dep]);
    expect(r.copiedInputs).toContain(depOut);
    expect(r.copiedInputs.some((p) => p.endsWith('-helper.sh'))).toBe(true);
    // Outputs: same paths and NAR hashes as real Nix's build, valid locally, references registered.
    for (const name of ['out', 'dev']) {
      const p = r.builtOutputs.get(name)!;
      expect(p).toBe(ref.get(name)!.path);
      const info = await store.queryPathInfo(p);
      expect(info?.narHash.toString('base32')).toBe(ref.get(name)!.narHash);
      expect(info?.deriver).toBe(fx.drvs.top);
    }
    const outInfo = await store.queryPathInfo(r.builtOutputs.get('out')!);
    expect(outInfo?.references).toContain(depOut);
    expect(readFileSync(path.join(fx.localRoot, r.builtOutputs.get('out')!, 'helper'), 'utf8')).toBe('from-helper\n');
    // Real Nix agrees the copied output is intact.
    expect(nix('nix-store', ['--store', fx.localRoot, '--verify-path', r.builtOutputs.get('out')!])).toBe('');
    // The remote store has the output too (it built it).
    expect(nix('nix-store', ['--store', remoteRoot, '-q', '--hash', r.builtOutputs.get('out')!])).toBe(ref.get('out')!.narHash);

    // A failing build is a result with the remote's message, and the same connection serves it.
    const f = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store, onLog: (l) => lines.push(l) });
    expect(f.status).toBe('permanent-failure');
    expect(f.errorMsg).toMatch(/builder for '.*fail\.drv' failed with exit code 3/);
    expect(lines).toContain('about to fail');
    expect(f.builtOutputs.size).toBe(0);
    expect(b.connectionCount).toBe(1);
  });

  it('builds over ssh:// (nix-store --serve --write) with the build log from its stderr', async () => {
    const remoteRoot = path.join(fx.dir, 'remote-serve');
    const b = builder(`ssh://localhost?remote-store=${encodeURIComponent(remoteRoot)}`);
    // A second local store, so the outputs are copied back again.
    const store2 = await cloneLocal(fx, store, 'local2');
    try {
      const lines: string[] = [];
      const r = await b.build(fx.drvs.top, fx.readDrv(fx.drvs.top), { store: store2, onLog: (l) => lines.push(l) });
      expect(r.status).toBe('built');
      expect(lines.join('\n')).toContain('building top');
      for (const name of ['out', 'dev']) {
        const info = await store2.queryPathInfo(r.builtOutputs.get(name)!);
        expect(info?.narHash.toString('base32')).toBe(ref.get(name)!.narHash);
      }
      expect(r.copiedOutputs.length).toBe(2);
      const f = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store: store2 });
      expect(f.status).toBe('permanent-failure');
      expect(b.connectionCount).toBe(1);
    } finally {
      await store2.close();
    }
  });

  it("ssh://: every line the remote logged before its result is in the build's log, though ssh passes its stderr on after its stdout", async () => {
    const remoteRoot = path.join(fx.dir, 'remote-drain');
    await loadExeca();
    const b = new MachineBuilder(machine({ storeUri: `ssh://localhost?remote-store=${encodeURIComponent(remoteRoot)}`, maxJobs: 1 }), {
      env: remoteEnv(),
      openTransport: (_m, onStderr) =>
        stderrAfterStdout(onStderr, (held) =>
          StdioTransport.spawn('nix-store', ['--serve', '--write', '--store', remoteRoot], { env: remoteEnv(), onStderr: held }),
        ),
    });
    builders.push(b);
    const lines: string[] = [];
    const r = await b.build(fx.drvs.chatty, fx.readDrv(fx.drvs.chatty), { store, onLog: (l) => lines.push(l) });
    expect(r.status).toBe('permanent-failure');
    const want = [...Array.from({ length: 200 }, (_, i) => `line ${i + 1}`), 'last line'];
    expect(lines.filter((l) => /^(line \d+|last line)$/.test(l))).toEqual(want);
    // The connection serves the next build, whose log has its own lines alone.
    const next: string[] = [];
    const f = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store, onLog: (l) => next.push(l) });
    expect(f.status).toBe('permanent-failure');
    expect(next).toContain('about to fail');
    expect(next.some((l) => /^(line \d+|last line)$/.test(l))).toBe(false);
    expect(b.connectionCount).toBe(1);
  });

  for (const scheme of ['ssh-ng', 'ssh'] as const)
    it(`${scheme}://: cancellation stops the remote build promptly and the machine stays usable`, async () => {
      const remoteRoot = path.join(fx.dir, `remote-cancel-${scheme}`);
      const b = builder(`${scheme}://localhost?remote-store=${encodeURIComponent(remoteRoot)}`);
      // The remote builder process (sh -c '…; sleep 30; …; : <this fixture's marker>'), seen from here.
      const running = (): boolean =>
        readdirSync('/proc')
          .filter((d) => /^\d+$/.test(d))
          .some((d) => {
            try {
              return readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(`sleep 30; mkdir $out; : ${fx.marker}`);
            } catch {
              return false;
            }
          });
      let sawRunning = false;
      const ac = new AbortController();
      const t0 = Date.now();
      const p = b.build(fx.drvs.slow, fx.readDrv(fx.drvs.slow), {
        store,
        signal: ac.signal,
        onLog: (l) => {
          if (l === 'sleeping') {
            sawRunning = running();
            ac.abort(new Error('user cancelled'));
          }
        },
      });
      const err = await p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RemoteBuildError);
      expect((err as RemoteBuildError).kind).toBe('aborted');
      expect((err as RemoteBuildError).machine).toBe(b.name);
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(b.load).toBe(0);
      expect(sawRunning).toBe(true);
      for (let i = 0; i < 50 && running(); i++) await new Promise((r) => setTimeout(r, 100));
      expect(running()).toBe(false);
      // The next build opens a new connection and works.
      const r = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store });
      expect(r.status).toBe('permanent-failure');
    });

  for (const scheme of ['ssh-ng', 'ssh'] as const)
    it(`${scheme}://: the build's timeout reaches the remote (timed-out), and later builds are not limited by it`, async () => {
      const b = builder(`${scheme}://localhost?remote-store=${encodeURIComponent(path.join(fx.dir, `remote-timeout-${scheme}`))}`);
      const t0 = Date.now();
      const r = await b.build(fx.drvs.slow, fx.readDrv(fx.drvs.slow), { store, buildSettings: { buildTimeout: 1 } });
      expect(r.status).toBe('timed-out');
      expect(r.errorMsg).toMatch(/timed out after 1 seconds/);
      expect(Date.now() - t0).toBeLessThan(20_000);
      // The same connection, default settings again: slow2 (3 s) is not cut off.
      const ok = await b.build(fx.drvs.slow2, fx.readDrv(fx.drvs.slow2), { store: await cloneLocal(fx, store, `local-timeout-${scheme}`) });
      expect(ok.status).toBe('built');
      expect(b.connectionCount).toBe(1);
    });

  it('a local store that fails while an output streams in is a copy error, and the connection stays usable', async () => {
    const b = builder(`ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(fx.dir, 'remote-storefail'))}`);
    const local = await cloneLocal(fx, store, 'local-storefail');
    try {
      let failOnce = true;
      const flaky = new Proxy(local, {
        get(target, prop, receiver) {
          if (prop === 'addToStore' && failOnce) {
            return async (_info: unknown, nar: AsyncIterable<Uint8Array>) => {
              failOnce = false;
              for await (const chunk of nar) {
                void chunk;
                throw new Error('disk full');
              }
            };
          }
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
      const err = await b.build(fx.drvs.top, fx.readDrv(fx.drvs.top), { store: flaky }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RemoteBuildError);
      expect((err as RemoteBuildError).kind).toBe('copy');
      expect((err as Error).message).toContain('disk full');
      // Same connection, no hang: the rest of the NAR was drained.
      const r = await b.build(fx.drvs.top, fx.readDrv(fx.drvs.top), { store: local });
      expect(r.status).toBe('already-valid'); // the remote built it the first time; now only the copy back
      expect(r.copiedOutputs.length).toBe(2);
      expect(await local.isValidPath(r.builtOutputs.get('out')!)).toBe(true);
      expect(b.connectionCount).toBe(1);
    } finally {
      await local.close();
    }
  });

  it("a build while every fitting machine is busy is declined at once when a local slot is free (Nix's hook declines then)", async () => {
    const c = builder(`ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(fx.dir, 'remote-busy'))}`);
    const running = buildOnRemote([c], fx.drvs.slow2, fx.readDrv(fx.drvs.slow2), {}, { store });
    for (let i = 0; i < 500 && c.load === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(c.load).toBe(1);
    let asked = 0;
    const started: string[] = [];
    const other = await buildOnRemote(
      [c],
      fx.drvs.fail,
      fx.readDrv(fx.drvs.fail),
      {},
      {
        store,
        localSlotFree: () => (asked++, true),
        onStart: (m) => started.push(m),
      },
    );
    expect(other.kind).toBe('declined');
    if (other.kind === 'declined') expect(other.error.message).toBe(`every machine that can build '${fx.drvs.fail}' is busy`);
    expect([asked, started]).toEqual([1, []]);
    expect(c.load).toBe(1);
    expect((await running).kind).toBe('built');
  });

  it('spreads builds over two remotes by slots, and redoes a build elsewhere when its machine dies mid-build', async () => {
    const rootA = path.join(fx.dir, 'remote-a');
    const rootB = path.join(fx.dir, 'remote-b');
    const wrapA = fx.wrapper('a', 'nix-daemon');
    const a = builder(`ssh-ng://localhost?remote-store=${encodeURIComponent(rootA)}&remote-program=${encodeURIComponent(wrapA)}`, { speedFactor: 4 });
    const b = builder(`ssh-ng://localhost?remote-store=${encodeURIComponent(rootB)}`);
    // Two builds at once, one slot each: one runs on each machine.
    const [r1, r2] = await Promise.all([
      buildOnRemote([a, b], fx.drvs.slow2, fx.readDrv(fx.drvs.slow2), {}, { store }),
      buildOnRemote([a, b], fx.drvs.fail, fx.readDrv(fx.drvs.fail), {}, { store }),
    ]);
    expect(r1.kind).toBe('built');
    expect(r2.kind).toBe('built');
    if (r1.kind !== 'built' || r2.kind !== 'built') return;
    expect(new Set([r1.result.machine, r2.result.machine])).toEqual(new Set([a.name, b.name]));
    expect(r1.result.machine).toBe(a.name); // the faster machine got the first build
    expect(r1.result.status).toBe('built');
    // Now machine A dies while building: the build is redone on B.
    const pidFile = path.join(fx.dir, 'pids', 'a');
    expect(existsSync(pidFile)).toBe(true);
    let killed = false;
    const failedMachines: RemoteBuildError[] = [];
    const d = await buildOnRemote(
      [a, b],
      fx.drvs.slow3,
      fx.readDrv(fx.drvs.slow3),
      {},
      {
        store,
        onMachineFailed: (e) => failedMachines.push(e),
        onEvent: (e) => {
          if (e.type === 'result' && e.fields[0] === 'sleeping' && !killed) {
            killed = true;
            process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
          }
        },
      },
    );
    expect(d.kind).toBe('built');
    if (d.kind !== 'built') return;
    expect(failedMachines.map((e) => e.machine)).toEqual([a.name]);
    expect(failedMachines[0]!.kind).toBe('connection');
    expect(d.result.machine).toBe(b.name);
    expect(d.result.status).toBe('built');
    expect(await store.isValidPath(d.result.builtOutputs.get('out')!)).toBe(true);
    expect(a.disabledReason()).toMatch(/failed|unreachable|lost/);
  });

  it('an unreachable machine is a typed connection error naming the machine', async () => {
    const b = builder('ssh-ng://localhost?remote-program=/nonexistent/nix-daemon');
    const err = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteBuildError);
    expect((err as RemoteBuildError).kind).toBe('connection');
    expect((err as RemoteBuildError).message).toContain(b.name);
    expect((err as RemoteBuildError).message).toMatch(/No such file|not found/);
    expect(b.disabledReason()).toMatch(/unreachable/);
  });
});
