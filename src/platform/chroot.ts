/**
 * The on-disk part of a Nix sandbox: `<realStoreDir>/<drv>.chroot`, laid out as Nix's startBuilder and
 * runChild lay it out (modes included), so that the builder's `ls -la /` matches Nix's. Bind mounts are
 * done afterwards by the namespace backend; this module only creates files and moves outputs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deleteTreeSync, movePathSync } from '../store/canonicalise.js';
import { processUmask } from '../store/umask.js';
import { loadedDirOps, nativeDirOps } from './native-xattrs.js';
import { SandboxError } from './sandbox-errors.js';
import { strerror } from '../store/system-error.js';

export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 100;

/** Device nodes bound from the host into the sandbox's /dev (Nix's list). */
export const DEV_NODE_NAMES = ['full', 'null', 'random', 'tty', 'urandom', 'zero'] as const;

/** The device nodes of a sandbox's /dev: Nix's list, plus `kvm` when asked for (see PrepareChrootOptions.kvm). */
export function devNodeNames(kvm: boolean): string[] {
  return kvm ? [...DEV_NODE_NAMES, 'kvm'].sort() : [...DEV_NODE_NAMES];
}

/** Nix's /etc/passwd in the sandbox. */
export function sandboxPasswd(uid: number, gid: number, buildDir: string): string {
  return (
    `root:x:0:0:Nix build user:${buildDir}:/noshell\n` +
    `nixbld:x:${uid}:${gid}:Nix build user:${buildDir}:/noshell\n` +
    'nobody:x:65534:65534:Nobody:/:/noshell\n'
  );
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
  /**
   * A skeleton from a ChrootPool that may go back to it after the build (see ChrootPool.recycle):
   * its reference state, and the mount point directories a previous build left in its store dir.
   */
  readonly skeleton?: SkeletonState;
  /**
   * The root's ctime once the skeleton was renamed into place for this build (ns): a time of the file
   * system's own clock before the builder started (see skeletonUnchangedArgs).
   */
  readonly placedCtimeNs?: bigint;
}

/** An inode's attributes as the check compares them (times in ns, exactly as the kernel has them). */
interface InodeRef {
  readonly ino: bigint;
  readonly mode: bigint;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly nlink: bigint;
  readonly size: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
}

/** One inode of a skeleton as the check after a build compares it. */
interface InodeCheck {
  /** Its path from the skeleton's root: '' for the root, else '/' and its relative path. */
  readonly suffix: string;
  readonly ref: InodeRef;
  /** The store dir: its link count grows by the mount points left in it; its entries are those. */
  readonly store: boolean;
  /** The root or the store dir, whose times a build changes. */
  readonly timesMayChange: boolean;
  /** A directory's entries (sorted). */
  readonly names: readonly string[] | undefined;
  /** A file's contents (/etc files). */
  readonly data: Buffer | undefined;
}

/** What a pooled skeleton looked like when it was made, to check it is unchanged before reuse. */
export interface SkeletonState {
  readonly key: string;
  readonly opts: PrepareChrootOptions;
  /** Relative path of the store dir. */
  readonly store: string;
  /**
   * What the check after a build compares: every inode of the skeleton, with its reference attributes, a directory's entries, an /etc file's contents (those the builder may read).
   */
  readonly checks: readonly InodeCheck[];
  /** `checks` encoded for the native check (see encodeChecks). */
  readonly spec: Buffer;
  /** `spec` in hexadecimal, for the sandbox helper's arguments (see ChrootPool.handOver). */
  readonly specHex: string;
  /** Empty directories in the store dir left as mount points by earlier builds (names). */
  readonly mountpoints: Set<string>;
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
  /** /dev/kvm is bound too (Nix: `kvm` among the system features and /dev/kvm present). @default false */
  readonly kvm?: boolean;
}

export function removeTree(p: string): void {
  // A builder may leave read-only directories (in /tmp, its outputs): not deletable by an owner who is
  // not root until they are made writable.
  deleteTreeSync(p);
}

