/**
 * LinuxSandbox.run behaviour on both backends: exits, signals, abort, outputs landing at their physical
 * paths (also after a failure), chroot cleanup, sandbox paths, the pre-build hook, setup failures.
 */
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync, lstatSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinuxSandbox, type LinuxSandboxBackend } from '../../src/platform/linux-sandbox.js';
import type { SandboxExit, SandboxRequest } from '../../src/platform/sandbox.js';
import { chrootDirFor, flushRemovals } from '../../src/platform/chroot.js';
import { bwrapOk } from '../helpers/nix.js';
import { ccOk, makeFixture, storePath, type Fixture } from './sandbox-fixture.js';

async function build(sb: LinuxSandbox, req: SandboxRequest, signal?: AbortSignal, onChunk?: (s: string) => void) {
  const chunks: Buffer[] = [];
  const exit: SandboxExit = await sb.run(req, {
    signal,
    onOutput: (c) => {
      chunks.push(c);
      onChunk?.(Buffer.concat(chunks).toString());
    },
  });
  return { exit, log: Buffer.concat(chunks).toString() };
}

const variants: [string, LinuxSandboxBackend, boolean][] = [
  ...(ccOk()
    ? ([
        ['helper server', 'helper', true],
        ['helper per build', 'helper', false],
      ] as [string, LinuxSandboxBackend, boolean][])
    : []),
  ['bwrap', 'bwrap', false],
];

