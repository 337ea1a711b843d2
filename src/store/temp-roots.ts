/**
 * Temporary GC roots, as Nix 2.8 keeps them, so that a real `nix-store --gc` on the same store never
 * deletes a path this process is adding or using:
 *   - `<state>/temproots/<pid>`: the process's roots file, exclusively flock-ed while the process lives
 *     (the collector treats an unlocked file as stale), holding logical store paths each followed by NUL;
 *   - before appending, take `<state>/gc.lock` shared without waiting; if that fails a collector is
 *     running, so tell it directly over `<state>/gc-socket/socket` (send `path\n`, wait for `1`).
 * One roots file per process and state dir, shared by every store object of the process.
 */
import { closeSync, fstatSync, ftruncateSync, openSync, unlinkSync, writeSync, existsSync, constants as FS } from 'node:fs';
import { createRequire } from 'node:module';
import type * as net from 'node:net';
import * as path from 'node:path';
import { StoreError, storeWriteError } from './errors.js';
import type { StorePath } from './store-path.js';
import { TurnWave } from './turn-wave.js';

interface FsExt {
  flockSync(fd: number, flags: 'sh' | 'ex' | 'shnb' | 'exnb' | 'un'): void;
}
const fsExt = createRequire(import.meta.url)('fs-ext') as FsExt;

function tryFlock(fd: number, how: 'shnb' | 'exnb'): boolean {
  try {
    fsExt.flockSync(fd, how);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw e;
  }
}

interface RootsFile {
  stateDir: string;
  fd: number;
  file: string;
  users: number;
  roots: Set<StorePath>;
  socket: net.Socket | undefined;
  gcLockFd: number | undefined;
  /**
   * The last exchange with a running collector (see TempRoots.tellCollector): one at a time over the socket,
   * since the collector's `1` names no path.
   */
  telling: Promise<unknown>;
  /** Roots asked for in this run of microtasks, recorded together at its end (see TempRoots.addAll). */
  wave: TurnWave<StorePath, void>;
}

const files = new Map<string, RootsFile>();

/**
 * Append roots to the roots file, in one write. A failed write (a full disk) is a StoreError naming the
 * file; a short one is cut off again, so that the next root does not run into a partial name.
 */
function appendRoots(rf: RootsFile, storePaths: readonly StorePath[]): void {
  const rec = Buffer.from(storePaths.join('\0') + '\0');
  try {
    const n = writeSync(rf.fd, rec);
    if (n !== rec.length) {
      ftruncateSync(rf.fd, fstatSync(rf.fd).size - n);
      throw Object.assign(new Error('no space left on device (short write)'), { code: 'ENOSPC' });
    }
  } catch (e) {
    const what = storePaths.length === 1 ? `the temporary root '${storePaths[0]}'` : `${storePaths.length} temporary roots`;
    throw storeWriteError(e, `recording ${what} in`, rf.file);
  }
  for (const p of storePaths) rf.roots.add(p);
}

/** A handle on the process's temp roots file of one state directory. */
export class TempRoots {
  private closed = false;
  private constructor(private readonly rf: RootsFile) {}

  /** Open (create) the roots file of this process under `stateDir`. */
  static open(stateDir: string): TempRoots {
    let rf = files.get(stateDir);
    if (!rf) {
      const file = path.join(stateDir, 'temproots', String(process.pid));
      let fd: number;
      for (;;) {
        // A file with our pid can only be left over from a dead process with the same pid.
        if (existsSync(file)) {
          try {
            unlinkSync(file);
          } catch {
            /* raced */
          }
        }
        try {
          fd = openSync(file, FS.O_RDWR | FS.O_CREAT, 0o600);
        } catch (e) {
          throw storeWriteError(e, 'creating the temporary roots file', file);
        }
        if (!tryFlock(fd, 'exnb')) {
          closeSync(fd);
          throw new StoreError('temp-roots-failed', `the temporary roots file '${file}' is locked by another process`);
        }
        // The collector deletes stale files (writing nothing); if it removed ours before we locked it, retry.
        if (fstatSync(fd).size === 0 && existsSync(file)) break;
        closeSync(fd);
      }
      const opened: RootsFile = {
        stateDir,
        fd,
        file,
        users: 0,
        roots: new Set(),
        socket: undefined,
        gcLockFd: undefined,
        telling: Promise.resolve(),
        // (A path recorded since it was asked for, by a wave still telling a collector, is not written again.)
        wave: new TurnWave(
          (paths) =>
            record(
              opened,
              [...new Set(paths)].filter((p) => !opened.roots.has(p)),
            ),
          queueMicrotask,
        ),
      };
      files.set(stateDir, (rf = opened));
    }
    rf.users++;
    return new TempRoots(rf);
  }

