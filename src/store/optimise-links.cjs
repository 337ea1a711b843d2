// Store optimisation as Nix 2.8's optimise-store.cc does it, in synchronous calls (see optimise.ts for
// what it does and why; this is the part that touches the file system). Plain JavaScript that imports
// nothing of ours: optimise.ts requires it for one path at a time (auto-optimise-store), and
// optimise-thread.cjs runs it on worker threads for a whole store (it runs the same from src/ and dist/).
// Per file: one lstat, open/read/close to hash it, one lstat of its .links entry, then one link to make
// that entry or, when it is another identical file, one link to a temporary name renamed over the file.
'use strict';
const fs = require('node:fs');
const { createHash, hash } = require('node:crypto');

/** A NAR string: 64-bit little-endian length, the bytes, zeros up to a multiple of 8. */
function narString(s) {
  const b = Buffer.from(s);
  const out = Buffer.alloc(8 + Math.ceil(b.length / 8) * 8);
  out.writeUInt32LE(b.length, 0);
  b.copy(out, 8);
  return out;
}
const HEAD = Buffer.concat(['nix-archive-1', '(', 'type'].map(narString));
const REGULAR = Buffer.concat(['regular', 'contents'].map(narString));
const EXECUTABLE = Buffer.concat(['regular', 'executable', '', 'contents'].map(narString));
const SYMLINK = Buffer.concat(['symlink', 'target'].map(narString));
const CLOSE = narString(')');
const ZEROS = Buffer.alloc(8);
const CHUNK = 1 << 20;
// Replaced files whose closing (the freeing of their inodes) may be pending at once, per optimiser.
const MAX_FREEING = 256;
// How often a native optimiser's drain() looks whether its replaced files are closed.
const DRAIN_POLL_MS = 2;
// `.links` entries an optimiser remembers (inode and size), so that a later duplicate needs no lstat of its entry.
const MAX_KNOWN = 1 << 16;
// Root may replace entries of a read-only directory: its mode is left alone unless that fails.
const ROOT = process.geteuid?.() === 0;
const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** Nix's base-32 (least significant 5 bits last). */
function nixBase32(bytes) {
  let out = '';
  for (let n = Math.ceil((bytes.length * 8) / 5) - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    out += NIX32[((bytes[i] >> j) | (i + 1 < bytes.length ? bytes[i + 1] << (8 - j) : 0)) & 0x1f];
  }
  return out;
}

// The NAR of a file of up to SMALL bytes is put together here and hashed in one call; a larger file's
// contents are read in CHUNK pieces into `chunk`.
const SMALL = 64 * 1024;
const nar = Buffer.alloc(HEAD.length + EXECUTABLE.length + 8 + SMALL + 8 + CLOSE.length);
HEAD.copy(nar, 0);
let chunk;

/** Read exactly `size` bytes of `fd` into `buf` at `off`, or of a larger file to `h` (an ECHANGED error if it is shorter). */
function readContents(fd, file, size, buf, off, h) {
  for (let got = 0; got < size;) {
    const n = fs.readSync(fd, buf, off, Math.min(size - got, buf.length - off), null);
    if (n === 0) throw Object.assign(new Error(`file '${file}' changed while it was hashed`), { code: 'ECHANGED', path: file });
    if (h) h.update(buf.subarray(off, off + n));
    else off += n;
    got += n;
  }
}

/** SHA-256 of the NAR of a symlink (Nix's hashPath). */
function hashSymlinkNar(file) {
  const target = narString(fs.readlinkSync(file, { encoding: 'buffer' }));
  return createHash('sha256').update(HEAD).update(SYMLINK).update(target).update(CLOSE).digest();
}

