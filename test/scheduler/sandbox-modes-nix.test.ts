/**
 * Sandbox settings and their error paths, BuildEngine against real Nix 2.8 on twin stores: the same .drv
 * files built by `nix-store --realise --option sandbox true` in one store and by us in the other.
 * `__impureHostDeps` against `allowed-impure-host-deps`, store paths in `sandbox-paths` (their closure is
 * added), a missing mandatory sandbox path, the pre-build hook, and where a failed build's outputs end up.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { BuildFailedError, BuildSetupError } from '../../src/scheduler/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { flushRemovals } from '../../src/platform/chroot.js';
import { BUILD_DIR_POOL_PREFIX } from '../../src/platform/build-dirs.js';
import { nixOk, tempDir } from '../helpers/nix.js';
import { SANDBOX_PATHS, busyboxOk, instantiateAttrs, nixOutputs, nixRealise, nixSandboxArgs, pathFacts, removeTree } from './helpers.js';
import { realiseInProcess as realiseCli } from '../helpers/cli.js';

const EXPR = `
let
  mk = name: attrs: derivation ({ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  sh = s: [ "-c" s ];
  dep2 = mk "dep2" { args = sh "echo dep2 > $out"; };
  imp2 = mk "imp2" { __impureHostDeps = [ "/usr/bin/env" ]; args = sh "echo x > $out"; };
  slowok = mk "slowok" { args = sh "/bin/busybox sleep 1; echo x > $out"; };
in {
  inherit dep2;
  dep = mk "dep" { args = sh "echo \${dep2} > $out"; };
  # What the builder sees of the store and of a few host paths.
  sees = mk "sees" { args = sh "/bin/busybox ls $NIX_STORE > $out; for p in /extrafile /extradir/f /usr/bin/env; do /bin/busybox ls -d $p >> $out 2>&1; done; true"; };
  impure = mk "impure" { __impureHostDeps = [ "/usr/bin/env" ]; args = sh "/bin/busybox ls -d /usr/bin/env > $out 2>&1; true"; };
  # A dependency Nix refuses to start, next to one that builds.
  top = mk "top" { a = slowok; b = imp2; args = sh "echo x > $out"; };
  sbd = mk "sbd" { args = sh "echo $NIX_BUILD_TOP $TMPDIR $PWD > $out; /bin/busybox cat /etc/passwd >> $out; /bin/busybox ls -d /build /mybuild >> $out 2>&1; true"; };
  shm = mk "shm" { args = sh "/bin/busybox df -k /dev/shm | /bin/busybox tail -1 | /bin/busybox awk '{print $2}' > $out; /bin/busybox touch f; /bin/busybox chmod 4755 f && echo setuid-ok >> $out || echo setuid-denied >> $out; /bin/busybox grep NoNewPrivs /proc/self/status >> $out"; };
  rnix = mk "rnix" { requiredSystemFeatures = [ "recursive-nix" ]; args = sh "echo x > $out"; };
  urange = mk "urange" { requiredSystemFeatures = [ "uid-range" ]; args = sh "echo x > $out"; };
  fail = mk "fail" { args = sh "mkdir $out; echo partial > $out/f; echo failing; exit 3"; };
  # A chain whose builders write in their working directory (/build), made ahead of the slot after the first.
  cwd3 = let
    cwd = name: d: mk name { inherit d; args = sh "/bin/busybox touch here && /bin/busybox stat -c %a . > $out"; };
  in cwd "cwd3" (cwd "cwd2" (cwd "cwd1" ""));
}
`;

/** Nix's error text: everything after the first `error: `, first line. */
function nixError(stderr: string): string {
  const i = stderr.indexOf('error: ');
  return i < 0 ? '' : stderr.slice(i + 'error: '.length).split('\n')[0]!;
}

async function failureOf(p: Promise<unknown>): Promise<BuildFailedError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(BuildFailedError);
  return e as BuildFailedError;
}

/**
 * What Nix throws out of a build's setup (not a build failure) ends the whole call with that error, exit 1:
 * the engine rejects with it as a BuildSetupError (the CLI prints it alone and exits 1).
 */
async function setupErrorOf(p: Promise<unknown>): Promise<BuildSetupError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(BuildSetupError);
  return e as BuildSetupError;
}