  /** Make `storePath` (logical) a temporary root for the lifetime of this process's store objects. */
  add(storePath: StorePath): Promise<void> {
    return this.addAll([storePath]);
  }

  /**
   * Make every path of `storePaths` a temporary root, as `add` does for each; resolves once they are
   * recorded. The roots asked for until the first asker's batch comes to its turn in the microtask queue
   * (goals that start together ask one after the other in it) are recorded together: while no collector
   * runs, one write under one shared hold of the GC lock, which keeps a collector from starting until all
   * of them are in the file.
   */
  addAll(storePaths: Iterable<StorePath>): Promise<void> {
    if (this.closed) return Promise.reject(new StoreError('store-closed', 'temporary roots used after close'));
    const rf = this.rf;
    let fresh: StorePath[] | undefined;
    for (const p of storePaths) if (!rf.roots.has(p)) (fresh ??= []).push(p);
    return fresh ? rf.wave.addAll(fresh) : Promise.resolve();
  }

  /** Release this handle; the last one of the process deletes the roots file, as Nix does on exit. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const rf = this.rf;
    if (--rf.users > 0) return;
    files.delete(rf.stateDir);
    rf.socket?.destroy();
    try {
      unlinkSync(rf.file);
    } catch {
      /* gone */
    }
    closeSync(rf.fd);
    if (rf.gcLockFd !== undefined) closeSync(rf.gcLockFd);
  }
}

async function record(rf: RootsFile, fresh: readonly StorePath[]): Promise<void> {
  if (fresh.length === 0) return;
  if (files.get(rf.stateDir) !== rf) throw new StoreError('store-closed', 'temporary roots used after close');
  if (rf.gcLockFd === undefined) {
    // (Its name made once, not at each batch of roots: a path.join is slow in code not yet optimised.)
    const gcLock = path.join(rf.stateDir, 'gc.lock');
    try {
      rf.gcLockFd = openSync(gcLock, FS.O_RDWR | FS.O_CREAT, 0o600);
    } catch (e) {
      throw storeWriteError(e, 'opening the garbage collector lock', gcLock);
    }
  }
  for (;;) {
    if (tryFlock(rf.gcLockFd, 'shnb')) {
      try {
        appendRoots(rf, fresh);
      } finally {
        fsExt.flockSync(rf.gcLockFd, 'un');
      }
      return;
    }
    // A collector is running: tell it each root, then also record them in the file.
    let told = true;
    for (const p of fresh) {
      told = await tellCollector(rf, p);
      if (!told) break;
    }
    if (told) {
      appendRoots(rf, fresh);
      return;
    }
    await new Promise((r) => setTimeout(r, 10)); // the collector went away: retry with the lock
  }
}

/**
 * Send `path\n` to the running collector and wait for its `1`. False if it is gone. Exchanges wait for the
 * one before (a batch still telling the collector while a later one starts): a `1` acknowledges one root,
 * and only the root whose exchange it ends may count as held.
 */
function tellCollector(rf: RootsFile, storePath: StorePath): Promise<boolean> {
  const told = rf.telling.then(() => exchange(rf, storePath));
  rf.telling = told.catch(() => {});
  return told;
}

async function exchange(rf: RootsFile, storePath: StorePath): Promise<boolean> {
  const socketPath = path.join(rf.stateDir, 'gc-socket', 'socket');
  if (!rf.socket || rf.socket.destroyed) {
    // (node:net is loaded only here: while no collector runs, nothing is sent to one.)
    const { createConnection } = await import('node:net');
    rf.socket = await new Promise<net.Socket | undefined>((resolve) => {
      const s = createConnection(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(undefined));
    });
    if (!rf.socket) return false;
    rf.socket.unref();
  }
  const s = rf.socket;
  return new Promise<boolean>((resolve) => {
    const done = (ok: boolean) => {
      s.off('data', onData);
      s.off('close', onClose);
      s.off('error', onClose);
      if (!ok) {
        s.destroy();
        rf.socket = undefined;
      }
      resolve(ok);
    };
    const onData = (b: Buffer) => done(b.length > 0 && b[0] === 0x31);
    const onClose = () => done(false);
    s.on('data', onData);
    s.once('close', onClose);
    s.once('error', onClose);
    s.write(storePath + '\n');
  });
}
