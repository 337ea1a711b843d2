/**
 * The on-disk part of a Nix sandbox: `<realStoreDir>/<drv>.chroot`, laid out as Nix's startBuilder and
 * runChild lay it out (modes included), so that the builder's `ls -la /` matches Nix's. Bind mounts are
 * done afterwards by the namespace backend; this module only creates files and moves outputs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxError } from './sandbox-errors.js';

export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 100;

/** Nix's /etc/passwd in the sandbox. */
export function sandboxPasswd(uid: number, gid: number, buildDir: string): string {
  return `root:x:0:0:Nix build user:${buildDir}:/noshell\n` +
    `nixbld:x:${uid}:${gid}:Nix build user:${buildDir}:/noshell\n` +
    'nobody:x:65534:65534:Nobody:/:/noshell\n';
}

/** Nix's /etc/group in the sandbox. */
export function sandboxGroup(gid: number): string {
  return `root:x:0:\nnixbld:!:${gid}:\nnogroup:x:65534:\n`;
}

export const SANDBOX_HOSTS = '127.0.0.1 localhost\n::1 localhost\n';
export const SANDBOX_NSSWITCH = 'hosts: files dns\nservices: files\n';

/** Where Nix puts the chroot of a derivation: next to the .drv in the physical store. */
export function chrootDirFor(realStoreDir: string, drvPath: string): string {
  return path.join(realStoreDir, path.basename(drvPath) + '.chroot');
}

export interface ChrootLayout {
  readonly root: string;
  /** Physical directory that is the store dir inside the sandbox. */
  readonly storeDir: string;
}

export interface PrepareChrootOptions {
  readonly root: string;
  readonly storeDir: string;
  readonly sandboxBuildDir: string;
  readonly uid: number;
  readonly gid: number;
  /** Impure (fixed-output) builds get the host's /etc/hosts instead of Nix's. */
  readonly network: boolean;
  /** Also lay out Nix's /dev skeleton (directories and symlinks); the device nodes are bind-mounted later. */
  readonly devSkeleton: boolean;
}

function mkdirMode(p: string, mode: number): void {
  fs.mkdirSync(p, { recursive: true });
  fs.chmodSync(p, mode);
}

export function removeTree(p: string): void {
  fs.rmSync(p, { recursive: true, force: true, maxRetries: 3 });
}

let pendingRemovals: Promise<void> = Promise.resolve();

/**
 * Remove a directory tree off the critical path: it is renamed aside at once (so its name is free for
 * the next build) and deleted in the background, one tree at a time. Directory removal is the slowest
 * part of a sandboxed build on ext4 mounted with `discard` (several ms per directory).
 */
export function discardTree(p: string): void {
  const aside = `${p}.trash-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    fs.renameSync(p, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    removeTree(p);
    return;
  }
  pendingRemovals = pendingRemovals.then(() => fs.promises.rm(aside, { recursive: true, force: true, maxRetries: 3 }).catch(() => {}));
}

/** Resolves when every tree handed to discardTree() is gone. */
export function flushRemovals(): Promise<void> {
  return pendingRemovals;
}

/** Create the chroot directory (removing a stale one first), as Nix does. */
export function prepareChroot(opts: PrepareChrootOptions): ChrootLayout {
  const { root } = opts;
  try {
    removeTree(root);
    fs.mkdirSync(root, { mode: 0o750 });
    fs.chmodSync(root, 0o750);
    mkdirMode(path.join(root, 'tmp'), 0o1777);
    mkdirMode(path.join(root, 'etc'), 0o755);
    fs.writeFileSync(path.join(root, 'etc/passwd'), sandboxPasswd(opts.uid, opts.gid, opts.sandboxBuildDir), { mode: 0o644 });
    fs.writeFileSync(path.join(root, 'etc/group'), sandboxGroup(opts.gid), { mode: 0o644 });
    if (!opts.network) fs.writeFileSync(path.join(root, 'etc/hosts'), SANDBOX_HOSTS, { mode: 0o644 });
    else fs.writeFileSync(path.join(root, 'etc/nsswitch.conf'), SANDBOX_NSSWITCH, { mode: 0o644 });
    const storeDir = path.join(root, opts.storeDir);
    fs.mkdirSync(storeDir, { recursive: true, mode: 0o755 });
    fs.chmodSync(storeDir, 0o1775);
    if (opts.devSkeleton) {
      mkdirMode(path.join(root, 'dev/shm'), 0o755);
      mkdirMode(path.join(root, 'dev/pts'), 0o755);
      fs.symlinkSync('/proc/self/fd', path.join(root, 'dev/fd'));
      fs.symlinkSync('/proc/self/fd/0', path.join(root, 'dev/stdin'));
      fs.symlinkSync('/proc/self/fd/1', path.join(root, 'dev/stdout'));
      fs.symlinkSync('/proc/self/fd/2', path.join(root, 'dev/stderr'));
    }
    return { root, storeDir };
  } catch (e) {
    throw new SandboxError('sandbox-setup-failed', `cannot set up the chroot directory '${root}': ${(e as Error).message}`, {
      cause: e, hint: 'check that the store directory is writable and on a file system that supports hard links',
    });
  }
}

/**
 * Put a non-directory input into the chroot store: a hard link (Nix's linkOrCopy), or a copy when the
 * input lives on another file system.
 */
export function linkOrCopy(from: string, to: string): void {
  try {
    fs.linkSync(from, to);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EMLINK' && code !== 'EPERM') throw e;
    fs.cpSync(from, to, { preserveTimestamps: true, verbatimSymlinks: true });
  }
}

/**
 * Move outputs the builder wrote inside the chroot store to their physical store location (what Nix
 * does when registering, and for debugging after a failure). An existing physical path is replaced:
 * outputs being built are invalid by contract. Returns the outputs that existed.
 */
export function moveOutputsOut(layout: ChrootLayout, outputs: readonly string[], realStoreDir: string): string[] {
  const moved: string[] = [];
  for (const out of outputs) {
    const base = path.basename(out);
    const inside = path.join(layout.storeDir, base);
    let exists = true;
    try { fs.lstatSync(inside); } catch { exists = false; }
    if (!exists) continue;
    const dest = path.join(realStoreDir, base);
    removeTree(dest);
    fs.renameSync(inside, dest);
    moved.push(out);
  }
  return moved;
}
