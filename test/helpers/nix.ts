/**
 * Real Nix 2.8 as the oracle in tests: private chroot stores (`NIX_REMOTE=` + `--store DIR`), no daemon.
 * In CI Nix is installed by .ci/run, so `requireNix()` fails loudly there instead of skipping.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll } from 'vitest';

export const IN_CI = !!process.env.CI || !!process.env.REALISE_CI;

function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export const HAVE_NIX = which('nix-store') && which('nix-instantiate');
export const HAVE_BWRAP = which('bwrap');

/** Use as `describe.skipIf(!nixOk())`: in CI a missing Nix is an error, not a skip. */
export function nixOk(): boolean {
  if (!HAVE_NIX && IN_CI) throw new Error('real Nix is required in CI (apt-get install nix-bin)');
  return HAVE_NIX;
}

export function bwrapOk(): boolean {
  if (!HAVE_BWRAP && IN_CI) throw new Error('bubblewrap is required in CI (apt-get install bubblewrap)');
  return HAVE_BWRAP;
}

/** Every directory tempDir made in this test file's process; test/helpers/cleanup.ts removes them after the file. */
export const madeTempDirs: string[] = [];

export function tempDir(prefix = 'realise-test-'): string {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  madeTempDirs.push(d);
  return d;
}

/**
 * Remove a directory that may hold store paths: their directories are read-only, which stops an ordinary
 * user (not root) from deleting what is inside, so everything is made writable first.
 */
export function removeTreeSync(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true });
    return;
  } catch {
    // read-only directories below (not for root): make everything writable, then again
  }
  spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' });
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Every directory above `file` lets others in and the file is readable: another user (e.g. nobody, for a
 * test run as root) can run it.
 */
export function usableByOthers(file: string): boolean {
  for (let d = path.dirname(file); d !== '/'; d = path.dirname(d)) if (!(statSync(d).mode & 0o001)) return false;
  return !!(statSync(file).mode & 0o004);
}

/** Whether the tests run as root (some behaviour differs: Nix drops supplementary groups only as root). */
export const AS_ROOT = process.getuid?.() === 0;

/**
 * For a suite only root can run, named "(root only) …": `describe.skipIf(!rootOnly('why'))`. True as root
 * (CI runs the whole suite as root, where nothing is skipped); as an ordinary user false, and the reason is
 * printed, so that the skip is not silent.
 */
export function rootOnly(why: string): boolean {
  if (AS_ROOT) return true;
  console.warn(`skipped as an ordinary user (root only): ${why}`);
  return false;
}

/**
 * What busybox `id` prints in a Nix sandbox with these ids. Root drops its supplementary groups before
 * entering the user namespace; an ordinary user cannot (Nix 2.8 neither), so the builder sees them,
 * mapped: the user's own group as the sandbox group, any other as nogroup.
 */
export function sandboxIdLine(uid = 1000, gid = 100): string {
  const head = `uid=${uid}(nixbld) gid=${gid}(nixbld)`;
  if (AS_ROOT) return head;
  const groups = process.getgroups!().map((g) => (g === process.getgid!() ? `${gid}(nixbld)` : '65534(nogroup)'));
  return `${head} groups=${groups.join(',')}`;
}

/** A builder tree for sandboxed builds: `dir/bin/busybox` (the static one, 0755) and `dir/bin/sh -> busybox`. */
export function busyboxTree(dir = tempDir('realise-busybox-')): string {
  mkdirSync(path.join(dir, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  symlinkSync('busybox', path.join(dir, 'bin', 'sh'));
  return dir;
}

/** Environment for running Nix against a private store, no daemon, no user config. */
export function nixEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    NIX_REMOTE: '',
    NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n',
    NIX_USER_CONF_FILES: '/dev/null',
    HOME: process.env.HOME ?? '/root',
    ...extra,
  };
}

export interface NixRunResult {
  stdout: string;
  stderr: string;
  status: number;
}

/** Run a Nix command; returns stdout/stderr/status without throwing. */
export function runNix(cmd: string, args: string[], opts: { input?: string; env?: Record<string, string>; cwd?: string } = {}): NixRunResult {
  const r = spawnSync(cmd, args, { env: nixEnv(opts.env), input: opts.input, cwd: opts.cwd, encoding: 'utf8', maxBuffer: 1 << 28 });
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? '', status: r.status ?? -1 };
}

/** runNix without blocking the event loop (for runs that overlap with work in this process). */
export function runNixAsync(cmd: string, args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<NixRunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: nixEnv(opts.env), cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    child.on('close', (code) => resolve({ stdout, stderr, status: code ?? -1 }));
  });
}

/** Run a Nix command and return trimmed stdout; throws with stderr on failure. */
export function nix(cmd: string, args: string[], opts: { input?: string; env?: Record<string, string>; cwd?: string } = {}): string {
  const r = runNix(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stderr}`);
  return r.stdout.trim();
}

/**
 * Write `expr` to `DIR/e.nix` and instantiate it (with `args`, e.g. `-A name`) into the twin chroot stores
 * `DIR/N` (for Nix) and `DIR/O` (for us); returns the .drv path, the same in both.
 */
export function instantiateTwins(dir: string, expr: string, args: string[] = []): string {
  const file = path.join(dir, 'e.nix');
  writeFileSync(file, expr);
  const drv = nix('nix-instantiate', ['--store', path.join(dir, 'N'), file, ...args]);
  const twin = nix('nix-instantiate', ['--store', path.join(dir, 'O'), file, ...args]);
  if (twin !== drv) throw new Error(`the twin stores instantiated different derivations: ${drv} and ${twin}`);
  return drv;
}

/** `nix-instantiate --store ROOT` of an expression (text) or file; returns the .drv path(s). */
export function nixInstantiate(root: string, expr: string, opts: { file?: boolean; attr?: string } = {}): string[] {
  let file = expr;
  if (!opts.file) {
    file = path.join(tempDir('realise-expr-'), 'default.nix');
    writeFileSync(file, expr);
  }
  const args = ['--store', root, file];
  if (opts.attr) args.push('-A', opts.attr);
  return nix('nix-instantiate', args).split('\n').filter(Boolean);
}

/**
 * `nix-store --store ROOT --realise ARGS...` (paths and flags): `sandbox` adds `--option sandbox true|false`,
 * `extraArgs` go last, `env` is added to Nix's environment.
 */
export function nixRealise(root: string, args: string[], opts: { sandbox?: boolean; extraArgs?: string[]; env?: Record<string, string> } = {}): NixRunResult {
  const sandbox = opts.sandbox === undefined ? [] : ['--option', 'sandbox', opts.sandbox ? 'true' : 'false'];
  return runNix('nix-store', ['--store', root, '--realise', ...args, ...sandbox, ...(opts.extraArgs ?? [])], { env: opts.env ?? {} });
}

/**
 * A `tmp()` for one test file: each call makes a new directory (`prefix` + random) under the system's
 * temporary directory; all of them are removed after the file's tests (store paths made writable first).
 */
export function tempDirs(prefix = 'realise-test-'): (prefixOverride?: string) => string {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs.splice(0)) removeTreeSync(d);
  });
  return (prefixOverride) => {
    const d = tempDir(prefixOverride ?? prefix);
    dirs.push(d);
    return d;
  };
}

export { execFileSync };
