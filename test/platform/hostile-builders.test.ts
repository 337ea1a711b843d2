/**
 * Hostile builders against the whole engine (sandboxed builds in a chroot store): each test has the
 * builder try one way of leaving privileges, host access or debris behind, with a small static C probe
 * (test/fixtures/platform/hostile-probe.c) compiled here, and fails if it gets through.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix, type NixString } from '../../src/derivation/context.js';
import { addPath, derivation } from '../../src/derivation/instantiate.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { LocalStore } from '../../src/store/local-store.js';
import { AS_ROOT, bwrapOk, tempDir } from '../helpers/nix.js';
import { busyboxOk, SANDBOX_PATHS } from '../scheduler/helpers.js';
import { LinuxSandbox, type LinuxSandboxBackend } from '../../src/platform/linux-sandbox.js';
import { BUILD_DIR_POOL_PREFIX } from '../../src/platform/build-dirs.js';
import { ccOk, makeFixture } from './sandbox-fixture.js';
import { killOnceBuilding } from '../helpers/child.js';

const CRASH_CHILD = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'crash-debris-child.ts');
const PROBE_SOURCE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/platform/hostile-probe.c');
const system = 'x86_64-linux';

describe.skipIf(!bwrapOk() || !ccOk() || !busyboxOk())('hostile builders (engine, sandboxed)', () => {
  let dir: string;
  let store: LocalStore;
  let probe: NixString;
  /** The probe on the host (outside any sandbox): the oracle for what is on disk. */
  let hostProbe: string;
  const engines: BuildEngine[] = [];

  beforeAll(async () => {
    dir = tempDir('realise-hostile-');
    const probeDir = path.join(dir, 'probe');
    mkdirSync(path.join(probeDir, 'bin'), { recursive: true });
    hostProbe = path.join(probeDir, 'bin/probe');
    execFileSync(process.env.CC ?? 'cc', ['-static', '-O2', '-o', hostProbe, PROBE_SOURCE]);
    store = await LocalStore.open({ root: path.join(dir, 'root') });
    probe = await addPath(store, probeDir, { name: 'hostile-probe' });
  });
  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
  });

  const engine = (o: BuildEngineOptions = {}) => {
    const e = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: path.join(dir, 'tmp'), ...o });
    engines.push(e);
    return e;
  };

  /** Build a derivation running `script` (busybox sh, $P = the probe); returns the output's real path. */
  async function build(name: string, script: string, o: BuildEngineOptions = {}, attrs: Record<string, unknown> = {}) {
    mkdirSync(path.join(dir, 'tmp'), { recursive: true });
    const d = await derivation(store, { name, system, builder: '/bin/sh', args: ['-c', nix`P=${probe}/bin/probe; ${script}`], ...attrs });
    const [r] = await engine(o).buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
    return { result: r!.result, out: store.toRealPath(String(d.out)), outPath: String(d.out) };
  }

  const xattrsOf = (p: string) => execFileSync(hostProbe, ['list', p], { encoding: 'utf8' }).split('\n').filter(Boolean);

  it('the seccomp filter refuses setxattrat and io_uring', async () => {
    const { result, out } = await build(
      'refused-calls',
      'mkdir $out; echo x > $out/f; $P setxattrat $out/f > $out/setxattrat; $P uring > $out/uring; $P setxattr $out/f user.x v > $out/setxattr',
    );
    expect(result.status).toBe('built');
    expect(readFileSync(path.join(out, 'setxattrat'), 'utf8')).toBe('EOPNOTSUPP\n');
    expect(readFileSync(path.join(out, 'uring'), 'utf8')).toBe('ENOSYS\n');
    expect(readFileSync(path.join(out, 'setxattr'), 'utf8')).toBe('EOPNOTSUPP\n');
    expect(xattrsOf(path.join(out, 'f'))).toEqual([]);
  });

  it('registered outputs carry no extended attributes, not even a file capability (filter off)', async () => {
    // Without the filter the builder sets them all; canonicalisation must remove every one of them.
    const script =
      'mkdir $out $out/d; cp $P $out/su; echo x > $out/small; echo y > $out/d/f; ' +
      '$P setxattr $out/small user.a 1 > $out/r1; $P setxattr $out/d user.b 2 > $out/r2; $P setxattr $out/d/f user.c 3 > $out/r3; ' +
      '$P setxattrat $out/small > $out/r4; ' +
      (process.getuid?.() === 0 ? '$P setcap $out/su > $out/r5; ' : 'echo ok > $out/r5; ') +
      '$P setxattr $out/d/f user.keep 4 > $out/r6; chmod 444 $out/d/f';
    const { result, out } = await build('xattrs', script, { filterSyscalls: false });
    expect(result.status).toBe('built');
    for (const r of ['r1', 'r2', 'r3', 'r4', 'r5', 'r6']) expect(readFileSync(path.join(out, r), 'utf8')).toBe('ok\n');
    for (const f of ['', 'su', 'small', 'd', 'd/f']) expect(xattrsOf(path.join(out, f))).toEqual([]);
  });

  it('a file capability set from a nested user namespace never registers (removed as root; the output rejected otherwise)', async () => {
    const { result, out, outPath } = await build('setcap', 'cp $P $out; $P setcap $out > /build/r; grep -q ok /build/r', { filterSyscalls: false });
    if (process.getuid?.() === 0) {
      expect(result.status).toBe('built');
      expect(xattrsOf(out)).toEqual([]);
    } else {
      // Removing security.capability needs CAP_SETFCAP, which an ordinary user does not have.
      expect(result.status).toBe('output-rejected');
      expect(result.errorMsg).toMatch(/cannot remove the extended attributes of .*security\.capability/);
      expect(await store.isValidPath(outPath)).toBe(false);
    }
  });

  it("a fixed-output builder that hands its output's descriptor to a host process cannot change the registered path", async () => {
    // The builder has the host's network namespace, so it reaches abstract Unix sockets of host processes
    // (CVE-2024-27297's route): a local user's process receives a writable descriptor of $out.
    mkdirSync(path.join(dir, 'tmp'), { recursive: true });
    const name = `realise-leak-${process.pid}`;
    const receiver = spawn(hostProbe, ['fdrecv', name], { stdio: ['pipe', 'pipe', 'inherit'] });
    const said: string[] = [];
    receiver.stdout!.on('data', (c: Buffer) => said.push(c.toString()));
    while (!said.join('').includes('listening')) await new Promise((r) => setTimeout(r, 20));
    const hash = `sha256-${createHash('sha256').update('original\n').digest('base64')}`;
    const d = await derivation(store, {
      name: 'leaky-fod',
      system,
      builder: '/bin/sh',
      outputHashMode: 'flat',
      outputHash: hash,
      args: ['-c', nix`echo original > $out; ${probe}/bin/probe fdsend $out ${name}`],
    });
    const [r] = await engine()
      .buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }])
      .finally(() => setTimeout(() => receiver.kill(), 30_000).unref());
    expect(r!.result.status, r!.result.errorMsg).toBe('built');
    expect(said.join('')).toContain('received');
    // Registered: now the host process writes through the descriptor it kept.
    receiver.stdin!.end('go\n');
    await new Promise((res) => receiver.once('exit', res));
    expect(said.join('')).toContain('ok');
    expect(readFileSync(store.toRealPath(String(d.out)), 'utf8')).toBe('original\n');
  });

  it('extended attributes named in ignored-acls stay', async () => {
    const keep = await LocalStore.open({ root: path.join(dir, 'root-keep'), ignoredAcls: ['user.keep'] });
    try {
      const p = await addPath(keep, path.dirname(path.dirname(hostProbe)), { name: 'hostile-probe' });
      const d = await derivation(keep, {
        name: 'keep',
        system,
        builder: '/bin/sh',
        args: ['-c', nix`mkdir $out; echo x > $out/f; ${p}/bin/probe setxattr $out/f user.keep 1; ${p}/bin/probe setxattr $out/f user.drop 1`],
      });
      const e = new BuildEngine({ store: keep, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: path.join(dir, 'tmp'), filterSyscalls: false });
      engines.push(e);
      const [r] = await e.buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
      expect(r!.result.status).toBe('built');
      expect(xattrsOf(path.join(keep.toRealPath(String(d.out)), 'f'))).toEqual(['user.keep']);
    } finally {
      await keep.close();
    }
  });

  it('paths added to a store whose directory has a default ACL do not inherit it', async () => {
    const root = path.join(dir, 'root-acl');
    const acl = await LocalStore.open({ root });
    try {
      expect(execFileSync(hostProbe, ['acl', acl.realStoreDir], { encoding: 'utf8' })).toBe('ok\n');
      const src = path.join(dir, 'acl-src');
      mkdirSync(path.join(src, 'sub'), { recursive: true });
      writeFileSync(path.join(src, 'sub/file'), 'data\n');
      const p = acl.toRealPath(String(await addPath(acl, src, { name: 'acl-src' })));
      for (const f of ['', 'sub', 'sub/file']) expect(xattrsOf(path.join(p, f))).toEqual([]);
    } finally {
      await acl.close();
    }
  });

  it("another user cannot reach a running build's directory, even after the builder opens it up", async () => {
    // The build dir's parent is reachable by everyone (as /tmp is); the builder makes /build world-readable
    // and leaves a file there, then waits until the test has tried to read it as another user.
    const base = path.join(dir, 'tmp-shared');
    mkdirSync(base, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const d = await derivation(store, {
      name: 'open-build-dir',
      system,
      builder: '/bin/sh',
      args: [
        '-c',
        'chmod 755 /build; echo secret > /build/bait; chmod 644 /build/bait; i=0; while [ ! -e /build/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ' +
          'echo "$NIX_BUILD_TOP $TMPDIR $PWD" > $out',
      ],
    });
    const e = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: base });
    engines.push(e);
    const building = e.buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
    const find = (): string | undefined => {
      for (const top of readdirSync(base)) {
        for (const f of [path.join(base, top, 'bait'), path.join(base, top, 'build', 'bait')]) if (existsSync(f)) return f;
      }
      return undefined;
    };
    let bait: string | undefined;
    for (let i = 0; i < 300 && !(bait = find()); i++) await new Promise((r) => setTimeout(r, 100));
    expect(bait).toBeDefined();
    // Everything between the shared base and the bait: some directory must keep other users out.
    const rel = path.relative(base, path.dirname(bait!)).split(path.sep);
    const modes = rel.map((_, i) => statSync(path.join(base, ...rel.slice(0, i + 1))).mode & 0o777);
    expect(modes.some((m) => (m & 0o005) === 0)).toBe(true);
    if (process.getuid?.() === 0) {
      const asNobody = spawnSync('/bin/busybox', ['cat', bait!], { uid: 65534, gid: 65534, encoding: 'utf8' });
      expect(asNobody.stdout).toBe('');
      expect(asNobody.stderr).toMatch(/Permission denied/);
    }
    writeFileSync(path.join(path.dirname(bait!), 'go'), '');
    const [r] = await building;
    expect(r!.result.status).toBe('built');
    // The builder's own view is Nix 2.8's.
    expect(readFileSync(store.toRealPath(String(d.out)), 'utf8')).toBe('/build /build /build\n');
    expect(readdirSync(base)).toEqual([]);
  });

  it('a build killed with -9 leaves no debris: swept when the store is opened and when a build starts', async () => {
    const base = path.join(dir, 'tmp-crash');
    mkdirSync(base, { recursive: true });
    const d = await derivation(store, { name: 'killed', system, builder: '/bin/sh', args: ['-c', 'echo started; sleep 60; echo late > $out'] });
    const q = await derivation(store, { name: 'quick-beside', system, builder: '/bin/sh', args: ['-c', 'echo ok > $out'] });
    const child = spawn(process.execPath, ['--import', 'tsx', CRASH_CHILD, path.join(dir, 'root'), base, d.drvPath, q.drvPath], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await killOnceBuilding(child);
    // (Skeletons of this process's own engines are alive, and stay.)
    const storeDebris = () =>
      readdirSync(store.realStoreDir).filter((n) => n.includes(`-realise-chroot-${child.pid}-`) || n.includes('.chroot') || n.endsWith('.lock'));
    // What the killed process left: its chroot and pooled skeletons, the output's lock file, its build dir.
    expect(storeDebris().some((n) => n.includes('-realise-chroot-'))).toBe(true);
    expect(storeDebris().some((n) => n.endsWith('-killed.lock'))).toBe(true);
    expect(readdirSync(base).filter((n) => n.startsWith('nix-build-killed.drv-'))).toHaveLength(1);

    const reopened = await LocalStore.open({ root: path.join(dir, 'root') });
    try {
      // The stale <drv>.chroot itself goes when the derivation is built next (as Nix deletes it then).
      expect(storeDebris().filter((n) => !n.endsWith('.chroot'))).toEqual([]);
      const quick = await derivation(reopened, { name: 'after-crash', system, builder: '/bin/sh', args: ['-c', 'echo ok > $out'] });
      const e = new BuildEngine({ store: reopened, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: base });
      engines.push(e);
      await e.buildPaths([quick.drvPath]);
      // (Only this process's pool of build directories for reuse, holding the quick build's.)
      expect(readdirSync(base).filter((n) => !n.startsWith(BUILD_DIR_POOL_PREFIX))).toEqual([]);
    } finally {
      await reopened.close();
    }
  });

  it('a single-file output loses its extended attributes too', async () => {
    const { result, out } = await build(
      'xattr-flat',
      'echo x > $out; $P setxattr $out user.a 1 > /build/r; $P setxattrat $out >> /build/r; cat /build/r; grep -c ok /build/r',
      { filterSyscalls: false },
    );
    expect(result.status).toBe('built');
    expect(xattrsOf(out)).toEqual([]);
  });
});

