/**
 * User mistakes end `realise` with Nix 2.8's message and exit status 1, never a stack trace: a missing key
 * file, an unknown compression method, a cache directory that is a file. Side by side with `nix copy` /
 * `nix-store` where Nix has the same mistake. Also the errno → Nix wording used for them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { systemErrorMessage } from '../../src/cli/report.js';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { AS_ROOT, nix, nixEnv, nixOk, removeTreeSync, runNix, tempDir, usableByOthers } from '../helpers/nix.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const lastLine = (s: string) => s.trimEnd().split('\n').pop();
const noTrace = (s: string) => expect(s).not.toMatch(/^\s+at /m);

describe('system call failures in Nix words', () => {
  const errnoError = (code: string, errno: number, message: string, syscall: string, p: string, dest?: string) =>
    Object.assign(new Error(message), { code, errno, syscall, path: p, ...(dest ? { dest } : {}) });
  it('maps the syscall and the description as Nix SysError prints them', () => {
    expect(systemErrorMessage(errnoError('ENOENT', -2, "ENOENT: no such file or directory, open '/x'", 'open', '/x'))).toBe(
      "opening file '/x': No such file or directory",
    );
    expect(systemErrorMessage(errnoError('EEXIST', -17, "EEXIST: file already exists, mkdir '/d'", 'mkdir', '/d'))).toBe(
      "creating directory '/d': File exists",
    );
    expect(systemErrorMessage(errnoError('EACCES', -13, "EACCES: permission denied, symlink '/t' -> '/l'", 'symlink', '/t', '/l'))).toBe(
      "creating symlink from '/l' to '/t': Permission denied",
    );
    // A read on a descriptor (Node names no path): Nix's readFull words.
    let eisdir: unknown;
    try {
      readFileSync(tempDir());
    } catch (e) {
      eisdir = e;
    }
    expect(systemErrorMessage(eisdir)).toBe('reading from file: Is a directory');
    expect(systemErrorMessage(new TypeError('x'))).toBeUndefined();
  });
});

describe.skipIf(!nixOk())('user mistakes, realise vs Nix 2.8', () => {
  let dir: string;
  let store: string;
  let p: string;
  beforeAll(() => {
    dir = tempDir();
    store = path.join(dir, 'S');
    writeFileSync(path.join(dir, 'f.txt'), 'hello\n');
    p = nix('nix-store', ['--store', store, '--add', path.join(dir, 'f.txt')]);
  });

  it('copy with a secret key file that does not exist (URL setting and --option)', async () => {
    const n = runNix('nix', ['copy', '--store', store, '--to', `file://${dir}/N?secret-key=/nonexistent`, p]);
    expect(n.status).toBe(1);
    const o = await realise(['copy', '--store', store, '--to', `file://${dir}/O2`, '--option', 'secret-key', '/nonexistent', p]);
    expect([o.status, o.stderr]).toEqual([1, n.stderr]);
    // A key file that is a directory: Nix's read error.
    const n2 = runNix('nix', ['copy', '--store', store, '--to', `file://${dir}/N?secret-key=${dir}`, p]);
    expect(n2.status).toBe(1);
    const o2 = await realise(['copy', '--store', store, '--to', `file://${dir}/O3`, '--option', 'secret-key', dir, p]);
    expect([o2.status, o2.stderr]).toEqual([1, n2.stderr]);
    // In the URL, the cache's own typed error names the setting and the file.
    const u = await realise(['copy', '--store', store, '--to', `file://${dir}/O?secret-key=/nonexistent`, p]);
    expect(u.status).toBe(1);
    expect(lastLine(u.stderr)).toMatch(/^error: binary cache '.*': cannot read secret key file '\/nonexistent': /);
    noTrace(u.stderr);
  });

  it("building a content-addressed .drv without the ca-derivations feature: Nix's error alone (before any plan), exit 1, nothing built", async () => {
    writeFileSync(
      path.join(dir, 'ca.nix'),
      'derivation { name = "floating"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }',
    );
    const ca = ['--extra-experimental-features', 'ca-derivations'];
    const drv = nix('nix-instantiate', ['--store', store, ...ca, path.join(dir, 'ca.nix')]);
    const n = runNix('nix-store', ['--store', store, '--realise', drv, '--keep-going']);
    expect(n.status).toBe(1);
    expect(n.stderr.trim()).toBe(
      "error: experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override",
    );
    const before = nix('nix-store', ['--store', store, '--dump-db']);
    const o = await realise(['build', '--store', store, drv, '--keep-going']);
    expect([o.status, o.stderr.trim()]).toEqual([1, n.stderr.trim()]);
    // The store unchanged: no path registered.
    expect(nix('nix-store', ['--store', store, '--dump-db'])).toBe(before);
  });

  it("a narinfo whose NarHash is not its content address's (the NAR is good): Nix's hash mismatch with both hashes, nothing registered or left", async () => {
    const cache = path.join(dir, 'bad-narhash');
    nix('nix', ['copy', '--store', store, '--to', `file://${cache}`, p]);
    const ni = path.join(cache, `${path.basename(p).slice(0, 32)}.narinfo`);
    writeFileSync(ni, readFileSync(ni, 'utf8').replace(/^NarHash: .*$/m, `NarHash: sha256:${'0'.repeat(52)}`));
    const opts = ['--option', 'substituters', `file://${cache}`, '--option', 'require-sigs', 'false'];
    const errors = (stderr: string) => stderr.split('\n').filter((l) => /^error: |^ {9}/.test(l));
    const n = runNix('nix-store', ['--store', path.join(dir, 'N4'), '--realise', p, ...opts]);
    expect(n.status).toBe(1);
    expect(errors(n.stderr)[0]).toBe(`error: hash mismatch importing path '${p}';`);
    const o = await realise(['ensure', '--store', path.join(dir, 'O4'), p, ...opts]);
    expect([o.status, errors(o.stderr)]).toEqual([1, errors(n.stderr)]);
    expect(runNix('nix-store', ['--store', path.join(dir, 'O4'), '--check-validity', p]).status).not.toBe(0);
    expect(readdirSync(path.join(dir, 'O4/nix/store')).filter((e) => e !== '.links')).toEqual([]);
  });

  it('copy with an unknown compression method', async () => {
    const n = runNix('nix', ['copy', '--store', store, '--to', `file://${dir}/N3?compression=foo`, p]);
    const o = await realise(['copy', '--store', store, '--to', `file://${dir}/O3`, '--option', 'compression', 'foo', p]);
    expect([o.status, lastLine(o.stderr)]).toEqual([n.status, lastLine(n.stderr)]);
    noTrace(o.stderr);
  });

  it("copy to a cache directory that is a file, or one that cannot be made (under /proc): nix copy's error alone", async () => {
    for (const to of [`file://${dir}/f.txt`, `file://${dir}/f.txt/sub`, 'file:///proc/realise-cache']) {
      const n = runNix('nix', ['copy', '--store', store, '--to', to, p]);
      expect(n.status).toBe(1);
      // Node's recursive mkdir never returns under /proc; the command must end with an error.
      const o = await realise(['copy', '--store', store, '--to', to, p]);
      // All of it: the error comes before nix copy's 'copying N paths...' line.
      expect([o.status, o.stderr]).toEqual([1, n.stderr]);
    }
  });

  it("a store URI with a relative root, state, log or store parameter: Nix's 'not an absolute path', exit 1, nothing made", async () => {
    for (const key of ['root', 'state', 'log', 'store']) {
      const uri = `local?${key}=rel-${key}`;
      const n = runNix('nix-store', ['--store', uri, '--realise', p], { cwd: dir });
      expect([n.status, lastLine(n.stderr)]).toEqual([1, `error: not an absolute path: 'rel-${key}'`]);
      const o = await realise(['build', '--store', uri, p]);
      expect([o.status, lastLine(o.stderr)]).toEqual([1, lastLine(n.stderr)]);
      noTrace(o.stderr);
    }
    expect(readdirSync(dir).filter((e) => e.startsWith('rel-'))).toEqual([]);
    expect(readdirSync(process.cwd()).filter((e) => e.startsWith('rel-'))).toEqual([]);
  });

  it("a TMPDIR that cannot hold build directories: Nix's error for a missing one ('getting status of' its first missing component) or a relative one ('not an absolute path'), ending the call even with -k, exit 1", async () => {
    const expr = 'derivation { name = "tmpdir-check"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }';
    const [N, O] = [path.join(dir, 'tmpdir-N'), path.join(dir, 'tmpdir-O')];
    const drv = nix('nix-instantiate', ['--store', N, '-E', expr]);
    nix('nix-instantiate', ['--store', O, '-E', expr]);
    for (const tmp of [path.join(dir, 'no-such-dir/tmp'), `relative-tmp-${process.pid}`]) {
      for (const k of [[], ['-k']]) {
        const n = runNix('nix-store', ['--store', N, '--realise', drv, ...k], { env: { TMPDIR: tmp } });
        const o = await realise(['build', '--store', O, drv, ...k], { TMPDIR: tmp });
        expect(lastLine(n.stderr)).toBe(
          tmp.startsWith('/')
            ? `error: getting status of '${path.join(dir, 'no-such-dir')}': No such file or directory`
            : `error: not an absolute path: '${tmp}'`,
        );
        expect([o.status, lastLine(o.stderr)], o.stderr).toEqual([n.status, lastLine(n.stderr)]);
        noTrace(o.stderr);
      }
    }
    expect(readdirSync(dir).filter((e) => e === 'no-such-dir')).toEqual([]);
    expect(readdirSync(process.cwd()).filter((e) => e.startsWith('relative-tmp-'))).toEqual([]);
    // A relative one that is there (under the current directory) is refused all the same.
    const rel = `relative-tmp-${process.pid}`;
    mkdirSync(path.join(process.cwd(), rel));
    try {
      const n = runNix('nix-store', ['--store', N, '--realise', drv], { env: { TMPDIR: rel } });
      const o = await realise(['build', '--store', O, drv], { TMPDIR: rel });
      expect([n.status, lastLine(n.stderr)]).toEqual([1, `error: not an absolute path: '${rel}'`]);
      expect([o.status, lastLine(o.stderr)], o.stderr).toEqual([n.status, lastLine(n.stderr)]);
      expect(readdirSync(path.join(process.cwd(), rel))).toEqual([]);
    } finally {
      rmSync(path.join(process.cwd(), rel), { recursive: true, force: true });
    }
  });

  it('--add-root in a directory that does not exist yet: made, as Nix makes it', async () => {
    const n = runNix('nix-store', ['--store', store, '--realise', p, '--add-root', path.join(dir, 'n/sub/result')]);
    const o = await realise(['build', '--store', store, '--add-root', path.join(dir, 'o/sub/result'), p]);
    expect([o.status, o.stdout.replace('/o/', '/n/')]).toEqual([n.status, n.stdout]);
  });
});

describe.skipIf(!nixOk())('usage errors of the store operations, realise vs nix-store / nix 2.8', () => {
  let dir: string;
  let store: string;
  let p: string;
  beforeAll(() => {
    dir = tempDir();
    store = path.join(dir, 'S');
    writeFileSync(path.join(dir, 'f.txt'), 'usage\n');
    p = nix('nix-store', ['--store', store, '--add', path.join(dir, 'f.txt')]);
  });
  // Both "Try '… --help' for more information." lines name their own program.
  const same = (o: { status: number; stderr: string }, n: { status: number; stderr: string }) =>
    expect([o.status, o.stderr]).toEqual([n.status, n.stderr.replace(/Try '(nix-store|nix) --help'/, "Try 'realise --help'")]);

  it("flags an operation does not take: nix-store's 'no flags expected' (--repair-path), 'no arguments expected' (--optimise), 'unknown flag' (--realise), after the flags' settings are read", async () => {
    const cases: [string[], string[]][] = [
      [
        ['repair', '--dry-run', p],
        ['--repair-path', '--dry-run', p],
      ],
      [
        ['repair', '--frob', p],
        ['--repair-path', '--frob', p],
      ],
      [
        ['repair', '--json', p],
        ['--repair-path', '--json', p],
      ],
      [
        ['store', 'optimise', '--check'],
        ['--optimise', '--check'],
      ],
      [
        ['store', 'optimise', '--frob'],
        ['--optimise', '--frob'],
      ],
      [
        ['build', '--derivation', p],
        ['--realise', '--derivation', p],
      ],
      [
        ['build', '--frob', '--max-jobs', 'x', p],
        ['--realise', '--frob', '--max-jobs', 'x', p],
      ],
      [
        ['repair', '--frob', '--max-jobs', 'x', p],
        ['--repair-path', '--frob', '--max-jobs', 'x', p],
      ],
      [
        ['build', p, '--add-root'],
        ['--realise', p, '--add-root'],
      ],
    ];
    for (const [ours, theirs] of cases) {
      const n = runNix('nix-store', ['--store', store, ...theirs]);
      expect(n.status, theirs.join(' ')).toBe(1);
      same(await realise([ours[0]!, '--store', store, ...ours.slice(1)]), n);
    }
  });

  it('a bad value of a setting flag ends gc and store optimise before they touch the store, as nix-store; what --option warned is printed first', async () => {
    for (const flags of [
      ['--max-jobs', 'x'],
      ['--cores', '4294967296'],
      ['--option', 'max-jobs', 'y', '--max-jobs', 'x'],
    ]) {
      for (const [ours, theirs] of [
        [['gc'], ['--gc']],
        [['store', 'optimise'], ['--optimise']],
      ]) {
        const n = runNix('nix-store', ['--store', store, ...theirs!, ...flags]);
        expect(n.status, flags.join(' ')).toBe(1);
        same(await realise([ours![0]!, '--store', store, ...ours!.slice(1), ...flags]), n);
      }
    }
    // The dead path is still there (a gc that went on would have deleted it).
    expect(nix('nix-store', ['--store', store, '--check-validity', '--print-invalid', p])).toBe('');
  });

  it("the nix command's setting flags take the setting's values, not nix-store's units", async () => {
    for (const flags of [
      ['--cores', '-1'],
      ['--cores', '2K'],
      ['--timeout', '1K'],
    ]) {
      const n = runNix('nix', ['path-info', '--store', store, ...flags, p]);
      same(await realise(['path-info', '--store', store, ...flags, p]), n);
    }
  });

  it("path-info and copy refuse the flags the nix command has not ('unrecognised flag'), take nix copy's checks of the destination, and name a missing --to in nix copy's words", async () => {
    const cases: string[][] = [
      ['path-info', '--check'],
      ['path-info', '-Q'],
      ['path-info', '--add-root', path.join(dir, 'r')],
      ['path-info', '--no-link'],
      ['copy', '-r'],
      ['copy', '--json'],
      ['copy', '--dry-run'],
      ['copy', '-o', path.join(dir, 'r')],
    ];
    for (const [cmd, ...flags] of cases) {
      const to = cmd === 'copy' ? ['--to', `file://${dir}/never`] : [];
      const n = runNix('nix', [cmd!, '--store', store, ...to, ...flags, p]);
      expect(n.status, flags.join(' ')).toBe(1);
      same(await realise([cmd!, '--store', store, ...to, ...flags, p]), n);
    }
    expect(existsSync(path.join(dir, 'never'))).toBe(false);
    for (const flag of ['--no-check-sigs', '-s', '--substitute-on-destination']) {
      const n = runNix('nix', ['copy', '--store', store, '--to', `file://${dir}/n${flag}`, flag, p]);
      const o = await realise(['copy', '--store', store, '--to', `file://${dir}/o${flag}`, flag, p]);
      expect([o.status, o.stderr.replace(`/o${flag}`, `/n${flag}`)]).toEqual([0, n.stderr]);
    }
    same(await realise(['copy', '--store', store, p]), runNix('nix', ['copy', '--store', store, p]));
    // Settings of the cache URL that Nix's binary cache store has not: warned about, sorted, and copied.
    const q = '?zeta=1&root=/x&write-debug-info=1&compression=zstd&priority=3&alpha=2';
    const n = runNix('nix', ['copy', '--store', store, '--to', `file://${dir}/nq${q}`, p]);
    expect(n.stderr).toMatch(/^warning: unknown setting 'alpha'\nwarning: unknown setting 'root'\n/);
    const o = await realise(['copy', '--store', store, '--to', `file://${dir}/oq${q}`, p]);
    expect([o.status, o.stderr.replaceAll('/oq', '/nq')]).toEqual([0, n.stderr]);
  });

  it("store URIs as Nix 2.8 reads them: a relative path with a '/' is a chroot root, '.' names no store, an empty root is none, an empty store or state is an error", async () => {
    const cwd = tempDir();
    const run = (args: string[]) => {
      const r = spawnSync(process.execPath, [BIN, ...args], { cwd, env: nixEnv(), encoding: 'utf8' });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    };
    const n = runNix('nix-store', ['--store', 'n/store', '--gc', '--print-dead'], { cwd });
    const o = run(['gc', '--store', 'o/store', '--print-dead']);
    expect([o.status, o.stdout, o.stderr]).toEqual([0, n.stdout, n.stderr]);
    expect(existsSync(path.join(cwd, 'o/store/nix/var/nix/db/db.sqlite'))).toBe(true);
    for (const uri of ['.', '..']) {
      const nd = runNix('nix-store', ['--store', uri, '--gc', '--print-dead'], { cwd });
      expect([nd.status, nd.stderr]).toEqual([1, `error: don't know how to open Nix store '${uri}'\n`]);
      const od = run(['gc', '--store', uri, '--print-dead']);
      expect([od.status, od.stderr.split('\n')[0]]).toEqual([1, nd.stderr.trimEnd()]);
    }
    expect(existsSync(path.join(cwd, 'nix'))).toBe(false);
    for (const key of ['store', 'state']) {
      const uri = `local?root=${dir}/E&${key}=`;
      const ne = runNix('nix-store', ['--store', uri, '--realise', p]);
      const oe = await realise(['ensure', '--store', uri, p]);
      expect([oe.status, oe.stderr.split('\n')[0]]).toEqual([ne.status, ne.stderr.split('\n')[0]]);
      expect(oe.stderr.split('\n')[0]).toBe(`error: setting '${key}' cannot be empty`);
    }
  });
});

describe.skipIf(!nixOk())('an internal failure mid-build, realise vs Nix 2.8', () => {
  const BIN = path.resolve(__dirname, '../../bin/realise.js');
  // Root writes where it likes: as root, both run as nobody (when the checkout is readable by others).
  const asNobody = AS_ROOT && usableByOthers(BIN);
  it.skipIf(AS_ROOT && !asNobody)(
    "the store becoming unwritable while an input builds, with --keep-going: Nix's lines (the chroot it could not delete, ignored; the output's move into the store), exit 1, the call ended (its dependent is not built, no 'dependencies failed'), nothing valid",
    () => {
      const dir = tempDir('realise-unwritable-');
      chmodSync(dir, 0o755);
      writeFileSync(
        path.join(dir, 'e.nix'),
        `let mk = name: deps: derivation { inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
        in rec { dep = mk "unwritable-dep" []; top = mk "unwritable-top" [ dep ]; }`,
      );
      // Nix's pre-build-hook runs before the builder: for the input, it takes the store's write permission away.
      writeFileSync(path.join(dir, 'hook.sh'), '#!/bin/sh\ncase "$1" in *-unwritable-dep.drv) chmod 555 "$UNWRITABLE_STORE";; esac\n', { mode: 0o755 });
      if (asNobody) execFileSync('chown', ['-R', '65534:65534', dir]);
      const as = asNobody ? { uid: 65534, gid: 65534 } : {};
      const run = (cmd: string, args: string[], root: string) => {
        const env = nixEnv({ HOME: dir, XDG_CACHE_HOME: path.join(dir, 'xdg'), UNWRITABLE_STORE: path.join(root, 'nix/store') });
        const r = spawnSync(cmd, args, { env, encoding: 'utf8', cwd: dir, ...as });
        return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr, errors: r.stderr.split('\n').filter((l) => /^error[: ]/.test(l)) };
      };
      const opts = ['--keep-going', '--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox', '--option', 'pre-build-hook', path.join(dir, 'hook.sh')];
      const [N, O] = [path.join(dir, 'N'), path.join(dir, 'O')];
      try {
        const [dep, top] = ['dep', 'top'].map((a) => run('nix-instantiate', ['--store', N, path.join(dir, 'e.nix'), '-A', a], N).stdout);
        expect(run('nix-instantiate', ['--store', O, path.join(dir, 'e.nix'), '-A', 'top'], O).stdout).toBe(top);
        const n = run('nix-store', ['--store', N, '--realise', top!, ...opts], N);
        const o = run(process.execPath, [BIN, 'build', '--store', O, top!, ...opts], O);
        expect(n.status, n.stderr).toBe(1);
        // Nix's line for the chroot it could not delete (its clean-up ignores the error), then the error that ended the call.
        expect(n.errors).toEqual([
          expect.stringMatching(/^error \(ignored\): error: cannot unlink '.*\.drv\.chroot': Permission denied$/),
          expect.stringMatching(/^error: renaming '.*' to '.*': Permission denied$/),
        ]);
        expect([o.status, o.errors], o.stderr).toEqual([1, n.errors.map((l) => l.replaceAll(N, O))]);
        noTrace(o.stderr);
        // Nothing valid: neither the input's output nor its dependent's.
        const outs = [dep!, top!].map((d) => nix('nix-store', ['--store', N, '-q', '--outputs', d]));
        for (const root of [N, O]) expect(runNix('nix-store', ['--store', root, '--check-validity', ...outs]).status).not.toBe(0);
      } finally {
        removeTreeSync(dir);
      }
    },
    120_000,
  );
});

describe.skipIf(!nixOk())('a store another user owns, realise vs Nix 2.8', () => {
  const BIN = path.resolve(__dirname, '../../bin/realise.js');
  // Root's store, opened by nobody (when the checkout is readable by others).
  it.skipIf(!AS_ROOT || !usableByOthers(BIN))(
    "Nix's error for the first directory it cannot set up (a per-user directory's mode, or making one), not the big-lock's; exit 1, nothing made",
    () => {
      const dir = tempDir('realise-not-owner-');
      chmodSync(dir, 0o755);
      writeFileSync(path.join(dir, 'f.txt'), 'hello\n');
      const store = path.join(dir, 'S');
      const p = nix('nix-store', ['--store', store, '--add', path.join(dir, 'f.txt')]);
      // A second store, from before Nix made per-user directories: those are missing, and cannot be made.
      const old = path.join(dir, 'old');
      for (const d of ['nix/store/.links', 'nix/var/nix/db', 'nix/var/nix/profiles', 'nix/var/nix/gcroots', 'nix/var/nix/temproots'])
        execFileSync('mkdir', ['-p', '-m', '755', path.join(old, d)]);
      const run = (cmd: string, args: string[]) => {
        const r = spawnSync(cmd, args, {
          env: nixEnv({ HOME: dir, XDG_CACHE_HOME: path.join(dir, 'xdg') }),
          encoding: 'utf8',
          cwd: dir,
          uid: 65534,
          gid: 65534,
        });
        return { status: r.status, stderr: r.stderr };
      };
      try {
        for (const root of [store, old]) {
          for (const [nixArgs, ours] of [
            [
              ['--realise', p],
              ['build', p],
            ],
            [
              ['--gc', '--print-dead'],
              ['gc', '--print-dead'],
            ],
          ] as const) {
            const n = run('nix-store', ['--store', root, ...nixArgs]);
            const o = run(process.execPath, [BIN, ...ours, '--store', root]);
            expect(n.stderr).toMatch(
              root === store
                ? /^error: could not set permissions on '.*\/per-user' to 755: Operation not permitted\n$/
                : /^error: creating directory '.*\/per-user': Permission denied\n$/,
            );
            expect([o.status, o.stderr], ours.join(' ')).toEqual([n.status, n.stderr]);
          }
        }
        expect(readdirSync(path.join(old, 'nix/var/nix/profiles'))).toEqual([]);
      } finally {
        removeTreeSync(dir);
      }
    },
    60_000,
  );
});
