/**
 * A record of the build directories (`<base>/nix-build-*`) this process has, so that one that was killed
 * (kill -9) leaves none behind for good: the next process that builds in the same base removes them.
 *
 * The same goes for the build directories the process keeps for reuse (build-dir-pool.ts).
 *
 * Each process keeps a file `~/.cache/realise/build-dirs/<pid>` (the helper's cache directory; the
 * directory 0700 and ours, else nothing is recorded), flock-ed for as long as the process lives, listing
 * `<dev>:<ino>:<birth time ns> <dir>` of its build directories in use. A file whose flock is free belongs
 * to a dead process: its directories are deleted, but only those still the very directories it made (same
 * device, inode and birth time; a later build of the same name, e.g. by Nix, is left alone) and still ours.
 *
 * A directory renamed within its base (into the pool and out of it, twice per build) is not written
 * again: the sweep looks for it by its identity among the build and pool directories of the base it was
 * recorded in. The record is written when a directory is added or given up.
 */
import { closeSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync, constants as FS } from 'node:fs';
import * as path from 'node:path';
import { deleteTree } from '../store/canonicalise.js';
import { tryFlockFd } from '../store/locks.js';
import { defaultHelperCacheDir } from './sandbox-helper.js';

/** The name of a build directory waiting for reuse (build-dir-pool.ts) starts so: `<base>/.realise-build-pool-<pid>-<k>`. */
export const BUILD_DIR_POOL_PREFIX = '.realise-build-pool-';

/** This process's uid (-1 where there is none): build directories are ours only when owned by it. */
export const myUid = typeof process.getuid === 'function' ? process.getuid() : -1;

/** This process's record of its build directories. */
class BuildDirRegistry {
  readonly #dir: string | undefined;
  #fd: number | undefined;
  #file: string | undefined;
  /** The file's size: what #write last wrote, or what a left-over file had. */
  #size = 0;
  readonly #active = new Map<string, string>();
  readonly #sweptFor = new WeakMap<object, Promise<string[]>>();

  constructor(dir: string) {
    this.#dir = privateDir(dir);
  }

  /** Once per `key` (the engine's store object): remove the build directories of processes that died. */
  sweep(key: object): Promise<string[]> {
    let p = this.#sweptFor.get(key);
    if (!p) this.#sweptFor.set(key, (p = this.#sweep().catch(() => [])));
    return p;
  }

