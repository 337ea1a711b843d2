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

export function removeTree(p: string): void {
  fs.rmSync(p, { recursive: true, force: true, maxRetries: 3 });
}

let pendingRemovals: Promise<void> = Promise.resolve();
const pendingTrash = new Set<string>();
let exitHook = false;

/** What is still waiting for deletion when the process exits is deleted then, synchronously. */
function ensureExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => { for (const d of pendingTrash) { try { removeTree(d); } catch { /* best effort */ } } });
}

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
  ensureExitHook();
  pendingTrash.add(aside);
  pendingRemovals = pendingRemovals.then(() => fs.promises.rm(aside, { recursive: true, force: true, maxRetries: 3 })
    .then(() => { pendingTrash.delete(aside); }, () => {}));
}

/** Resolves when every tree handed to discardTree() is gone. */
export function flushRemovals(): Promise<void> {
  return pendingRemovals;
}

type Op =
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'write'; path: string; data: string; mode: number }
  | { op: 'symlink'; target: string; path: string };

/** The file-system operations that lay out a chroot, in order (Nix's modes; chmod after mkdir beats the umask). */
function chrootOps(opts: PrepareChrootOptions): Op[] {
  const { root } = opts;
  const j = (p: string) => path.join(root, p);
  const ops: Op[] = [
    { op: 'mkdir', path: root, mode: 0o750 },
    { op: 'mkdir', path: j('tmp'), mode: 0o1777 },
    { op: 'mkdir', path: j('etc'), mode: 0o755 },
    { op: 'write', path: j('etc/passwd'), data: sandboxPasswd(opts.uid, opts.gid, opts.sandboxBuildDir), mode: 0o644 },
    { op: 'write', path: j('etc/group'), data: sandboxGroup(opts.gid), mode: 0o644 },
    opts.network
      ? { op: 'write', path: j('etc/nsswitch.conf'), data: SANDBOX_NSSWITCH, mode: 0o644 }
      : { op: 'write', path: j('etc/hosts'), data: SANDBOX_HOSTS, mode: 0o644 },
  ];
  // The store dir (1775) and its parents (0755).
  const parts = opts.storeDir.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) ops.push({ op: 'mkdir', path: j(parts.slice(0, i).join('/')), mode: i === parts.length ? 0o1775 : 0o755 });
  // Mount points Nix creates anyway: the build dir and /proc (hidden under their mounts).
  const bparts = opts.sandboxBuildDir.split('/').filter(Boolean);
  for (let i = 1; i <= bparts.length; i++) ops.push({ op: 'mkdir', path: j(bparts.slice(0, i).join('/')), mode: 0o755 });
  ops.push({ op: 'mkdir', path: j('proc'), mode: 0o755 });
  ops.push({ op: 'mkdir', path: j('dev'), mode: 0o755 });
  if (opts.devSkeleton) {
    ops.push({ op: 'mkdir', path: j('dev/shm'), mode: 0o755 }, { op: 'mkdir', path: j('dev/pts'), mode: 0o755 });
    for (const n of ['full', 'null', 'random', 'tty', 'urandom', 'zero']) ops.push({ op: 'write', path: j(`dev/${n}`), data: '', mode: 0o644 });
    ops.push(
      { op: 'symlink', target: '/proc/self/fd', path: j('dev/fd') },
      { op: 'symlink', target: '/proc/self/fd/0', path: j('dev/stdin') },
      { op: 'symlink', target: '/proc/self/fd/1', path: j('dev/stdout') },
      { op: 'symlink', target: '/proc/self/fd/2', path: j('dev/stderr') },
    );
  }
  return ops;
}

function isExisting(e: unknown): boolean {
  return (e as NodeJS.ErrnoException).code === 'EEXIST';
}

