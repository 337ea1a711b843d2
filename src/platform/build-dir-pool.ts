/**
 * Build directories reused rather than made and removed. Creating an inode costs more than it seems: on
 * ext4 without a journal each new inode scans every inode of its group freed in the last ~30 s, and each
 * deletion adds one to that list. So a build directory that is, once its build is over, exactly as the
 * engine made it (see DirOps.pristineDir: empty, mode 0700, ours, no extended attributes or ACLs) is moved
 * into a private pool, and the next build of any name gets it by a rename to its own name, which creates
 * no inode and frees none.
 *
 * A pooled directory waits in the base under a name of this process, `<base>/.realise-build-pool-<pid>-<k>`
 * (no directory of its own for the pool: a process that builds once would pay a creation for it), still
 * 0700, so no one else can put anything in it. Its record in the process's build-directory file
 * (build-dirs.ts) follows it through each rename, so that a process killed with -9 leaves nothing behind
 * after the next sweep; the pooled directories are removed when an engine using the base closes, and when
 * the process exits. A sandboxed build's
 * directory goes in with its `build` inside: one rename moves both.
 *
 * A pooled directory is renamed to `<base>/<prefix>-<n>` with renameat2(RENAME_NOREPLACE), the first n
 * that is free: the rename never replaces a directory of that name (another process's, Nix's), it fails
 * with EEXIST and the next n is tried, exactly as Nix's createTempDir does with mkdir.
 */
import { promises as fsp, rmSync } from 'node:fs';
import { constants } from 'node:os';
import * as path from 'node:path';
import { deleteTree } from '../store/canonicalise.js';
import { BUILD_DIR_POOL_PREFIX, buildDirRegistry, myUid } from './build-dirs.js';
import { loadedDirOps, nativeDirOps, type DirOps } from './native-xattrs.js';

/** The name of a sandboxed build's inner directory, inside its top one. */
const INNER = 'build';

/** Directories kept at most per pool (about the most builds that run at once); more are removed. */
const MAX_POOLED = 64;

const { EEXIST, EINVAL, ENOSYS } = constants.errno;

/** A build directory: its top, and whether the sandbox's `build` is inside it. */
export interface PooledBuildDir {
  readonly top: string;
  readonly inner: boolean;
}

/** The pool of one build-directory base. */
export class BuildDirPool {
  /** Pooled directories, empty ones and ones holding an empty `build`. */
  readonly #plain: string[] = [];
  readonly #withInner: string[] = [];
  #next = 0;
  /** Set when the base's file system cannot rename without replacing (no RENAME_NOREPLACE). */
  #unusable = false;

  constructor(readonly base: string) {}

  /** How many directories wait in the pool. */
  get size(): number {
    return this.#plain.length + this.#withInner.length;
  }