const backends: LinuxSandboxBackend[] = ['helper', 'bwrap'];

describe.skipIf(!bwrapOk() || !ccOk()).each(backends)('hostile builders (LinuxSandbox, %s)', (backend) => {
  let fx: ReturnType<typeof makeFixture>;
  let sb: LinuxSandbox;
  let P: string;

  beforeAll(async () => {
    fx = makeFixture();
    // The probe goes into the fixture's busybox input path.
    const probe = path.join(fx.dir, 'probe');
    execFileSync(process.env.CC ?? 'cc', ['-static', '-O2', '-o', probe, PROBE_SOURCE]);
    copyFileSync(probe, path.join(fx.realPath(fx.busyboxPath), 'bin/probe'));
    P = `${fx.busyboxPath}/bin/probe`;
    sb = new LinuxSandbox({ backend });
    await sb.backend();
  });
  afterAll(async () => {
    await sb?.close();
  });

  const run = async (name: string, script: string, extra: Parameters<typeof fx.request>[2] = {}) => {
    const req = fx.request(name, `P=${P}; mkdir $out; ${script}`, extra);
    const exit = await sb.run(req, { onOutput: () => {} });
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    return (f: string) => readFileSync(path.join(fx.realPath(req.outputPaths[0]!), f), 'utf8');
  };

  it("a fixed-output builder cannot open the host's /etc/hosts or /etc/resolv.conf for writing", async () => {
    const read = await run('fod-etc', '$P openw /etc/hosts > $out/hosts; $P openw /etc/resolv.conf > $out/resolv; $P openw /etc/services > $out/services', {
      network: true,
    });
    // Run by an ordinary user, the host's root-owned files are refused by their permissions first.
    const denied = AS_ROOT ? 'EROFS\n' : 'EACCES\n';
    expect(read('hosts')).toBe(denied);
    if (existsSync('/etc/resolv.conf')) expect(read('resolv')).toBe(denied);
    if (existsSync('/etc/services')) expect(read('services')).toBe(denied);
  });

  it('sandbox paths are read-only, even from a nested user namespace', async () => {
    const host = path.join(fx.dir, 'shared');
    mkdirSync(host);
    writeFileSync(path.join(host, 'file'), 'host\n');
    const read = await run('extra-paths', '$P write /shared/file > $out/write; (echo new > /shared/new) 2> $out/create; $P remount /shared > $out/remount', {
      extraPaths: new Map([['/shared', { source: host, optional: false }]]),
    });
    expect(read('write')).toBe('EROFS\n');
    expect(read('create')).toMatch(/Read-only file system/);
    expect(read('remount')).not.toBe('ok\n');
    expect(readFileSync(path.join(host, 'file'), 'utf8')).toBe('host\n');
    expect(readdirSync(host)).toEqual(['file']);
  });
});
