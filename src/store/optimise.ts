/**
 * Store optimisation as Nix 2.8's optimise-store.cc does it, so that a store we optimised is one
 * `nix-store --optimise` finds nothing more to do in, and the other way round:
 *   - every regular file and symlink of a path is hashed as Nix's hashPath does (SHA-256 of its NAR
 *     serialisation, so the executable bit and a symlink's target count);
 *   - `<realStoreDir>/.links/<nix-base32 hash>` is a hard link to the first file seen with that hash;
 *     a later identical file is replaced by a hard link to it (linked to a temporary name
 *     `.tmp-link-<pid>-<random>` in the store dir, renamed over the file), its directory made writable for
 *     that and restored to 0555 and mtime 1 afterwards;
 *   - files already linked (an inode found in `.links`) are skipped, writable regular files are skipped
 *     with a warning, a `.links` entry of another size is replaced, EMLINK (too many links) and ENOSPC
 *     are shrugged off.
 * A whole-store run (LocalStore.optimiseStore) works on several paths at once: the work waits on the
 * file system far more than it computes, so overlapping the waits is what makes it fast.
 */
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, promises as fsp, readdirSync, type Stats } from 'node:fs';
import * as path from 'node:path';
import { toNixBase32 } from './hash.js';
import { narString } from './nar.js';
import { STORE_MTIME } from './canonicalise.js';

/** What an optimisation did (Nix's OptimiseStats). */
export interface OptimiseStats {
  /** Files replaced by a hard link. */
  filesLinked: number;
  /** Their sizes (Nix's bytesFreed). */
  bytesFreed: number;
  /** Their 512-byte blocks. */
  blocksFreed: number;
}

export interface OptimiseOptions {
  /** Warnings (Nix's: "skipping suspicious writable file …", "removing corrupted link …"). */
  readonly onWarning?: ((message: string) => void) | undefined;
  /** Progress over the paths: done of expected. */
  readonly onProgress?: ((done: number, expected: number, stats: OptimiseStats) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
}

const NAR_MAGIC = narString('nix-archive-1');
const OPEN = narString('(');
const CLOSE = narString(')');
const TYPE = narString('type');
const REGULAR = narString('regular');
const SYMLINK = narString('symlink');
const TARGET = narString('target');
const EXECUTABLE = Buffer.concat([narString('executable'), narString('')]);
const CONTENTS = narString('contents');
const ZEROS = Buffer.alloc(8);
const CHUNK = 1 << 20;

/** SHA-256 of the NAR of one regular file or symlink (Nix's hashPath of a non-directory). */
export async function hashFileNar(file: string, st: Stats): Promise<Buffer> {
  const h = createHash('sha256');
  h.update(NAR_MAGIC).update(OPEN).update(TYPE);
  if (st.isSymbolicLink()) {
    h.update(SYMLINK)
      .update(TARGET)
      .update(narString(await fsp.readlink(file, { encoding: 'buffer' })));
  } else {
    h.update(REGULAR);
    if (st.mode & 0o100) h.update(EXECUTABLE);
    h.update(CONTENTS);
    const fh = await fsp.open(file, 'r');
    let size = 0;
    try {
      // The length comes first in the NAR: take it from the open file, then read to the end.
      size = (await fh.stat()).size;
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(size));
      h.update(len);
      const buf = Buffer.allocUnsafe(Math.min(Math.max(size, 1), CHUNK));
      let got = 0;
      for (let n; (n = (await fh.read(buf, 0, buf.length, null)).bytesRead) > 0;) {
        h.update(buf.subarray(0, n));
        got += n;
      }
      if (got !== size) throw Object.assign(new Error(`file '${file}' changed while it was hashed`), { code: 'ECHANGED' });
    } finally {
      await fh.close();
    }
    if (size % 8) h.update(ZEROS.subarray(0, 8 - (size % 8)));
  }
  h.update(CLOSE);
  return h.digest();
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

/** The optimiser of one store: its `.links` directory and the inodes already in it. */
export class StoreOptimiser {
  readonly linksDir: string;
  readonly stats: OptimiseStats = { filesLinked: 0, bytesFreed: 0, blocksFreed: 0 };
  private linksMade = false;

  constructor(
    private readonly realStoreDir: string,
    private readonly onWarning: (m: string) => void = () => {},
  ) {
    this.linksDir = path.join(realStoreDir, '.links');
  }

  /** Nix's loadInodeHash: the inodes of `.links` (files there are already deduplicated). */
  loadInodes(): Set<number> {
    const s = new Set<number>();
    mkdirSync(this.linksDir, { recursive: true, mode: 0o755 });
    this.linksMade = true;
    for (const name of readdirSync(this.linksDir)) {
      try {
        s.add(lstatSync(path.join(this.linksDir, name)).ino);
      } catch {
        /* raced */
      }
    }
    return s;
  }

