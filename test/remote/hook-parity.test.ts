/**
 * The build hook's decisions side by side with Nix 2.8's (`nix-store --realise --builders ...`, its
 * build-remote hook) on twin chroot stores: bad machine specifications, no fitting machine (wrong system,
 * missing or mandatory features, maxJobs 0), an unreachable machine, preferLocalBuild with max-jobs 0,
 * machines files with comments, `;` and `-` placeholders. Nix's lines (its error, the hook's "Failed to find
 * a machine" report with its table of machines, "cannot build on") must appear in ours, in order, with the
 * same exit status; with no machine to take the build, ours is Nix's stderr line for line.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { realiseInProcess } from '../helpers/cli.js';
import { nix, nixOk, runNix, tempDir, type NixRunResult } from '../helpers/nix.js';
import { NIX_CONF } from './fixture.js';

const EXPR = `
let mk = name: system: extra: derivation ({ inherit name system; builder = "/bin/sh"; args = [ "-c" "echo building \${name}; echo \${name} > $out" ]; } // extra);
in rec {
  plain = mk "plain" builtins.currentSystem {};
  arm = mk "arm" "aarch64-linux" {};
  cuda = mk "cuda" builtins.currentSystem { requiredSystemFeatures = [ "cuda" "big-parallel" ]; };
  pref = mk "pref" builtins.currentSystem { preferLocalBuild = true; };
  dep = mk "dep" builtins.currentSystem {};
  top = mk "top" builtins.currentSystem { inherit dep; };
  fail = mk "fail" builtins.currentSystem { args = [ "-c" "echo line one; echo line two >&2; exit 3" ]; };
}
`;

/** Nix's stderr lines that are not about the hook: the plan, and the hook process's own end after Nix's error. */
const notCompared = (l: string): boolean =>
  /^(this derivation will be built:|these \d+ derivations will be built:|  \/nix\/store\/|error: unexpected EOF reading a line|\(use '--show-trace')/.test(l) ||
  l === '';

/** Nix's stderr without what its hook process may say as it is ended after Nix's error. */
const withoutHookEnd = (stderr: string): string => stderr.replace(/^error: unexpected EOF reading a line\n/m, '');

describe.skipIf(!nixOk())('the build hook, realise vs nix-store --realise --builders', () => {
  let dir: string;
  const drvs: Record<string, string> = {};
  const env = { NIX_CONFIG: NIX_CONF, NIX_USER_CONF_FILES: '/dev/null' };

  beforeAll(() => {
    dir = tempDir('realise-hook-parity-');
    const file = path.join(dir, 'e.nix');
    writeFileSync(file, EXPR);
    const attrs = ['plain', 'arm', 'cuda', 'pref', 'dep', 'top', 'fail'];
    twinDrvs((s) => path.join(dir, s), attrs, file).forEach((drv, i) => (drvs[attrs[i]!] = drv));
  });

  /** `attrs` of `file` instantiated into the twin stores `store('N')` (Nix's) and `store('O')` (ours): the same .drv paths. */
  function twinDrvs(store: (s: 'N' | 'O') => string, attrs: readonly string[], file = path.join(dir, 'e.nix')): string[] {
    return attrs.map((attr) => {
      const drv = nix('nix-instantiate', ['--store', store('N'), file, '-A', attr], { env });
      expect(nix('nix-instantiate', ['--store', store('O'), file, '-A', attr], { env })).toBe(drv);
      return drv;
    });
  }

  /** Twin stores with `attrs` of e.nix and the dependency `dep` built (so a remote build uploads it to its machine). */
  function twinsWithDep(store: (s: 'N' | 'O') => string, attrs: readonly string[]): void {
    twinDrvs(store, attrs);
    for (const s of ['N', 'O'] as const) nix('nix-store', ['--store', store(s), '--realise', drvs.dep!], { env });
  }

  /** Empty stores made by Nix, as a machine's store is there before the builds it takes. */
  function initStores(...stores: string[]): void {
    for (const store of stores) nix('nix-store', ['--store', store, '--init'], { env });
  }

  /**
   * A file `NAME.nix` of three derivations, `PREFIXa-slow` (`slow` seconds), `PREFIXb-mid` (1 s) and
   * `PREFIXc-quick`, for the order in which builds go to a machine and to the local slot.
   */
  function threeBuilds(name: string, prefix: string, slow: number): string {
    const file = path.join(dir, `${name}.nix`);
    writeFileSync(
      file,
      `let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
in { a = mk "${prefix}a-slow" "sleep ${slow}; echo a > $out"; b = mk "${prefix}b-mid" "sleep 1; echo b > $out"; c = mk "${prefix}c-quick" "echo c > $out"; }`,
    );
    return file;
  }

  /** `nix-store --realise ARGS DRV` on N and `realise build ARGS DRV` on O. */
  async function both(
    args: string[],
    drv: string,
    extraEnv: Record<string, string> = {},
  ): Promise<{ theirs: NixRunResult; ours: { status: number; stderr: string } }> {
    const theirs = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', ...args, drv], { env: { ...env, ...extraEnv } });
    const ours = await realiseInProcess(['build', '--store', path.join(dir, 'O'), ...args, drv], { ...env, ...extraEnv });
    return { theirs, ours };
  }

  /** Every line Nix printed about the hook is in ours, in the same order, and the exit status is the same. */
  function expectNixLines(r: { theirs: NixRunResult; ours: { status: number; stderr: string } }, status: number): string[] {
    expect(r.theirs.status).toBe(status);
    expect(r.ours.status).toBe(status);
    const want = r.theirs.stderr.split('\n').filter((l) => !notCompared(l));
    const got = r.ours.stderr.split('\n');
    let at = 0;
    for (const line of want) {
      const i = got.indexOf(line, at);
      expect(i, `Nix's line ${JSON.stringify(line)} in ours (after line ${at}):\n${r.ours.stderr}`).toBeGreaterThanOrEqual(0);
      at = i + 1;
    }
    return want;
  }

  it('bad machine specifications: Nix 2.8 words, exit status 1', async () => {
    for (const spec of ['ssh://h x86_64-linux - four', 'ssh://h x86_64-linux - 1 fast', 'ssh://h - - 1 1 - - not*base64']) {
      const r = await both(['-j0', '--builders', spec], drvs.plain!);
      // Nix 2.8 names the bad base64 character as '' (a formatting slip): the rest of its line is compared.
      const want = expectNixLines({ ...r, theirs: { ...r.theirs, stderr: r.theirs.stderr.replace(/(is not valid base64 string): .*/, '$1') } }, 1);
      expect(want.join('\n')).toMatch(/^error: bad machine specification: /);
    }
  });

  it('max-jobs 0, no machine for the system: the hook report with the machines file table, then Nix error', async () => {
    const machines = path.join(dir, 'machines');
    writeFileSync(
      machines,
      '# a comment line\n' +
        'ssh://arm aarch64-linux,armv7l-linux /no/key 2 3 kvm,big-parallel - # trailing comment\n' +
        'ssh://bench - - - - - benchmark;  ssh://off i686-linux - 0\n' +
        `@${path.join(dir, 'absent-machines')}\n`,
    );
    const r = await both(['-j0', '--builders', `@${machines}`], drvs.plain!);
    const want = expectNixLines(r, 1);
    expect(want).toContain('3 available machines:');
    expect(want).toContain('(aarch64-linux, armv7l-linux, 2, big-parallel, kvm, )');
    expect(want.at(-2)).toBe('error: unable to start any build; remote machines may not have all required system features.');
    // Line for line Nix's (no line of ours on why each machine was passed over).
    expect(r.ours.stderr).toBe(withoutHookEnd(r.theirs.stderr));
  });

  it('required features no machine has, and a system this machine cannot build: Nix errors', async () => {
    const features = await both(['-j0', '--builders', 'ssh://gpu x86_64-linux - 1 1 cuda,kvm'], drvs.cuda!);
    expect(expectNixLines(features, 1)).toContain('required (system, features): (x86_64-linux, big-parallel, cuda)');
    const system = await both(['--builders', 'ssh://x86 x86_64-linux - 1 1 - -'], drvs.arm!);
    expect(expectNixLines(system, 1).at(-1)).toMatch(/^error: a 'aarch64-linux' with features \{\} is required to build '.*-arm\.drv', but I am a /);
  });

  it('preferLocalBuild does not build locally with max-jobs 0, without or with machines', async () => {
    expectNixLines(await both(['-j0'], drvs.pref!), 1);
    expectNixLines(await both(['-j0', '--builders', 'ssh://arm aarch64-linux'], drvs.pref!), 1);
  });

  it('internal-json, max-jobs 0 and no machine that fits: the hook report as a coloured level-1 msg, no progress after the error, the error last', async () => {
    // The stream with ids numbered in order of appearance; without the debug-level "querying info about
    // missing paths" activities, whose place among the first progress results differs (docs/observability.md).
    const stream = (stderr: string): string[] => {
      const lines = stderr.split('\n').filter((l) => l.startsWith('@nix '));
      const skipped = new Set(lines.filter((l) => l.includes('"text":"querying info about missing paths"')).map((l) => /"id":(\d+)/.exec(l)![1]));
      const ids = new Map<string, number>();
      return lines
        .filter((l) => !skipped.has(/"id":(\d+)/.exec(l)?.[1] ?? ''))
        .map((l) => l.replace(/"id":(\d+)/, (_, id: string) => `"id":${ids.get(id) ?? ids.set(id, ids.size).get(id)}`));
    };
    for (const builders of [[], ['--builders', 'ssh://arm aarch64-linux,armv7l-linux - 2 1 kvm,big - ; ssh://x x86_64-linux - 1 1 - cuda']]) {
      const r = await both(['-j0', ...builders, '--log-format', 'internal-json'], drvs.top!);
      expect(r.theirs.status).toBe(1);
      expect(r.ours.status).toBe(1);
      const want = stream(r.theirs.stderr);
      expect(want.at(-1)).toMatch(/"level":0,.*unable to start any build/);
      if (builders.length)
        expect(want.join('\n')).toContain('"action":"msg","level":1,"msg":"Failed to find a machine for remote build!\\nderivation: \\u001b[35;1m');
      expect(stream(r.ours.stderr)).toEqual(want);
    }
  });

  it('an unreachable machine: "cannot build on" with ssh error, then as if it were not there', async () => {
    const r = await both(['-j0', '--builders', 'ssh://127.0.0.1 - - 1 1'], drvs.plain!, { NIX_SSHOPTS: '-oPort=1 -oBatchMode=yes' });
    expectNixLines({ theirs: { ...r.theirs, stderr: r.theirs.stderr.replace(/^cannot build on .*\n/m, '') }, ours: r.ours }, 1);
    for (const out of [r.theirs.stderr, r.ours.stderr]) {
      expect(out).toMatch(/^cannot build on 'ssh:\/\/127\.0\.0\.1': .*\n?.*ssh: connect to host 127\.0\.0\.1 port 1: Connection refused/m);
      expect(out).not.toMatch(/^building /m);
    }
    // The machine that failed during this build is in the report's table, and nothing more is said of it.
    expect(r.ours.stderr).toBe(withoutHookEnd(r.theirs.stderr));
  });

  it('preferLocalBuild with max-jobs 0 goes to the machine, and both builds agree', async () => {
    const spec = (s: string) => `ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(dir, `remote-${s}`))} - - 1 1`;
    const theirs = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', '-j0', '--builders', spec('N'), drvs.pref!], { env });
    const ours = await realiseInProcess(['build', '--store', path.join(dir, 'O'), '-j0', '--builders', spec('O'), drvs.pref!], env);
    expect(theirs.stderr).toContain(`building '${drvs.pref}' on 'ssh-ng://localhost?remote-store=`);
    expect(ours.stderr).toContain(`building '${drvs.pref}' on 'ssh-ng://localhost?remote-store=`);
    expect([theirs.status, ours.status]).toEqual([0, 0]);
    const out = theirs.stdout.trim();
    expect(ours.stdout.trim()).toBe(out);
    const info = (store: string) => ['--hash', '--deriver', '--references'].map((q) => nix('nix-store', ['--store', path.join(dir, store), '-q', q, out]));
    expect(info('O')).toEqual(info('N'));
    expect(info('remote-O')).toEqual(info('remote-N'));
  });

  it('with a free local slot (max-jobs 1) a machine with a free slot still takes the build, as Nix asks its hook first; an unreachable one is tried, then the build is done here', async () => {
    const local = (s: string, name: string) => path.join(dir, `j1-${name}-${s}`);
    for (const name of ['up', 'down']) twinDrvs((s) => local(s, name), ['plain']);
    const spec = (s: string) => `ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(dir, `j1-machine-${s}`))} - - 1 1`;
    const theirs = runNix('nix-store', ['--store', local('N', 'up'), '--realise', '--builders', spec('N'), drvs.plain!], { env });
    const ours = await realiseInProcess(['build', '--store', local('O', 'up'), '--builders', spec('O'), drvs.plain!], env);
    const on = (s: string) => `building '${drvs.plain}' on 'ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(dir, `j1-machine-${s}`))}'...`;
    expect(theirs.stderr.split('\n')).toContain(on('N'));
    expect(ours.stderr.split('\n')).toContain(on('O'));
    expect([theirs.status, ours.status]).toEqual([0, 0]);
    expect(ours.stdout).toBe(theirs.stdout);
    const out = theirs.stdout.trim();
    for (const s of ['N', 'O']) expect(runNix('nix-store', ['--store', path.join(dir, `j1-machine-${s}`), '--check-validity', out]).status).toBe(0);
    // An unreachable machine: Nix's hook reports it, and the build is done here.
    const down = { NIX_SSHOPTS: '-oPort=1 -oBatchMode=yes' };
    const args = ['--builders', 'ssh://127.0.0.1 - - 1 1', drvs.plain!];
    const t = runNix('nix-store', ['--store', local('N', 'down'), '--realise', ...args], { env: { ...env, ...down } });
    const o = await realiseInProcess(['build', '--store', local('O', 'down'), ...args], { ...env, ...down });
    for (const r of [t, o]) {
      expect(r.stderr).toMatch(/^cannot build on 'ssh:\/\/127\.0\.0\.1': .*\n?.*ssh: connect to host 127\.0\.0\.1 port 1: Connection refused/m);
      // Built here only: the machine never took it, so no "building '…' on '…'" line (Nix says that once the machine accepted).
      expect(r.stderr.split('\n').filter((l) => l.startsWith("building '"))).toEqual([`building '${drvs.plain}'...`]);
      expect(r.status).toBe(0);
    }
    expect(o.stdout).toBe(t.stdout);
    // A faster machine that is down, then one that is up: the first is reported before the second takes the build.
    const two = (s: string) => ['--builders', `ssh://127.0.0.1 - - 1 2; ${spec(s)}`, drvs.plain!];
    twinDrvs((s) => local(s, 'two'), ['plain']);
    const t2 = runNix('nix-store', ['--store', local('N', 'two'), '--realise', ...two('N')], { env: { ...env, ...down } });
    const o2 = await realiseInProcess(['build', '--store', local('O', 'two'), ...two('O')], { ...env, ...down });
    for (const [r, s] of [
      [t2, 'N'],
      [o2, 'O'],
    ] as const) {
      const lines = r.stderr.split('\n');
      const failed = lines.findIndex((l) => l.startsWith("cannot build on 'ssh://127.0.0.1': "));
      expect(failed, r.stderr).toBeGreaterThanOrEqual(0);
      expect(
        lines.filter((l) => l.startsWith("building '")),
        r.stderr,
      ).toEqual([on(s)]);
      expect(lines.indexOf(on(s)), r.stderr).toBeGreaterThan(failed);
      expect(r.status).toBe(0);
    }
  });

  it('max-jobs 1 and a machine with one slot: the machine takes the first build before a local one starts, a build that finds both busy is built here once the local slot frees', async () => {
    const file = threeBuilds('w', '', 3);
    const root = (s: string, what: string) => path.join(dir, `order-${what}-${s}`);
    const targets = twinDrvs((s) => root(s, 'local'), ['a', 'b', 'c'], file);
    initStores(root('N', 'machine'), root('O', 'machine'));
    const spec = (s: string) => `ssh-ng://localhost?remote-store=${encodeURIComponent(root(s, 'machine'))} - - 1 1`;
    const theirs = runNix('nix-store', ['--store', root('N', 'local'), '--realise', '-j1', '--builders', spec('N'), ...targets], { env });
    const ours = await realiseInProcess(['build', '--store', root('O', 'local'), '-j1', '--builders', spec('O'), ...targets], env);
    expect([theirs.status, ours.status]).toEqual([0, 0]);
    // Our own lines about where each build runs (not the machine's own "building '…'" it forwards).
    const starts = (stderr: string, s: string) =>
      stderr
        .split('\n')
        .filter((l) => l.startsWith("building '"))
        .filter((l, i, all) => !(l === `building '${targets[0]}'...` && all.slice(0, i).some((k) => k.startsWith(`building '${targets[0]}' on`))))
        .map((l) => l.replace(encodeURIComponent(root(s, 'machine')), 'MACHINE'));
    expect(starts(ours.stderr, 'O')).toEqual(starts(theirs.stderr, 'N'));
    expect(starts(theirs.stderr, 'N')).toEqual([
      `building '${targets[0]}' on 'ssh-ng://localhost?remote-store=MACHINE'...`,
      `building '${targets[1]}'...`,
      `building '${targets[2]}'...`,
    ]);
  });

  it("the configuration's unknown settings: Nix's hook warns again as it starts, once per build a machine takes and once while one is left (-j1 and -j0, one machine with one slot)", async () => {
    const file = threeBuilds('warn', 'w', 2);
    const conf = path.join(dir, 'warn-conf');
    mkdirSync(conf, { recursive: true });
    writeFileSync(path.join(conf, 'nix.conf'), 'zz-conf-unknown = 1\n');
    // The machine's daemon (run here, without ssh, for localhost) reads no nix.conf: its own warnings would
    // come through the hook too, and are not what is compared.
    const quiet = path.join(dir, 'warn-quiet-conf');
    mkdirSync(quiet, { recursive: true });
    const daemon = path.join(dir, 'warn-daemon.sh');
    writeFileSync(daemon, `#!/bin/sh\nNIX_CONF_DIR=${quiet} exec nix-daemon "$@"\n`);
    chmodSync(daemon, 0o755);
    const warnEnv = { ...env, NIX_CONF_DIR: conf };
    const lines = (stderr: string, machine: string) =>
      stderr
        .split('\n')
        .filter((l) => /^warning: unknown setting|^building '[^']*' on /.test(l))
        .map((l) => l.replace(machine, 'MACHINE'));
    for (const [jobs, count] of [
      [1, 2],
      [1, 3],
      [0, 3],
    ] as const) {
      const root = (s: string, what: string) => path.join(dir, `warn-${jobs}-${count}-${what}-${s}`);
      const targets = twinDrvs((s) => root(s, 'local'), ['a', 'b', 'c'].slice(0, count), file);
      initStores(root('N', 'machine'), root('O', 'machine'));
      const uri = (s: string) => `ssh-ng://localhost?remote-store=${encodeURIComponent(root(s, 'machine'))}&remote-program=${encodeURIComponent(daemon)}`;
      const args = (s: string) => [`-j${jobs}`, '--builders', `${uri(s)} - - 1 1`, ...targets];
      const theirs = runNix('nix-store', ['--store', root('N', 'local'), '--realise', ...args('N')], { env: warnEnv });
      const ours = await realiseInProcess(['build', '--store', root('O', 'local'), ...args('O')], warnEnv);
      expect([theirs.status, ours.status]).toEqual([0, 0]);
      const warning = "warning: unknown setting 'zz-conf-unknown'";
      const on = (i: number) => `building '${targets[i]}' on 'MACHINE'...`;
      // nix-store's own warning, the first hook's; then one hook per build the machine takes that others follow.
      const want = jobs === 1 ? [warning, warning, on(0), warning] : [warning, warning, on(0), warning, on(1), ...(count === 3 ? [warning, on(2)] : [])];
      expect(lines(theirs.stderr, uri('N')), `-j${jobs}, ${count} derivations`).toEqual(want);
      expect(lines(ours.stderr, uri('O')), `-j${jobs}, ${count} derivations`).toEqual(want);
    }
  }, 120_000);

  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    it(`${scheme}://: a failure there is exit status 1 with the hook's error and log tail; rows, logs of both sides agree`, async () => {
      // Fresh twin stores for this scheme, the dependency built here (so it is uploaded to the machine).
      const local = (s: string) => path.join(dir, `local-${scheme}-${s}`);
      twinsWithDep(local, ['top', 'fail']);
      // Two slots: Nix's hook postpones a build for a few seconds when the machine's slots are taken.
      const spec = (s: string) => `${scheme}://localhost?remote-store=${encodeURIComponent(path.join(dir, `${scheme}-${s}`))} - - 2 1`;
      // The machines' stores exist before the builds, as a real machine's does: our two builds connect at
      // once, and two Nix processes creating one new store's database together fail ("database is busy").
      initStores(path.join(dir, `${scheme}-N`), path.join(dir, `${scheme}-O`));
      const args = (s: string) => ['-j0', '-k', '--builders', spec(s), drvs.top!, drvs.fail!];
      const theirs = runNix('nix-store', ['--store', local('N'), '--realise', ...args('N')], { env });
      const ours = await realiseInProcess(['build', '--store', local('O'), ...args('O')], env);
      expect([theirs.status, ours.status]).toEqual([1, 1]);
      // The hook's error: the build, the machine and the remote's errorMsg (with its log tail over ssh-ng://).
      const hookError = (stderr: string) => /^error: build of .*-fail\.drv' on [^\n]* failed: [^\n]*(\n {7}[^\n]*)*/m.exec(stderr)?.[0];
      expect(hookError(theirs.stderr)).toContain('failed with exit code 3');
      expect(hookError(ours.stderr), ours.stderr).toBe(hookError(theirs.stderr)!.replaceAll(`${scheme}-N`, `${scheme}-O`));
      for (const line of ['line one', 'line two']) expect(ours.stderr.split('\n')).toContain(line);
      // Every error line in Nix's order: the hook's, then the build's as a builder that exited with 1 ("builder
      // for '…' failed with exit code 1"), then the summary of the failed targets.
      const errors = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('error: '));
      expect(errors(ours.stderr)).toEqual(errors(theirs.stderr).map((l) => l.replaceAll(`${scheme}-N`, `${scheme}-O`)));
      expect(errors(ours.stderr)).toContain(`error: builder for '${drvs.fail}' failed with exit code 1`);
      // The machine takes the build ("building '…' on '…'"), then the input is copied there, as Nix's hook does.
      const handOver = (stderr: string) => stderr.split('\n').filter((l) => /^building '.*-top\.drv' on |^copying path '.*-dep' to /.test(l));
      expect(handOver(ours.stderr)).toEqual(handOver(theirs.stderr).map((l) => l.replaceAll(`${scheme}-N`, `${scheme}-O`)));
      expect(handOver(ours.stderr)).toHaveLength(2);
      // The outputs copied back and the input copied there: the same rows (not ultimate where copied).
      const top = nix('nix-store', ['--store', local('N'), '-q', '--outputs', drvs.top!]);
      const rows = (store: string) =>
        (JSON.parse(nix('nix', ['path-info', '--store', store, '--json', '-r', top], { env })) as Record<string, unknown>[]).map(
          ({ registrationTime, ...row }) => row,
        );
      expect(rows(local('O'))).toEqual(rows(local('N')));
      expect(rows(path.join(dir, `${scheme}-O`))).toEqual(rows(path.join(dir, `${scheme}-N`)));
      expect(rows(local('N')).find((r) => r.path === top)?.ultimate).toBeUndefined();
      // `nix-store -l` has the remote builds' logs here, as Nix keeps them.
      for (const drv of [drvs.top!, drvs.fail!]) {
        const log = (s: string) => nix('nix-store', ['--store', local(s), '-l', drv]);
        expect(log('O')).toBe(log('N'));
      }
    });
  }

  it('builders-use-substitutes: the machine takes the input from its binary cache instead of our copy', async () => {
    // A signed file:// cache holding the dependency; the machines (and only they) substitute from it.
    const cache = path.join(dir, 'cache');
    const local = (scheme: string, s: string) => path.join(dir, `subst-${scheme}-${s}`);
    const machineEnv = { ...env, NIX_CONFIG: `${NIX_CONF}substituters = file://${cache}\nrequire-sigs = false\n` };
    for (const scheme of ['ssh-ng', 'ssh']) twinsWithDep((s) => local(scheme, s), ['top']);
    // (A private store: the command opens one, which for an ordinary user must not be the system daemon.)
    nix('nix-store', ['--store', local('ssh', 'N'), '--generate-binary-cache-key', 'test-1', path.join(dir, 'sk'), path.join(dir, 'pk')]);
    const dep = nix('nix-store', ['--store', local('ssh', 'N'), '-q', '--outputs', drvs.dep!]);
    nix('nix', ['copy', '--store', local('ssh', 'N'), '--to', `file://${cache}?secret-key=${path.join(dir, 'sk')}`, dep], { env });
    for (const scheme of ['ssh-ng', 'ssh']) {
      const remote = (s: string) => path.join(dir, `subst-${scheme}-remote-${s}`);
      const args = (s: string) => [
        '-j0',
        '--builders-use-substitutes',
        '--builders',
        `${scheme}://localhost?remote-store=${encodeURIComponent(remote(s))} - - 1 1`,
        drvs.top!,
      ];
      expect(runNix('nix-store', ['--store', local(scheme, 'N'), '--realise', ...args('N')], { env: machineEnv }).status).toBe(0);
      expect((await realiseInProcess(['build', '--store', local(scheme, 'O'), ...args('O')], machineEnv)).status).toBe(0);
      // Substituted there: the cache's signature is on the machine's copy (ours carries none).
      const sigs = (s: string) =>
        (JSON.parse(nix('nix', ['path-info', '--store', remote(s), '--json', dep], { env })) as { signatures?: string[] }[])[0]!.signatures;
      expect(sigs('N')).toHaveLength(1);
      expect(sigs('O')).toEqual(sigs('N'));
    }
  });
});