describe.skipIf(!nixOk() || !busyboxOk())('sandbox settings vs Nix 2.8', () => {
  let root: string;
  let extraFile: string;
  let extraDir: string;

  beforeAll(async () => {
    root = tempDir('realise-sbx-modes-');
    extraFile = path.join(root, 'extrafile');
    extraDir = path.join(root, 'extradir');
    await fsp.writeFile(extraFile, 'hello\n');
    await fsp.mkdir(extraDir);
    await fsp.writeFile(path.join(extraDir, 'f'), 'f\n');
    await fsp.writeFile(path.join(root, 'exprs.nix'), EXPR);
  });
  afterAll(async () => {
    await flushRemovals();
    // The engines' sandboxes refill their chroot skeleton pools in the background (in the store dirs).
    for (let i = 0; root && i < 10; i++) {
      try {
        await removeTree(root);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  });

  describe('chroot stores', () => {
    let R1: string; // Nix
    let R2: string; // ours
    let drv: Record<string, string>;
    let store: LocalStore;
    const engine = (o: BuildEngineOptions = {}) =>
      new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: path.join(root, 'tmp'), ...o });
    const nixBuild = (args: string[]) => nixRealise(R1, [...nixSandboxArgs(), ...args], { env: { TMPDIR: path.join(root, 'tmp') } });

    beforeAll(async () => {
      R1 = path.join(root, 'nix');
      R2 = path.join(root, 'ours');
      await fsp.mkdir(path.join(root, 'tmp'));
      drv = instantiateAttrs(R1, path.join(root, 'exprs.nix'));
      expect(instantiateAttrs(R2, path.join(root, 'exprs.nix'))).toEqual(drv);
      store = await LocalStore.open({ root: R2 });
    });
    afterAll(async () => {
      await store?.close();
    });

    it('__impureHostDeps outside allowed-impure-host-deps: refused by both, exit 1, same message', async () => {
      const r = nixBuild([drv.impure!]);
      expect(r.status).toBe(1);
      const e = await setupErrorOf(engine().buildPaths([drv.impure!]));
      expect(e.shortMessage).toBe(nixError(r.stderr));
      expect(e.message).toContain("requested impure path '/usr/bin/env', but it was not in allowed-impure-host-deps");
    });

    it('the CLI: a dependency refused at setup ends the call with that one error, exit 1, also with --keep-going', async () => {
      for (const kg of [[], ['--keep-going']]) {
        const r = nixBuild([...kg, drv.top!]);
        const ours = await realiseCli(['build', '--store', R2, drv.top!, ...nixSandboxArgs(), ...kg]);
        expect([ours.status, r.status]).toEqual([1, 1]);
        const errors = (t: string) => t.split('\n').filter((l) => l.startsWith('error: '));
        expect(errors(ours.stderr)).toEqual(errors(r.stderr));
        expect(errors(ours.stderr)).toEqual([
          expect.stringMatching(/^error: derivation '.*-imp2\.drv' requested impure path '\/usr\/bin\/env', but it was not in allowed-impure-host-deps$/),
        ]);
      }
    });

    it('sandbox-build-dir: the builder works in that directory in both, same output', async () => {
      const r = nixBuild(['--option', 'sandbox-build-dir', '/mybuild', drv.sbd!]);
      expect(r.status, r.stderr).toBe(0);
      await engine({ sandboxBuildDir: '/mybuild' }).buildPaths([drv.sbd!]);
      const [out] = nixOutputs(R1, [drv.sbd!]);
      expect(await fsp.readFile(path.join(R1, out!), 'utf8')).toMatch(/^\/mybuild \/mybuild \/mybuild\nroot:x:0:0:Nix build user:\/mybuild:/);
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(pathFacts(R1, [out!]).get(out!));
    });

    it('sandbox-dev-shm-size and filter-syscalls = false: the same /dev/shm size, setuid bits and no_new_privs in both', async () => {
      const r = nixBuild(['--option', 'sandbox-dev-shm-size', '10m', '--option', 'filter-syscalls', 'false', drv.shm!]);
      expect(r.status, r.stderr).toBe(0);
      await engine({ sandboxShmSize: '10m', filterSyscalls: false }).buildPaths([drv.shm!]);
      const [out] = nixOutputs(R1, [drv.shm!]);
      expect(await fsp.readFile(path.join(R1, out!), 'utf8')).toBe('10240\nsetuid-ok\nNoNewPrivs:\t0\n');
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(pathFacts(R1, [out!]).get(out!));
    });

    it('keepFailed and a setup error: both keep the build dir and print the note before the error', async () => {
      const [kA, kB] = [path.join(root, 'kept-nix'), path.join(root, 'kept-ours')];
      await fsp.mkdir(kA);
      await fsp.mkdir(kB);
      const r = nixRealise(R1, [...nixSandboxArgs(), '--keep-failed', drv.impure!], { env: { TMPDIR: kA } });
      expect(r.status).toBe(1);
      const saved = process.env.TMPDIR;
      process.env.TMPDIR = kB;
      let ours;
      try {
        ours = await realiseCli(['build', '--store', R2, drv.impure!, ...nixSandboxArgs(), '--keep-failed']);
      } finally {
        if (saved === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = saved;
      }
      expect(ours.status).toBe(1);
      expect(await fsp.readdir(kB)).toEqual(await fsp.readdir(kA));
      expect(await fsp.readdir(kA)).toEqual(['nix-build-impure.drv-0']);
      const mode = async (d: string) => (await fsp.stat(path.join(d, 'nix-build-impure.drv-0'))).mode & 0o7777;
      expect(await mode(kB)).toBe(await mode(kA));
      expect(await mode(kA)).toBe(0o755);
      const lines = (t: string, dir: string) =>
        t
          .split(dir)
          .join('TMP')
          .split('\n')
          .filter((l) => /^(error|note): /.test(l));
      expect(lines(ours.stderr, kB)).toEqual(lines(r.stderr, kA));
      expect(lines(ours.stderr, kB)[0]).toBe("note: keeping build directory 'TMP/nix-build-impure.drv-0'");
    });

    it('__impureHostDeps under an allowed prefix: bound into the sandbox by both, same output', async () => {
      const r = nixBuild(['--option', 'allowed-impure-host-deps', '/usr/bin', drv.impure!]);
      expect(r.status, r.stderr).toBe(0);
      await engine({ allowedImpureHostDeps: ['/usr/bin'] }).buildPaths([drv.impure!]);
      const [out] = nixOutputs(R1, [drv.impure!]);
      expect(await fsp.readFile(path.join(R1, out!), 'utf8')).toBe('/usr/bin/env\n');
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(pathFacts(R1, [out!]).get(out!));
    });

    it('a missing mandatory sandbox path: exit 1 with Nix\'s error, no "builder failed" message; optional ones are skipped', async () => {
      const args = ['--option', 'extra-sandbox-paths', '/no/such/path'];
      const r = nixBuild([...args, drv.sees!]);
      expect(r.status).toBe(1);
      expect(nixError(r.stderr)).toBe("getting attributes of path '/no/such/path': No such file or directory");
      const e = await setupErrorOf(engine({ sandboxPaths: [...SANDBOX_PATHS, '/no/such/path'] }).buildPaths([drv.sees!]));
      expect(e.shortMessage).toBe(nixError(r.stderr));
      const rel = nixBuild(['--option', 'extra-sandbox-paths', 'no-such-relative-path', drv.sees!]);
      const eRel = await setupErrorOf(engine({ sandboxPaths: [...SANDBOX_PATHS, 'no-such-relative-path'] }).buildPaths([drv.sees!]));
      expect(rel.status).toBe(1);
      expect(eRel.shortMessage).toBe(nixError(rel.stderr));
    });

    it('pre-build hook: its extra-sandbox-paths are bound by both (same output); unknown commands are the same error', async () => {
      const hook = path.join(root, 'hook.sh');
      await fsp.writeFile(
        hook,
        `#!/bin/sh\necho "$#:$1" >> "${root}/hook.log"\ntest -d "$2" || exit 9\n` +
          `printf 'extra-sandbox-paths\\n/extrafile=${extraFile}\\n/extradir=${extraDir}\\n\\n'\n`,
        { mode: 0o755 },
      );
      const r = nixBuild(['--option', 'pre-build-hook', hook, drv.sees!]);
      expect(r.status, r.stderr).toBe(0);
      await engine({ preBuildHook: hook }).buildPaths([drv.sees!]);
      const [out] = nixOutputs(R1, [drv.sees!]);
      const seen = await fsp.readFile(path.join(R1, out!), 'utf8');
      expect(seen).toContain('/extrafile\n/extradir/f\n');
      expect(await fsp.readFile(path.join(R2, out!), 'utf8')).toBe(seen);
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(pathFacts(R1, [out!]).get(out!));
      expect((await fsp.readFile(path.join(root, 'hook.log'), 'utf8')).split('\n').filter(Boolean)).toEqual([`2:${drv.sees}`, `2:${drv.sees}`]);

      const bad = path.join(root, 'bad-hook.sh');
      await fsp.writeFile(bad, '#!/bin/sh\necho hello world\n', { mode: 0o755 });
      const rb = nixBuild(['--option', 'pre-build-hook', bad, drv.fail!]);
      expect(rb.status).toBe(1);
      const e = await setupErrorOf(engine({ preBuildHook: bad }).buildPaths([drv.fail!]));
      expect(e.shortMessage).toBe(nixError(rb.stderr));
      expect(e.shortMessage).toBe("unknown pre-build hook command 'hello world'");

      // A hook that fails, is killed, or cannot be executed: Nix's runProgram words, exit 1.
      const exit3 = path.join(root, 'exit3-hook.sh');
      await fsp.writeFile(exit3, '#!/bin/sh\nexit 3\n', { mode: 0o755 });
      const killed = path.join(root, 'killed-hook.sh');
      await fsp.writeFile(killed, '#!/bin/sh\nkill -9 $$\n', { mode: 0o755 });
      for (const h of [exit3, killed, path.join(root, 'no-such-hook')]) {
        const rh = nixBuild(['--option', 'pre-build-hook', h, drv.fail!]);
        expect(rh.status).toBe(1);
        const eh = await setupErrorOf(engine({ preBuildHook: h }).buildPaths([drv.fail!]));
        // (a missing hook: Nix's child first prints "error: executing '…': No such file or directory")
        const last = rh.stderr
          .split('\n')
          .filter((l) => l.startsWith('error: '))
          .pop()!
          .slice('error: '.length);
        expect(eh.shortMessage).toBe(last);
        expect(last).toMatch(/^program '.*' failed (with exit code [13]|due to signal 9 \(Killed\))$/);
      }
    });

    it("requiredSystemFeatures recursive-nix: without the experimental feature, exit 1 with Nix 2.8's message", async () => {
      const r = nixBuild(['--option', 'system-features', 'recursive-nix', drv.rnix!]);
      expect(r.status).toBe(1);
      const e = await setupErrorOf(engine({ systemFeatures: ['recursive-nix'] }).buildPaths([drv.rnix!]));
      expect(e.shortMessage).toBe(nixError(r.stderr));
      const ok = nixBuild(['--option', 'system-features', 'recursive-nix', '--option', 'extra-experimental-features', 'recursive-nix', drv.rnix!]);
      expect(ok.status, ok.stderr).toBe(0);
      await engine({ systemFeatures: ['recursive-nix'], experimentalFeatures: ['recursive-nix'] }).buildPaths([drv.rnix!]);
    });

    it('requiredSystemFeatures uid-range is an ordinary feature in Nix 2.8: refused without it, built with it', async () => {
      const r = nixBuild([drv.urange!]);
      expect(r.status).toBe(1);
      const e = await engine()
        .buildPaths([drv.urange!])
        .then(
          () => undefined,
          (x: unknown) => x as Error,
        );
      expect(e?.message.split('\n')[0]).toBe(nixError(r.stderr));
      expect(nixBuild(['--option', 'system-features', 'uid-range', drv.urange!]).status).toBe(0);
      await engine({ systemFeatures: ['uid-range'] }).buildPaths([drv.urange!]);
      const [out] = nixOutputs(R1, [drv.urange!]);
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(pathFacts(R1, [out!]).get(out!));
    });

    it('builders after the first work in a build directory made ahead of their slot, and none is left', async () => {
      const tmp = path.join(root, 'tmp');
      await engine().buildPaths([drv.cwd3!]);
      const [out] = nixOutputs(R1, [drv.cwd3!]);
      expect(await fsp.readFile(path.join(R2, out!), 'utf8')).toBe('700\n');
      expect((await fsp.readdir(tmp)).filter((n) => n.startsWith('nix-build-cwd'))).toEqual([]);
    });

    it('a failed build (also with keepFailed): its output is not left in the chroot store, nor is the chroot; a kept build dir is 0755 in both', async () => {
      const [kA, kB] = [path.join(root, 'kept-fail-nix'), path.join(root, 'kept-fail-ours')];
      await fsp.mkdir(kA);
      await fsp.mkdir(kB);
      for (const keep of [false, true]) {
        const r = nixRealise(R1, [...nixSandboxArgs(), ...(keep ? ['--keep-failed'] : []), drv.fail!], { env: { TMPDIR: kA } });
        expect(r.status).toBe(100);
        const e = await failureOf(engine({ keepFailed: keep, buildDir: kB }).buildPaths([drv.fail!]));
        expect(e.exitStatus).toBe(100);
        await flushRemovals(); // the chroot is renamed aside at once and deleted in the background
        const left = async (R: string) =>
          (await fsp.readdir(path.join(R, 'nix/store'))).filter((n) => n.includes('-fail') && !n.endsWith('.drv') && !n.endsWith('.lock'));
        // Nix moves the output to its logical path (/nix/store/..., outside this store); we delete it.
        expect(await left(R2)).toEqual(await left(R1));
        expect(await left(R2)).toEqual([]);
      }
      // (Besides, ours holds this process's pool of build directories for reuse: the first failed build's.)
      const kept = async (d: string) =>
        Promise.all(
          (await fsp.readdir(d)).filter((n) => !n.startsWith(BUILD_DIR_POOL_PREFIX)).map(async (n) => [n, (await fsp.stat(path.join(d, n))).mode & 0o7777]),
        );
      expect(await kept(kB)).toEqual(await kept(kA));
      expect(await kept(kA)).toEqual([['nix-build-fail.drv-0', 0o755]]);
      // Nix 2.8 renamed its failed output to the logical path on the host, when it could.
      await removeTree(nixOutputs(R1, [drv.fail!])[0]!);
    });
  });

  describe('a plain store (logical = physical store dir)', () => {
    let storeDir: string;
    let uriA: string;
    let uriB: string;
    let drv: Record<string, string>;
    let store: LocalStore;
    const tmp = () => path.join(root, 'ptmp');
    const engine = (o: BuildEngineOptions = {}) => new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: tmp(), ...o });
    const nixBuild = (args: string[]) => nixRealise(uriA, [...nixSandboxArgs(), ...args], { env: { TMPDIR: tmp() } });

    beforeAll(async () => {
      storeDir = path.join(root, 'p', 'store');
      const [stateA, stateB] = [path.join(root, 'p', 'state-a'), path.join(root, 'p', 'state-b')];
      uriA = `local?store=${storeDir}&state=${stateA}&log=${path.join(root, 'p', 'log-a')}`;
      uriB = `local?store=${storeDir}&state=${stateB}&log=${path.join(root, 'p', 'log-b')}`;
      await fsp.mkdir(tmp());
      drv = instantiateAttrs(uriA, path.join(root, 'exprs.nix'));
      // The dependencies, built by Nix, are valid in both stores.
      const r = nixBuild([drv.dep!]);
      expect(r.status, r.stderr).toBe(0);
      await fsp.cp(stateA, stateB, { recursive: true, verbatimSymlinks: true });
      store = await LocalStore.open({ storeDir, stateDir: stateB, logDir: path.join(root, 'p', 'log-b') });
    });
    afterAll(async () => {
      await store?.close();
    });

    it('a store path in sandbox-paths brings its closure into the sandbox in both: same output', async () => {
      const [depOut] = nixOutputs(uriA, [drv.dep!]);
      const [dep2Out] = nixOutputs(uriA, [drv.dep2!]);
      const extra = [depOut!, `/extrafile=${extraFile}`, `/extradir=${extraDir}`];
      const r = nixBuild(['--option', 'extra-sandbox-paths', extra.join(' '), drv.sees!]);
      expect(r.status, r.stderr).toBe(0);
      const [out] = nixOutputs(uriA, [drv.sees!]);
      const nixSeen = await fsp.readFile(out!, 'utf8');
      expect(nixSeen).toContain(path.basename(dep2Out!));
      const nixFacts = pathFacts(uriA, [out!]).get(out!);
      await removeTree(out!);
      await engine({ sandboxPaths: [...SANDBOX_PATHS, ...extra] }).buildPaths([drv.sees!]);
      expect(await fsp.readFile(out!, 'utf8')).toBe(nixSeen);
      expect(pathFacts(uriB, [out!]).get(out!)).toEqual(nixFacts);
    });

    it('a failed sandboxed build leaves its output in the store (invalid) in both, with or without keepFailed', async () => {
      const [out] = nixOutputs(uriA, [drv.fail!]);
      for (const keep of [false, true]) {
        const r = nixBuild([...(keep ? ['--keep-failed'] : []), drv.fail!]);
        expect(r.status).toBe(100);
        expect(await fsp.readFile(path.join(out!, 'f'), 'utf8')).toBe('partial\n');
        await removeTree(out!);
        const e = await failureOf(engine({ keepFailed: keep }).buildPaths([drv.fail!]));
        expect(e.exitStatus).toBe(100);
        expect(await fsp.readFile(path.join(out!, 'f'), 'utf8')).toBe('partial\n');
        expect(await store.isValidPath(out!)).toBe(false);
        await removeTree(out!);
      }
    });
  });
});
