/**
 * A Store over a real Nix 2.8 `nix-daemon` (a system installation's shape): the test starts the daemon as
 * root on a socket in a temp dir (NIX_DAEMON_SOCKET_PATH) with a private chroot store, trusting nobody, so
 * its trust rules for ordinary users apply. Path queries, text files, builds with their log stream as
 * engine events, queryMissing, failures and the daemon's refusals go through the worker protocol; the
 * `realise` command reaches it with `--store daemon`, `unix://…` and NIX_REMOTE=daemon, run by an
 * unprivileged user when the checkout is readable by one.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonStore, openStore } from '../../src/remote/daemon-store.js';
import { RemoteConnectionError, RemoteDaemonError } from '../../src/remote/errors.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { computeTextPath } from '../../src/store/store-path.js';
import { Hash } from '../../src/store/hash.js';
import { nix, nixEnv, nixOk, rootOnly, runNix, runNixAsync, tempDir, usableByOthers } from '../helpers/nix.js';
import { setOptionsProxy } from './set-options-proxy.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const CONF =
  'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\nsandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\ntrusted-users =\n';
/** Found on the slow builder's command line (its shell's script) while it runs. */
const MARK = `realise-daemon-slow-${process.pid}`;
const EXPR = `let
  mkWith = name: deps: script: derivation { inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; };
  mk = name: mkWith name [];
in rec {
  dep1 = mk "daemon-dep1" "echo dep1 > $out";
  dep2 = mk "daemon-dep2" "echo dep2 > $out";
  top = mkWith "daemon-top" [ dep1 dep2 ] "echo top > $out";
  dep3 = mk "daemon-dep3" "echo dep3 > $out";
  baddep = mk "daemon-baddep" "exit 4";
  top2 = mkWith "daemon-top2" [ dep3 baddep ] "echo top2 > $out";
  slowdep = mk "daemon-slowdep" "sleep 60; echo > $out";
  faildep = mk "daemon-faildep" "exit 5";
  top3 = mkWith "daemon-top3" [ slowdep faildep ] "echo top3 > $out";
  subst = mk "daemon-subst" "echo subst > $out";
  clia = mk "daemon-clia" "echo clia > $out";
  clib = mk "daemon-clib" "echo clib > $out";
  clitop = mkWith "daemon-clitop" [ clia clib ] "echo clitop > $out";
  ok = mk "daemon-ok" "echo hello-from-the-daemon; echo ok > $out";
  fail = mk "daemon-fail" "echo about-to-fail; exit 3";
  cli = mk "daemon-cli" "echo cli-line; echo cli > $out";
  env = mk "daemon-env" "echo env > $out";
  unix = mk "daemon-unix" "echo unix > $out";
  slow = mk "daemon-slow" "echo slow-started; sleep 60; echo > $out; : MARK";
  opts = mk "daemon-opts" "echo opts > $out";
}`;

const NOBODY = 65534;

