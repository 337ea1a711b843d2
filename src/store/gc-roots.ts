/**
 * Garbage collector roots, found as Nix 2.8's gc.cc finds them (findRoots, findTempRoots,
 * findRuntimeRoots):
 *   - `<state>/gcroots/` and `<state>/profiles/`, walked recursively: a symlink into the store is a
 *     direct root; a symlink elsewhere is an indirect root (the symlink it points to, when that one points
 *     into the store); a dangling indirect link under `gcroots/auto` is deleted; a regular file names a
 *     store path by its base name;
 *   - `<state>/temproots/<pid>`: NUL-terminated paths of live processes (a file whose flock we can take
 *     belongs to a dead process: it is deleted, "d" written into it, as Nix does);
 *   - runtime roots: what running processes have open, mapped, as executable or working directory, or name
 *     in their environment, under the store (`/proc`), plus the kernel's modprobe/fbsplash/poweroff paths.
 * Each root maps to the set of places it was found (links, `{temp:PID}`, `/proc/...` files).
 */
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, unlinkSync, writeSync, constants as FS } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import type * as FastGlob from 'fast-glob';
import { isStorePath, type StorePath } from './store-path.js';

interface FsExt {
  flockSync(fd: number, flags: 'exnb'): void;
}
const fsExt = createRequire(import.meta.url)('fs-ext') as FsExt;

let fastGlobModule: typeof FastGlob | undefined;
/** fast-glob, loaded by the first walk of the roots: its import costs tens of ms of every command's start-up otherwise. */
function fastGlob(): typeof FastGlob {
  return (fastGlobModule ??= createRequire(import.meta.url)('fast-glob') as typeof FastGlob);
}

/** Store path → where it was found. */
export type Roots = Map<StorePath, Set<string>>;

/** What root finding needs to know about a store. */
export interface RootsContext {
  readonly storeDir: string;
  readonly realStoreDir: string;
  readonly stateDir: string;
  isValid(path: StorePath): boolean;
  /** Nix's printInfo lines ("skipping invalid root …", "removing stale link …"). */
  info?: ((message: string) => void) | undefined;
}

function addRoot(roots: Roots, p: StorePath, where: string): void {
  let s = roots.get(p);
  if (!s) roots.set(p, (s = new Set()));
  s.add(where);
}

/** The store path a file below the store dir belongs to (Nix's toStorePath), or undefined. */
export function storePathOf(target: string, storeDir: string): StorePath | undefined {
  if (!target.startsWith(storeDir + '/')) return undefined;
  const base = target.slice(storeDir.length + 1).split('/', 1)[0]!;
  const p = `${storeDir}/${base}`;
  return isStorePath(p, storeDir) ? p : undefined;
}

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

/** One entry of a roots directory (Nix's findRoots for one file). */
function rootOfEntry(ctx: RootsContext, file: string, kind: 'link' | 'file', roots: Roots): void {
  const found = (link: string, target: string) => {
    const p = storePathOf(target, ctx.storeDir);
    if (!p) return;
    if (ctx.isValid(p)) addRoot(roots, p, link);
    else ctx.info?.(`skipping invalid root from '${link}' to '${target}'`);
  };
  try {
    if (kind === 'file') {
      const p = `${ctx.storeDir}/${path.basename(file)}`;
      if (isStorePath(p, ctx.storeDir) && ctx.isValid(p)) addRoot(roots, p, file);
      return;
    }
    const target = readlinkSync(file);
    if (target.startsWith(ctx.storeDir + '/')) {
      found(file, target);
      return;
    }
    // An indirect root: the link points at a symlink elsewhere (e.g. a result link) that points into the store.
    const abs = path.resolve(path.dirname(file), target);
    let st;
    try {
      st = lstatSync(abs);
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT' && errnoOf(e) !== 'ENOTDIR') throw e;
      if (isInDir(file, path.join(ctx.stateDir, 'gcroots', 'auto'))) {
        ctx.info?.(`removing stale link from '${file}' to '${abs}'`);
        try {
          unlinkSync(file);
        } catch {
          /* gone */
        }
      }
      return;
    }
    if (!st.isSymbolicLink()) return;
    const target2 = readlinkSync(abs);
    if (target2.startsWith(ctx.storeDir + '/')) found(abs, target2);
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'EACCES' || code === 'ENOENT' || code === 'ENOTDIR') ctx.info?.(`cannot read potential root '${file}'`);
    else throw e;
  }
}

function isInDir(p: string, dir: string): boolean {
  return p.startsWith(dir + '/');
}

/** Roots under one directory (gcroots or profiles), walked with fast-glob (symlinked directories are roots, not walked). */
export function findRootsIn(ctx: RootsContext, dir: string, roots: Roots): void {
  let entries: FastGlob.Entry[];
  try {
    entries = fastGlob().sync('**', {
      cwd: dir,
      dot: true,
      onlyFiles: false,
      followSymbolicLinks: false,
      objectMode: true,
      absolute: true,
      suppressErrors: true,
    });
  } catch (e) {
    if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'EACCES') return;
    throw e;
  }
  for (const e of entries) {
    if (e.dirent.isSymbolicLink()) rootOfEntry(ctx, e.path, 'link', roots);
    else if (e.dirent.isFile()) rootOfEntry(ctx, e.path, 'file', roots);
  }
}