describe.skipIf(!bwrapOk()).each(variants)('LinuxSandbox (%s): running builders', (_label, backend, server) => {
  let fx: Fixture;
  let sb: LinuxSandbox;
  beforeAll(async () => {
    fx = makeFixture();
    sb = new LinuxSandbox({ backend, server });
    expect(await sb.backend()).toBe(backend);
  });
  afterAll(() => sb?.close());

  it('streams merged output, returns the exit code, moves outputs to their physical path, removes the chroot', async () => {
    const req = fx.request('ok', 'echo out1; echo err1 >&2; echo out2; mkdir $out; echo hi > $out/f; exit 7');
    const { exit, log } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 7 });
    expect(log).toBe('out1\nerr1\nout2\n');
    expect(readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'f'), 'utf8')).toBe('hi\n');
    expect(existsSync(chrootDirFor(fx.realStoreDir, req.drvPath))).toBe(false);
  });

  it('multiple outputs, a file output and a symlink output all land at their physical paths', async () => {
    const dev = storePath('dev');
    const link = storePath('link');
    const req = fx.request('multi', `echo file > $out; mkdir ${dev}; echo d > ${dev}/x; ln -s /nix/store/nowhere ${link}`, {});
    const r = { ...req, outputPaths: [req.outputPaths[0]!, dev, link] };
    expect((await build(sb, r)).exit).toEqual({ kind: 'exited', code: 0 });
    expect(readFileSync(fx.realPath(r.outputPaths[0]!), 'utf8')).toBe('file\n');
    expect(readFileSync(path.join(fx.realPath(dev), 'x'), 'utf8')).toBe('d\n');
    expect(lstatSync(fx.realPath(link)).isSymbolicLink()).toBe(true);
  });

  it('a derivation with more outputs than the helper moves itself (65): every one lands at its physical path', async () => {
    const many = Array.from({ length: 65 }, (_, i) => storePath(`many-${i}`));
    const req = fx.request('many', many.map((p, i) => `echo ${i} > ${p}`).join('; '), {});
    const r = { ...req, outputPaths: many };
    expect((await build(sb, r)).exit).toEqual({ kind: 'exited', code: 0 });
    expect(many.map((p) => readFileSync(fx.realPath(p), 'utf8'))).toEqual(many.map((_, i) => `${i}\n`));
  });

  it('an output whose physical path holds a stale non-empty directory (which a rename cannot replace) still lands there', async () => {
    const req = fx.request('stale-out', 'mkdir $out; echo new > $out/f');
    const real = fx.realPath(req.outputPaths[0]!);
    mkdirSync(path.join(real, 'sub'), { recursive: true });
    writeFileSync(path.join(real, 'sub/old'), 'old\n');
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    expect(readdirSync(real)).toEqual(['f']);
    expect(readFileSync(path.join(real, 'f'), 'utf8')).toBe('new\n');
  });

  it("a failed build's outputs are moved out of the chroot too (for debugging, as Nix does)", async () => {
    const req = fx.request('fail', 'mkdir $out; echo partial > $out/p; exit 1');
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 1 });
    expect(readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'p'), 'utf8')).toBe('partial\n');
  });

  it('the builder is PID 1: its own fatal signals are ignored, as in Nix; a child killed by a signal shows in the exit code', async () => {
    const req = fx.request('sig', "kill -KILL $$; echo still-here; sh -c 'kill -TERM $$'; exit $?");
    const { exit, log } = await build(sb, req);
    expect(log).toBe('still-here\nTerminated\n');
    expect(exit).toEqual({ kind: 'exited', code: 128 + 15 });
  });

  it('abort kills the whole sandbox promptly and cleans up', async () => {
    const marker = path.join(fx.dir, `alive-${backend}-${server}`);
    const req = fx.request('abort', `(sleep 2; touch /build/late) & echo started; sleep 30`);
    const ac = new AbortController();
    // Timed from the stop, not from the start (the sandbox's set-up is slower on a loaded machine).
    let t0 = 0;
    const { exit } = await build(sb, req, ac.signal, (s) => {
      if (s.includes('started') && !t0) {
        t0 = Date.now();
        ac.abort();
      }
    });
    expect(exit).toEqual({ kind: 'aborted' });
    expect(Date.now() - t0).toBeLessThan(2000);
    await new Promise((r) => setTimeout(r, 2300));
    expect(existsSync(path.join(req.buildDir, 'late'))).toBe(false);
    expect(existsSync(chrootDirFor(fx.realStoreDir, req.drvPath))).toBe(false);
    void marker;
  });

  it('a missing builder is spawn-failed with a message naming it', async () => {
    const req = { ...fx.request('nobuilder', ''), builder: '/nix/store/00000000000000000000000000000000-missing/bin/sh' };
    const { exit, log } = await build(sb, req);
    if (backend === 'helper') {
      expect(exit.kind).toBe('spawn-failed');
      expect((exit as { message: string }).message).toContain('00000000000000000000000000000000-missing/bin/sh');
      expect((exit as { execError?: string }).execError).toBe(`executing '${req.builder}': No such file or directory`);
    } else {
      // bwrap reports a failed exec as its own error
      expect(exit.kind === 'spawn-failed' || (exit.kind === 'exited' && exit.code !== 0)).toBe(true);
      expect(log + JSON.stringify(exit)).toContain('missing/bin/sh');
      if (exit.kind === 'spawn-failed') expect(exit.execError).toBe(`executing '${req.builder}': No such file or directory`);
    }
  });

  it('a missing input is a setup failure (spawn-failed), not a throw', async () => {
    const req = { ...fx.request('noinput', 'true'), inputPaths: [fx.busyboxPath, storePath('absent')] };
    const { exit } = await build(sb, req);
    expect(exit.kind).toBe('spawn-failed');
    expect((exit as { message: string }).message).toContain('-absent');
    expect((exit as { execError?: string }).execError).toBeUndefined();
    // The cause alone, as the scheduler words the build's failure (Nix's words): no prefix, no hint.
    const reason = (exit as { reason?: string }).reason;
    expect(reason).toMatch(/^getting attributes of input path '[^']*-absent'/);
    expect(reason).not.toContain('hint:');
  });

  it('sandbox paths: target=source, optional missing sources skipped, mandatory missing fails', async () => {
    const src = path.join(fx.dir, `shared-${backend}-${server}`);
    mkdirSync(src);
    writeFileSync(path.join(src, 'file'), 'shared\n');
    const req = fx.request('paths', 'mkdir $out; cat /opt/shared/file > $out/f; cat /opt/one/file > $out/f1; ls /opt > $out/ls');
    // (Mount points the chroot lacks, a directory's and a file's with its parent, are made.)
    const extraPaths = new Map([
      ['/opt/shared', { source: src, optional: false }],
      ['/opt/one/file', { source: path.join(src, 'file'), optional: false }],
      ['/opt/maybe', { source: path.join(fx.dir, 'does-not-exist'), optional: true }],
    ]);
    expect((await build(sb, { ...req, extraPaths })).exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'f'), 'utf8')).toBe('shared\n');
    expect(readFileSync(path.join(out, 'f1'), 'utf8')).toBe('shared\n');
    expect(readFileSync(path.join(out, 'ls'), 'utf8')).toBe('one\nshared\n');
    const bad = fx.request('paths-bad', 'true');
    const r = await build(sb, { ...bad, extraPaths: new Map([['/opt/x', { source: path.join(fx.dir, 'nope'), optional: false }]]) });
    expect(r.exit.kind === 'spawn-failed' || (r.exit.kind === 'exited' && r.exit.code !== 0)).toBe(true);
  });

  it('the pre-build hook gets the drv and chroot dir, and its extra-sandbox-paths are mounted', async () => {
    const src = path.join(fx.dir, `hooked-${backend}-${server}`);
    mkdirSync(src);
    writeFileSync(path.join(src, 'h'), 'from hook\n');
    const hook = path.join(fx.dir, `hook-${backend}-${server}.sh`);
    const argsFile = path.join(fx.dir, `hook-args-${backend}-${server}`);
    writeFileSync(hook, `#!/bin/sh\necho "$@" > ${argsFile}\necho extra-sandbox-paths\necho /hooked=${src}\necho\n`);
    chmodSync(hook, 0o755);
    const hsb = new LinuxSandbox({ backend, server, preBuildHook: hook });
    const req = fx.request('hook', 'mkdir $out; cat /hooked/h > $out/h');
    expect((await build(hsb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    await hsb.close();
    expect(readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'h'), 'utf8')).toBe('from hook\n');
    expect(readFileSync(argsFile, 'utf8')).toBe(`${req.drvPath} ${chrootDirFor(fx.realStoreDir, req.drvPath)}\n`);
  });

  it.skipIf(backend !== 'helper')('a missing mount point that is a dangling symbolic link is refused, not followed', async () => {
    const tag = `${backend}-${server}`;
    const src = path.join(fx.dir, `symlinked-src-${tag}`);
    writeFileSync(src, 'input\n');
    const srcDir = path.join(fx.dir, `symlinked-srcdir-${tag}`);
    mkdirSync(srcDir);
    for (const [name, source] of [
      ['file', src],
      ['dir', srcDir],
    ] as const) {
      // The hook puts a symlink to a host path that does not exist where a sandbox path is to be mounted.
      const outside = path.join(fx.dir, `outside-${name}-${tag}`);
      const hook = path.join(fx.dir, `symlink-hook-${name}-${tag}.sh`);
      writeFileSync(hook, `#!/bin/sh\nln -s ${outside} "$2/linked"\necho extra-sandbox-paths\necho /linked=${source}\necho\n`);
      chmodSync(hook, 0o755);
      const hsb = new LinuxSandbox({ backend, server, preBuildHook: hook });
      try {
        const { exit } = await build(hsb, fx.request(`symlinked-${name}`, 'mkdir $out'));
        expect(exit.kind).toBe('spawn-failed');
        expect(exit.kind === 'spawn-failed' && exit.message).toContain("mount point '");
        expect(exit.kind === 'spawn-failed' && exit.message).toContain('is a symbolic link');
        expect(existsSync(outside)).toBe(false);
      } finally {
        await hsb.close();
      }
    }
  });

  it('builtin builders are left to the scheduler', async () => {
    const req = { ...fx.request('builtin', ''), builder: 'builtin:fetchurl' };
    expect((await build(sb, req)).exit.kind).toBe('spawn-failed');
  });

  it('only leaves the outputs behind in the physical store', async () => {
    const before = new Set(readdirSync(fx.realStoreDir));
    const req = fx.request('clean', 'mkdir $out; touch /nix/store/stray /tmp/x');
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    await flushRemovals(); // the chroot is deleted in the background
    // chroot skeletons prepared ahead of time wait as <drv hash>-realise-chroot-* (removed on close/exit)
    const added = readdirSync(fx.realStoreDir).filter((n) => !before.has(n) && !/^[0-9a-z]{32}-realise-chroot-/.test(n));
    expect(added).toEqual([path.basename(req.outputPaths[0]!)]);
  });
});

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox helper server and the event loop', () => {
  it('a program awaiting a build stays alive until the build ends, exits afterwards by itself, and leaves nothing behind', async () => {
    const fx = makeFixture();
    const script = path.join(fx.dir, 'await-build.mts');
    const req = fx.request('alive', 'sleep 0.3; echo built; mkdir $out');
    writeFileSync(
      script,
      `
      import { LinuxSandbox } from ${JSON.stringify(path.resolve('src/platform/linux-sandbox.ts'))};
      const sb = new LinuxSandbox({ backend: 'helper', server: true });
      const r = await sb.run(${JSON.stringify({ ...req, extraPaths: undefined })}, { onOutput: (c) => process.stdout.write(c) });
      console.log(JSON.stringify(r));
    `,
    );
    const { execFile } = await import('node:child_process');
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', script], { timeout: 30_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(stderr || err.message)) : resolve(stdout),
      );
    });
    expect(out).toBe('built\n{"kind":"exited","code":0}\n');
    // nothing left behind by the process: no chroot, no trash, no prepared skeletons
    expect(
      readdirSync(fx.realStoreDir)
        .filter((n) => n !== '.links')
        .sort(),
    ).toEqual([path.basename(fx.busyboxPath), path.basename(req.outputPaths[0]!)].sort());
  }, 40_000);
});

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox helper server: concurrent builds', () => {
  it('keeps the output, status and outputs of concurrent builds apart', async () => {
    const fx = makeFixture();
    const sb = new LinuxSandbox({ backend: 'helper', server: true });
    const reqs = Array.from({ length: 6 }, (_, i) =>
      fx.request(`par${i}`, `for j in 1 2 3; do echo b${i}-$j; sleep 0.0${i}; done; mkdir $out; echo ${i} > $out/i; exit ${i}`),
    );
    const results = await Promise.all(reqs.map((r) => build(sb, r)));
    results.forEach(({ exit, log }, i) => {
      expect(exit).toEqual({ kind: 'exited', code: i });
      expect(log).toBe(`b${i}-1\nb${i}-2\nb${i}-3\n`);
      expect(readFileSync(path.join(fx.realPath(reqs[i]!.outputPaths[0]!), 'i'), 'utf8')).toBe(`${i}\n`);
    });
    await sb.close();
  }, 30_000);

  it('keeps the large outputs of concurrent builds whole and apart (they share one channel, in records)', async () => {
    const fx = makeFixture();
    const sb = new LinuxSandbox({ backend: 'helper', server: true });
    const size = 300_000;
    const reqs = Array.from({ length: 4 }, (_, i) => fx.request(`big${i}`, `yes 'b${i} out 12' | head -c ${size}; mkdir $out`));
    const results = await Promise.all(reqs.map((r) => build(sb, r)));
    results.forEach(({ exit, log }, i) => {
      expect(exit).toEqual({ kind: 'exited', code: 0 });
      expect(log.length).toBe(size);
      expect(log).toBe(`b${i} out 12\n`.repeat(size).slice(0, size));
    });
    await sb.close();
  }, 30_000);

  it('refuses a request with a NUL byte in its environment or arguments, then serves the next ones (the environment reaches the builder whole)', async () => {
    const fx = makeFixture();
    const sb = new LinuxSandbox({ backend: 'helper', server: true });
    const ok = fx.request('nul-ok', 'echo "$A|$B"; mkdir $out');
    for (const bad of [
      { ...ok, env: { ...ok.env, X: 'a\0b' } },
      { ...ok, args: [...ok.args, 'a\0b'] },
    ]) {
      const { exit } = await build(sb, bad);
      expect(exit.kind).toBe('spawn-failed');
      expect(exit.kind === 'spawn-failed' && exit.message).toContain('contains a NUL byte');
    }
    const { exit, log } = await build(sb, { ...ok, env: { ...ok.env, A: 'x=y z', B: 'é\n2' } });
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    expect(log).toBe('x=y z|é\n2\n');
    await sb.close();
  }, 30_000);
});