let pendingRemovals: Promise<void> = Promise.resolve();
const pendingTrash = new Set<string>();
let exitHook = false;

/** What is still waiting for deletion when the process exits is deleted then, synchronously. */
function ensureExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const d of pendingTrash) {
      try {
        removeTree(d);
      } catch {
        /* best effort */
      }
    }
  });
}

/**
 * Remove a directory tree off the critical path: it is renamed aside at once (so its name is free for
 * the next build) and deleted in the background, one tree at a time. Never throws (best effort): a tree
 * that can be neither moved nor deleted (the store became unwritable, ...) is left where it is, as Nix
 * ignores a chroot it cannot delete, and the failure is returned in Nix's words (`cannot unlink '…':
 * Permission denied`, which Nix prints as `error (ignored): …`). Directory removal is the slowest part of a
 * sandboxed build on ext4 mounted with `discard` (several ms per directory).
 */
export function discardTree(p: string): string | undefined {
  const aside = `${p}.trash-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    fs.renameSync(p, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    try {
      removeTree(p);
    } catch (err) {
      // Whoever needs its place says why it cannot have it.
      const x = err as NodeJS.ErrnoException;
      return `cannot unlink '${x.path ?? p}': ${strerror(x) ?? x.message}`;
    }
    return undefined;
  }
  queueRemoval([aside]);
  return undefined;
}

/**
 * Delete trees already renamed aside, after those queued before; the trees of one call are deleted at
 * once (several thread-pool requests in flight, rather than one tree's round trips after another's).
 */
function queueRemoval(trees: readonly string[]): void {
  ensureExitHook();
  for (const t of trees) pendingTrash.add(t);
  const removeOne = (aside: string) =>
    fs.promises
      .rm(aside, { recursive: true, force: true, maxRetries: 3 })
      .catch(() => removeTree(aside)) // read-only directories left by the builder
      .then(
        () => {
          pendingTrash.delete(aside);
        },
        () => {},
      );
  pendingRemovals = pendingRemovals.then(() => Promise.all(trees.map(removeOne))).then(() => {});
}

/** Resolves when every tree handed to discardTree() is gone. */
export function flushRemovals(): Promise<void> {
  return pendingRemovals;
}

type Op =
  { op: 'mkdir'; path: string; mode: number } | { op: 'write'; path: string; data: string; mode: number } | { op: 'symlink'; target: string; path: string };

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
    for (const n of devNodeNames(!!opts.kvm)) ops.push({ op: 'write', path: j(`dev/${n}`), data: '', mode: 0o644 });
    ops.push(
      { op: 'symlink', target: '/proc/self/fd', path: j('dev/fd') },
      { op: 'symlink', target: '/proc/self/fd/0', path: j('dev/stdin') },
      { op: 'symlink', target: '/proc/self/fd/1', path: j('dev/stdout') },
      { op: 'symlink', target: '/proc/self/fd/2', path: j('dev/stderr') },
      // Nix's runChild makes this link when it mounts the private devpts; the helper does that each build.
      { op: 'symlink', target: '/dev/pts/ptmx', path: j('dev/ptmx') },
    );
  }
  return ops;
}

function isExisting(e: unknown): boolean {
  return (e as NodeJS.ErrnoException).code === 'EEXIST';
}

/**
 * Whether a directory just made with `mode` (or found there: `existed`) needs a chmod to have it: only when
 * it was there already, or the umask takes bits from the mode, or the mode has bits above 0o777 (sticky).
 */
function chmodAfterMkdir(mode: number, existed: boolean, umask: number): boolean {
  return existed || mode > 0o777 || (mode & umask) !== 0;
}

function runOpsSync(ops: Op[]): void {
  const umask = processUmask();
  for (const o of ops) {
    if (o.op === 'mkdir') {
      let existed = false;
      try {
        fs.mkdirSync(o.path, { mode: o.mode });
      } catch (e) {
        if (!isExisting(e)) throw e;
        existed = true;
      }
      if (chmodAfterMkdir(o.mode, existed, umask)) fs.chmodSync(o.path, o.mode);
    } else if (o.op === 'write') fs.writeFileSync(o.path, o.data, { mode: o.mode });
    else fs.symlinkSync(o.target, o.path);
  }
}

async function runOp(o: Op, umask: number): Promise<void> {
  if (o.op === 'mkdir') {
    let existed = false;
    try {
      await fs.promises.mkdir(o.path, { mode: o.mode });
    } catch (e) {
      if (!isExisting(e)) throw e;
      existed = true;
    }
    if (chmodAfterMkdir(o.mode, existed, umask)) await fs.promises.chmod(o.path, o.mode);
  } else if (o.op === 'write') await fs.promises.writeFile(o.path, o.data, { mode: o.mode });
  else await fs.promises.symlink(o.target, o.path);
}

/**
 * The ops of a skeleton made under `root` on the thread pool, a level at a time: every entry of the
 * directories made so far at once (each op is one or more thread-pool requests; one after the other, a
 * skeleton took about fifty round trips).
 */
async function runOps(ops: Op[], root: string): Promise<void> {
  const levels: Op[][] = [];
  for (const o of ops) {
    const depth = o.path === root ? 0 : path.relative(root, o.path).split(path.sep).length;
    (levels[depth] ??= []).push(o);
  }
  const umask = processUmask();
  for (const level of levels) {
    if (!level) continue;
    // Settled, all of them, before a failure is thrown: the caller then discards the tree, with nothing still writing into it.
    const failed = (await Promise.allSettled(level.map((o) => runOp(o, umask)))).find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

function setupError(root: string, e: unknown): SandboxError {
  return new SandboxError('sandbox-setup-failed', `cannot set up the chroot directory '${root}': ${(e as Error).message}`, {
    cause: e,
    hint: 'check that the store directory is writable and on a file system that supports hard links',
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
 * Rename a ready skeleton to the chroot's name. A stale chroot of that name (a killed process left it) is
 * discarded first; that is seldom, so it is found by the rename failing, not looked for before each one.
 */
function renameIntoPlace(dir: string, root: string): void {
  try {
    fs.renameSync(dir, root);
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR' && code !== 'EISDIR') throw e;
  }
  discardTree(root);
  fs.renameSync(dir, root);
}

function refOf(st: fs.BigIntStats): InodeRef {
  return { ino: st.ino, mode: st.mode, uid: st.uid, gid: st.gid, nlink: st.nlink, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}

/** Record the state of a freshly made skeleton (every inode, directory listing and /etc file). */
function snapshotSkeleton(root: string, key: string, opts: PrepareChrootOptions): SkeletonState {
  const store = opts.storeDir.replace(/^\/+/, '');
  const checks: InodeCheck[] = [];
  // Every inode, those covered by a mount during the build too (the build dir, /proc, the device nodes):
  // a builder with the capabilities of its user namespace could unmount them (see LinuxSandbox#recyclable),
  // and the check sees the skeleton's own inodes, not what is mounted on them.
  const walk = (rel: string): void => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs, { bigint: true });
    const names = st.isDirectory() ? fs.readdirSync(abs).sort() : undefined;
    const data = st.isFile() && rel.startsWith('etc/') ? fs.readFileSync(abs) : undefined;
    checks.push({ suffix: rel ? `/${rel}` : '', ref: refOf(st), store: rel === store, timesMayChange: rel === '' || rel === store, names, data });
    for (const n of names ?? []) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  const spec = encodeChecks(checks, mountpointMode());
  return { key, opts, store, checks, spec, specHex: spec.toString('hex'), mountpoints: new Set() };
}

/**
 * The mode of the mount point directories the sandbox helper makes in the store dir for directory inputs
 * (mkdir 0755 under the umask it inherits from us), with the directory type bit.
 */
function mountpointMode(): number {
  return fs.constants.S_IFDIR | (0o755 & ~processUmask());
}

/** Flags of an inode in the encoded checks (SK_* in skeleton-check.h). */
const SK_STORE = 1;
const SK_TIMES_MAY_CHANGE = 2;
const SK_NAMES = 4;
const SK_DATA = 8;

/**
 * The checks as skeleton-check.h reads them (little-endian): a u32 count, the u32 mode of the store dir's
 * mount point directories (mountpointMode), then per inode its path from the root (u32 length, bytes), u32
 * flags, eight i64 (ino, mode, uid, gid, nlink, size, mtime, ctime in ns), a directory's entries (u32
 * count, NUL-terminated names), a file's contents (u32 length, bytes).
 */
function encodeChecks(checks: readonly InodeCheck[], mountMode: number): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    parts.push(b);
  };
  u32(checks.length);
  u32(mountMode);
  for (const c of checks) {
    const suffix = Buffer.from(c.suffix);
    u32(suffix.length);
    parts.push(suffix);
    u32((c.store ? SK_STORE : 0) | (c.timesMayChange ? SK_TIMES_MAY_CHANGE : 0) | (c.names ? SK_NAMES : 0) | (c.data ? SK_DATA : 0));
    const r = c.ref;
    const attrs = Buffer.alloc(64);
    // As the addon reads them: 64-bit two's complement (an inode number may not fit a signed i64).
    [r.ino, r.mode, r.uid, r.gid, r.nlink, r.size, r.mtimeNs, r.ctimeNs].forEach((v, i) => attrs.writeBigInt64LE(BigInt.asIntN(64, v), i * 8));
    parts.push(attrs);
    u32(c.names?.length ?? 0);
    for (const n of c.names ?? []) parts.push(Buffer.from(`${n}\0`));
    u32(c.data?.length ?? 0);
    if (c.data) parts.push(c.data);
  }
  return Buffer.concat(parts);
}

/**
 * The arguments of the addon's skeletonUnchanged (DirOps), which tells, after the build's hard-linked
 * inputs (`leftovers.storeFiles`) are unlinked, whether a skeleton is exactly as it was made, apart from
 * what a build legitimately changes: the store dir's entries (only the given mount point directories may
 * be left: empty, with the mode and owner the helper gives them) and times, and the root's times (it is
 * renamed). Everything a builder could write — the root, /tmp, /etc and its files, /dev and its links and
 * nodes, /proc, the build dir, the store dir's parents — must have the same inode, mode, owner, link count,
 * size, times and (for /etc files) contents.
 *
 * `placed` (ChrootLayout.placedCtimeNs) is a ctime the file system gave before the builder started: any
 * change the builder made to an inode set its ctime to a time at or after it. So an inode whose ctime is
 * still its reference one, older than `placed`, was not changed by the build: its entries or contents
 * need no second look. (A reference ctime as recent as `placed`, the skeleton made in the same tick of the
 * kernel's clock, could be that of a change the builder made: those are listed and read.)
 *
 * The check is one call on the main thread (about 20 system calls, each of which costs the main thread
 * more through `fs`; on the thread pool, the round trip alone costs it as much as the whole check).
 */
function skeletonUnchangedArgs(dir: string, sk: SkeletonState, leftovers: ChrootLeftovers, placed: bigint | undefined) {
  const names = (xs: Iterable<string>) => {
    let s = '';
    for (const x of xs) s += `${x}\0`;
    return s;
  };
  return [dir, sk.spec, sk.store, names(leftovers.storeFiles), names(leftovers.storeMountpoints), placed ?? 0n] as const;
}

/**
 * A fresh name for a skeleton waiting in the pool, beside the chroot `root` (`<drv>.chroot`) it serves:
 * `<hash part of the drv>-realise-chroot-…`. A garbage collector (Nix's or ours) deletes every entry of
 * the store directory that is not a store path, but leaves alone a name whose hash part is a temporary
 * root, which the derivation of a build is for as long as the building process lives.
 */
function pooledDir(root: string): string {
  return path.join(path.dirname(root), `${path.basename(root).slice(0, 32)}-realise-chroot-${process.pid}-${Math.random().toString(36).slice(2)}`);
}

/** What a build put into its chroot that must go before the skeleton is reused. */
export interface ChrootLeftovers {
  /** Non-directory entries in the store dir: hard-linked inputs, mount point files (names). */
  readonly storeFiles: readonly string[];
  /** Directories left in the store dir as mount points (names). */
  readonly storeMountpoints: ReadonlySet<string>;
}

/** A skeleton whose check after its build the sandbox helper makes (see ChrootPool.handOver). */
export interface SkeletonHandOver {
  /** Where the helper renames it when unchanged: a name beside the chroot, in the pool. */
  readonly dir: string;
  readonly sk: SkeletonState;
  /** The pool's generation when it was handed over: a drain since means it is discarded. */
  readonly generation: number;
}

/** A skeleton back from a build, waiting for its check (ChrootPool.recycle). */
interface Recycling {
  readonly dir: string;
  readonly sk: SkeletonState;
  readonly leftovers: ChrootLeftovers;
  /** ChrootLayout.placedCtimeNs of its build. */
  readonly placed: bigint | undefined;
  /** The pool's generation when it came back: a drain since means it is discarded. */
  readonly generation: number;
  done: boolean;
}

/** What a pool key holds of a build's chroot options: skeletons are shared by builds that agree on all of it. */
function keyParts(opts: PrepareChrootOptions): readonly unknown[] {
  return [path.dirname(opts.root), opts.storeDir, opts.sandboxBuildDir, opts.uid, opts.gid, opts.network, opts.devSkeleton, !!opts.kvm];
}

/** The list kept under `key` in `map`, made (empty) on first use. */
function listIn<T>(map: Map<string, T[]>, key: string): T[] {
  let list = map.get(key);
  if (!list) {
    list = [];
    map.set(key, list);
  }
  return list;
}

/**
 * Chroot skeletons made ahead of time, off the critical path: `take()` renames a ready one into place
 * (one rename instead of a dozen directory creations) and refills the pool in the background. After a
 * build, `recycle()` puts the skeleton back when it is provably unchanged, so steady-state builds
 * create and delete no directories at all (directory removal is the costliest file-system operation
 * of a build on ext4 with `discard`). Skeletons wait as `<realStoreDir>/<drv hash>-realise-chroot-*` and are
 * removed when the process exits.
 */
export class ChrootPool {
  readonly #size: number;
  readonly #ready = new Map<string, SkeletonState[]>();
  readonly #filling = new Set<string>();
  /** Bumped by drain(): work started before it (a refill, a recycle check) discards what it made. */
  #generation = 0;
  /** Refills and recycle checks under way (drain() waits for them). */
  readonly #inflight = new Set<Promise<void>>();
  /** Skeleton state of each directory waiting in the pool. */
  readonly #states = new Map<string, SkeletonState>();
  /** Skeletons back from a build whose check (see recycle) has not run yet, by key, oldest first. */
  readonly #checking = new Map<string, Recycling[]>();
  /**
   * Skeletons given to builds (take) and not back yet, by key: they mostly come back (handBack, recycle),
   * so a refill counts them as ready. Each one's pool generation when taken (see #returned).
   */
  readonly #out = new Map<string, number>();
  readonly #takenIn = new WeakMap<SkeletonState, number>();
  static readonly #all = new Set<string>();
  static #exitHook = false;

  constructor(size = 2) {
    this.#size = size;
    // The addon, loaded in the background: a check finds it with loadedDirOps() (see skeletonUnchangedArgs).
    this.#track(nativeDirOps().then(() => {}));
    if (!ChrootPool.#exitHook) {
      ChrootPool.#exitHook = true;
      process.once('exit', () => {
        for (const d of ChrootPool.#all) {
          try {
            removeTree(d);
          } catch {
            /* best effort */
          }
        }
      });
    }
  }

  /** The last key made by #keyOf and the parts it was made from. */
  #lastKey: { readonly parts: readonly unknown[]; readonly key: string } | undefined;

  /** The pool key of `opts` (its keyParts as JSON), made again only when `opts` differs from the last ones in what the key holds (builds mostly share it). */
  #keyOf(opts: PrepareChrootOptions): string {
    const parts = keyParts(opts);
    const l = this.#lastKey;
    if (l && parts.every((p, i) => p === l.parts[i])) return l.key;
    const key = JSON.stringify(parts);
    this.#lastKey = { parts, key };
    return key;
  }

  #listOf(key: string): SkeletonState[] {
    return listIn(this.#ready, key);
  }

  /** Start making skeletons for builds like `opts` in the background, before the first one needs one. */
  prefill(opts: PrepareChrootOptions): void {
    const key = this.#keyOf(opts);
    this.#refill(key, opts, this.#listOf(key));
  }

  /** Resolves when the refills and recycle checks under way are done (what they make is then in the pool). */
  async settled(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.all([...this.#inflight]);
  }

  /**
   * A skeleton for a build like `opts`, renamed into place. `placed`: also look up the root's ctime then
   * (ChrootLayout.placedCtimeNs), for the check after the build; not needed when the sandbox helper makes
   * that check (see handOver), which looks it up itself before the builder starts.
   */
  take(opts: PrepareChrootOptions, { placed = true }: { readonly placed?: boolean } = {}): ChrootLayout {
    const key = this.#keyOf(opts);
    const list = this.#listOf(key);
    let layout: ChrootLayout | undefined;
    // None ready but one back from a build and not yet checked: check it now (cheaper than making one).
    if (list.length === 0) {
      const r = this.#checking.get(key)?.at(-1);
      if (r) this.#check(r);
    }
    // Most recently recycled first: its mount points most likely match this build's inputs.
    const sk = list.pop();
    if (sk) {
      const dir = this.#dirOf(sk);
      this.#states.delete(dir);
      ChrootPool.#all.delete(dir);
      try {
        renameIntoPlace(dir, opts.root);
        // The rename set the root's ctime (as ext4, xfs, btrfs and tmpfs do); where it does not, the
        // root's older ctime only makes the check after the build look at more.
        const placedCtimeNs = placed ? fs.lstatSync(opts.root, { bigint: true }).ctimeNs : undefined;
        layout = { root: opts.root, storeDir: path.join(opts.root, opts.storeDir), skeleton: sk, placedCtimeNs };
      } catch {
        discardTree(dir);
      }
    }
    if (layout) {
      // One taken from the pool: replaced in the background (unless those out with builds make up the pool).
      this.#lend(layout.skeleton!);
      this.#refill(key, opts, list);
      return layout;
    }
    // None ready: made here, which is the refill (one more in the background too would be a skeleton more
    // to make and delete per run: builds of a run take turns with the ones that come back).
    layout = prepareChroot(opts);
    try {
      layout = { ...layout, skeleton: snapshotSkeleton(opts.root, key, opts) };
      this.#lend(layout.skeleton!);
    } catch {
      /* not recyclable */
    }
    return layout;
  }

  /** `sk` goes out with a build (see #out). */
  #lend(sk: SkeletonState): void {
    this.#takenIn.set(sk, this.#generation);
    this.#out.set(sk.key, (this.#out.get(sk.key) ?? 0) + 1);
  }

  /**
   * `sk` is back from its build (to be checked, kept or lost: `lost`, then the pool makes one in its place
   * in the background, as it does for one taken). Once per skeleton taken; not for one taken before a drain.
   */
  #returned(sk: SkeletonState, lost: boolean): void {
    const g = this.#takenIn.get(sk);
    this.#takenIn.delete(sk);
    if (g !== this.#generation) return;
    this.#out.set(sk.key, (this.#out.get(sk.key) ?? 1) - 1);
    if (lost) this.#refill(sk.key, sk.opts, this.#listOf(sk.key));
  }

  /**
   * After a build whose chroot does not go back to the pool (not recyclable, or the build did not end):
   * discard it, and let the pool make another in its place. Returns what discardTree() says.
   */
  discard(layout: ChrootLayout): string | undefined {
    const left = discardTree(layout.root);
    if (layout.skeleton) this.#returned(layout.skeleton, true);
    return left;
  }

  #dirOf(sk: SkeletonState): string {
    for (const [d, s] of this.#states) if (s === sk) return d;
    throw new Error('skeleton not in the pool');
  }

  /**
   * After a build: put the skeleton back into the pool if it is unchanged (see skeletonUnchangedArgs),
   * else discard it. Only call this when no process of the build can still touch the chroot. The
   * chroot leaves its place (`<drv>.chroot`) at once; the check runs on the next turn of the event
   * loop, typically while the next build's process starts.
   */
  recycle(layout: ChrootLayout, leftovers: ChrootLeftovers): void {
    const sk = layout.skeleton;
    const list = sk && this.#ready.get(sk.key);
    if (!sk || !list || list.length >= this.#size * 2 + 2) {
      this.discard(layout);
      return;
    }
    const dir = pooledDir(layout.root);
    try {
      fs.renameSync(layout.root, dir);
    } catch {
      this.discard(layout);
      return;
    }
    this.#returned(sk, false);
    ChrootPool.#all.add(dir);
    const r: Recycling = { dir, sk, leftovers, placed: layout.placedCtimeNs, generation: this.#generation, done: false };
    this.#checkingOf(sk.key).push(r);
    this.#track(new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.#check(r)));
  }

  /**
   * Before a build whose sandbox helper checks the skeleton itself once the builder is gone, instead of
   * recycle() after the build (sandbox-helper.c, recycleSkeleton: the check of skeletonUnchangedArgs, the
   * same C code, in the build's own process, through descriptors of the chroot's root and its parent opened
   * before the builder started, with the caller's rights alone): the name beside the chroot that the helper
   * renames an unchanged skeleton to, or undefined when it is not to go back to the pool (none of ours, or
   * the pool is full). Then handBack() after the build.
   */
  handOver(layout: ChrootLayout): SkeletonHandOver | undefined {
    const sk = layout.skeleton;
    const list = sk && this.#ready.get(sk.key);
    if (!sk || !list || list.length >= this.#size * 2 + 2) return undefined;
    const dir = pooledDir(layout.root);
    ChrootPool.#all.add(dir);
    return { dir, sk, generation: this.#generation };
  }

  /**
   * After a build given handOver(): the skeleton is in the pool at once when the helper reported it kept
   * (unchanged, at `h.dir`), nothing is at the chroot's name any more (the helper renamed it from there:
   * a directory still there means a report that is not of that rename) and no drain came since; else it
   * is discarded, from the chroot's name where the helper leaves one it did not keep, and from `h.dir` (a
   * build stopped between the helper's rename and its report). Returns what discardTree() says about the
   * chroot's name (see there).
   */
  handBack(layout: ChrootLayout, h: SkeletonHandOver, leftovers: ChrootLeftovers, kept: boolean): string | undefined {
    if (kept && h.generation === this.#generation && !fs.existsSync(layout.root)) {
      h.sk.mountpoints.clear();
      for (const m of leftovers.storeMountpoints) h.sk.mountpoints.add(m);
      this.#states.set(h.dir, h.sk);
      this.#listOf(h.sk.key).push(h.sk);
      this.#returned(h.sk, false);
      return undefined;
    }
    ChrootPool.#all.delete(h.dir);
    // The chroot's name first: once it is gone, the helper (stopped or not) can no longer rename it to h.dir.
    const left = this.discard(layout);
    discardTree(h.dir);
    return left;
  }

  #checkingOf(key: string): Recycling[] {
    return listIn(this.#checking, key);
  }

  /** A recycled skeleton's check (see skeletonUnchangedArgs): into the pool if unchanged, else discarded. Once per skeleton. */
  #check(r: Recycling): void {
    if (r.done) return;
    r.done = true;
    const q = this.#checking.get(r.sk.key);
    q?.splice(q.indexOf(r), 1);
    const { dir, sk, leftovers } = r;
    let unchanged = false;
    try {
      // Without the addon (no C compiler) no skeleton is reused.
      const ops = loadedDirOps();
      unchanged = r.generation === this.#generation && ops !== undefined && ops.skeletonUnchanged(...skeletonUnchangedArgs(dir, sk, leftovers, r.placed));
    } catch {
      /* changed */
    }
    if (!unchanged) {
      ChrootPool.#all.delete(dir);
      discardTree(dir);
      // Made again in the background, as for one lost after its build (see #returned), unless drained since.
      if (r.generation === this.#generation) this.#refill(sk.key, sk.opts, this.#listOf(sk.key));
      return;
    }
    sk.mountpoints.clear();
    for (const m of leftovers.storeMountpoints) sk.mountpoints.add(m);
    this.#states.set(dir, sk);
    this.#listOf(sk.key).push(sk);
  }

  #track(p: Promise<void>): void {
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  #refill(key: string, opts: PrepareChrootOptions, list: SkeletonState[]): void {
    if (this.#filling.has(key)) return;
    this.#filling.add(key);
    const generation = this.#generation;
    this.#track(
      (async () => {
        // Skeletons out with builds or being checked after their build mostly come back: counted as ready.
        while (list.length + (this.#checking.get(key)?.length ?? 0) + (this.#out.get(key) ?? 0) < this.#size && generation === this.#generation) {
          const dir = pooledDir(opts.root);
          ChrootPool.#all.add(dir);
          let sk: SkeletonState;
          try {
            await runOps(chrootOps({ ...opts, root: dir }), dir);
            if (generation !== this.#generation) throw new Error('drained');
            sk = snapshotSkeleton(dir, key, opts);
          } catch {
            ChrootPool.#all.delete(dir);
            discardTree(dir);
            return;
          }
          this.#states.set(dir, sk);
          list.push(sk);
        }
      })().finally(() => this.#filling.delete(key)),
    );
  }

  /**
   * Remove the skeletons waiting in the pool, and those that refills and recycle checks under way would
   * add; resolves when those are done (their trees are then queued for deletion: see flushRemovals).
   */
  async drain(): Promise<void> {
    this.#generation++;
    this.#out.clear();
    for (const list of this.#ready.values()) list.splice(0);
    const dirs = [...this.#states.keys()];
    for (const q of this.#checking.values()) {
      for (const r of q.splice(0)) {
        r.done = true;
        dirs.push(r.dir);
      }
    }
    for (const d of dirs) ChrootPool.#all.delete(d);
    this.#states.clear();
    // Nothing else knows these names: no rename aside, and all of them deleted at once.
    if (dirs.length) queueRemoval(dirs);
    await Promise.all([...this.#inflight]);
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
 * outputs being built are invalid by contract. Returns the outputs this call moved: not those the builder
 * did not make, nor those the helper backend moved out already (its first 64; see sandbox-helper.c).
 */
export function moveOutputsOut(layout: ChrootLayout, outputs: readonly string[], realStoreDir: string): string[] {
  const moved: string[] = [];
  for (const out of outputs) {
    const base = path.basename(out);
    const inside = path.join(layout.storeDir, base);
    const dest = path.join(realStoreDir, base);
    // The helper backend's builds have their outputs moved out already: nothing left inside.
    if (!fs.lstatSync(inside, { throwIfNoEntry: false })) continue;
    // The usual case first, in one system call: nothing at the physical path (or a file, or an empty
    // directory, which the rename replaces as the removal below would).
    try {
      fs.renameSync(inside, dest);
      moved.push(out);
      continue;
    } catch {
      /* moved below */
    }
    removeTree(dest);
    // Nix's movePath: an output directory the builder left read-only moves too when we are not root.
    movePathSync(inside, dest);
    moved.push(out);
  }
  return moved;
}