/** Nix's findRootsNoTemp: gcroots, profiles and (unless disabled) runtime roots. */
export function findPermanentRoots(ctx: RootsContext, opts: { runtime?: boolean; censor?: boolean } = {}): Roots {
  const roots: Roots = new Map();
  findRootsIn(ctx, path.join(ctx.stateDir, 'gcroots'), roots);
  findRootsIn(ctx, path.join(ctx.stateDir, 'profiles'), roots);
  if (opts.runtime ?? true) findRuntimeRoots(ctx, roots, opts.censor ?? false);
  return roots;
}

function tryExclusive(fd: number): boolean {
  try {
    fsExt.flockSync(fd, 'exnb');
    return true;
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw e;
  }
}

/**
 * Temporary roots of live processes (Nix's findTempRoots). A roots file whose lock we can take belongs to
 * a dead process: it is removed (unlinked, then "d" written into it, so a process that opened it
 * meanwhile starts over).
 */
export function findTempRoots(ctx: RootsContext, roots: Roots = new Map()): Roots {
  const dir = path.join(ctx.stateDir, 'temproots');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return roots;
    throw e;
  }
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const file = path.join(dir, name);
    let fd: number;
    try {
      fd = openSync(file, FS.O_RDWR);
    } catch (e) {
      if (errnoOf(e) === 'ENOENT') continue;
      throw e;
    }
    try {
      if (tryExclusive(fd)) {
        ctx.info?.(`removing stale temporary roots file '${file}'`);
        try {
          unlinkSync(file);
        } catch {
          /* gone */
        }
        writeSync(fd, 'd');
        continue;
      }
      const text = readFileSync(fd, 'latin1');
      let pos = 0;
      for (let end = text.indexOf('\0'); end >= 0; pos = end + 1, end = text.indexOf('\0', pos)) {
        const p = text.slice(pos, end);
        if (isStorePath(p, ctx.storeDir)) addRoot(roots, p, `{temp:${name}}`);
      }
    } finally {
      closeSync(fd);
    }
  }
  return roots;
}

/** `/proc/<pid>/...` link target, or undefined when it cannot be read (process gone, not ours). */
function readProcLink(file: string): string | undefined {
  try {
    const t = readlinkSync(file);
    return t.startsWith('/') ? t : undefined;
  } catch {
    return undefined;
  }
}

function readProcFile(file: string): string | undefined {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return undefined;
  }
}

const MAP_LINE = /^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\/\S+)\s*$/;

function escapeRegExp(s: string): string {
  return s.replace(/[.^$\\*+?()[\]{}|]/g, '\\$&');
}

/**
 * Runtime roots (Nix's findRuntimeRoots on Linux): for every process, its exe, cwd, open files, mapped
 * files and store paths in its environment; and the kernel's helper paths. Only store paths that are valid
 * count. Files below the real store dir of a chroot store count too (Nix only sees the logical dir).
 */
export function findRuntimeRoots(ctx: RootsContext, roots: Roots, censor = false): void {
  const unchecked = new Map<string, Set<string>>();
  const note = (target: string, where: string) => {
    let s = unchecked.get(target);
    if (!s) unchecked.set(target, (s = new Set()));
    s.add(where);
  };
  const envRegexes = [...new Set([ctx.storeDir, ctx.realStoreDir])].map((d) => new RegExp(escapeRegExp(d) + '/[0-9a-z]+[0-9a-zA-Z+\\-._?=]*', 'g'));
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    pids = [];
  }
  for (const pid of pids) {
    for (const l of ['exe', 'cwd']) {
      const t = readProcLink(`/proc/${pid}/${l}`);
      if (t) note(t, `/proc/${pid}/${l}`);
    }
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      const t = readProcLink(`/proc/${pid}/fd/${fd}`);
      if (t) note(t, `/proc/${pid}/fd/${fd}`);
    }
    const maps = readProcFile(`/proc/${pid}/maps`);
    if (maps === undefined) continue;
    for (const line of maps.split('\n')) {
      const m = MAP_LINE.exec(line);
      if (m) note(m[1]!, `/proc/${pid}/maps`);
    }
    const env = readProcFile(`/proc/${pid}/environ`);
    if (env === undefined) continue;
    for (const re of envRegexes) for (const m of env.matchAll(re)) note(m[0], `/proc/${pid}/environ`);
  }
  for (const f of ['/proc/sys/kernel/modprobe', '/proc/sys/kernel/fbsplash', '/proc/sys/kernel/poweroff_cmd']) {
    const t = readProcFile(f);
    if (t !== undefined) note(t, f);
  }
  for (const [target, links] of unchecked) {
    let p = storePathOf(target, ctx.storeDir);
    if (!p && ctx.realStoreDir !== ctx.storeDir && target.startsWith(ctx.realStoreDir + '/')) {
      p = storePathOf(ctx.storeDir + target.slice(ctx.realStoreDir.length), ctx.storeDir);
    }
    if (!p || !ctx.isValid(p)) continue;
    if (censor) addRoot(roots, p, '{censored}');
    else for (const l of links) addRoot(roots, p, l);
  }
}