/** `nix-daemon --store ROOT` listening on `socket`, with `conf` as its settings. */
async function startDaemon(root: string, socket: string, conf: string): Promise<ChildProcess> {
  const d = spawn('nix-daemon', ['--store', root], { env: nixEnv({ NIX_CONFIG: conf, NIX_DAEMON_SOCKET_PATH: socket }), stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  d.stderr!.setEncoding('utf8').on('data', (s: string) => {
    log += s;
  });
  for (let i = 0; i < 100 && !existsSync(socket); i++) await sleep(100);
  if (!existsSync(socket)) throw new Error(`nix-daemon did not start:\n${log}`);
  return d;
}

const asRoot = rootOnly('a system Nix installation: the daemon runs as root and is used by other users');

describe.skipIf(!asRoot || !nixOk())('(root only) DaemonStore against a real nix-daemon (started as root, trusting nobody)', () => {
  let dir: string;
  let root: string;
  let socket: string;
  let daemon: ChildProcess;
  let store: DaemonStore;
  const drvs: Record<string, string> = {};

  beforeAll(async () => {
    dir = tempDir('realise-daemon-');
    chmodSync(dir, 0o755);
    root = path.join(dir, 'root');
    socket = path.join(dir, 'socket');
    for (const attr of [
      'ok',
      'fail',
      'cli',
      'env',
      'unix',
      'slow',
      'dep1',
      'dep2',
      'top',
      'dep3',
      'baddep',
      'top2',
      'slowdep',
      'faildep',
      'top3',
      'subst',
      'clia',
      'clib',
      'clitop',
      'opts',
    ]) {
      const file = path.join(dir, 'e.nix');
      if (!existsSync(file)) writeFileSync(file, EXPR.replace('MARK', MARK));
      drvs[attr] = nix('nix-instantiate', ['--store', root, file, '-A', attr]);
    }
    daemon = await startDaemon(root, socket, CONF);
    store = await DaemonStore.open({ socketPath: socket });
  }, 60_000);
  afterAll(async () => {
    await store?.close();
    daemon?.kill('SIGTERM');
  });

  it("path queries answer as the daemon's store (Nix's own view of it)", async () => {
    const drv = drvs.ok!;
    expect(await store.isValidPath(drv)).toBe(true);
    expect(await store.isValidPath(drv.replace(/-daemon-ok/, '-daemon-no'))).toBe(false);
    const info = (await store.queryPathInfo(drv))!;
    expect(info.narHash.toString('base32')).toBe(nix('nix-store', ['--store', root, '-q', '--hash', drv]));
    expect(await store.readTextFile(drv)).toBe(readFileSync(path.join(root, drv), 'utf8'));
    const outs = await store.queryDerivationOutputs(drv);
    expect([...outs.values()]).toEqual([nix('nix-store', ['--store', root, '-q', '--outputs', drv])]);
    expect((await store.queryAllValidPaths()).has(drv)).toBe(true);
    expect(await store.computeClosure([drv])).toEqual(new Set(nix('nix-store', ['--store', root, '-qR', drv]).split('\n')));
  });

  it('adds a text file (content-addressed, so an untrusted user may), valid for Nix', async () => {
    const p = await store.addTextToStore('daemon-text', 'text through the daemon\n', []);
    expect(p).toBe(computeTextPath('daemon-text', 'text through the daemon\n', [], store.storeDir));
    expect(runNix('nix-store', ['--store', root, '--check-validity', p]).status).toBe(0);
  });

  it("refuses, with the daemon's words, an unsigned input-addressed path from an untrusted user", async () => {
    const info = (await store.queryPathInfo(drvs.ok!))!;
    const fake = {
      ...info,
      path: info.path.replace(/^(\/nix\/store\/)./, '$10').replace(/\.drv$/, ''),
      ca: undefined,
      sigs: [],
      narHash: Hash.parse(info.narHash.toString('sri')),
    };
    const err = await store.addToStore(fake, store.narFromPath(drvs.ok!)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteDaemonError);
    expect((err as Error).message).toMatch(/lacks a valid signature/);
    expect(await store.isValidPath(fake.path)).toBe(false);
  });

  it('a BuildEngine over it: the daemon builds, its log stream becomes events, queryMissing asks the daemon', async () => {
    const engine = new BuildEngine({ store });
    const events: string[] = [];
    engine.on('build-started', (e) => events.push(`started ${e.drvPath}`));
    engine.on('build-log', (e) => events.push(`log ${e.line}`));
    engine.on('build-finished', (e) => events.push(`finished ${e.drvPath} ${e.outcome} ${e.result?.status}`));
    const missing = await engine.queryMissing([drvs.ok!]);
    expect(missing.willBuild).toEqual([drvs.ok]);
    const [r] = await engine.buildPaths([drvs.ok!]);
    const out = nix('nix-store', ['--store', root, '-q', '--outputs', drvs.ok!]);
    expect(r!.result.status).toBe('built');
    expect(r!.result.builtOutputs).toEqual({ out });
    expect(events).toEqual([`started ${drvs.ok}`, 'log hello-from-the-daemon', `finished ${drvs.ok} success built`]);
    expect(runNix('nix-store', ['--store', root, '--check-validity', out]).status).toBe(0);
    expect((await engine.buildPaths([drvs.ok!]))[0]!.result.status).toBe('already-valid');
    const [f] = await engine.buildPathsWithResults([drvs.fail!]);
    expect(f!.result.status).toBe('permanent-failure');
    expect(f!.result.errorMsg).toContain(`builder for '${drvs.fail}' failed with exit code 3`);
    await engine.close();
  });

  it("every build the daemon runs, inputs too, is a build-started/-finished pair; its progress counters are the engine's", async () => {
    const record = (engine: BuildEngine): string[] => {
      const events: string[] = [];
      const name = (drv: string) => drv.replace(/^.*-daemon-/, '');
      engine.on('build-started', (e) => events.push(`started ${name(e.drvPath)}`));
      engine.on('build-finished', (e) => events.push(`finished ${name(e.drvPath)} ${e.outcome}`));
      return events;
    };
    const engine = new BuildEngine({ store });
    const events = record(engine);
    const [r] = await engine.buildPaths([drvs.top!]);
    expect(r!.result.status).toBe('built');
    // The inputs one after the other (the daemon's max-jobs is 1), in its order, then the target.
    expect(events.slice(-2)).toEqual(['started top.drv', 'finished top.drv success']);
    expect([...events.slice(0, 4)].sort()).toEqual(['finished dep1.drv success', 'finished dep2.drv success', 'started dep1.drv', 'started dep2.drv']);
    for (const dep of ['dep1', 'dep2']) expect(events.indexOf(`finished ${dep}.drv success`)).toBe(events.indexOf(`started ${dep}.drv`) + 1);
    expect(engine.progress().builds).toEqual({ expected: 3, done: 3, running: 0, failed: 0 });
    await engine.close();

    // With keep-going: a failing input is a failure, the other input still builds, the target is never started.
    const kg = await DaemonStore.open({ socketPath: socket, workerOptions: { keepGoing: true } });
    const engine2 = new BuildEngine({ store: kg });
    const events2 = record(engine2);
    const [f] = await engine2.buildPathsWithResults([drvs.top2!]);
    expect(f!.result.status).toBe('dependency-failed');
    expect([...events2].sort()).toEqual(['finished baddep.drv failure', 'finished dep3.drv success', 'started baddep.drv', 'started dep3.drv']);
    // As Nix's worker counts them: a failed build and one whose input failed are no longer expected.
    expect(engine2.progress().builds).toEqual({ expected: 1, done: 1, running: 0, failed: 1 });
    await engine2.close();
    await kg.close();

    // Without keep-going, two at once (the engine's max-jobs, sent to the daemon): the failing input stops
    // the other one, which is 'stopped'.
    const two = await DaemonStore.open({ socketPath: socket });
    const engine3 = new BuildEngine({ store: two, maxJobs: 2 });
    const events3 = record(engine3);
    const [s3] = await engine3.buildPathsWithResults([drvs.top3!]);
    expect(s3!.result.status).toBe('dependency-failed');
    expect([...events3].sort()).toEqual(['finished faildep.drv failure', 'finished slowdep.drv stopped', 'started faildep.drv', 'started slowdep.drv']);
    expect(engine3.progress().builds).toMatchObject({ done: 0, running: 0, failed: 1 });
    await engine3.close();
    await two.close();

    // The CLI shows the daemon's builds as Nix's client does: "building '…'" for the inputs too.
    const cli = spawnSync(process.execPath, [BIN, 'build', '--store', 'daemon', drvs.clitop!], {
      env: nixEnv({ NIX_DAEMON_SOCKET_PATH: socket }),
      encoding: 'utf8',
    });
    expect(cli.status, cli.stderr).toBe(0);
    const building = cli.stderr.split('\n').filter((l) => l.startsWith('building '));
    expect([...building.slice(0, 2)].sort()).toEqual([`building '${drvs.clia}'...`, `building '${drvs.clib}'...`].sort());
    expect(building.slice(2)).toEqual([`building '${drvs.clitop}'...`]);
  });

  it("substitutes from the daemon's caches (as Nix's client, it asks for substitution); the copy is in the progress", async () => {
    // The output, built by Nix in another store, in a file:// cache the daemon (a second one) substitutes from.
    const other = path.join(dir, 'other');
    const file = path.join(dir, 'e.nix');
    const out = nix('nix-store', ['--store', other, '--realise', nix('nix-instantiate', ['--store', other, file, '-A', 'subst'])], {
      env: { NIX_CONFIG: CONF },
    });
    nix('nix', ['copy', '--store', other, '--to', `file://${dir}/cache`, out], { env: { NIX_CONFIG: CONF } });
    const root2 = path.join(dir, 'root2');
    const socket2 = path.join(dir, 'socket2');
    expect(nix('nix-instantiate', ['--store', root2, file, '-A', 'subst'])).toBe(drvs.subst);
    const d = await startDaemon(root2, socket2, `${CONF}substituters = file://${dir}/cache\nrequire-sigs = false\n`);
    const s2 = await DaemonStore.open({ socketPath: socket2 });
    try {
      const engine = new BuildEngine({ store: s2 });
      const events: string[] = [];
      engine.on('substitution-finished', (e) => events.push(`substituted ${e.path} ${e.ok}`));
      engine.on('build-started', (e) => events.push(`started ${e.drvPath}`));
      expect((await engine.queryMissing([drvs.subst!])).willSubstitute).toEqual([out]);
      const [r] = await engine.buildPaths([drvs.subst!]);
      expect(r!.result.status, r!.result.errorMsg).toBe('substituted');
      expect(events).toEqual([`substituted ${out} true`]);
      const p = engine.progress();
      expect(p.substitutions).toEqual({ expected: 1, done: 1, running: 0, failed: 0 });
      // The bytes the daemon's Realise activity expects: the NAR it unpacks (and the file it downloads).
      expect(p.nar.expected).toBe((await s2.queryPathInfo(out))!.narSize);
      expect(p.download.expected).toBeGreaterThan(0);
      await engine.close();
    } finally {
      await s2.close();
      d.kill('SIGTERM');
    }
  });

  it("the CLI sends the daemon the settings Nix 2.8's client sends for the same command line and configuration", async () => {
    const proxySocket = path.join(dir, 'proxy-socket');
    const proxy = await setOptionsProxy(proxySocket, socket);
    const confDir = path.join(dir, 'conf');
    mkdirSync(confDir, { recursive: true });
    // The system's nix.conf is not sent (Nix resets "overridden" after it), but its values are what
    // extra-NAME adds to; the user's file and $NIX_CONFIG are sent, and the command line over them.
    writeFileSync(path.join(confDir, 'nix.conf'), 'sandbox = false\nsubstituters = http://sys\nmax-build-log-size = 7\n');
    writeFileSync(path.join(confDir, 'user.conf'), 'extra-substituters = http://user\ntimeout = 9\nkeep-going = true\n');
    const env = (withConf: boolean) => ({
      NIX_DAEMON_SOCKET_PATH: proxySocket,
      NIX_CONF_DIR: confDir,
      NIX_USER_CONF_FILES: withConf ? path.join(confDir, 'user.conf') : '/dev/null',
      NIX_CONFIG: withConf ? 'build-cores = 5\ngc-keep-outputs = true\nextra-system-features = zz yy' : '',
    });
    const flags = [
      ...['--option', 'build-repeat', '0', '--option', 'build-use-sandbox', 'relaxed', '--option', 'sandbox-paths', '/b=/b /a=/a'],
      ...['--option', 'extra-sandbox-paths', '/c', '--option', 'require-sigs', 'no', '--option', 'substitute', 'false'],
      ...['--option', 'max-build-log-size', '010', '--option', 'show-trace', 'true', '--option', 'no-such-setting', 'x'],
      ...['-j', '2', '-K', '--fallback', '--max-silent-time', '30', '--quiet', '-v', '--quiet', '--option', 'extra-trusted-public-keys', 'k:1'],
      // Integers by their Nix type: a signed one takes a sign, an unsigned one a `+`; both sent in decimal.
      ...['--option', 'gc-reserved-space', '-5', '--option', 'narinfo-cache-negative-ttl', '+3', '--option', 'cores', '+3'],
    ];
    const realise = (args: string[], e: Record<string, string>) =>
      new Promise<[number | null, string]>((resolve) => {
        const child = spawn(process.execPath, [BIN, ...args], { env: nixEnv(e), stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
        child.on('close', (status) => resolve([status, stderr]));
      });
    try {
      for (const [withConf, args] of [
        [false, []],
        [true, flags],
      ] as const) {
        const n = await runNixAsync('nix-store', ['--store', 'daemon', '-q', '--hash', drvs.ok!, ...args], { env: env(withConf) });
        expect(n.status, n.stderr).toBe(0);
        const [nixSent] = await proxy.take();
        expect(nixSent).toHaveLength(1);
        // A build, through the engine: the daemon builds with these settings, and nothing else is sent.
        const command = withConf ? ['build', '--store', 'daemon', drvs.opts!] : ['path-info', '--store', 'daemon', '--derivation', drvs.ok!];
        const [status, stderr] = await realise([...command, ...args], env(withConf));
        expect(status, stderr).toBe(0);
        const ours = (await proxy.take()).flat();
        expect(ours.length).toBeGreaterThan(0);
        for (const sent of ours) expect(sent).toEqual(nixSent![0]);
      }
    } finally {
      await proxy.close();
    }
    expect(runNix('nix-store', ['--store', root, '--check-validity', nix('nix-store', ['--store', root, '-q', '--outputs', drvs.opts!])]).status).toBe(0);
  }, 60_000);

  it("a BuildEngine on a DaemonStore sends the settings Nix 2.8's client sends for the same options", async () => {
    const proxySocket = path.join(dir, 'proxy-socket-engine');
    const proxy = await setOptionsProxy(proxySocket, socket);
    const confDir = path.join(dir, 'conf-engine');
    mkdirSync(confDir, { recursive: true });
    writeFileSync(path.join(confDir, 'nix.conf'), '');
    const env = { NIX_DAEMON_SOCKET_PATH: proxySocket, NIX_CONF_DIR: confDir, NIX_USER_CONF_FILES: '/dev/null', NIX_CONFIG: '' };
    const options = {
      keepGoing: true,
      keepFailed: true,
      fallback: true,
      maxJobs: 3,
      maxSilentTime: 30,
      cores: 2,
      buildRepeat: 1,
      enforceDeterminism: false,
      buildTimeout: 40,
      maxLogSize: 5000,
      sandbox: 'relaxed' as const,
      sandboxPaths: ['/b=/b', '/a=/a', '/b=/b'],
      systemFeatures: ['zz', 'kvm'],
      preBuildHook: '/no/hook',
      hashedMirrors: ['http://m2', 'http://m1'],
      // The engine's own: not Nix settings, never sent.
      maxSubstitutionJobs: 7,
      experimentalFeatures: ['ca-derivations'],
    };
    const flags = [
      ...['-k', '-K', '--fallback', '-j', '3', '--max-silent-time', '30', '--cores', '2', '--option', 'repeat', '1'],
      ...['--option', 'enforce-determinism', 'false', '--timeout', '40', '--option', 'max-build-log-size', '5000', '--option', 'sandbox', 'relaxed'],
      ...['--option', 'sandbox-paths', '/b=/b /a=/a /b=/b', '--option', 'system-features', 'zz kvm', '--option', 'pre-build-hook', '/no/hook'],
      ...['--option', 'hashed-mirrors', 'http://m2 http://m1', '--option', 'experimental-features', 'ca-derivations'],
    ];
    try {
      for (const [engineOptions, args] of [
        [{}, []],
        [options, flags],
      ] as const) {
        const n = await runNixAsync('nix-store', ['--store', 'daemon', '-q', '--hash', drvs.ok!, ...args], { env });
        expect(n.status, n.stderr).toBe(0);
        const [nixSent] = await proxy.take();
        expect(nixSent).toHaveLength(1);
        const s = await DaemonStore.open({ socketPath: proxySocket });
        const engine = new BuildEngine({ store: s, ...engineOptions });
        expect(['built', 'already-valid']).toContain((await engine.buildPaths([drvs.ok!]))[0]!.result.status);
        await engine.close();
        await s.close();
        // The handshake's settings are the store's; the engine's call sends its own before it asks anything.
        const ours = (await proxy.take()).flat();
        expect(ours.at(-1)).toEqual(nixSent![0]);
        if (!args.length) for (const sent of ours) expect(sent).toEqual(nixSent![0]);
      }
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('a missing daemon socket is a typed error naming it', async () => {
    const err = await DaemonStore.open({ socketPath: path.join(dir, 'nothing') }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteConnectionError);
    expect((err as RemoteConnectionError).shortMessage).toBe(`cannot connect to socket at '${path.join(dir, 'nothing')}': No such file or directory`);
    expect(
      await openStore(`unix://${socket}`).then(async (s) => {
        const ok = s instanceof DaemonStore;
        await s.close();
        return ok;
      }),
    ).toBe(true);
  });

  it('a daemon that does not allow the user: a typed error saying so', async () => {
    const other = path.join(dir, 'other-socket');
    const d = await startDaemon(path.join(dir, 'other-root'), other, 'build-users-group =\ntrusted-users =\nallowed-users = @nonexistent-group\n');
    try {
      const err = await DaemonStore.open({ socketPath: other }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RemoteConnectionError);
      expect((err as RemoteConnectionError).shortMessage).toBe(`cannot open connection to the Nix daemon at '${other}': it closed the connection`);
    } finally {
      d.kill('SIGTERM');
    }
  });

  const asUser = usableByOthers(BIN);
  it(`realise build --store daemon / unix://… / NIX_REMOTE=daemon ${asUser ? 'run by an unprivileged user (uid 65534)' : 'run as root (the checkout is not readable by other users)'}`, async () => {
    const home = tempDir('realise-daemon-home-');
    chmodSync(home, 0o777);
    const run = (args: string[], env: Record<string, string>) =>
      spawnSync(process.execPath, [BIN, ...args], {
        env: nixEnv({ NIX_DAEMON_SOCKET_PATH: socket, HOME: home, XDG_DATA_HOME: home, XDG_CACHE_HOME: home, ...env }),
        encoding: 'utf8',
        cwd: home,
        ...(asUser ? { uid: NOBODY, gid: NOBODY } : {}),
      });
    if (asUser) accessSync(socket, constants.W_OK);
    const outOf = (drv: string) => nix('nix-store', ['--store', root, '-q', '--outputs', drv]);
    const b = run(['build', '--store', 'daemon', drvs.cli!], {});
    expect([b.status, b.stdout], b.stderr).toEqual([0, `${outOf(drvs.cli!)}\n`]);
    expect(b.stderr).toContain('cli-line');
    const e = run(['build', drvs.env!], { NIX_REMOTE: 'daemon' });
    expect([e.status, e.stdout], e.stderr).toEqual([0, `${outOf(drvs.env!)}\n`]);
    const u = run(['build', '--store', `unix://${socket}`, drvs.unix!], {});
    expect([u.status, u.stdout], u.stderr).toEqual([0, `${outOf(drvs.unix!)}\n`]);
    // --add-root: the link, and the daemon's indirect root for it (in its state directory).
    const link = path.join(home, 'result');
    const a = run(['build', '--store', 'daemon', '--add-root', link, drvs.cli!], {});
    expect([a.status, a.stdout], a.stderr).toEqual([0, `${link}\n`]);
    expect(readdirSync(path.join(root, 'nix/var/nix/gcroots/auto')).map((f) => readlinkSync(path.join(root, 'nix/var/nix/gcroots/auto', f)))).toContain(link);
    const info = run(['path-info', '--store', 'daemon', '--json', outOf(drvs.cli!)], {});
    expect(JSON.parse(info.stdout)[0].deriver, info.stderr).toBe(drvs.cli);
    const f = run(['build', '--store', 'daemon', drvs.fail!], {});
    expect(f.status, f.stderr).toBe(100);
    expect(f.stderr).toContain(`builder for '${drvs.fail}' failed with exit code 3`);
    expect(f.stderr).not.toMatch(/^\s+at /m);
  }, 60_000);

  it('SIGINT while the daemon builds: "interrupted by the user", exit 1, the daemon stops the build, nothing valid', async () => {
    const child = spawn(process.execPath, [BIN, 'build', '--store', 'daemon', drvs.slow!], {
      env: nixEnv({ NIX_DAEMON_SOCKET_PATH: socket }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    // One interrupt, as a user presses Ctrl-C once: a second one sent with a later chunk (the error line
    // itself) could land while the process is already exiting, when Node has given the signal back its default.
    let sent = false;
    child.stderr!.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
      if (!sent && stderr.includes('slow-started')) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect([status, stderr.trimEnd().split('\n').pop()], stderr).toEqual([1, 'error: interrupted by the user']);
    const out = nix('nix-store', ['--store', root, '-q', '--outputs', drvs.slow!]);
    expect(runNix('nix-store', ['--store', root, '--check-validity', out]).status).not.toBe(0);
    // The daemon's worker for that connection ends, and its builder with it.
    let left = '';
    for (let i = 0; i < 50; i++) {
      left = runNix('pgrep', ['-af', MARK])
        .stdout.split('\n')
        .filter((l) => l && !l.includes('pgrep'))
        .join('\n');
      if (!left) break;
      await sleep(100);
    }
    expect(left).toBe('');
  }, 60_000);
});