/** The pids of this process's resident sandbox servers (`--server --warm`). */
function sandboxServers(): Set<string> {
  const kids = readdirSync('/proc/self/task').flatMap((t) => readFileSync(`/proc/self/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
  return new Set(
    kids.filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--server\0--warm');
      } catch {
        return false; // exited meanwhile
      }
    }),
  );
}

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox helper server: one per process', () => {
  it('is shared by the LinuxSandboxes with the same filter choice, and stopped by the close() of the last one', async () => {
    const fx = makeFixture();
    const before = sandboxServers();
    const started = () => [...sandboxServers()].filter((p) => !before.has(p));
    const a = new LinuxSandbox({ backend: 'helper', server: true });
    const b = new LinuxSandbox({ backend: 'helper', server: true });
    const plain = new LinuxSandbox({ backend: 'helper', server: true, filterSyscalls: false });
    const ok = (sb: LinuxSandbox, name: string) => build(sb, fx.request(name, 'mkdir $out'));
    expect((await ok(a, 'shared-a')).exit).toEqual({ kind: 'exited', code: 0 });
    expect((await ok(b, 'shared-b')).exit).toEqual({ kind: 'exited', code: 0 });
    expect(started()).toHaveLength(1);
    expect((await ok(plain, 'shared-plain')).exit).toEqual({ kind: 'exited', code: 0 });
    expect(started()).toHaveLength(2);
    await plain.close();
    const [server] = started();
    // a's close leaves it to b, whose build runs on it while a is closed
    const running = build(b, fx.request('shared-during', 'sleep 0.3; mkdir $out'));
    await a.close();
    expect(started()).toEqual([server]);
    expect((await running).exit).toEqual({ kind: 'exited', code: 0 });
    // a used again takes it up again
    expect((await ok(a, 'shared-a2')).exit).toEqual({ kind: 'exited', code: 0 });
    expect(started()).toEqual([server]);
    await a.close();
    await b.close();
    for (let i = 0; i < 200 && started().length > 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(started()).toEqual([]);
  }, 30_000);
});

/** Whether a process of this machine runs with `marker` in its command line. */
function running(marker: string): boolean {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .some((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
      } catch {
        return false; // exited meanwhile
      }
    });
}

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox helper server: close() of one of its sandboxes', () => {
  it("kills that sandbox's running builds while another keeps the server, whose build finishes", async () => {
    const fx = makeFixture();
    const a = new LinuxSandbox({ backend: 'helper', server: true });
    const b = new LinuxSandbox({ backend: 'helper', server: true });
    const marker = `closekill${process.pid}x${Date.now()}`;
    let started!: () => void;
    const isRunning = new Promise<void>((r) => (started = r));
    const doomed = build(a, fx.request('close-a', `echo up; sh -c "sleep 30; :" ${marker}; mkdir $out`), undefined, (log) => {
      if (log.includes('up')) started();
    });
    await isRunning;
    for (let i = 0; i < 400 && !running(marker); i++) await new Promise((r) => setTimeout(r, 25));
    expect(running(marker)).toBe(true);
    const req = fx.request('close-b', 'sleep 0.5; mkdir $out; echo b > $out/b');
    const other = build(b, req);
    const closedAt = Date.now();
    await a.close();
    expect((await doomed).exit).toEqual({ kind: 'aborted' });
    expect(Date.now() - closedAt).toBeLessThan(10_000);
    for (let i = 0; i < 200 && running(marker); i++) await new Promise((r) => setTimeout(r, 25));
    expect(running(marker)).toBe(false);
    expect((await other).exit).toEqual({ kind: 'exited', code: 0 });
    expect(readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'b'), 'utf8')).toBe('b\n');
    await b.close();
  }, 60_000);

  it('a run that was on its way (in the pre-build hook) when the sandbox closed ends aborted and does not take the server up again', async () => {
    const fx = makeFixture();
    const before = sandboxServers();
    const hookStarted = path.join(fx.dir, 'hook-started');
    const hook = path.join(fx.dir, 'slow-hook.sh');
    writeFileSync(hook, `#!/bin/sh\ntouch ${hookStarted}\nsleep 1\n`);
    chmodSync(hook, 0o755);
    const sb = new LinuxSandbox({ backend: 'helper', server: true, preBuildHook: hook });
    const req = fx.request('closed-in-hook', 'mkdir $out');
    const run = build(sb, req);
    for (let i = 0; i < 400 && !existsSync(hookStarted); i++) await new Promise((r) => setTimeout(r, 25));
    expect(existsSync(hookStarted)).toBe(true);
    await sb.close();
    expect((await run).exit).toEqual({ kind: 'aborted' });
    expect(existsSync(fx.realPath(req.outputPaths[0]!))).toBe(false);
    const started = () => [...sandboxServers()].filter((p) => !before.has(p));
    for (let i = 0; i < 200 && started().length > 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(started()).toEqual([]);
  }, 30_000);
});

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox helper server: closed at once', () => {
  it('a server closed right after it started (the engine closing after a build that failed at once) raises no error in the program', async () => {
    const { SandboxServer } = await import('../../src/platform/sandbox-server.js');
    const { ensureSandboxHelper } = await import('../../src/platform/sandbox-helper.js');
    const { nixSeccompFilter } = await import('../../src/platform/seccomp.js');
    const exe = await ensureSandboxHelper();
    const errors: unknown[] = [];
    const onError = (e: unknown) => errors.push(e);
    process.on('uncaughtException', onError);
    try {
      // The server is killed with its seccomp filter and warm process still on their way: the pipes to it
      // then end with ECONNRESET, which must not be an unhandled 'error' event.
      for (let round = 0; round < 4; round++) {
        const servers = Array.from({ length: 8 }, () => new SandboxServer(exe, nixSeccompFilter(), { warm: true }));
        await Promise.all(servers.map((s) => s.start()));
        for (const s of servers) s.close();
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      process.off('uncaughtException', onError);
    }
    expect(errors).toEqual([]);
  }, 30_000);
});