  /**
   * A pooled directory renamed to `<base>/<prefix>-<n>`, the first free n, and recorded under that name;
   * undefined when none is pooled (then the caller makes one). For a sandboxed build (`inner`) one with
   * its `build` is taken first.
   */
  async take(prefix: string, inner: boolean): Promise<PooledBuildDir | undefined> {
    if (!this.#plain.length && !(inner && this.#withInner.length)) return undefined;
    const o = loadedDirOps() ?? (await nativeDirOps()); // (undefined without a C compiler: then nothing is pooled)
    if (!o) return undefined;
    for (;;) {
      const withInner = inner && this.#withInner.length > 0;
      const entry = (withInner ? this.#withInner : this.#plain).pop();
      if (entry === undefined) return undefined;
      pooled.delete(entry);
      // Checked again: something may have written there since (a process of an unsandboxed builder that lingered).
      const top = o.pristineDir(entry, myUid, withInner ? INNER : undefined) ? this.#renameToFree(o, entry, (n) => `${prefix}-${n}`) : undefined;
      if (top) {
        buildDirRegistry().rename(entry, top);
        return { top, inner: withInner };
      }
      await deleteTree(entry).catch(() => {});
      buildDirRegistry().delete(entry);
    }
  }

  /** `from` renamed, never replacing anything, to `<base>/<name(n)>` with the first n free; undefined on another error. */
  #renameToFree(o: DirOps, from: string, name: (n: number) => string): string | undefined {
    for (let n = 0; ; n++) {
      const to = inDir(this.base, name(n));
      const e = o.renameNoReplace(from, to);
      if (e === 0) return to;
      if (e === EEXIST) continue;
      if (e === EINVAL || e === ENOSYS) this.#unusable = true; // no RENAME_NOREPLACE on this file system or kernel
      return undefined;
    }
  }

  /**
   * Remove the directories waiting in this pool (an engine closing: its base is left as Nix leaves it).
   * They leave the pool at once; their removals run on the thread pool, all together, and the promise
   * settles when every one is gone, and the record has been written once for them all. A directory is as
   * the pool keeps it (empty, or holding an empty `build`), so an rmdir or two removes it; one that is not
   * (written since) is removed as a tree.
   */
  drain(): Promise<void> {
    const entries = [...this.#plain.splice(0).map((e) => [e, false] as const), ...this.#withInner.splice(0).map((e) => [e, true] as const)];
    if (entries.length === 0) return Promise.resolve();
    return Promise.all(entries.map(([entry, inner]) => removePooled(entry, inner))).then(() => {
      buildDirRegistry().deleteAll(entries.map(([entry]) => entry));
    });
  }

  /**
   * Take a build directory done with (`inner`: it holds the sandbox's `build`) into the pool, its record
   * following it, when it is exactly as made; false when it is not (the caller removes it) or the pool is
   * full or unusable.
   */
  async put(top: string, inner: boolean): Promise<boolean> {
    if (this.#unusable || this.#plain.length + this.#withInner.length >= MAX_POOLED) return false;
    const o = loadedDirOps() ?? (await nativeDirOps());
    if (!o?.pristineDir(top, myUid, inner ? INNER : undefined)) return false;
    const entry = this.#renameToFree(o, top, () => `${BUILD_DIR_POOL_PREFIX}${process.pid}-${this.#next++}`);
    if (!entry) return false;
    buildDirRegistry().rename(top, entry);
    (inner ? this.#withInner : this.#plain).push(entry);
    removedAtExit(entry);
    return true;
  }
}

/** The directories in the pools of this process, removed when it exits. */
const pooled = new Set<string>();
let exitHooked = false;

function removedAtExit(dir: string): void {
  if (!exitHooked) {
    exitHooked = true;
    process.once('exit', () => {
      for (const d of pooled) rmSync(d, { recursive: true, force: true });
    });
  }
  pooled.add(dir);
}

/**
 * A pooled directory removed, and then forgotten by the exit hook (until then it would remove it); its
 * record is the caller's to give up.
 */
async function removePooled(entry: string, inner: boolean): Promise<void> {
  try {
    if (inner) await fsp.rmdir(path.join(entry, INNER));
    await fsp.rmdir(entry);
  } catch {
    await deleteTree(entry).catch(() => {});
  }
  pooled.delete(entry);
}

const pools = new Map<string, BuildDirPool>();

/**
 * `<dir>/<name>` for a resolved dir and a name with no '/', '.' or '..': the string path.join makes,
 * without its normalisation (a cost per build in code the CLI never optimises).
 */
function inDir(dir: string, name: string): string {
  return dir === '/' ? '/' + name : dir + '/' + name;
}

/** This process's pool of build directories under `base`. */
export function buildDirPool(dir: string): BuildDirPool {
  // A key is resolved already (path.resolve gives it back unchanged): no resolve per build for it.
  const known = pools.get(dir);
  if (known) return known;
  const base = path.resolve(dir);
  let pool = pools.get(base);
  if (!pool) pools.set(base, (pool = new BuildDirPool(base)));
  return pool;
}
