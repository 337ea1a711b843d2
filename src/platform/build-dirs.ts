/**
 * A record of the build directories (`<base>/nix-build-*`) this process has, so that one that was killed
 * (kill -9) leaves none behind for good: the next process that builds in the same base removes them.
 *
 * The same goes for the build directories the process keeps for reuse (build-dir-pool.ts).
 *
 * Each process keeps a file `~/.cache/realise/build-dirs/<pid>` (the helper's cache directory; the
 * directory 0700 and ours, else nothing is recorded), flock-ed for as long as the process lives, listing
 * `<dev>:<ino> <dir>` of its build directories in use. A file whose flock is free belongs to a dead process: its directories are
 * deleted, but only those still the very directories it made (same device and inode; a later build of
 * the same name, e.g. by Nix, is left alone) and still ours.
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
        for (const line of readFileSync(fd, 'utf8').split('\n')) {
          const m = /^(\d+):(\d+) (.+)$/.exec(line);
          if (m && (await this.#removeIfSame(m[3]!, m[1]!, m[2]!))) removed.push(m[3]!);
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

  async #removeIfSame(dir: string, dev: string, ino: string): Promise<boolean> {
    const name = path.basename(dir);
    if (!path.isAbsolute(dir) || !(name.startsWith('nix-build-') || name.startsWith(BUILD_DIR_POOL_PREFIX))) return false;
    const st = lstatSync(dir, { throwIfNoEntry: false, bigint: true });
    if (!st?.isDirectory() || String(st.dev) !== dev || String(st.ino) !== ino || Number(st.uid) !== myUid) return false;
    await deleteTree(dir);
    return true;
  }

  /** Record a build directory just made. */
  add(dir: string): void {
    if (!this.#open()) return;
    const st = lstatSync(dir, { bigint: true });
    this.#active.set(dir, `${st.dev}:${st.ino} ${dir}\n`);
    this.#write();
  }

  /** A recorded directory renamed (the same inode): its record follows it, in one write. */
  rename(from: string, to: string): void {
    const line = this.#active.get(from);
    if (line === undefined) return;
    this.#active.delete(from);
    this.#active.set(to, `${line.slice(0, line.indexOf(' '))} ${to}\n`);
    this.#write();
  }

  /** A build directory removed, or kept on purpose (keepFailed): no longer ours to clean up. */
  delete(dir: string): void {
    if (this.#active.delete(dir)) this.#write();
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
