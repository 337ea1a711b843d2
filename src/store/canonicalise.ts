/**
 * Canonical metadata of store contents, as Nix's canonicalisePathMetaData: every file's mtime is 1 (the
 * epoch plus one second), regular files are 0444 or 0555 (0555 when the owner could execute), directories
 * 0555, no setuid/setgid/sticky bits and no group/world write bits remain, and everything belongs to the
 * current user. Symlinks keep their mode (Linux ignores it) but get mtime 1 too. Every extended attribute
 * (file capabilities, ACLs, user attributes) is removed but those named in `ignoredAcls` (xattrs.ts).
 */
import { chmodSync, lchownSync, lstatSync, lutimesSync, promises as fsp, readdirSync, renameSync, rmSync, type Stats } from 'node:fs';
import * as path from 'node:path';
import { StoreError, UnsupportedFileTypeError } from './errors.js';
import { DEFAULT_IGNORED_ACLS, stripXattrs, xattrOps, type XattrOps } from './xattrs.js';

/** The mtime Nix gives everything in the store (seconds since the epoch). */
export const STORE_MTIME = 1;

export interface CanonicaliseOptions {
  /**
   * If set, every file must be owned by this uid (or already by us): a file owned by someone else means
   * the builder smuggled in a foreign file (Nix's "invalid ownership" check).
   */
  readonly fromUid?: number;
  /** Extended attributes left in place (Nix's `ignored-acls`). @default DEFAULT_IGNORED_ACLS */
  readonly ignoredAcls?: readonly string[];
}

/**
 * The extended-attribute operations canonicalisation uses, or undefined when they are not available (no C
 * compiler to build the native addon, or the store module used without the platform layer): extended
 * attributes then stay, and only the seccomp filter keeps builders from setting them.
 */
export async function canonicalXattrOps(): Promise<XattrOps | undefined> {
  return xattrOps().catch(() => undefined);
}

const myUid = typeof process.geteuid === 'function' ? process.geteuid() : -1;
const myGid = typeof process.getegid === 'function' ? process.getegid() : -1;

/**
 * Canonicalise the tree at `fsPath` in place. Throws StoreError on unsupported file types or foreign owners.
 * Metadata calls are synchronous (microseconds each, no thread-pool round trip); the walk yields to the
 * event loop every 512 entries so a huge tree does not stall other work.
 */
export async function canonicalisePathMetaData(fsPath: string, opts: CanonicaliseOptions = {}): Promise<void> {
  const stack = [fsPath];
  const xattrs = await canonicalXattrOps();
  let n = 0;
  while (stack.length) {
    const p = stack.pop()!;
    if (canonicaliseNode(p, opts, xattrs)) for (const name of readdirSync(p)) stack.push(path.join(p, name));
    if (++n % 512 === 0) await new Promise((r) => setImmediate(r));
  }
}

/** Canonicalise one entry; true when it is a directory to descend into. */
function canonicaliseNode(p: string, opts: CanonicaliseOptions, xattrs: XattrOps | undefined, st: Stats = lstatSync(p)): boolean {
  const isDir = st.isDirectory();
  const isLink = st.isSymbolicLink();
  if (!isDir && !isLink && !st.isFile()) {
    throw new UnsupportedFileTypeError(p);
  }
  if (opts.fromUid !== undefined && st.uid !== opts.fromUid && st.uid !== myUid) {
    throw new StoreError('invalid-ownership', `invalid ownership on file '${p}': owned by uid ${st.uid}, expected ${opts.fromUid}`, {
      hint: 'a builder must not create files owned by other users',
    });
  }
  if (xattrs) stripNodeXattrs(xattrs, p, st.mode, isLink, opts.ignoredAcls ?? DEFAULT_IGNORED_ACLS);
  if (!isLink) {
    const perm = st.mode & 0o7777;
    if (perm !== 0o444 && perm !== 0o555) chmodSync(p, 0o444 | (st.mode & 0o100 ? 0o111 : 0));
  }
  if (st.mtimeMs !== STORE_MTIME * 1000) lutimesSync(p, st.atime, STORE_MTIME);
  if (myUid === 0 && (st.uid !== myUid || st.gid !== myGid)) lchownSync(p, myUid, myGid);
  return isDir;
}

