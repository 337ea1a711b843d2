/**
 * Machines without user namespaces, used by an ordinary user: the realise process and real Nix 2.8, both
 * run as that user, on twin stores. Two machines (test/helpers/without-userns.sh, root only; nothing
 * machine-wide changes): one where user.max_user_namespaces is 0 (both run inside a user namespace whose
 * own limit is 0: ENOSPC), and a container whose seccomp profile refuses CLONE_NEWUSER with EPERM (a
 * filter installed by bubblewrap). On both:
 *
 * - A plain store with sandbox = true and sandbox-fallback (the default): both build without a sandbox
 *   (the builder runs as the user itself), the same output; ours warns once, naming the cause.
 * - sandbox-fallback = false: both fail with exit status 1; ours names the cause and the fix.
 * - A chroot store cannot build without the sandbox: Nix 2.8 falls back and then cannot start the builder
 *   (its inputs are not at their logical paths on the host); realise refuses up front, naming the cause
 *   and the fix. Nothing is registered in either.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bwrapOk, busyboxTree, IN_CI, nixEnv, nixOk, removeTreeSync, rootOnly, tempDir } from '../helpers/nix.js';
import { denyUserNamespacesFilter } from '../helpers/userns-filter.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUNNER = path.join(REPO, 'test/helpers/without-userns.sh');
const USER = process.env.REALISE_TEST_USER ?? 'realise-user';

/** Every parent of the repository must be searchable by other users, for the user to run bin/realise.js. */
function repoReachable(): boolean {
  for (let d = REPO; d !== '/'; d = path.dirname(d)) if ((statSync(d).mode & 0o001) === 0) return false;
  return true;
}

function setupOk(): boolean {
  if (!rootOnly('the machine without user namespaces is made by root (a namespace of its own, or a seccomp filter), then entered as an ordinary user'))
    return false;
  const reachable = repoReachable();
  if (!reachable && IN_CI) throw new Error(`the repository ${REPO} is not reachable by other users (chmod o+x on its parents)`);
  return reachable && nixOk() && bwrapOk();
}

/** How each machine refuses user namespaces: the runner's extra arguments, and what realise says of it. */
const MACHINES = [
  {
    name: 'user.max_user_namespaces = 0',
    runner: (): string[] => [],
    reason: 'user namespaces are disabled on this machine (/proc/sys/user/max_user_namespaces is 0)',
    hint: /as root, allow them: sysctl -w user\.max_user_namespaces=15000/,
  },
  {
    name: 'a seccomp profile refusing CLONE_NEWUSER (EPERM)',
    runner: (dir: string): string[] => {
      const file = path.join(dir, 'no-userns.bpf');
      writeFileSync(file, denyUserNamespacesFilter());
      return ['--seccomp', file];
    },
    reason: 'creating user namespaces is not permitted here (a security policy forbids it, e.g. the seccomp profile of a container)',
    hint: /allow user namespaces \(e\.g\. run the container with a seccomp profile that permits unshare\/clone with CLONE_NEWUSER\)/,
  },
];

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

