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
  /** `reason` says what is missing, for messages. */
  | { readonly ok: false; readonly reason: string };

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
  if (!p) { p = probe(options); cache.set(key, p); }
  return p;
}

async function probe(options: Pick<LinuxSandboxOptions, 'backend' | 'bwrapPath' | 'helper'>): Promise<SandboxProbe> {
  if (process.platform !== 'linux') return { ok: false, reason: `sandboxing builds is not supported on ${process.platform}` };
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
  return { ok: false, reason: problems.join('; ') || 'no sandbox backend' };
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
  throw new SandboxError('sandbox-unavailable', `builds must be sandboxed${options.chrootStore ? ' (the store is a chroot store)' : ''}, but sandboxing is not available: ${probe.reason}`, {
    hint: options.chrootStore
      ? 'enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) and install gcc or bubblewrap'
      : "enable unprivileged user namespaces and install gcc or bubblewrap, or set 'sandbox' to false or 'sandbox-fallback' to true",
  });
}
