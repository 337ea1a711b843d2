/**
 * Path locks as Nix takes them: an exclusive flock(2) on `<real path>.lock`, so that a real Nix process
 * working on the same store and this process exclude each other. Cross-process waits poll with a
 * non-blocking flock and back off (a blocking flock would pin a libuv thread); in-process waiters queue
 * on a promise instead, so two goals of one process never spin against each other.
 *
 * Releasing deletes the lock file the way Nix does: unlink it, then write "d" into it and close. A
 * waiter that was blocked on the old inode sees a non-empty lock file after it acquires it, knows it
 * is stale, and starts over with a fresh file. A lock held by a process that died is released by the
 * kernel when its file descriptors close, so it is recovered without any cleanup.
 */
import {
  close as closeCb,
  closeSync,
  fstatSync,
  ftruncateSync,
  open as openCb,
  openSync,
  statSync,
  unlink as unlinkCb,
  unlinkSync,
  write as writeCb,
  writeSync,
  constants as FS,
} from 'node:fs';
import { createRequire } from 'node:module';
import { StoreError } from './errors.js';
import { strerror } from './system-error.js';
import { parseStorePath } from './store-path.js';

interface FsExt {
  flockSync(fd: number, flags: 'sh' | 'ex' | 'shnb' | 'exnb' | 'un'): void;
}
const fsExt = createRequire(import.meta.url)('fs-ext') as FsExt;

/** Thrown when a lock wait is cancelled through its AbortSignal. */
export class LockAbortedError extends StoreError {
  constructor(lockPath: string, cause?: unknown) {
    super('lock-aborted', `waiting for the lock on '${lockPath}' was cancelled`, { cause });
  }
}

/** In-process exclusion, keyed by lock file path: hand-over queue, no polling. */
interface Slot {
  waiters: Array<() => void>;
}
const inProcess = new Map<string, Slot>();

function tryTakeSlot(key: string): boolean {
  if (inProcess.has(key)) return false;
  inProcess.set(key, { waiters: [] });
  return true;
}

function takeSlot(key: string, signal?: AbortSignal): Promise<void> {
  const slot = inProcess.get(key);
  if (!slot) {
    inProcess.set(key, { waiters: [] });
    return Promise.resolve();
  }
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(new LockAbortedError(key, signal.reason));
      return;
    }
    const wake = () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    const onAbort = () => {
      const i = slot.waiters.indexOf(wake);
      if (i >= 0) slot.waiters.splice(i, 1);
      reject(new LockAbortedError(key, signal?.reason));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    slot.waiters.push(wake);
  });
}

function giveSlot(key: string): void {
  const slot = inProcess.get(key);
  if (!slot) return;
  const next = slot.waiters.shift();
  if (next)
    next(); // hand the slot over; it stays taken
  else inProcess.delete(key);
}

function sleep(ms: number, signal: AbortSignal | undefined, key: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new LockAbortedError(key, signal.reason));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new LockAbortedError(key, signal?.reason));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function lockOpenError(lockPath: string, e: unknown): StoreError {
  // Nix's words: "opening lock file '…': Permission denied".
  return new StoreError('lock-failed', `opening lock file '${lockPath}': ${strerror(e) ?? (e as Error).message}`, {
    cause: e,
    hint: 'check that the store directory exists and is writable by this user',
  });
}

function openLockFile(lockPath: string): number {
  try {
    return openSync(lockPath, FS.O_RDWR | FS.O_CREAT, 0o600);
  } catch (e) {
    throw lockOpenError(lockPath, e);
  }
}