/** SHA-256 of the NAR of a regular file (Nix's hashPath) read from `fd` (-1 when it is empty), with the size and mode lstat gave. */
function hashFileNar(file, fd, st) {
  const size = st.size;
  let off = HEAD.length + (st.mode & 0o100 ? EXECUTABLE : REGULAR).copy(nar, HEAD.length);
  nar.writeUInt32LE(size % 2 ** 32, off);
  nar.writeUInt32LE(Math.floor(size / 2 ** 32), off + 4);
  off += 8;
  const h = size > SMALL ? createHash('sha256').update(nar.subarray(0, off)) : undefined;
  if (h) readContents(fd, file, size, (chunk ??= Buffer.allocUnsafe(CHUNK)), 0, h);
  else if (size > 0) readContents(fd, file, size, nar, off, undefined);
  const pad = (8 - (size % 8)) % 8;
  if (h) return h.update(ZEROS.subarray(0, pad)).update(CLOSE).digest();
  off += size;
  nar.fill(0, off, off + pad);
  off += pad;
  off += CLOSE.copy(nar, off);
  return hash('sha256', nar.subarray(0, off), 'buffer');
}

/** Nix's loadInodeHash: the inodes of `.links` (made if missing); files with these are already deduplicated. */
function loadInodes(linksDir) {
  fs.mkdirSync(linksDir, { recursive: true, mode: 0o755 });
  const s = new Set();
  for (const name of fs.readdirSync(linksDir)) {
    const st = fs.lstatSync(linksDir + '/' + name, { throwIfNoEntry: false });
    if (st) s.add(st.ino);
  }
  return s;
}

/** The freeing of replaced files: with `deferFrees`, their last descriptors are closed in the thread pool. */
class Frees {
  constructor(deferFrees) {
    this.deferFrees = deferFrees;
    this.freeing = 0;
    this.drained = [];
  }

  /** Close the last descriptor of a replaced file: in the thread pool (not waited for) unless too many are pending. */
  free(fd) {
    if (!this.deferFrees || this.freeing >= MAX_FREEING) return fs.closeSync(fd);
    this.freeing++;
    fs.close(fd, () => {
      if (--this.freeing > 0) return;
      for (const resolve of this.drained.splice(0)) resolve();
    });
  }

  /** Resolves when the replaced files' descriptors are closed (their inodes freed). */
  drain() {
    return this.freeing === 0 ? Promise.resolve() : new Promise((resolve) => this.drained.push(resolve));
  }
}

/**
 * The optimiser of one store for one thread: `inodes` (those known to be in `.links`; added to as files
 * are linked there), `stats` (Nix's OptimiseStats, added to), `warn(message)`.
 */
class Optimiser extends Frees {
  constructor(realStoreDir, inodes, warn, deferFrees = false) {
    super(deferFrees);
    this.realStoreDir = realStoreDir;
    this.linksDir = realStoreDir + '/.links';
    this.inodes = inodes;
    this.warn = warn;
    this.stats = { filesLinked: 0, bytesFreed: 0, blocksFreed: 0 };
    this.known = new Map();
    // The directory whose entries are being replaced (its lstat; whether it was made writable), and the
    // directory of the files being visited (with its lstat).
    this.openDir = undefined;
    this.openDirSt = undefined;
    this.openDirChmod = false;
    this.dir = realStoreDir;
    this.dirSt = undefined;
  }

  /** Optimise one store path (file or tree) at its real location (Nix's optimisePath_). */
  optimisePath(realPath) {
    this.dir = this.realStoreDir;
    try {
      this.visit(realPath, fs.lstatSync(realPath));
    } finally {
      this.restoreDir();
    }
  }