/**
 * canonicalisePathMetaData of a single regular file whose lstat the caller has already (synchronous: a
 * few syscalls at most, for outputs small enough to be handled in one go); `xattrs` from canonicalXattrOps().
 */
export function canonicaliseFileSync(fsPath: string, st: Stats, xattrs: XattrOps | undefined, ignoredAcls?: readonly string[]): void {
  canonicaliseNode(fsPath, { ignoredAcls }, xattrs, st);
}

/**
 * Whether files created in directory `dir` may get extended attributes not in `ignored` (the directory
 * has some itself, e.g. a default ACL). False without the native operations (nothing could remove them).
 */
export async function inheritsXattrs(dir: string, ignored: readonly string[] = DEFAULT_IGNORED_ACLS): Promise<boolean> {
  const xattrs = await canonicalXattrOps();
  if (!xattrs) return false;
  return xattrs.list(dir).some((n) => !ignored.includes(n));
}

/**
 * Remove one entry's extended attributes. Removing a `user.*` attribute needs write permission on the
 * file: a read-only file (not ours to bypass as root) is made owner-writable for it, and its mode restored.
 */
function stripNodeXattrs(xattrs: XattrOps, p: string, mode: number, isLink: boolean, ignored: readonly string[]): void {
  try {
    xattrs.strip(p, ignored);
    return;
  } catch (e) {
    if (isLink || (e as { code?: string }).code !== 'EACCES' || (mode & 0o200) !== 0) {
      stripXattrs(xattrs, p, ignored); // again, for the StoreError naming the file
      return;
    }
  }
  chmodSync(p, (mode & 0o7777) | 0o200);
  try {
    stripXattrs(xattrs, p, ignored);
  } finally {
    chmodSync(p, mode & 0o7777);
  }
}

/**
 * Nix's movePath: rename `src` to `dst`. Renaming a directory to another parent rewrites its `..`, which
 * needs write permission on the directory itself unless we are root; so a read-only directory (every
 * canonical store directory) is made writable for the rename and gets its mode back after it. Nothing
 * else changes mode (a flat output must stay non-executable: its NAR hash depends on it).
 */
export function movePathSync(src: string, dst: string): void {
  const st = myUid === 0 ? undefined : lstatSync(src);
  const changePerm = st !== undefined && st.isDirectory() && (st.mode & 0o200) === 0;
  if (changePerm) chmodSync(src, (st.mode & 0o7777) | 0o200);
  try {
    renameSync(src, dst);
  } catch (e) {
    if (changePerm) chmodSync(src, st.mode & 0o7777);
    throw e;
  }
  if (changePerm) chmodSync(dst, st.mode & 0o7777);
}

/** deleteTree, synchronously: a tree with read-only directories is made writable first. Missing paths are fine. */
export function deleteTreeSync(fsPath: string): void {
  try {
    rmSync(fsPath, { recursive: true, force: true, maxRetries: 3 });
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw e;
  }
  const open = (dir: string): void => {
    const st = lstatSync(dir);
    if (!st.isDirectory()) return;
    if ((st.mode & 0o700) !== 0o700) chmodSync(dir, (st.mode & 0o7777) | 0o700);
    for (const name of readdirSync(dir)) open(path.join(dir, name));
  };
  open(fsPath);
  rmSync(fsPath, { recursive: true, force: true, maxRetries: 3 });
}

/** Make a tree deletable (directories get u+w) and delete it. Missing paths are fine. */
export async function deleteTree(fsPath: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(fsPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (st.isDirectory()) await makeWritable(fsPath);
  await fsp.rm(fsPath, { recursive: true, force: true });
}

async function makeWritable(dir: string): Promise<void> {
  const st = await fsp.lstat(dir);
  if (!st.isDirectory()) return;
  if ((st.mode & 0o700) !== 0o700) await fsp.chmod(dir, (st.mode & 0o7777) | 0o700);
  for (const ent of await fsp.readdir(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) await makeWritable(path.join(dir, ent.name));
  }
}