function tryFlock(fd: number, lockPath: string, mode: 'exnb' | 'shnb' = 'exnb'): boolean {
  try {
    fsExt.flockSync(fd, mode);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw new StoreError('lock-failed', `cannot lock '${lockPath}': ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The flock and staleness check on an opened lock file: the fd, undefined (held), or 'stale' (closed; open
 * again). `openedEarlier`: opened a while before (OpenedLockFiles), so its file may have been deleted since
 * by someone who did not mark it: it must still have a link.
 */
function lockOpened(lockPath: string, fd: number, openedEarlier = false): number | undefined | 'stale' {
  if (!tryFlock(fd, lockPath)) {
    closeSync(fd);
    return undefined;
  }
  const st = fstatSync(fd);
  // A file opened earlier and deleted since has no link left (nobody makes a second link to a lock file):
  // its link count says so without a lookup of the path.
  if (st.size !== 0 || (openedEarlier && st.nlink === 0)) {
    // Its previous holder deleted it (unlinked, then wrote "d"): start over with a fresh file. If the
    // path still names this very inode it was never unlinked (a leftover copy): reuse it, emptied.
    if (!namesInode(lockPath, st)) {
      closeSync(fd);
      return 'stale';
    }
    if (st.size !== 0) ftruncateSync(fd, 0);
  }
  return fd;
}

/**
 * Lock files are opened (created) on the thread pool, since creating one can take a millisecond on a
 * busy disk, but one at a time in the order asked: goals then reach their build slots in the order they
 * asked for their locks (deterministic, as the order in which builds start shows in the output), not in
 * the order the thread pool finishes.
 */
let openQueue: Promise<unknown> = Promise.resolve();

function openLockFileQueued(lockPath: string): Promise<number> {
  const p = openQueue.then(() => openLockFileAsync(lockPath));
  openQueue = p.catch(() => {});
  return p;
}

/** Open (create) a lock file on the thread pool. */
function openLockFileAsync(lockPath: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    openCb(lockPath, FS.O_RDWR | FS.O_CREAT, 0o600, (e, fd) => (e ? reject(lockOpenError(lockPath, e)) : resolve(fd)));
  });
}

/**
 * Try once to take the flock on `lockPath`; the fd, or undefined if someone holds it. Retries stale files. The
 * open (a file creation, milliseconds on a busy disk) is on the thread pool.
 */
async function tryLockFileAsync(lockPath: string): Promise<number | undefined> {
  for (;;) {
    const r = lockOpened(lockPath, await openLockFileAsync(lockPath));
    if (r !== 'stale') return r;
  }
}

/** Backoff for cross-process waits: 2 ms doubling up to 100 ms. */
async function lockFile(lockPath: string, signal?: AbortSignal, onWait?: () => void, ordered = true): Promise<number> {
  let delay = 2;
  for (;;) {
    if (signal?.aborted) throw new LockAbortedError(lockPath, signal.reason);
    const r = lockOpened(lockPath, await (ordered ? openLockFileQueued(lockPath) : openLockFileAsync(lockPath)));
    if (r === 'stale') continue;
    if (r !== undefined) return r;
    onWait?.();
    await sleep(delay, signal, lockPath);
    delay = Math.min(delay * 2, 100);
  }
}

/**
 * Release the lock on `fd`. Deleting the file (`'unlink'`, or `'unlinked'` when the caller already unlinked
 * it) marks it with "d" before the close, for processes blocked on the old inode (see the module comment).
 */
function unlockFile(lockPath: string, fd: number, deletion: 'keep' | 'unlink' | 'unlinked'): void {
  try {
    if (deletion !== 'keep') {
      if (deletion === 'unlink') {
        try {
          unlinkSync(lockPath);
        } catch {
          /* already gone */
        }
      }
      try {
        writeSync(fd, 'd');
      } catch {
        /* best effort: waiters also see the unlinked inode */
      }
    }
  } finally {
    closeSync(fd); // releases the flock
  }
}

/** Unlink a lock file on the thread pool (one already gone is fine: a stale-file cleaner got there first). */
function unlinkOnPool(lockPath: string): Promise<void> {
  return new Promise<void>((resolve) => unlinkCb(lockPath, () => resolve()));
}

/**
 * Delete `lockPath` if nobody holds it (a holder that died leaves its lock file behind), with the same
 * protocol as a release: unlink, then "d" into the file, so that a process that opened it meanwhile
 * starts over with a fresh one. True when it was deleted.
 */
export function removeStaleLockFile(lockPath: string): boolean {
  if (inProcess.has(lockPath)) return false;
  let fd: number;
  try {
    fd = openSync(lockPath, FS.O_RDWR | FS.O_NOFOLLOW);
  } catch {
    return false;
  }
  return deleteIfStale(lockPath, fd);
}

/**
 * Delete the lock file open as `fd` if nobody holds it, it is empty and `lockPath` still names it, as a
 * release does; else just close `fd`. True when it was deleted.
 */
function deleteIfStale(lockPath: string, fd: number): boolean {
  let ours = false;
  try {
    ours = tryFlock(fd, lockPath);
    if (ours) {
      // Only the inode the name still points at (and not one already deleted by its holder).
      const st = fstatSync(fd);
      ours = st.size === 0 && st.isFile() && namesInode(lockPath, st);
    }
  } catch {
    ours = false;
  }
  if (!ours) {
    closeSync(fd);
    return false;
  }
  unlockFile(lockPath, fd, 'unlink');
  return true;
}

/** Whether `lockPath` names the file `st` describes (not deleted or replaced since it was opened). */
function namesInode(lockPath: string, st: { ino: number; dev: number }): boolean {
  try {
    const now = statSync(lockPath, { throwIfNoEntry: false });
    return now !== undefined && now.ino === st.ino && now.dev === st.dev;
  } catch {
    return false;
  }
}

/**
 * Lock files created and opened ahead of a `tryLockFiles` of them, not locked (Store.openLockFiles): a build
 * waiting for its slot has them made then, so that taking them in the slot is a flock, not a file creation
 * on the thread pool. Opening a lock file without locking it is what every locker does before its flock;
 * the lock itself is still taken only in the slot. Files a `tryLockFiles` did not use are closed by
 * `discard`, and deleted when nobody holds them and they are still empty, so none is left where no build
 * ran.
 */
export class OpenedLockFiles {
  #fds: Promise<Map<string, number>> | undefined;

  constructor(files: Iterable<string>) {
    const { lockPaths } = lockPathsOf(files);
    this.#fds = Promise.all(
      lockPaths.map((l) =>
        openLockFileAsync(l).then(
          (fd) => [l, fd] as const,
          () => undefined,
        ),
      ),
    ).then((opened) => new Map(opened.filter((e) => e !== undefined)));
  }

  /** The opened files, for one tryLockFiles (undefined once taken or discarded). */
  take(): Promise<Map<string, number>> | undefined {
    const fds = this.#fds;
    this.#fds = undefined;
    return fds;
  }

  /** Close (and delete, when stale) the files no tryLockFiles took; resolves when that is done. */
  async discard(): Promise<void> {
    const fds = this.take();
    if (fds) discardOpened(await fds);
  }
}

/** Opened lock files nobody locked: closed, and deleted when stale (see OpenedLockFiles). */
function discardOpened(fds: Map<string, number>): void {
  for (const [lockPath, fd] of fds) {
    // Held in this process (through another descriptor): not ours to delete.
    if (inProcess.has(lockPath)) closeSync(fd);
    else deleteIfStale(lockPath, fd);
  }
  fds.clear();
}

/** A set of held path locks. `release()` is idempotent. */
export class HeldLocks {
  private held: Array<{ lockPath: string; fd: number }>;
  private deleteOnRelease = true;
  /** The store paths (or file paths) these locks protect. */
  readonly paths: readonly string[];

  /** @internal */
  constructor(paths: readonly string[], held: Array<{ lockPath: string; fd: number }>) {
    this.paths = paths;
    this.held = held;
  }

  /** Whether `release()` deletes the lock files (Nix's `setDeletion`). @default true */
  setDeletion(deleteFiles: boolean): void {
    this.deleteOnRelease = deleteFiles;
  }

  get released(): boolean {
    return this.held.length === 0;
  }

  /**
   * Unlock and delete the lock files. The unlinks go through the thread pool: an unlink takes the store
   * directory's lock, which the pool's file creations in that directory (other builds' lock files) hold
   * for up to milliseconds on a busy disk, and the kernel spins for it, so on the event loop a synchronous
   * unlink burns CPU. The one-byte write and the close (which releases the flock) follow, synchronous.
   */
  async release(): Promise<void> {
    if (!this.deleteOnRelease || this.held.length === 0) return this.releaseSync();
    const held = this.takeHeld();
    await (held.length === 1 ? unlinkOnPool(held[0]!.lockPath) : Promise.all(held.map((h) => unlinkOnPool(h.lockPath))));
    unlockAll(held, 'unlinked');
  }

  releaseSync(): void {
    unlockAll(this.takeHeld(), this.deleteOnRelease ? 'unlink' : 'keep');
  }

  /** The held locks, last taken first; none are held from then on. */
  private takeHeld(): Array<{ lockPath: string; fd: number }> {
    const held = this.held.reverse();
    this.held = [];
    return held;
  }
}

/** Unlock each of `held` (its file `how`), giving back its place in the process whatever happens. */
function unlockAll(held: readonly { lockPath: string; fd: number }[], how: Parameters<typeof unlockFile>[2]): void {
  for (const h of held) {
    try {
      unlockFile(h.lockPath, h.fd, how);
    } finally {
      giveSlot(h.lockPath);
    }
  }
}

/** How a caller waits for locks. */
export interface LockWaitOptions {
  /** Stop waiting (the call rejects with `LockAbortedError`). */
  readonly signal?: AbortSignal | undefined;
  /**
   * Called once, before the first wait, when some lock is held by someone else (another process, or
   * another caller in this one): what Nix reports as "waiting for lock on …".
   */
  readonly onWait?: (() => void) | undefined;
}

/** lockFiles' options beyond the Store API's. */
interface InternalLockOptions extends LockWaitOptions {
  /** What the returned handle reports (by default the files themselves). */
  readonly paths?: readonly string[];
  /**
   * Open the lock files in the order asked, one at a time across the process (the default), so that
   * callers waiting together get their locks in that order. False for callers whose order does not
   * matter (adding paths to the store): their file creations then overlap.
   */
  readonly ordered?: boolean;
}

function lockPathsOf(files: Iterable<string>): { files: string[]; lockPaths: string[] } {
  const sorted = [...new Set(files)].sort();
  return { files: sorted, lockPaths: sorted.map((f) => f + '.lock') };
}

/**
 * Lock `<file>.lock` for every file, in sorted order (so two callers never deadlock), waiting as long as
 * needed. `paths` is what the returned handle reports (by default the files themselves).
 */
export async function lockFiles(files: Iterable<string>, opts: InternalLockOptions = {}): Promise<HeldLocks> {
  const { files: sorted, lockPaths } = lockPathsOf(files);
  const held: Array<{ lockPath: string; fd: number }> = [];
  const handle = new HeldLocks(opts.paths ?? sorted, held);
  let waited = false;
  const onWait =
    opts.onWait &&
    (() => {
      if (!waited) {
        waited = true;
        opts.onWait!();
      }
    });
  try {
    for (const lockPath of lockPaths) {
      if (!tryTakeSlot(lockPath)) {
        onWait?.();
        await takeSlot(lockPath, opts.signal);
      }
      try {
        const fd = await lockFile(lockPath, opts.signal, onWait, opts.ordered ?? true);
        held.push({ lockPath, fd });
      } catch (e) {
        giveSlot(lockPath);
        throw e;
      }
    }
  } catch (e) {
    handle.setDeletion(false);
    handle.releaseSync();
    throw e;
  }
  return handle;
}

/**
 * Take every lock without waiting, or none: undefined when any is held (in this process or another). The
 * lock files are opened on the thread pool: the event loop does not wait for their creation.
 */
export async function tryLockFiles(
  files: Iterable<string>,
  opts: { paths?: readonly string[]; opened?: OpenedLockFiles | undefined } = {},
): Promise<HeldLocks | undefined> {
  const { files: sorted, lockPaths } = lockPathsOf(files);
  const held: Array<{ lockPath: string; fd: number }> = [];
  const handle = new HeldLocks(opts.paths ?? sorted, held);
  const opened = (await opts.opened?.take()) ?? new Map<string, number>();
  try {
    for (const lockPath of lockPaths) {
      if (!tryTakeSlot(lockPath)) {
        giveUp(handle);
        return undefined;
      }
      let fd: number | undefined;
      try {
        fd = await tryLockOpened(lockPath, opened);
      } catch (e) {
        giveSlot(lockPath);
        giveUp(handle);
        throw e;
      }
      if (fd === undefined) {
        giveSlot(lockPath);
        giveUp(handle);
        return undefined;
      }
      held.push({ lockPath, fd });
    }
    return handle;
  } finally {
    discardOpened(opened);
  }
}

/**
 * Let go of the locks a tryLockFiles took before one it could not take, keeping their files. (A function of
 * the module, not a closure made per call: the CLI's bundle keeps function names, and names each closure
 * bound to a name when it is made, a defineProperty per build.)
 */
function giveUp(handle: HeldLocks): void {
  handle.setDeletion(false);
  handle.releaseSync();
}

/** tryLockFileAsync, with the file opened ahead when it was. */
async function tryLockOpened(lockPath: string, opened: Map<string, number>): Promise<number | undefined> {
  const fd = opened.get(lockPath);
  if (fd === undefined) return tryLockFileAsync(lockPath);
  opened.delete(lockPath);
  let r: number | undefined | 'stale';
  try {
    r = lockOpened(lockPath, fd, true);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return r === 'stale' ? tryLockFileAsync(lockPath) : r;
}

/**
 * A shared or exclusive flock on a file that is kept (not deleted), e.g. Nix's `db/big-lock`.
 * Waits with backoff. Returns a function that releases it.
 */
export async function lockPlainFile(file: string, mode: 'shared' | 'exclusive', signal?: AbortSignal): Promise<() => void> {
  const fd = openLockFile(file);
  let delay = 2;
  try {
    while (!tryFlock(fd, file, mode === 'shared' ? 'shnb' : 'exnb')) {
      await sleep(delay, signal, file);
      delay = Math.min(delay * 2, 100);
    }
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  let open = true;
  return () => {
    if (open) {
      open = false;
      closeSync(fd);
    }
  };
}

/** Hold an exclusive flock on an open directory or file descriptor without waiting (temp dir ownership). */
export function tryFlockFd(fd: number, what: string): boolean {
  return tryFlock(fd, what, 'exnb');
}

/** A store's way of naming paths: validation against its store dir and their physical location. */
interface PathLockTarget {
  readonly storeDir: string;
  toRealPath(path: string): string;
}

function sortedLockFiles(store: PathLockTarget, paths: Iterable<string>): { sorted: string[]; files: string[] } {
  const sorted = [...new Set(paths)].sort();
  for (const p of sorted) parseStorePath(p, store.storeDir);
  return { sorted, files: sorted.map((p) => store.toRealPath(p)) };
}

/** Store.lockPaths for stores whose paths have real locations: `<real path>.lock`, sorted, validated. */
export function lockStorePaths(store: PathLockTarget, paths: Iterable<string>, opts: LockWaitOptions & { ordered?: boolean } = {}): Promise<HeldLocks> {
  const { sorted, files } = sortedLockFiles(store, paths);
  return lockFiles(files, { ...opts, paths: sorted });
}

/** Store.tryLockPaths likewise; undefined when someone else holds one of the locks. */
export function tryLockStorePaths(store: PathLockTarget, paths: Iterable<string>, opened?: OpenedLockFiles): Promise<HeldLocks | undefined> {
  const { sorted, files } = sortedLockFiles(store, paths);
  return tryLockFiles(files, { paths: sorted, opened });
}

/** Store.openLockFiles for stores whose paths have real locations. */
export function openStorePathLockFiles(store: PathLockTarget, paths: Iterable<string>): OpenedLockFiles {
  return new OpenedLockFiles(sortedLockFiles(store, paths).files);
}