  visit(p, st) {
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(p)) {
        const child = p + '/' + name;
        const cst = fs.lstatSync(child, { throwIfNoEntry: false });
        if (!cst || this.inodes.has(cst.ino)) continue;
        this.dir = p; // (again after a subdirectory)
        this.dirSt = st;
        this.visit(child, cst);
      }
      return;
    }
    if (!st.isFile() && !st.isSymbolicLink()) return;
    if (st.isFile() && st.mode & 0o200) {
      this.warn(`skipping suspicious writable file '${p}'`);
      return;
    }
    if (st.nlink > 1 && this.inodes.has(st.ino)) return; // already linked
    if (st.isSymbolicLink()) {
      this.dedupe(p, st, hashSymlinkNar(p));
      return;
    }
    // The file stays open until it is replaced, so that freeing its inode (a synchronous discard on some
    // file systems) happens at the close, which need not wait.
    const fd = st.size > 0 ? fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW) : -1;
    let replaced = false;
    try {
      replaced = this.dedupe(p, st, hashFileNar(p, fd, st));
    } finally {
      if (fd >= 0) {
        if (replaced) this.free(fd);
        else fs.closeSync(fd);
      }
    }
  }

  /** Link `p` (with NAR hash `digest`) into `.links`, or replace it by the identical file there; true when replaced. */
  dedupe(p, st, digest) {
    const linkPath = this.linksDir + '/' + nixBase32(digest);
    for (;;) {
      if (!this.linkInto(p, st, linkPath)) return false;
      const replaced = this.replaceWithLink(p, linkPath);
      if (replaced === undefined) {
        this.known.delete(linkPath); // the entry went away meanwhile: look again
        continue;
      }
      if (!replaced) return false;
      this.stats.filesLinked++;
      this.stats.bytesFreed += st.size;
      this.stats.blocksFreed += st.blocks;
      return true;
    }
  }

  /** Remember the inode and size of a `.links` entry. */
  know(linkPath, ino, size) {
    if (this.known.size >= MAX_KNOWN) this.known.clear();
    this.known.set(linkPath, { ino, size });
  }

  /** Forget the inodes and `.links` entries seen so far (a new optimisePath of Nix's starts with none). */
  forget() {
    this.inodes.clear();
    this.known.clear();
  }

  /** Make `linkPath` a link to `p` if there is none; true when it is another file that `p` should become. */
  linkInto(p, st, linkPath) {
    const k = this.known.get(linkPath);
    if (k !== undefined && k.ino === st.ino) return false;
    if (k !== undefined && k.size === st.size) return true;
    for (;;) {
      const lst = fs.lstatSync(linkPath, { throwIfNoEntry: false });
      if (!lst) {
        try {
          fs.linkSync(p, linkPath);
          this.inodes.add(st.ino);
          this.know(linkPath, st.ino, st.size);
          return false;
        } catch (e) {
          if (e.code === 'ENOSPC') return false; // a full directory index: this file is not deduplicated
          if (e.code !== 'EEXIST') throw e;
          continue; // made meanwhile by another process: look at it
        }
      }
      this.know(linkPath, lst.ino, lst.size);
      if (lst.ino === st.ino) return false;
      if (lst.size === st.size) return true;
      this.warn(`removing corrupted link '${linkPath}'`);
      this.warn('There may be more corrupted paths.\nYou should run `nix-store --verify --check-contents --repair` to fix them all');
      try {
        fs.unlinkSync(linkPath);
      } catch {
        /* gone */
      }
    }
  }

  /**
   * Replace `p` (in this.dir) by a hard link to `linkPath`, atomically (a temporary link renamed over it).
   * False on EMLINK; undefined when `linkPath` is gone.
   */
  replaceWithLink(p, linkPath) {
    this.openDirOf(this.dir, this.dirSt);
    let tmp;
    for (;;) {
      tmp = `${this.realStoreDir}/.tmp-link-${process.pid}-${Math.floor(Math.random() * 2 ** 31)}`;
      try {
        fs.linkSync(linkPath, tmp);
        break;
      } catch (e) {
        if (e.code === 'EMLINK') return false; // too many links to one file (empty files): leave it
        if (e.code === 'ENOENT') return undefined;
        if (e.code !== 'EEXIST') throw e;
      }
    }
    try {
      try {
        fs.renameSync(tmp, p);
      } catch (e) {
        if (e.code !== 'EACCES' || !this.makeWritable()) throw e;
        fs.renameSync(tmp, p);
      }
    } catch (e) {
      try {
        fs.unlinkSync(tmp);
      } catch {
        /* gone */
      }
      if (e.code === 'EMLINK') return false;
      throw e;
    }
    return true;
  }

  /**
   * Get `dir` (with lstat `st`; not the store dir) ready for its entries to be replaced, once for all of
   * them: made writable unless this is root.
   */
  openDirOf(dir, st) {
    if (dir === this.openDir) return;
    this.restoreDir();
    if (dir === this.realStoreDir) return;
    this.openDir = dir;
    this.openDirSt = st;
    this.openDirChmod = false;
    if (!ROOT) this.makeWritable();
  }

  /** Make the open directory writable; false if it is the store dir or already made so. */
  makeWritable() {
    if (this.openDir === undefined || this.openDirChmod) return false;
    fs.chmodSync(this.openDir, (this.openDirSt.mode & 0o7777) | 0o200);
    this.openDirChmod = true;
    return true;
  }

  /** Make the open directory canonical again (read-only, mtime 1), as Nix's MakeReadOnly does. */
  restoreDir() {
    const dir = this.openDir;
    if (dir === undefined) return;
    this.openDir = undefined;
    const mode = this.openDirSt.mode & 0o7777;
    if (this.openDirChmod || (mode !== 0o444 && mode !== 0o555)) fs.chmodSync(dir, 0o444 | (mode & 0o100 ? 0o111 : 0));
    fs.lutimesSync(dir, this.openDirSt.atimeMs / 1000, 1);
  }
}