describe.skipIf(!setupOk()).each(MACHINES)('(root only) without user namespaces ($name), as an ordinary user: realise vs Nix 2.8', (machine) => {
  let dir: string;
  let home: string;
  let runnerArgs: string[];
  const asUser = (cmd: string[]): Run => {
    const env = nixEnv({ HOME: home, TMPDIR: path.join(home, 'tmp') });
    const vars = ['PATH', 'HOME', 'TMPDIR', 'NIX_REMOTE', 'NIX_CONFIG', 'NIX_USER_CONF_FILES'].map((k) => `${k}=${env[k] ?? ''}`);
    const r = spawnSync(RUNNER, [...runnerArgs, USER, 'env', '-i', ...vars, ...cmd], { cwd: dir, encoding: 'utf8' });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  const nixStore = (store: string, args: string[]) => asUser(['nix-store', '--store', store, ...args]);
  const realise = (store: string, args: string[]) => asUser([path.join(REPO, 'bin/realise.js'), 'build', '--store', store, ...args]);
  const plain = (name: string) => `local?store=${dir}/${name}/store&state=${dir}/${name}/state&log=${dir}/${name}/log`;
  const instantiate = (store: string) => {
    const r = asUser(['nix-instantiate', '--store', store, path.join(dir, 'e.nix')]);
    expect(r.status, r.stderr).toBe(0);
    return r.stdout.trim();
  };

  beforeAll(() => {
    dir = tempDir('realise-no-userns-');
    chmodSync(dir, 0o755);
    busyboxTree(path.join(dir, 'bb'));
    // What runs it: the sandbox's uid 1000, or the user's own uid when unsandboxed.
    writeFileSync(
      path.join(dir, 'e.nix'),
      'derivation { name = "who"; system = "x86_64-linux"; builder = "${./bb}/bin/sh"; args = [ "-c" "${./bb}/bin/busybox id -u > $out" ]; }\n',
    );
    spawnSync('useradd', ['-m', '-s', '/bin/bash', USER], { stdio: 'ignore' });
    home = spawnSync('getent', ['passwd', USER], { encoding: 'utf8' }).stdout.split(':')[5]!;
    spawnSync('install', ['-d', '-o', USER, path.join(home, 'tmp')]);
    runnerArgs = machine.runner(dir);
    expect(spawnSync('chown', ['-R', USER, dir]).status).toBe(0);
  });
  afterAll(() => {
    if (dir) removeTreeSync(dir);
  });

  it('a plain store with sandbox-fallback (the default): both build without the sandbox, as the user, the same output', () => {
    const ours = plain('O');
    const theirs = plain('N');
    // (Different store dirs: different paths, the same contents.)
    const n = nixStore(theirs, ['--realise', instantiate(theirs), '--option', 'sandbox', 'true']);
    expect(n.status, n.stderr).toBe(0);
    const o = realise(ours, [instantiate(ours), '--option', 'sandbox', 'true']);
    expect(o.status, o.stderr).toBe(0);
    // Ours says once why it builds without the sandbox (Nix 2.8 falls back silently).
    expect(o.stderr.split(`warning: the sandbox is not available (${machine.reason}`).length, o.stderr).toBe(2);
    const uid = spawnSync('id', ['-u', USER], { encoding: 'utf8' }).stdout;
    for (const out of [o.stdout.trim(), n.stdout.trim()]) expect(readFileSync(out, 'utf8')).toBe(uid);
  });

  it('sandbox-fallback = false: exit 1 in both; ours names the cause and the fix', () => {
    const ours = plain('O2');
    const theirs = plain('N2');
    const drv = instantiate(ours);
    const n = nixStore(theirs, ['--realise', instantiate(theirs), '--option', 'sandbox', 'true', '--option', 'sandbox-fallback', 'false']);
    expect(n.status).toBe(1);
    expect(n.stderr).toContain('error: unable to start build process');
    const o = realise(ours, [drv, '--option', 'sandbox', 'true', '--option', 'sandbox-fallback', 'false']);
    expect(o.status).toBe(1);
    expect(o.stderr).toContain(`error: cannot build '${drv}' in the sandbox: ${machine.reason}`);
    expect(o.stderr).toMatch(new RegExp(`^ +hint: ${machine.hint.source}.*or set sandbox: false or sandboxFallback: true$`, 'm'));
    expect(o.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('a chroot store: neither can build; ours refuses up front with the cause and the fix, nothing registered', () => {
    const ours = path.join(dir, 'O3');
    const theirs = path.join(dir, 'N3');
    const drv = instantiate(ours);
    expect(instantiate(theirs)).toBe(drv);
    const n = nixStore(theirs, ['--realise', drv]);
    expect(n.status).not.toBe(0);
    const o = realise(ours, [drv]);
    expect(o.status).toBe(1);
    expect(o.stderr).toContain(
      `error: cannot build '${drv}': the store '${ours}/nix/store' is a chroot store (logical '/nix/store'), which needs the Linux sandbox, and the sandbox is not available: ${machine.reason}`,
    );
    expect(o.stderr).toMatch(new RegExp(`^ +hint: ${machine.hint.source}.*or use a store whose logical directory is its physical one`, 'm'));
    const out = asUser(['nix-store', '--store', ours, '-q', '--outputs', drv]).stdout.trim();
    for (const root of [ours, theirs]) {
      expect(asUser(['nix-store', '--store', root, '--check-validity', out]).status).not.toBe(0);
    }
    expect(existsSync(`${ours}${out}`)).toBe(false);
  });
});