  /**
   * Optimise one path (file or tree) at its real location (Nix's optimisePath_). `inodes`: those known to
   * be in `.links` (loadInodes() for a whole-store run; empty for one new output, as Nix's optimisePath).
   * Synchronous (one output of a build: no thread-pool round trips).
   */
  async optimisePath(realPath: string, inodes: Set<number> = new Set()): Promise<void> {
    if (!this.linksMade) {
      mkdirSync(this.linksDir, { recursive: true, mode: 0o755 });
      this.linksMade = true;
    }
    const dir = new DirToggle(this.realStoreDir);
    try {
      await this.visit(realPath, await fsp.lstat(realPath), inodes, dir);
    } finally {
      await dir.restore();
    }
  }

  private async visit(p: string, st: Stats, inodes: Set<number>, dirs: DirToggle): Promise<void> {
    if (st.isDirectory()) {
      for (const name of await fsp.readdir(p)) {
        const child = p + '/' + name;
        let cst: Stats;
        try {
          cst = await fsp.lstat(child);
        } catch (e) {
          if (errno(e) === 'ENOENT') continue;
          throw e;
        }
        if (inodes.has(cst.ino)) continue; // already linked
        await this.visit(child, cst, inodes, dirs);
      }
      return;
    }
    if (!st.isFile() && !st.isSymbolicLink()) return;
    if (st.isFile() && st.mode & 0o200) {
      this.onWarning(`skipping suspicious writable file '${p}'`);
      return;
    }
    if (st.nlink > 1 && inodes.has(st.ino)) return;
    const linkPath = path.join(this.linksDir, toNixBase32(await hashFileNar(p, st)));
    let lst: Stats | undefined;
    try {
      lst = await fsp.lstat(linkPath);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
    }
    if (lst && lst.size !== st.size) {
      this.onWarning(`removing corrupted link '${linkPath}'`);
      this.onWarning('There may be more corrupted paths.\nYou should run `nix-store --verify --check-contents --repair` to fix them all');
      try {
        await fsp.unlink(linkPath);
      } catch {
        /* gone */
      }
      lst = undefined;
    }
    if (!lst) {
      try {
        await fsp.link(p, linkPath);
        inodes.add(st.ino);
        return;
      } catch (e) {
        const code = errno(e);
        if (code === 'ENOSPC') return; // a full directory index: this file is not deduplicated
        if (code !== 'EEXIST') throw e; // someone else made it meanwhile: link to theirs
      }
      lst = await fsp.lstat(linkPath);
    }
    if (lst.ino === st.ino) return;
    if (await this.replaceWithLink(p, linkPath, dirs)) {
      this.stats.filesLinked++;
      this.stats.bytesFreed += st.size;
      this.stats.blocksFreed += st.blocks;
    }
  }

  /** Replace `p` by a hard link to `linkPath`, atomically (a temporary link renamed over it). False on EMLINK. */
  private async replaceWithLink(p: string, linkPath: string, dirs: DirToggle): Promise<boolean> {
    await dirs.writable(path.dirname(p));
    const tmp = path.join(this.realStoreDir, `.tmp-link-${process.pid}-${Math.floor(Math.random() * 2 ** 31)}`);
    try {
      await fsp.link(linkPath, tmp);
    } catch (e) {
      if (errno(e) === 'EMLINK') return false; // too many links to one file (empty files): leave it
      throw e;
    }
    try {
      await fsp.rename(tmp, p);
    } catch (e) {
      try {
        await fsp.unlink(tmp);
      } catch {
        /* gone */
      }
      if (errno(e) === 'EMLINK') return false;
      throw e;
    }
    return true;
  }
}

/**
 * The directory whose entries are being replaced, made writable once for all of them (Nix toggles it
 * around each file) and made canonical again (0555, mtime 1) when the walk leaves it. Not the store dir.
 */
class DirToggle {
  private dir: string | undefined;
  private atime = new Date(0);
  constructor(private readonly realStoreDir: string) {}

  async writable(dir: string): Promise<void> {
    if (dir === this.dir || dir === this.realStoreDir) return;
    await this.restore();
    const st = await fsp.lstat(dir);
    await fsp.chmod(dir, (st.mode & 0o7777) | 0o200);
    this.dir = dir;
    this.atime = st.atime;
  }

  async restore(): Promise<void> {
    if (this.dir === undefined) return;
    const dir = this.dir;
    this.dir = undefined;
    await fsp.chmod(dir, 0o555);
    await fsp.lutimes(dir, this.atime, STORE_MTIME);
  }
}