  async #sweep(): Promise<string[]> {
    const removed: string[] = [];
    if (!this.#dir) return removed;
    for (const name of readdirSync(this.#dir)) {
      if (!/^\d+$/.test(name) || (this.#file && name === path.basename(this.#file))) continue;
      const file = path.join(this.#dir, name);
      let fd: number;
      try {
        fd = openSync(file, FS.O_RDWR | FS.O_NOFOLLOW);
      } catch {
        continue;
      }
      try {
        if (!tryFlockFd(fd, file)) continue; // its process lives
        const listings = new Map<string, string[]>();
        for (const line of readFileSync(fd, 'utf8').split('\n')) {
          const m = /^(\d+):(\d+)(?::(\d+))? (.+)$/.exec(line);
          if (!m) continue;
          const dir = await this.#removeIfSame(m[4]!, { dev: m[1]!, ino: m[2]!, birth: m[3] }, listings);
          if (dir) removed.push(dir);
        }
        unlinkSync(file);
      } catch {
        /* best effort: try again next time */
      } finally {
        closeSync(fd);
      }
    }
    return removed;
  }

  /**
   * Remove the directory recorded as `dir` with identity `id`, at that name or renamed within its base (a
   * build or pool directory's name; `listings` keeps the bases read in this sweep); the name it was removed
   * at, or undefined when it is not there.
   */
  async #removeIfSame(dir: string, id: DirIdentity, listings: Map<string, string[]>): Promise<string | undefined> {
    const name = path.basename(dir);
    if (!path.isAbsolute(dir) || !isBuildDirName(name)) return undefined;
    const base = path.dirname(dir);
    const same = (n: string): boolean => {
      const st = lstatSync(path.join(base, n), { throwIfNoEntry: false, bigint: true });
      if (!st?.isDirectory() || String(st.dev) !== id.dev || String(st.ino) !== id.ino || Number(st.uid) !== myUid) return false;
      // Without a birth time (a file system that has none, or a line of a version that wrote every rename), only the recorded name.
      return id.birth === undefined || id.birth === '0' ? n === name : String(st.birthtimeNs) === id.birth;
    };
    let found = same(name) ? name : undefined;
    if (found === undefined && id.birth !== undefined && id.birth !== '0') {
      let names = listings.get(base);
      if (!names) {
        try {
          names = readdirSync(base).filter(isBuildDirName);
        } catch {
          names = [];
        }
        listings.set(base, names);
      }
      found = names.find((n) => n !== name && same(n));
    }
    if (found === undefined) return undefined;
    await deleteTree(path.join(base, found));
    return path.join(base, found);
  }

  /** Record a build directory just made. */
  add(dir: string): void {
    if (!this.#open()) return;
    const st = lstatSync(dir, { bigint: true });
    this.#active.set(dir, `${st.dev}:${st.ino}:${st.birthtimeNs} ${dir}\n`);
    this.#write();
  }

  /**
   * A recorded directory renamed within its base (the same inode): followed here, and in the file at its
   * next write; until then a sweep finds it by its identity (see the module comment). On a file system
   * without birth times the identity is not enough: the file is written at once.
   */
  rename(from: string, to: string): void {
    const line = this.#active.get(from);
    if (line === undefined) return;
    this.#active.delete(from);
    const id = line.slice(0, line.indexOf(' '));
    this.#active.set(to, `${id} ${to}\n`);
    if (id.endsWith(':0')) this.#write();
  }

  /** A build directory removed, or kept on purpose (keepFailed): no longer ours to clean up. */
  delete(dir: string): void {
    if (this.#active.delete(dir)) this.#write();
  }

  /** Build directories removed, all at once (a pool drained): the file is written once for them all. */
  deleteAll(dirs: Iterable<string>): void {
    let changed = false;
    for (const d of dirs) changed = this.#active.delete(d) || changed;
    if (changed) this.#write();
  }

  #open(): boolean {
    if (this.#fd !== undefined) return true;
    if (!this.#dir) return false;
    const file = path.join(this.#dir, String(process.pid));
    try {
      const fd = openSync(file, FS.O_RDWR | FS.O_CREAT | FS.O_NOFOLLOW, 0o600);
      if (!tryFlockFd(fd, file)) {
        closeSync(fd);
        return false;
      }
      this.#fd = fd;
      this.#file = file;
      this.#size = fstatSync(fd).size;
      process.once('exit', () => {
        try {
          unlinkSync(file);
        } catch {
          /* gone */
        }
      });
      return true;
    } catch {
      return false;
    }
  }

  /**
   * The file lists exactly the directories in use (a left-over file of a dead process with our pid is
   * overwritten). It is never made shorter: what the list no longer covers is overwritten with empty
   * lines, which a sweep skips. A truncation per build would free the file's block and allocate it again
   * (a discard each time on a disk mounted with `discard`).
   */
  #write(): void {
    if (this.#fd === undefined) return;
    try {
      const list = Buffer.from([...this.#active.values()].join(''));
      const data = list.length >= this.#size ? list : Buffer.concat([list, Buffer.alloc(this.#size - list.length, '\n')]);
      if (data.length) writeSync(this.#fd, data, 0, data.length, 0);
      this.#size = data.length;
    } catch {
      /* a full disk: the record is best effort */
    }
  }
}

/** What identifies a recorded directory across renames; `birth` is missing in lines of earlier versions. */
interface DirIdentity {
  readonly dev: string;
  readonly ino: string;
  readonly birth: string | undefined;
}

/** A build directory's name (`nix-build-…`) or a pooled one's. */
function isBuildDirName(name: string): boolean {
  return name.startsWith('nix-build-') || name.startsWith(BUILD_DIR_POOL_PREFIX);
}

/** `dir`, created 0700 if missing, when it is a directory of ours that no one else can write; else undefined. */
function privateDir(dir: string): string | undefined {
  try {
    mkdirSync(dir, { mode: 0o700, recursive: true });
  } catch {
    /* exists, or cannot be made */
  }
  const st = lstatSync(dir, { throwIfNoEntry: false });
  return st?.isDirectory() && st.uid === myUid && (st.mode & 0o077) === 0 ? dir : undefined;
}

let registry: BuildDirRegistry | undefined;

/** This process's registry of build directories. */
export function buildDirRegistry(): BuildDirRegistry {
  registry ??= new BuildDirRegistry(path.join(defaultHelperCacheDir(), 'build-dirs'));
  return registry;
}

export type { BuildDirRegistry };