function runOpsSync(ops: Op[]): void {
  for (const o of ops) {
    if (o.op === 'mkdir') {
      try { fs.mkdirSync(o.path, { mode: o.mode }); } catch (e) { if (!isExisting(e)) throw e; }
      fs.chmodSync(o.path, o.mode);
    } else if (o.op === 'write') fs.writeFileSync(o.path, o.data, { mode: o.mode });
    else fs.symlinkSync(o.target, o.path);
  }
}

async function runOps(ops: Op[]): Promise<void> {
  for (const o of ops) {
    if (o.op === 'mkdir') {
      try { await fs.promises.mkdir(o.path, { mode: o.mode }); } catch (e) { if (!isExisting(e)) throw e; }
      await fs.promises.chmod(o.path, o.mode);
    } else if (o.op === 'write') await fs.promises.writeFile(o.path, o.data, { mode: o.mode });
    else await fs.promises.symlink(o.target, o.path);
  }
}

function setupError(root: string, e: unknown): SandboxError {
  return new SandboxError('sandbox-setup-failed', `cannot set up the chroot directory '${root}': ${(e as Error).message}`, {
    cause: e, hint: 'check that the store directory is writable and on a file system that supports hard links',
  });
}

/** Create the chroot directory (discarding a stale one first), as Nix does. */
export function prepareChroot(opts: PrepareChrootOptions): ChrootLayout {
  const { root } = opts;
  try {
    if (fs.existsSync(root)) discardTree(root);
    runOpsSync(chrootOps(opts));
    return { root, storeDir: path.join(root, opts.storeDir) };
  } catch (e) {
    throw setupError(root, e);
  }
}

/**
 * Chroot skeletons made ahead of time, off the critical path: `take()` renames a ready one into place
 * (one rename instead of a dozen directory creations) and refills the pool in the background. Skeletons
 * wait as `<realStoreDir>/.realise-chroot-*` and are removed when the process exits.
 */
export class ChrootPool {
  readonly #size: number;
  readonly #ready = new Map<string, string[]>();
  readonly #filling = new Set<string>();
  static readonly #all = new Set<string>();
  static #exitHook = false;

  constructor(size = 2) {
    this.#size = size;
    if (!ChrootPool.#exitHook) {
      ChrootPool.#exitHook = true;
      process.once('exit', () => { for (const d of ChrootPool.#all) { try { removeTree(d); } catch { /* best effort */ } } });
    }
  }

  take(opts: PrepareChrootOptions): ChrootLayout {
    const key = JSON.stringify([path.dirname(opts.root), opts.storeDir, opts.sandboxBuildDir, opts.uid, opts.gid, opts.network, opts.devSkeleton]);
    let list = this.#ready.get(key);
    if (!list) { list = []; this.#ready.set(key, list); }
    let layout: ChrootLayout | undefined;
    const dir = list.pop();
    if (dir) {
      ChrootPool.#all.delete(dir);
      try {
        if (fs.existsSync(opts.root)) discardTree(opts.root);
        fs.renameSync(dir, opts.root);
        layout = { root: opts.root, storeDir: path.join(opts.root, opts.storeDir) };
      } catch { discardTree(dir); }
    }
    layout ??= prepareChroot(opts);
    this.#refill(key, opts, list);
    return layout;
  }

  #refill(key: string, opts: PrepareChrootOptions, list: string[]): void {
    if (this.#filling.has(key)) return;
    this.#filling.add(key);
    void (async () => {
      while (list.length < this.#size) {
        const dir = path.join(path.dirname(opts.root), `.realise-chroot-${process.pid}-${Math.random().toString(36).slice(2)}`);
        ChrootPool.#all.add(dir);
        try { await runOps(chrootOps({ ...opts, root: dir })); } catch { ChrootPool.#all.delete(dir); discardTree(dir); return; }
        list.push(dir);
      }
    })().finally(() => this.#filling.delete(key));
  }

  /** Remove the skeletons waiting in the pool. */
  drain(): void {
    for (const list of this.#ready.values()) for (const d of list.splice(0)) { ChrootPool.#all.delete(d); discardTree(d); }
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
