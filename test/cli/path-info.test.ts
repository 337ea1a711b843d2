/**
 * `realise path-info` against `nix path-info` (Nix 2.8) on twin chroot stores, for the forms not covered
 * in cli.test.ts: --all, --derivation of an output path (its deriver), arguments that are no store paths
 * (read as flake references, as Nix's installables), compound flags, a store URI with a
 * parameter Nix does not know, and a reader that goes away (`| head -1`). Runs bin/realise.js as a user
 * does, since the last two are about the process itself.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nix, nixEnv, nixOk, runNix, tempDir } from '../helpers/nix.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const EXPR = `rec {
  a = derivation { name = "pi-a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; };
  b = derivation { name = "pi-b"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo \${a} > $out"]; };
}`;

interface Run {
  stdout: string;
  stderr: string;
  status: number;
}
const noTimes = (s: string) => s.replace(/"registrationTime":\d+/g, '"registrationTime":T');

describe.skipIf(!nixOk())('realise path-info vs nix path-info', () => {
  let dir: string;
  let N: string;
  let O: string;
  let drv: string;
  let out: string;
  let src: string;
  const ours = (args: string[], root = O, cwd?: string): Run => {
    const r = spawnSync(process.execPath, [BIN, 'path-info', '--store', root, ...args], { encoding: 'utf8', env: nixEnv(), cwd });
    return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
  };
  const theirs = (args: string[], cwd?: string): Run => runNix('nix', ['path-info', '--store', N, ...args], { cwd });

  beforeAll(() => {
    dir = tempDir();
    N = path.join(dir, 'N');
    O = path.join(dir, 'O');
    writeFileSync(path.join(dir, 'e.nix'), EXPR);
    writeFileSync(path.join(dir, 'src.txt'), 'a source\n');
    for (const root of [N, O]) {
      drv = nix('nix-instantiate', ['--store', root, path.join(dir, 'e.nix'), '-A', 'b']);
      src = nix('nix-store', ['--store', root, '--add', path.join(dir, 'src.txt')]);
    }
    nix('nix-store', ['--store', N, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', '--realise', drv]);
    const r = spawnSync(process.execPath, [BIN, 'build', '--store', O, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', drv], {
      encoding: 'utf8',
      env: nixEnv(),
    });
    expect(r.status, r.stderr).toBe(0);
    out = nix('nix-store', ['--store', N, '-q', '--outputs', drv]);
  });

  it('--all lists every valid path as it is (.drv files too), in text, sizes and JSON', () => {
    for (const args of [['--all'], ['--all', '--json'], ['--all', '-sS'], ['--all', out]]) {
      const [o, n] = [ours(args), theirs(args)];
      expect([noTimes(o.stdout), o.status], args.join(' ')).toEqual([noTimes(n.stdout), n.status]);
    }
    expect(ours(['--all']).stdout.split('\n')).toContain(drv);
    expect(ours(['--all', out]).stderr).toContain("'--all' does not expect arguments");
  });

  it('--derivation of an output path is its deriver; a path with none is an error in Nix words', () => {
    for (const args of [
      ['--derivation', out],
      ['-r', '--derivation', out],
      ['--derivation', src],
      ['--derivation', '--json', out],
    ]) {
      const [o, n] = [ours(args), theirs(args)];
      expect([noTimes(o.stdout), o.status], args.join(' ')).toEqual([noTimes(n.stdout), n.status]);
    }
    expect(ours(['--derivation', out]).stdout.trim()).toBe(drv);
    expect(ours(['--derivation', src]).stderr).toContain(`error: '${src}' does not have a known deriver`);
  });

  it("arguments that are no store paths fail as Nix's installables do: a flake reference's search notice and error", () => {
    const repo = path.join(dir, 'repo');
    mkdirSync(path.join(repo, '.git'), { recursive: true });
    symlinkSync('loop', path.join(dir, 'loop'));
    const cases: Array<[string[], string]> = [
      [[`${drv}^out`], dir], // no path and no URL: "is not a valid URL"
      [[`${drv}!out`], dir], // a path: "does not contain a 'flake.nix', searching up", then lstat's error
      [['/nix/store/foo'], dir],
      [['./src.txt'], dir], // an existing file outside the store: no flake.nix up to the root
      [['./loop/x'], dir], // the search's lstat fails otherwise than "not there": Nix's pathExists error
      [[], dir], // no argument is `.`
      [[], repo], // in a Git checkout: "not part of a flake"
      [['--quiet', '--quiet', '/nix/store/foo'], dir], // the notice is not shown
      [[out, 'nothere/x'], dir], // a flake id of the registry: without the flakes feature, Nix's error
      [['github:a/b'], dir], // a fetcher's URL: the same
      [['foo:bar'], dir], // a URL no fetcher takes
      [['http://example.org/x'], dir],
      [['nixpkgs', '/nix/store/foo'], dir], // every argument is read before a flake is looked at
      [['--all', '/nix/store/foo'], dir], // and before --all refuses arguments
    ];
    for (const [args, cwd] of cases) {
      const [o, n] = [ours(args, O, cwd), theirs(args, cwd)];
      expect(o, `${args.join(' ')} in ${cwd}`).toEqual(n);
      expect(o.status).toBe(1);
    }
    expect(ours(['/nix/store/foo'], O, dir).stderr).toBe(
      "path '/nix/store/foo' does not contain a 'flake.nix', searching up\nerror: getting status of '/nix/store/foo': No such file or directory\n",
    );
    expect(ours(['./loop/x'], O, dir).stderr).toBe(`error: getting status of ${dir}/loop/x/flake.nix: Too many levels of symbolic links\n`);
    expect(ours([], O, repo).stderr).toContain(
      `error: path '${repo}' is not part of a flake (neither it nor its parent directories contain a 'flake.nix' file)`,
    );
  });

  it('compound short flags: -rsS as -r -s -S', () => {
    const [o, n] = [ours(['-rsS', out]), theirs(['-rsS', out])];
    expect([o.stdout, o.status]).toEqual([n.stdout, n.status]);
    expect(o.stdout.split('\n').filter(Boolean)).toHaveLength(2);
  });

  it('a flag nix path-info does not know: its first line ("unrecognised flag"), exit 1', () => {
    const [o, n] = [ours(['-q', out]), theirs(['-q', out])];
    expect([o.stdout, o.stderr.split('\n')[0], o.status]).toEqual([n.stdout, n.stderr.split('\n')[0], n.status]);
    expect(o.status).toBe(1);
  });

  it('a store URI parameter nobody knows: a warning, and the store is used', () => {
    const [o, n] = [ours([out], `${O}?frob=1`), runNix('nix', ['path-info', '--store', `${N}?frob=1`, out])];
    expect([o.stdout, o.status]).toEqual([n.stdout, n.status]);
    expect(o.stderr).toContain("warning: unknown setting 'frob'");
    expect(n.stderr).toContain("warning: unknown setting 'frob'");
  });

  it('a reader that goes away early: status 0 and no stack trace, as Nix', () => {
    // 300 more paths, so the listing outlasts the pipe's first read.
    const many = Array.from({ length: 300 }, (_, i) => {
      const f = path.join(dir, `m${i}`);
      writeFileSync(f, `m${i}\n`);
      return f;
    });
    for (const root of [N, O]) nix('nix-store', ['--store', root, '--add', ...many]);
    const o = spawnSync('bash', ['-c', `'${process.execPath}' '${BIN}' path-info --store '${O}' --all | head -1 >/dev/null; echo \${PIPESTATUS[0]}`], {
      encoding: 'utf8',
      env: nixEnv(),
    });
    const n = spawnSync('bash', ['-c', `nix path-info --store '${N}' --all | head -1 >/dev/null; echo \${PIPESTATUS[0]}`], { encoding: 'utf8', env: nixEnv() });
    expect(o.stdout.trim()).toBe(n.stdout.trim());
    expect(o.stdout.trim()).toBe('0');
    expect(o.stderr).not.toContain('EPIPE');
  });
});