/**
 * The same optimiser on the native addon (src/platform/optimise-addon.c, compiled by the platform layer):
 * the walk, hashing and linking of a store path in one call; with `deferFrees`, replaced files are closed
 * by the addon's own threads. `addonPath`: the compiled addon; `inodes`: an iterable of those known to be
 * in `.links` (copied).
 */
class NativeOptimiser {
  constructor(addonPath, realStoreDir, inodes, warn, deferFrees = false) {
    this.addon = require(addonPath);
    this.handle = this.addon.create(realStoreDir, Float64Array.from(inodes), deferFrees);
    this.warn = warn;
  }

  get stats() {
    const [filesLinked, bytesFreed, blocksFreed] = this.addon.stats(this.handle);
    return { filesLinked, bytesFreed, blocksFreed };
  }

  optimisePath(realPath) {
    const [code, message, warnings] = this.addon.optimisePath(this.handle, realPath);
    if (warnings) for (const w of warnings.slice(0, -1).split('\0')) this.warn(w);
    if (code) throw Object.assign(new Error(message), { code });
  }

  /** Resolves when the replaced files are closed (their inodes freed): looked at every DRAIN_POLL_MS. */
  drain() {
    return new Promise((resolve) => {
      const poll = () => (this.addon.pending(this.handle) === 0 ? resolve() : setTimeout(poll, DRAIN_POLL_MS));
      poll();
    });
  }

  forget() {
    this.addon.forget(this.handle);
  }
}

/**
 * Nix's optimisePath in repair mode checks a `.links` entry's contents before linking to it: an entry of
 * the same size as the file but another NAR hash than its name is corrupted, and is removed with Nix's
 * warnings (the optimiser then links the file in its place). Entries of another size are the optimiser's
 * own check, in any mode.
 */
function removeCorruptLinks(realStoreDir, realPath, warn) {
  const visit = (p, st) => {
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(p)) {
        const cst = fs.lstatSync(p + '/' + name, { throwIfNoEntry: false });
        if (cst) visit(p + '/' + name, cst);
      }
      return;
    }
    if (!(st.isFile() && !(st.mode & 0o200)) && !st.isSymbolicLink()) return;
    const digest = st.isSymbolicLink() ? hashSymlinkNar(p) : hashOf(p, st);
    const linkPath = realStoreDir + '/.links/' + nixBase32(digest);
    const lst = fs.lstatSync(linkPath, { throwIfNoEntry: false });
    if (!lst || lst.ino === st.ino || lst.size !== st.size) return;
    const got = lst.isSymbolicLink() ? hashSymlinkNar(linkPath) : hashOf(linkPath, lst);
    if (got.equals(digest)) return;
    warn(`removing corrupted link '${linkPath}'`);
    warn('There may be more corrupted paths.\nYou should run `nix-store --verify --check-contents --repair` to fix them all');
    fs.rmSync(linkPath, { force: true });
  };
  const hashOf = (file, st) => {
    const fd = st.size > 0 ? fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW) : -1;
    try {
      return hashFileNar(file, fd, st);
    } finally {
      if (fd >= 0) fs.closeSync(fd);
    }
  };
  visit(realPath, fs.lstatSync(realPath));
}

module.exports = { NativeOptimiser, Optimiser, loadInodes, nixBase32, removeCorruptLinks };
