/**
 * Whether builds can be sandboxed here, and which Sandbox to use for Nix's `sandbox` and
 * `sandbox-fallback` settings.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Sandbox } from './sandbox.js';
import { SandboxError } from './sandbox-errors.js';
import type { SandboxMode } from './sandbox-config.js';
import { LinuxSandbox, findOnPath, type LinuxSandboxBackend, type LinuxSandboxOptions } from './linux-sandbox.js';
import { NoSandbox } from './no-sandbox.js';
import { ensureSandboxHelper } from './sandbox-helper.js';

export type SandboxProbe =
  | { readonly ok: true; readonly backend: LinuxSandboxBackend }
  /** `reason` says what is missing, for messages; `hint` what to do about it. */
  | { readonly ok: false; readonly reason: string; readonly hint: string };

const GENERIC_HINT = 'install a C compiler (gcc) or bubblewrap, and allow user namespaces';

function readSysctl(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Why this process cannot create user namespaces, and the fix, from the kernel's settings (read in the
 * caller's own user namespace) and the backends' errors: a zero `user.max_user_namespaces`, Debian's
 * `kernel.unprivileged_userns_clone = 0`, Ubuntu's AppArmor restriction, a limit reached (ENOSPC), or a
 * policy that forbids it (EPERM, e.g. a container's seccomp profile). Undefined when namespaces are
 * not the problem.
 */
export function diagnoseUserNamespaces(details: string): { reason: string; hint: string } | undefined {
  const root = process.geteuid?.() === 0;
  const noSpace = /ENOSPC|No space left on device/.test(details);
  const denied = /EPERM|Operation not permitted|No permissions to create new namespace/.test(details);
  if (!noSpace && !denied) return undefined;
  if (readSysctl('/proc/sys/user/max_user_namespaces') === '0') {
    return {
      reason: 'user namespaces are disabled on this machine (/proc/sys/user/max_user_namespaces is 0)',
      hint: `as root, allow them: sysctl -w user.max_user_namespaces=15000 (and keep it in /etc/sysctl.d/)`,
    };
  }
  if (!root && readSysctl('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
    return {
      reason: 'unprivileged user namespaces are disabled on this machine (/proc/sys/kernel/unprivileged_userns_clone is 0)',
      hint: `as root, allow them: sysctl -w kernel.unprivileged_userns_clone=1 (and keep it in /etc/sysctl.d/)`,
    };
  }
  if (!root && readSysctl('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    return {
      reason: 'AppArmor forbids unprivileged user namespaces on this machine (kernel.apparmor_restrict_unprivileged_userns is 1)',
      hint: `as root, lift it (sysctl -w kernel.apparmor_restrict_unprivileged_userns=0) or give node an AppArmor profile with 'userns,'`,
    };
  }
  if (noSpace) {
    return {
      reason:
        'no more user namespaces may be created here (the user.max_user_namespaces limit of this or an enclosing namespace is reached, or namespaces are nested 32 deep)',
      hint: `raise user.max_user_namespaces where it is limited (as root: sysctl -w user.max_user_namespaces=15000)`,
    };
  }
  return {
    reason: 'creating user namespaces is not permitted here (a security policy forbids it, e.g. the seccomp profile of a container)',
    hint: `allow user namespaces (e.g. run the container with a seccomp profile that permits unshare/clone with CLONE_NEWUSER)`,
  };
}

function run(file: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: 10_000, env: {} }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? (err as unknown as { code: number }).code : child.exitCode) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

const cache = new Map<string, Promise<SandboxProbe>>();

/**
 * Probe (once per backend choice) whether namespaces can be created: the helper sets up a whole
 * empty sandbox and fails only at exec; bwrap runs `true` in fresh namespaces.
 */
export function sandboxAvailable(options: Pick<LinuxSandboxOptions, 'backend' | 'bwrapPath' | 'helper'> = {}): Promise<SandboxProbe> {
  const key = JSON.stringify(options);
  let p = cache.get(key);
  if (!p) {
    p = probe(options);
    cache.set(key, p);
  }
  return p;
}

async function probe(options: Pick<LinuxSandboxOptions, 'backend' | 'bwrapPath' | 'helper'>): Promise<SandboxProbe> {
  if (process.platform !== 'linux') return { ok: false, reason: `sandboxing builds is not supported on ${process.platform}`, hint: "set 'sandbox' to false" };
  const want = options.backend ?? 'auto';
  const problems: string[] = [];
  if (want !== 'bwrap') {
    try {
      const helper = await ensureSandboxHelper(options.helper);
      const root = fs.mkdtempSync(path.join(os.tmpdir(), 'realise-probe-'));
      try {
        fs.mkdirSync(path.join(root, 'build'));
        const r = await run(helper, ['--root', root, '--build-dir', '/build', '--bind', root, '/build', '--', '/nonexistent-probe', 'probe']);
        if (r.out.includes("executing '/nonexistent-probe'")) return { ok: true, backend: 'helper' };
        problems.push(`the sandbox helper cannot set up namespaces: ${r.out.trim().replace(/^realise-sandbox: /, '')}`);
      } finally {
        fs.rmSync(root, { recursive: true, force: true });
      }
    } catch (e) {
      problems.push((e as Error).message.split('\n')[0]!);
    }
  }
  if (want !== 'helper') {
    const bwrap = options.bwrapPath ?? findOnPath('bwrap');
    const t = findOnPath('true');
    if (!bwrap) problems.push('bubblewrap (bwrap) is not on PATH');
    else if (t) {
      const r = await run(bwrap, ['--unshare-user', '--unshare-pid', '--unshare-net', '--unshare-ipc', '--unshare-uts', '--dev-bind', '/', '/', t]);
      if (r.code === 0) return { ok: true, backend: 'bwrap' };
      problems.push(`bwrap cannot create namespaces: ${r.out.trim()}`);
    }
  }
  const details = problems.join('; ') || 'no sandbox backend';
  const userns = diagnoseUserNamespaces(details);
  return userns ? { ok: false, reason: `${userns.reason}: ${details}`, hint: userns.hint } : { ok: false, reason: details, hint: GENERIC_HINT };
}

export interface ChooseSandboxOptions extends LinuxSandboxOptions {
  /** Nix's `sandbox`. @default true */
  readonly mode?: SandboxMode;
  /** Nix's `sandbox-fallback`: build unsandboxed when namespaces are unavailable. @default true */
  readonly fallback?: boolean;
  /** A chroot store (logical store dir ≠ physical) cannot build without the sandbox. @default false */
  readonly chrootStore?: boolean;
  /** Receives the fallback warning. @default console.warn */
  readonly warn?: (message: string) => void;
}

/**
 * The Sandbox for these settings: `mode: false` → NoSandbox; otherwise LinuxSandbox when namespaces
 * work, else (with `fallback`) a warning and NoSandbox, else a `sandbox-unavailable` SandboxError
 * saying what is missing. A chroot store never falls back. Per-derivation relaxations (`'relaxed'`,
 * `__noChroot`) are decided per build with `useSandbox()`.
 */
export async function chooseSandbox(options: ChooseSandboxOptions = {}): Promise<Sandbox> {
  const mode = options.mode ?? true;
  if (mode === false && !options.chrootStore) return new NoSandbox();
  const probe = await sandboxAvailable(options);
  if (probe.ok) return new LinuxSandbox({ ...options, backend: probe.backend });
  if (options.fallback !== false && !options.chrootStore) {
    (options.warn ?? console.warn)(`warning: sandboxing is not available (${probe.reason}); building without a sandbox`);
    return new NoSandbox();
  }
  throw new SandboxError(
    'sandbox-unavailable',
    `builds must be sandboxed${options.chrootStore ? ' (the store is a chroot store)' : ''}, but sandboxing is not available: ${probe.reason}`,
    {
      hint: options.chrootStore ? probe.hint : `${probe.hint}; or set 'sandbox' to false or 'sandbox-fallback' to true`,
    },
  );
}
