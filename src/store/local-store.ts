/**
 * LocalStore: a Nix 2.8 store on disk, readable and writable by real Nix.
 *
 * Layout (chroot store, `LocalStore.open({ root })`): logical store dir `/nix/store`, contents in
 * `<root>/nix/store`, database `<root>/nix/var/nix/db/db.sqlite` (schema version 10, see schema.ts),
 * build logs in `<root>/nix/var/log/nix/drvs/<2 chars>/<rest>`. A plain store
 * (`LocalStore.open({ storeDir, stateDir, logDir })`) keeps its contents where its logical paths say.
 *
 * Invariants: a path is valid only when its contents are complete, canonicalised and in place, and all
 * of its references are valid; registration happens in one SQLite transaction. Contents are written
 * under a temporary directory `<real store>/<hash>-realise-tmp` (a temporary root) flock-ed by its writer, renamed into place
 * under the path's lock (`<real path>.lock`, as Nix), and only then registered. Leftover temporary
 * directories of dead writers are removed when a store is opened.
 */
import { checkedStream, type Step } from './checked-stream.js';
import type Database from 'better-sqlite3';
import {
  closeSync,
  constants as FS,
  createReadStream,
  existsSync,
  fstatSync,
  lstatSync,
  open as openCb,
  openSync,
  promises as fsp,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { homedir, userInfo } from 'node:os';
import * as path from 'node:path';
import { canonicalisePathMetaData, deleteTree, inheritsXattrs, movePathSync } from './canonicalise.js';
import { mkdirOnPool } from './pool-fs.js';
import { strerror, systemErrorMessage } from './system-error.js';
import { asStoreWriteError, InvalidStorePathError, StoreError } from './errors.js';
import { Hash, HashModulo, HashSink, isNixBase32, toNixBase32, type HashAlgorithm } from './hash.js';
import {
  HeldLocks,
  type LockWaitOptions,
  lockPlainFile,
  lockStorePaths,
  openStorePathLockFiles,
  OpenedLockFiles,
  removeStaleLockFile,
  tryFlockFd,
  tryLockStorePaths,
} from './locks.js';
import { dumpPath, expectBatchedRestores, narOfRegularFile, RegularFileContentHasher, restorePath, streamOf } from './nar.js';
import {
  BUSY_TIMEOUT_MS,
  CA_SCHEMA_STATEMENTS,
  NIX_CA_SCHEMA_VERSION,
  NIX_SCHEMA_VERSION,
  RESERVED_SIZE,
  SCHEMA_STATEMENTS,
  WAL_AUTOCHECKPOINT,
} from './schema.js';
import type { AddToStoreOptions, NarSource, OpenedLocks, PathInfo, PathLocks, Realisation, Store } from './store-api.js';
import { computeTextPath, DEFAULT_STORE_DIR, parseStorePath, storePathBase, storePathHashPart, type StorePath } from './store-path.js';
import { compressBzip2, compressBzip2Async, decompressBzip2 } from './bzip2.js';
import { TempRoots } from './temp-roots.js';
import { openDatabase } from './sqlite.js';
import { derivationOutputPaths } from './drv-outputs.js';
import { AutoGc, type AutoGcSettings } from './auto-gc.js';
import { collectGarbage, findRoots, type GcOptions, type GcResult } from './gc.js';
import { optimiseStorePaths, StoreOptimiser, type OptimiseOptions, type OptimiseStats } from './optimise.js';

/** Where the store lives. Defaults follow Nix's LocalFSStore settings. */
export interface LocalStoreOptions {
  /** Root of a chroot store: everything lives below it, the logical store dir stays `storeDir`. */
  readonly root?: string | undefined;
  /** Logical store directory (the prefix of every store path). @default '/nix/store' */
  readonly storeDir?: string | undefined;
  /** State directory holding `db/`. @default `<root>/nix/var/nix`, or `/nix/var/nix` without a root */
  readonly stateDir?: string | undefined;
  /** Log directory holding `drvs/`. @default `<root>/nix/var/log/nix`, or `/nix/var/log/nix` without a root */
  readonly logDir?: string | undefined;
  /** Physical store directory. @default `<root>/nix/store` (as Nix 2.8, whatever `storeDir` is), or `storeDir` without a root */
  readonly realStoreDir?: string | undefined;
  /** Cancels waiting for the database's big lock. */
  readonly signal?: AbortSignal | undefined;
  /** Write build logs bzip2-compressed (`<log>.bz2`), as Nix's `compress-build-log`. @default true */
  readonly compressBuildLog?: boolean | undefined;
  /**
   * Extended attributes left on store files when canonicalising (Nix's `ignored-acls`); every other one is
   * removed. @default `['security.selinux', 'system.nfs4_acl', 'security.csm']`
   */
  readonly ignoredAcls?: readonly string[] | undefined;
}

/** computeClosure's references cache is dropped past this many paths (Nix's path info cache holds 65,536). */
const REFS_CACHE_MAX = 65_536;
const NO_REFERENCES: readonly StorePath[] = Object.freeze([]);
/** computeClosure walks this many steps into paths it has not seen before, then queries the rest recursively. */
const WALK_STEPS = 3;
/** Build logs up to this size are compressed synchronously (well within one block of compressBzip2Async). */
const SYNC_LOG_COMPRESSION = 64 * 1024;

/**
 * `mkdir -p`, one level at a time. Node's recursive mkdir never returns for a path under a directory
 * where mkdir fails with ENOENT although the parent exists (e.g. `/proc/x/y`); this reports the error.
 */
export async function mkdirs(dir: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let cur = path.resolve(dir); ; cur = path.dirname(cur)) {
    try {
      if ((await fsp.stat(cur)).isDirectory()) break;
      throw Object.assign(new Error(`'${cur}' is not a directory`), { code: 'ENOTDIR' });
    } catch (e) {
      // As Nix's createDirs: a path that cannot be looked at (missing, or under a file) is made from its parent.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && !(code === 'ENOTDIR' && (e as NodeJS.ErrnoException).syscall === 'stat')) throw e;
      missing.push(cur);
      if (path.dirname(cur) === cur) break;
    }
  }
  for (const d of missing.reverse()) {
    try {
      await fsp.mkdir(d, { mode });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
}

/** `<hash>-<name>.lock`: a store path's lock file. */
const STORE_LOCK_FILE = /^[0-9a-df-np-sv-z]{32}-[^/]+\.lock$/;
/** realise's sandbox debris in the store directory, with the pid of the process that made it. */
const DEBRIS_OF_PID = /^(?:[0-9a-df-np-sv-z]{32}-realise-chroot-(\d+)-[a-z0-9]+|.+\.chroot\.trash-(\d+)-[a-z0-9]+)$/;

/** Whether a process with this pid exists (in our pid namespace); EPERM means it does, as another user's. */
function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** NARs up to this size are restored in one batch on the restore thread (nar.ts, RestoreOptions.batch). */
export const BATCH_RESTORE_MAX = 16 * 1024 * 1024;

/** Resolved locations of a local store. */
export interface LocalStoreLayout {
  readonly root: string | undefined;
  readonly storeDir: string;
  readonly realStoreDir: string;
  readonly stateDir: string;
  readonly dbDir: string;
  readonly logDir: string;
}

function checkAbsolute(what: string, p: string): string {
  if (!path.isAbsolute(p)) {
    throw new StoreError('bad-store-config', `${what} '${p}' is not an absolute path`, { hint: `give ${what} as an absolute path` });
  }
  const n = path.normalize(p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

/** Compute the directories of a store from its options, as Nix's LocalFSStore does. */
export function resolveLayout(opts: LocalStoreOptions): LocalStoreLayout {
  const root = opts.root !== undefined ? checkAbsolute('root', path.resolve(opts.root)) : undefined;
  const storeDir = checkAbsolute('storeDir', opts.storeDir ?? DEFAULT_STORE_DIR);
  const under = (p: string) => (root === undefined ? p : root === '/' ? p : root + p);
  // As Nix 2.8's LocalFSStore: under a root the contents live in `<root>/nix/store` whatever the logical store dir.
  const realStoreDir = opts.realStoreDir !== undefined ? checkAbsolute('realStoreDir', opts.realStoreDir) : root === undefined ? storeDir : under('/nix/store');
  const stateDir = opts.stateDir !== undefined ? checkAbsolute('stateDir', opts.stateDir) : under('/nix/var/nix');
  const logDir = opts.logDir !== undefined ? checkAbsolute('logDir', opts.logDir) : under('/nix/var/log/nix');
  return { root, storeDir, realStoreDir, stateDir, dbDir: path.join(stateDir, 'db'), logDir };
}

/**
 * Root of the embedded default store (a chroot store): `$REALISE_STORE`, else
 * `$XDG_DATA_HOME/realise/root`, else `~/.local/share/realise/root`.
 */
export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REALISE_STORE) return path.resolve(env.REALISE_STORE);
  const data = env.XDG_DATA_HOME && path.isAbsolute(env.XDG_DATA_HOME) ? env.XDG_DATA_HOME : path.join(env.HOME || homedir(), '.local', 'share');
  return path.join(data, 'realise', 'root');
}

/** A DrvOutput id `sha256:<base16>!<output>` split into the Realisations columns. */
function splitDrvOutputId(id: string): { hash: string; output: string } {
  const i = id.lastIndexOf('!');
  if (i <= 0 || i === id.length - 1) throw new StoreError('bad-realisation', `'${id}' is not a derivation output id ('sha256:<hash>!<output>')`);
  return { hash: id.slice(0, i), output: id.slice(i + 1) };
}

/** Nix's text form of a NAR hash in the database: `sha256:<base16>`. */
export function formatDbHash(h: Hash): string {
  return h.toString('base16', true);
}

/** Validate the store paths in a PathInfo against `storeDir`; throws InvalidStorePathError. */
export function checkPathInfo(info: PathInfo, storeDir: string): void {
  parseStorePath(info.path, storeDir);
  for (const r of info.references) parseStorePath(r, storeDir);
  if (info.deriver) parseStorePath(info.deriver, storeDir);
  if (!Number.isSafeInteger(info.narSize) || info.narSize < 0) {
    throw new StoreError('bad-path-info', `path '${info.path}' has an invalid narSize ${String(info.narSize)}`);
  }
  if (!(info.narHash instanceof Hash)) throw new StoreError('bad-path-info', `path '${info.path}' has no narHash`);
}

/**
 * The closure invariant for a batch: every reference must be the path itself, in the batch, or valid
 * (`isValid` answers for the rest in one call). Also refuses reference cycles between different paths,
 * as Nix's topological sort does. Returns the batch in an order where references come first.
 */
export function checkBatchClosure(infos: readonly PathInfo[], validOf: (paths: StorePath[]) => Pick<ReadonlySet<StorePath>, 'has'>): PathInfo[] {
  const batch = new Map<StorePath, PathInfo>();
  for (const i of infos) batch.set(i.path, i);
  const outside = new Set<StorePath>();
  for (const i of infos) for (const r of i.references) if (r !== i.path && !batch.has(r)) outside.add(r);
  const valid: Pick<ReadonlySet<StorePath>, 'has'> = outside.size ? validOf([...outside]) : new Set<StorePath>();
  for (const i of infos) {
    const missing = i.references.filter((r) => r !== i.path && !batch.has(r) && !valid.has(r));
    if (missing.length) {
      throw new StoreError(
        'missing-references',
        `cannot add path '${i.path}' because it references the invalid path${missing.length > 1 ? 's' : ''} ${missing.map((m) => `'${m}'`).join(', ')}`,
        {
          hint: 'add (or build) the referenced paths first, or register them in the same batch',
        },
      );
    }
  }
  // Topological order (references first); a cycle is an error. One path (a build's one output, the usual
  // case) is its own order: its references to itself do not count.
  if (batch.size === 1) return [...batch.values()];
  const order: PathInfo[] = [];
  const state = new Map<StorePath, 1 | 2>();
  const visit = (p: StorePath, parent: StorePath | undefined) => {
    const s = state.get(p);
    if (s === 2) return;
    if (s === 1) throw new StoreError('reference-cycle', `cycle detected in the references of '${parent}' from '${p}'`);
    state.set(p, 1);
    const info = batch.get(p)!;
    for (const r of info.references) if (r !== p && batch.has(r)) visit(r, p);
    state.set(p, 2);
    order.push(info);
  };
  for (const i of batch.keys()) visit(i, undefined);
  return order;
}

/** Hash a NAR stream with `algorithm` while passing it on; honours an AbortSignal between chunks. */
export function hashingStream(
  source: NarSource,
  algorithm: Hash['algorithm'],
  signal?: AbortSignal,
  ca?: string,
): { stream: AsyncIterable<Uint8Array>; result(): { hash: Hash; size: number; flat?: Hash | undefined } } {
  const sink = new HashSink(algorithm);
  // A flat or text content address is the hash of the file's contents: taken from the NAR as it
  // streams, instead of reading the restored file again.
  const flat = flatContentAlgorithm(ca);
  const contents = flat ? new RegularFileContentHasher(flat) : undefined;
  let done: { hash: Hash; size: number; flat?: Hash | undefined } | undefined;
  const step: Step<Uint8Array> = (r, stop) => {
    if (r.done) {
      done = { ...sink.finish(), flat: contents?.finish() };
      return r;
    }
    if (signal?.aborted) {
      stop();
      signal.throwIfAborted();
    }
    sink.update(r.value);
    contents?.update(r.value);
    return r;
  };
  const iterator = checkedStream(() => source, step);
  return {
    stream: iterator,
    result() {
      if (!done) throw new StoreError('nar-incomplete', 'the NAR stream was not read to its end');
      return done;
    },
  };
}

/** The algorithm of a flat (`fixed:`) or `text:` content address, else undefined. */
function flatContentAlgorithm(ca: string | undefined): HashAlgorithm | undefined {
  if (!ca || ca.startsWith('fixed:r:') || !(ca.startsWith('fixed:') || ca.startsWith('text:'))) return undefined;
  const algo = ca.slice(ca.indexOf(':') + 1).split(':')[0];
  return algo === 'sha256' || algo === 'sha1' || algo === 'sha512' || algo === 'md5' ? algo : undefined;
}

export function narHashMismatch(p: StorePath, expected: Hash, got: Hash): StoreError {
  return new StoreError(
    'nar-hash-mismatch',
    `hash mismatch importing path '${p}';\n  specified: ${expected.toString('base32')}\n  got:       ${got.toString('base32')}`,
    {
      hint: 'the NAR is corrupt or does not belong to this path; nothing was registered',
    },
  );
}

export function narSizeMismatch(p: StorePath, expected: number, got: number): StoreError {
  return new StoreError('nar-size-mismatch', `size mismatch importing path '${p}';\n  specified: ${expected}\n  got:       ${got}`, {
    hint: 'the NAR is truncated or does not belong to this path; nothing was registered',
  });
}

/**
 * Nix's content-address check of addToStore: for `fixed:r:<algo>:<hash>` the NAR hash with that algorithm,
 * for `fixed:<algo>:<hash>` the hash of the (single regular file) contents, for `text:sha256:<hash>` the
 * SHA-256 of the file. `narHash` is the NAR hash already computed while restoring.
 */
export async function verifyContentAddress(info: PathInfo, target: string, narHash: Hash, flatHash?: Hash): Promise<void> {
  const ca = info.ca;
  if (!ca) return;
  let expected: Hash;
  let got: Hash;
  const parse = (s: string) => {
    try {
      return Hash.parse(s);
    } catch (e) {
      throw new StoreError('bad-path-info', `path '${info.path}' has an invalid content address '${ca}'`, { cause: e });
    }
  };
  if (ca.startsWith('fixed:r:')) {
    expected = parse(ca.slice('fixed:r:'.length));
    if (expected.algorithm === narHash.algorithm && !info.references.includes(info.path)) got = narHash;
    else {
      const sink = recursiveCaSink(info, expected.algorithm);
      for await (const chunk of dumpPath(target)) sink.update(chunk);
      got = sink.finish().hash;
    }
  } else if (ca.startsWith('fixed:') || ca.startsWith('text:')) {
    expected = parse(ca.slice(ca.indexOf(':') + 1));
    if (flatHash && flatHash.algorithm === expected.algorithm) {
      got = flatHash; // (the NAR restored at target held a single regular file with this hash)
    } else {
      got = await hashRegularFile(info, target, expected.algorithm);
    }
  } else {
    throw new StoreError('bad-path-info', `path '${info.path}' has an unknown content address '${ca}'`, { hint: "expected 'fixed:…' or 'text:…'" });
  }
  if (!got.equals(expected)) throw caHashMismatch(info.path, expected, got);
}

/**
 * The sink of a recursive (`fixed:r:`) content address's hash of `info`'s NAR: self-references are left out
 * of it (Nix's hashCAPath, with its HashModuloSink).
 */
export function recursiveCaSink(info: PathInfo, algorithm: HashAlgorithm): HashSink | HashModulo {
  return info.references.includes(info.path) ? new HashModulo(algorithm, storePathHashPart(info.path)) : new HashSink(algorithm);
}

/** Nix's error for contents that are not of their content address (`expected`). */
export function caHashMismatch(p: StorePath, expected: Hash, got: Hash): StoreError {
  return new StoreError(
    'ca-hash-mismatch',
    `ca hash mismatch importing path '${p}';\n  specified: ${expected.toString('base32')}\n  got:       ${got.toString('base32')}`,
    {
      hint: 'the content address does not match the contents; nothing was registered',
    },
  );
}

/** The hash of a restored path's contents, which must be a regular file (a flat content address). */
async function hashRegularFile(info: PathInfo, target: string, algorithm: HashAlgorithm): Promise<Hash> {
  const st = await fsp.lstat(target);
  if (!st.isFile()) throw new StoreError('ca-hash-mismatch', `path '${info.path}' claims the flat content address '${info.ca}' but is not a regular file`);
  const h = createHash(algorithm);
  for await (const chunk of createReadStream(target, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return new Hash(algorithm, new Uint8Array(h.digest()));
}

/** lstat, or undefined when the path cannot be looked at (missing, or not accessible). */
function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return lstatSync(p, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** Text files up to this size are read with synchronous calls (readTextFile). */
const SMALL_TEXT_FILE = 64 * 1024;

export function invalidPathError(p: StorePath, what = 'is not valid'): StoreError {
  return new StoreError('invalid-path', `path '${p}' ${what}`, { hint: 'build, substitute or add it first' });
}

interface Row {
  id: number;
  hash: string;
  registrationTime: number;
  deriver: string | null;
  narSize: number | null;
  ultimate: number | null;
  sigs: string | null;
  ca: string | null;
}

/** The ValidPaths columns registering `info` writes (`now` when it has no registration time). */
function rowOf(info: PathInfo, now: number): Omit<Row, 'id'> {
  return {
    hash: formatDbHash(info.narHash),
    registrationTime: info.registrationTime ?? now,
    deriver: info.deriver ?? null,
    narSize: info.narSize || null,
    ultimate: info.ultimate ? 1 : null,
    sigs: info.sigs && info.sigs.length ? info.sigs.join(' ') : null,
    ca: info.ca ?? null,
  };
}

/** The `.drv` texts already read of registrations waiting together (LocalStore.registerSoon). */
function textsOf(batch: readonly { info: PathInfo; text: string | undefined }[]): Map<StorePath, string> | undefined {
  let texts: Map<StorePath, string> | undefined;
  for (const b of batch) if (b.text !== undefined) (texts ??= new Map()).set(b.info.path, b.text);
  return texts;
}

/** The PathInfo a ValidPaths row reads back as (`references` sorted, as the reference rows give them). */
function infoOfRow(path: StorePath, row: Omit<Row, 'id'>, narHash: Hash, references: StorePath[]): PathInfo {
  return {
    path,
    narHash,
    narSize: row.narSize ?? 0,
    references,
    deriver: row.deriver || undefined,
    registrationTime: row.registrationTime,
    ultimate: row.ultimate === 1,
    sigs: row.sigs ? row.sigs.split(' ').filter(Boolean) : [],
    ca: row.ca || undefined,
  };
}

/** Prefix of the temporary directories older versions restored into (still removed when stale). */
const TMP_PREFIX = '.tmp-';
/** Suffix of the temporary directories writers restore into: `<random hash part>-realise-tmp`. */
const TMP_SUFFIX = '-realise-tmp';

/**
 * Whether `name` (an entry of the real store dir) is a writer's temporary directory: `<hash>-realise-tmp`
 * (named like a store path whose hash part its writer holds as a temporary root, so that no garbage
 * collector, Nix's or ours, deletes it while the writer lives; Nix's createTempDirInStore does the
 * same), or `.tmp-*` of older versions.
 */
export function isStoreTempDirName(name: string): boolean {
  return name.startsWith(TMP_PREFIX) || (name.length === 32 + TMP_SUFFIX.length && name.endsWith(TMP_SUFFIX) && isNixBase32(name.slice(0, 32)));
}

/**
 * An open, flock-ed descriptor of the directory `dir` just created, or undefined when another process
 * removed it before the lock was ours (it is gone, its lock is held, or the locked inode is no longer `dir`).
 */
function lockedDirFd(dir: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(dir, FS.O_RDONLY | FS.O_DIRECTORY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    if (tryFlockFd(fd, dir) && fstatSync(fd).ino === lstatSync(dir, { throwIfNoEntry: false })?.ino) return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  closeSync(fd);
  return undefined;
}
/** Paths per `IN (...)` statement in queryValidPaths. */
const VALID_CHUNK = 2000;

/** `n` comma-separated SQL parameters. */
function params(n: number): string {
  return Array(n).fill('?').join(',');
}

/** One kind of `… where path in (?, …)` statement, by its number of parameters: small ones and the full chunk are kept. */
class ValidStatements {
  readonly #kept = new Map<number, Database.Statement>();
  constructor(private readonly prepare: (n: number) => Database.Statement) {}

  of(n: number): Database.Statement {
    let st = this.#kept.get(n);
    if (!st) {
      st = this.prepare(n);
      if (n <= 64 || n === VALID_CHUNK) this.#kept.set(n, st);
    }
    return st;
  }
}

/**
 * Write `data` to `file` (created 0644, or truncated). Only the creation goes through the thread pool (it
 * can take milliseconds on a busy disk); the write of a build log and the close are quick synchronous
 * calls, cheaper than two more thread-pool round trips.
 */
async function writeNewFile(file: string, data: string | Uint8Array): Promise<void> {
  const fd = await new Promise<number>((resolve, reject) =>
    openCb(file, FS.O_WRONLY | FS.O_CREAT | FS.O_TRUNC, 0o644, (e, fd) => (e ? reject(e) : resolve(fd))),
  );
  try {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off);
  } finally {
    closeSync(fd);
  }
}

export class LocalStore implements Store {
  readonly storeDir: string;
  readonly realStoreDir: string;
  readonly layout: LocalStoreLayout;
  private readonly db: Database.Database;
  private readonly releaseBigLock: () => void;
  private closed = false;
  private tempRoots: TempRoots | undefined;
  private readonly st: ReturnType<LocalStore['prepare']>;

  private constructor(layout: LocalStoreLayout, db: Database.Database, releaseBigLock: () => void) {
    this.layout = layout;
    this.storeDir = layout.storeDir;
    this.realStoreDir = layout.realStoreDir;
    this.db = db;
    this.releaseBigLock = releaseBigLock;
    this.st = this.prepare();
  }

  /** Open (creating if needed) a local store. See LocalStoreOptions for the layout. */
  static async open(opts: LocalStoreOptions = {}): Promise<LocalStore> {
    const layout = resolveLayout(opts);
    try {
      await makeStoreDirs(layout);
    } catch (e) {
      // Nix's words for the call that failed ("creating directory '…': Permission denied", "'…' is not a directory").
      throw new StoreError('store-open-failed', systemErrorMessage(e) ?? (e as Error).message, {
        cause: e,
        hint: `realise could not make the store directories under '${layout.root ?? layout.stateDir}': check the permissions of the store root, or choose another one`,
      });
    }
    // As Nix: hold big-lock shared while the store is open (a schema upgrade takes it exclusively).
    const releaseBigLock = await lockPlainFile(path.join(layout.dbDir, 'big-lock'), 'shared', opts.signal).catch(async (e: unknown) => {
      throw (await perUserModeError(layout)) ?? e;
    });
    let db: Database.Database | undefined;
    try {
      await ensureReserved(path.join(layout.dbDir, 'reserved'));
      const schemaFile = path.join(layout.dbDir, 'schema');
      let cur = 0;
      if (existsSync(schemaFile)) {
        const text = readFileSync(schemaFile, 'utf8').trim();
        cur = /^\d+$/.test(text) ? Number(text) : NaN;
        if (!Number.isInteger(cur)) throw new StoreError('bad-schema', `'${schemaFile}' is corrupt: '${text.slice(0, 40)}'`);
      }
      if (cur > NIX_SCHEMA_VERSION) {
        throw new StoreError('schema-too-new', `current Nix store schema is version ${cur}, but realise only supports ${NIX_SCHEMA_VERSION}`, {
          hint: 'this store was upgraded by a newer Nix; use a separate store for realise',
        });
      }
      if (cur !== 0 && cur < NIX_SCHEMA_VERSION) {
        throw new StoreError('schema-too-old', `the store database at '${layout.dbDir}' has schema version ${cur}, realise needs ${NIX_SCHEMA_VERSION}`, {
          hint: `upgrade it once with Nix 2.8, e.g. 'nix-store --store ${layout.root ?? layout.storeDir} --verify'`,
        });
      }
      db = openDatabase(path.join(layout.dbDir, 'db.sqlite'), { timeout: BUSY_TIMEOUT_MS });
      db.pragma('foreign_keys = 1');
      db.pragma('synchronous = normal');
      if (String(db.pragma('main.journal_mode', { simple: true })).toLowerCase() !== 'wal') db.pragma('main.journal_mode = wal');
      db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT}`);
      const conn = db;
      const hasSchema = () => conn.prepare("select 1 from sqlite_master where type = 'table' and name = 'ValidPaths'").get() !== undefined;
      // A store that has its tables is only read here; the write lock is taken to create them (checked again under it).
      if (!hasSchema()) {
        conn
          .transaction(() => {
            if (!hasSchema()) for (const s of SCHEMA_STATEMENTS) conn.exec(s);
          })
          .immediate();
      }
      if (cur === 0) {
        const tmp = `${schemaFile}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
        await fsp.writeFile(tmp, String(NIX_SCHEMA_VERSION), { mode: 0o644 });
        await fsp.rename(tmp, schemaFile);
      }
      const store = new LocalStore(layout, db, releaseBigLock);
      if (opts.compressBuildLog === false) store.compressBuildLog = false;
      if (opts.ignoredAcls) store.ignoredAcls = [...opts.ignoredAcls];
      await store.removeCrashDebris();
      return store;
    } catch (e) {
      db?.close();
      releaseBigLock();
      if (e instanceof StoreError) throw e;
      throw new StoreError('store-open-failed', `cannot open the store database in '${layout.dbDir}': ${(e as Error).message}`, { cause: e });
    }
  }

  /** The embedded default store at `defaultStoreRoot()`. */
  static openDefault(opts: { signal?: AbortSignal } = {}): Promise<LocalStore> {
    return LocalStore.open({ root: defaultStoreRoot(), signal: opts.signal });
  }

  private prepare() {
    const db = this.db;
    return {
      pathId: db.prepare<[string], { id: number }>('select id from ValidPaths where path = ?'),
      info: db.prepare<[string], Row>('select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?'),
      references: db.prepare<[number], { path: string }>('select path from Refs join ValidPaths on reference = id where referrer = ?'),
      referrers: db.prepare<[string], { path: string }>(
        'select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)',
      ),
      insert: db.prepare('insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)'),
      update: db.prepare('update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?'),
      addRef: db.prepare('insert or replace into Refs (referrer, reference) values (?, ?)'),
      addDrvOutput: db.prepare('insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)'),
      drvOutputs: db.prepare<[string], { id: string; path: string }>(
        'select d.id, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?',
      ),
      validDerivers: db.prepare<[string], { path: string }>('select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?'),
      allPaths: db.prepare('select path from ValidPaths').pluck(),
      dataVersion: db.prepare('pragma data_version').pluck(),
      closure: db
        .prepare<[string]>(
          `with recursive c(id) as (
             select id from ValidPaths where path in (select value from json_each(?))
             union
             select reference from Refs join c on Refs.referrer = c.id)
           select path from ValidPaths where id in (select id from c)`,
        )
        .pluck(),
    };
  }

  private check(): void {
    if (this.closed) throw new StoreError('store-closed', `the store at '${this.layout.root ?? this.storeDir}' has been closed`);
  }

  toRealPath(p: string): string {
    if (p === this.storeDir || p.startsWith(this.storeDir + '/')) {
      checkNoDotDot(p, this.storeDir);
      return this.realStoreDir === this.storeDir ? p : this.realStoreDir + p.slice(this.storeDir.length);
    }
    throw new InvalidStorePathError(`path '${p}' is not in the Nix store '${this.storeDir}'`);
  }

  async isValidPath(p: StorePath): Promise<boolean> {
    return this.isValidPathSync(p);
  }

  private isValidPathSync(p: StorePath): boolean {
    this.check();
    return this.st.pathId.get(p) !== undefined;
  }

  /** Synchronous validity of many paths (chunked `in (?, …)` statements). */
  queryValidPathsSync(paths: Iterable<StorePath>): Set<StorePath> {
    this.check();
    const out = new Set<StorePath>();
    this.eachValidRow(Array.isArray(paths) ? (paths as StorePath[]) : [...paths], this.validStmts, (r: StorePath) => out.add(r));
    return out;
  }

  /** Of `paths`, the valid ones with their ValidPaths ids (queryValidPathsSync's statements, with the id). */
  private validPathIdsSync(paths: readonly StorePath[]): Map<StorePath, number> {
    const out = new Map<StorePath, number>();
    this.eachValidRow(paths, this.validIdStmts, (r: { path: StorePath; id: number }) => out.set(r.path, r.id));
    return out;
  }

  /**
   * The rows of `kind`'s statement for those of `list` that are valid: chunked `IN (?, …)` statements,
   * measured faster than json_each or one query per path (bench/query-valid-paths.ts).
   */
  private eachValidRow<R>(list: readonly StorePath[], kind: ValidStatements, row: (r: R) => void): void {
    for (let i = 0; i < list.length; i += VALID_CHUNK) {
      const part = list.length - i >= VALID_CHUNK ? list.slice(i, i + VALID_CHUNK) : list.slice(i);
      for (const r of kind.of(part.length).all(...part) as R[]) row(r);
    }
  }

  /** `select path …` (plucked) and `select path, id …` from ValidPaths where path is one of n parameters. */
  private readonly validStmts = new ValidStatements((n) => this.db.prepare(`select path from ValidPaths where path in (${params(n)})`).pluck());
  private readonly validIdStmts = new ValidStatements((n) => this.db.prepare(`select path, id from ValidPaths where path in (${params(n)})`));

  async queryValidPaths(paths: Iterable<StorePath>): Promise<Set<StorePath>> {
    return this.queryValidPathsSync(paths);
  }

  async queryPathInfo(p: StorePath): Promise<PathInfo | undefined> {
    this.check();
    const row = this.st.info.get(p);
    if (!row) return undefined;
    let narHash: Hash;
    try {
      narHash = Hash.parse(row.hash);
    } catch (e) {
      throw new StoreError('corrupt-db', `the database has an invalid hash '${row.hash}' for path '${p}'`, {
        cause: e,
        hint: "run 'nix-store --verify --repair'",
      });
    }
    const references = this.st.references
      .all(row.id)
      .map((r) => r.path)
      .sort();
    return infoOfRow(p, row, narHash, references);
  }

  /**
   * The references of each of `paths` that is valid and refers to something, in one query (the others are
   * not in the map); a path's own list is in no particular order.
   */
  queryReferencesSync(paths: readonly StorePath[]): Map<StorePath, StorePath[]> {
    this.check();
    return this.referencesOf(paths, false);
  }

  /** The references of those of `paths` that are valid, in one statement; `refless`: with an empty list for a valid path without any. */
  private referencesOf(paths: readonly StorePath[], refless: boolean): Map<StorePath, StorePath[]> {
    // (A valid path without references is one row whose reference is null.)
    this.referencesOfMany ??= this.db.prepare<[string], { p: string; r: string | null }>(
      `select v.path as p, r.path as r from ValidPaths v left join Refs on Refs.referrer = v.id left join ValidPaths r on r.id = Refs.reference
         where v.path in (select value from json_each(?))`,
    );
    const out = new Map<StorePath, StorePath[]>();
    for (const { p, r } of this.referencesOfMany.all(JSON.stringify(paths))) {
      let list = out.get(p);
      if (!list) {
        if (r === null && !refless) continue;
        out.set(p, (list = []));
      }
      if (r !== null) list.push(r);
    }
    return out;
  }
  private referencesOfMany: Database.Statement<[string], { p: string; r: string | null }> | undefined;

  async queryReferrers(p: StorePath): Promise<StorePath[]> {
    this.check();
    return this.st.referrers
      .all(p)
      .map((r) => r.path)
      .sort();
  }

  /**
   * Every valid path reachable from `paths`; throws StoreError('invalid-path') if a start path is invalid (as Nix).
   *
   * The references of the paths reached are kept in memory (as Nix's path info cache keeps them) and read
   * only for paths not seen before, one statement per step of the walk; the start paths not seen before
   * are asked for with their validity, in one statement (a path in the cache is valid). A build computes the closure of its inputs, which shares most of its
   * paths with its neighbours' (measured: a recursive query costs ~1.4 us per path of the closure, 2 ms
   * for 1,500). A walk that is still among unseen paths after WALK_STEPS steps (a deep closure never
   * walked) is answered by one recursive query instead, which a step-by-step walk would be slower than.
   * The cache is dropped whenever another connection has committed since it was filled (the database's
   * data_version) and when it grows past REFS_CACHE_MAX; a path this store's own collector invalidates
   * leaves it as soon as the invalidation commits (collectGarbage).
   */
  async computeClosure(paths: Iterable<StorePath>): Promise<Set<StorePath>> {
    this.check();
    const start = [...new Set(paths)];
    if (start.length === 0) return new Set();
    const version = this.st.dataVersion.get() as number;
    if (version !== this.refsVersion || this.refs.size > REFS_CACHE_MAX) {
      this.refs.clear();
      this.refsVersion = version;
    }
    // The start paths not in the cache: their validity and references in one statement (a cached path is
    // valid: the cache is dropped whenever paths can have been invalidated).
    const unknown = start.filter((p) => !this.refs.has(p));
    if (unknown.length > 0) this.loadValidReferences(unknown);
    for (const p of start) if (!this.refs.has(p)) throw invalidPathError(p);
    // A valid path's references are valid (the closure invariant), so everything reached is.
    const closure = new Set(start);
    for (let frontier = start, steps = unknown.length > 0 ? 1 : 0; frontier.length > 0;) {
      const missing = frontier.filter((p) => !this.refs.has(p));
      if (missing.length > 0) {
        // Deep into paths not seen before (a closure never walked): one recursive query instead, as before.
        if (++steps > WALK_STEPS) return new Set(this.st.closure.all(JSON.stringify(start)) as StorePath[]);
        this.loadReferences(missing);
      }
      const next: StorePath[] = [];
      for (const p of frontier) {
        for (const r of this.refs.get(p)!) {
          if (!closure.has(r)) {
            closure.add(r);
            next.push(r);
          }
        }
      }
      frontier = next;
    }
    return closure;
  }

  /** References of valid paths, by path (see computeClosure). */
  private readonly refs = new Map<StorePath, readonly StorePath[]>();
  private refsVersion = -1;

  /** Read the references of `paths` (valid paths) into the cache, in one statement. */
  private loadReferences(paths: readonly StorePath[]): void {
    const found = this.referencesOf(paths, false);
    for (const p of paths) this.refs.set(p, found.get(p) ?? NO_REFERENCES);
  }

  /** Read the references of those of `paths` that are valid into the cache, in one statement; the others are left out. */
  private loadValidReferences(paths: readonly StorePath[]): void {
    for (const [p, list] of this.referencesOf(paths, true)) this.refs.set(p, list.length > 0 ? list : NO_REFERENCES);
  }

  /** Valid derivations that list `outPath` as an output in DerivationOutputs (Nix's queryValidDerivers). */
  async queryValidDerivers(outPath: StorePath): Promise<StorePath[]> {
    this.check();
    return this.st.validDerivers
      .all(outPath)
      .map((r) => r.path)
      .sort();
  }

  /** Every valid path of the store. */
  async queryAllValidPaths(): Promise<Set<StorePath>> {
    this.check();
    return new Set(this.st.allPaths.all() as string[]);
  }

  async queryDerivationOutputs(drvPath: StorePath): Promise<Map<string, StorePath>> {
    this.check();
    const out = new Map<string, StorePath>();
    for (const r of this.st.drvOutputs.all(drvPath)) out.set(r.id, r.path);
    return out;
  }

  /** queryDerivationOutputs of many derivations, in one read transaction (one lock of the database, not one per query). */
  queryDerivationOutputsMany(drvPaths: Iterable<StorePath>): Map<StorePath, Map<string, StorePath>> {
    this.check();
    return this.db
      .transaction(() => {
        const all = new Map<StorePath, Map<string, StorePath>>();
        for (const d of drvPaths) {
          if (all.has(d)) continue;
          const out = new Map<string, StorePath>();
          for (const r of this.st.drvOutputs.all(d)) out.set(r.id, r.path);
          all.set(d, out);
        }
        return all;
      })
      .deferred();
  }

  /**
   * Record the outputs of a valid derivation in DerivationOutputs. Nix fills this table when it
   * registers a `.drv`; the store layer cannot parse derivations, so the derivation layer calls this
   * right after adding a `.drv`.
   */
  async registerDerivationOutputs(drvPath: StorePath, outputs: ReadonlyMap<string, StorePath>): Promise<void> {
    this.check();
    parseStorePath(drvPath, this.storeDir);
    for (const p of outputs.values()) parseStorePath(p, this.storeDir);
    this.db
      .transaction(() => {
        const row = this.st.pathId.get(drvPath);
        if (!row) throw invalidPathError(drvPath, 'is not valid, so its outputs cannot be registered');
        for (const [name, p] of outputs) this.st.addDrvOutput.run(row.id, name, p);
      })
      .immediate();
  }

  /**
   * DerivationOutputs rows of a newly registered `.drv`, from its text, as Nix's registerValidPaths
   * writes them (so a `.drv` added by substitution or addToStore has them too). An unreadable or
   * unparsable file gets none.
   */
  private registerDrvOutputRows(id: number, drvPath: StorePath, known: string | undefined): void {
    let text: string;
    try {
      text = known ?? readFileSync(this.toRealPath(drvPath), 'utf8');
    } catch {
      return;
    }
    const outputs = derivationOutputPaths(text);
    if (!outputs) return;
    for (const [name, p] of outputs) {
      try {
        parseStorePath(p, this.storeDir);
      } catch {
        continue;
      }
      this.st.addDrvOutput.run(id, name, p);
    }
  }

  /** Statements on the tables of content-addressed derivations, once they exist (made on first use). */
  private ca: ReturnType<LocalStore['prepareCa']> | undefined;

  private prepareCa() {
    const db = this.db;
    return {
      query: db.prepare<[string, string], { id: number; path: string; signatures: string | null }>(
        'select Realisations.id, Output.path, Realisations.signatures from Realisations inner join ValidPaths as Output on Output.id = Realisations.outputPath where drvPath = ? and outputName = ?',
      ),
      insert: db.prepare('insert into Realisations (drvPath, outputName, outputPath, signatures) values (?, ?, (select id from ValidPaths where path = ?), ?)'),
      update: db.prepare('update Realisations set signatures = ? where drvPath = ? and outputName = ?'),
      refs: db.prepare<[number], { drvPath: string; outputName: string; path: string }>(
        'select r.drvPath, r.outputName, v.path from RealisationsRefs x join Realisations r on r.id = x.realisationReference join ValidPaths v on v.id = r.outputPath where x.referrer = ?',
      ),
      addRef: db.prepare(
        'insert or replace into RealisationsRefs (referrer, realisationReference) values ((select id from Realisations where drvPath = ? and outputName = ?), (select id from Realisations where drvPath = ? and outputName = ?))',
      ),
    };
  }

  /**
   * The Realisations tables, as Nix 2.8 makes them (`create … if not exists`, then `<db>/ca-schema`); undefined
   * when they do not exist and `create` is false.
   */
  private caStatements(create: boolean): ReturnType<LocalStore['prepareCa']> | undefined {
    if (this.ca) return this.ca;
    const exists = !!this.db.prepare("select 1 from sqlite_master where type = 'table' and name = 'Realisations'").get();
    if (!exists && !create) return undefined;
    if (!exists) {
      this.db
        .transaction(() => {
          for (const sql of CA_SCHEMA_STATEMENTS) this.db.exec(sql);
        })
        .immediate();
      writeFileSync(path.join(this.layout.dbDir, 'ca-schema'), String(NIX_CA_SCHEMA_VERSION));
    }
    return (this.ca = this.prepareCa());
  }

  async queryRealisation(id: string): Promise<Realisation | undefined> {
    this.check();
    const { hash, output } = splitDrvOutputId(id);
    const ca = this.caStatements(false);
    const row = ca?.query.get(hash, output);
    if (!ca || !row) return undefined;
    const deps = new Map<string, StorePath>();
    for (const r of ca.refs.all(row.id)) deps.set(`${r.drvPath}!${r.outputName}`, r.path);
    return { id, outPath: row.path, signatures: row.signatures ? row.signatures.split(' ') : [], dependentRealisations: deps };
  }

  async registerRealisation(r: Realisation): Promise<void> {
    this.check();
    const { hash, output } = splitDrvOutputId(r.id);
    parseStorePath(r.outPath, this.storeDir);
    const ca = this.caStatements(true)!;
    this.db
      .transaction(() => {
        const old = ca.query.get(hash, output);
        if (old) {
          if (old.path !== r.outPath) {
            throw new StoreError(
              'realisation-conflict',
              `Trying to register a realisation of '${r.id}', but we already have another one locally.\nLocal:  ${old.path}\nRemote: ${r.outPath}`,
            );
          }
          const sigs = new Set([...(old.signatures ? old.signatures.split(' ') : []), ...(r.signatures ?? [])]);
          ca.update.run([...sigs].sort().join(' '), hash, output);
        } else {
          if (!this.st.pathId.get(r.outPath)) throw invalidPathError(r.outPath, 'is not valid, so no realisation can name it');
          ca.insert.run(hash, output, r.outPath, (r.signatures ?? []).join(' '));
        }
        for (const [depId, depPath] of r.dependentRealisations ?? []) {
          const dep = splitDrvOutputId(depId);
          const have = ca.query.get(dep.hash, dep.output);
          if (!have) throw new StoreError('realisation-missing', `unable to register the derivation '${r.id}' as it depends on the non existent '${depId}'`);
          if (have.path !== depPath) {
            throw new StoreError(
              'realisation-conflict',
              `unable to register the derivation '${r.id}' as it depends on a realisation of '${depId}' that doesn’tmatch what we have locally`,
            );
          }
          ca.addRef.run(hash, output, dep.hash, dep.output);
        }
      })
      .immediate();
  }

  /** addToStore's registrations waiting for the end of this turn of the event loop (registerSoon). */
  private pendingRegistrations: Array<{ info: PathInfo; text: string | undefined; resolve: () => void; reject: (e: unknown) => void }> | undefined;

  /**
   * Register `info` (its contents complete at its path, its references valid, its lock held) together with
   * the other additions that get this far in the same turn of the event loop: one transaction for all of
   * them (a group commit). A commit costs about as much as the rows of a few paths; concurrent
   * substitutions of small paths finish in bursts. Each path is still valid only once its contents are
   * complete and its references valid, as when it is registered alone. Resolves once it is committed.
   * `text`: a new `.drv`'s text, already read (its DerivationOutputs rows come from it, not from the file).
   */
  private registerSoon(info: PathInfo, text: string | undefined): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.pendingRegistrations) {
        this.pendingRegistrations = [];
        setImmediate(() => this.flushRegistrations());
      }
      this.pendingRegistrations.push({ info, text, resolve, reject });
    });
  }

  private flushRegistrations(): void {
    const batch = this.pendingRegistrations ?? [];
    this.pendingRegistrations = undefined;
    if (batch.length > 1) {
      try {
        this.registerInDb(
          batch.map((b) => b.info),
          textsOf(batch),
        );
        for (const b of batch) b.resolve();
        return;
      } catch {
        // One of them cannot be registered: each on its own, so that only that one fails.
      }
    }
    for (const b of batch) {
      try {
        this.check();
        this.registerInDb([b.info], textsOf([b]));
        b.resolve();
      } catch (e) {
        b.reject(e);
      }
    }
  }

  /**
   * Write rows for `infos` in one transaction, enforcing the closure invariant. Reads only new `.drv` files
   * whose text is not in `texts`.
   */
  private registerInDb(infos: readonly PathInfo[], texts?: ReadonlyMap<StorePath, string>): void {
    // better-sqlite3 builds a transaction function's four wrappers (and their properties) in `transaction()`:
    // made once per store, not once per registration.
    this.registerTx ??= this.db.transaction((batch: readonly PathInfo[], known?: ReadonlyMap<StorePath, string>) => this.writeRows(batch, known));
    this.registerTx.immediate(infos, texts);
  }

  private registerTx: Database.Transaction<(batch: readonly PathInfo[], texts?: ReadonlyMap<StorePath, string>) => void> | undefined;

  /** registerInDb's transaction: the batch's closure checked, then its rows written (references first). */
  private writeRows(infos: readonly PathInfo[], texts: ReadonlyMap<StorePath, string> | undefined): void {
    const now = Math.floor(Date.now() / 1000);
    // The batch's paths and the references outside it, with the row ids of those that are valid, in one
    // query: a valid path of the batch has its row updated, a reference outside takes its row id below.
    const asked = new Set<StorePath>();
    for (const i of infos) {
      asked.add(i.path);
      for (const r of i.references) asked.add(r);
    }
    const known = this.validPathIdsSync([...asked]);
    const order = checkBatchClosure(infos, () => known);
    const ids = new Map<StorePath, number>();
    for (const i of order) {
      this.refs.delete(i.path);
      const existing = known.get(i.path);
      const row = rowOf(i, now);
      if (existing !== undefined) {
        this.st.update.run(row.narSize, row.hash, row.ultimate, row.sigs, row.ca, i.path);
        ids.set(i.path, existing);
      } else {
        const r = this.st.insert.run(i.path, row.hash, row.registrationTime, row.deriver, row.narSize, row.ultimate, row.sigs, row.ca);
        ids.set(i.path, Number(r.lastInsertRowid));
        if (i.path.endsWith('.drv')) this.registerDrvOutputRows(Number(r.lastInsertRowid), i.path, texts?.get(i.path));
      }
    }
    for (const i of order) {
      const referrer = ids.get(i.path)!;
      for (const ref of i.references) {
        // (`known` holds every reference that is valid: the batch's own are in `ids`.)
        const reference = ids.get(ref) ?? known.get(ref);
        if (reference === undefined) throw invalidPathError(ref); // unreachable after checkBatchClosure
        this.st.addRef.run(referrer, reference);
      }
    }
  }

  async registerValidPaths(infos: readonly PathInfo[], opts: { canonicalise?: boolean } = {}): Promise<void> {
    this.check();
    if (infos.length === 0) return;
    for (const i of infos) checkPathInfo(i, this.storeDir);
    const canonicalise = opts.canonicalise ?? true;
    // Fail before touching anything if the invariant cannot hold. When nothing is touched before the
    // transaction (no canonicalisation, no optimising), its own check (the same one) is enough: one read
    // statement fewer per registration.
    if (canonicalise || this.autoOptimiseStore) checkBatchClosure(infos, (ps) => this.queryValidPathsSync(ps));
    for (const i of infos) {
      const real = this.toRealPath(i.path);
      // (One synchronous lstat: a thread-pool round trip would cost more than the call.)
      if (!lstatOrUndefined(real)) {
        throw new StoreError('missing-contents', `cannot register path '${i.path}': its contents are missing at '${real}'`, {
          hint: 'write the contents first; nothing was registered',
        });
      }
      if (canonicalise) await canonicalisePathMetaData(real, { ignoredAcls: this.ignoredAcls });
      this.autoOptimise(real);
    }
    try {
      this.registerInDb(infos);
    } catch (e) {
      throw asStoreWriteError(e, 'registering paths in the database', path.join(this.layout.dbDir, 'db.sqlite'));
    }
  }

  /**
   * Protect `path` from a concurrent `nix-store --gc` on this store for as long as this process keeps the
   * store open (Nix's temporary roots: `<state>/temproots/<pid>`, or the collector's socket while it runs).
   */
  addTempRoot(p: StorePath): Promise<void> {
    return this.addTempRoots([p]);
  }

  /**
   * `addTempRoot` of many paths; while no collector runs, they are recorded in one write. (A path that is
   * a root already resolves at once: TempRoots' promise is handed on as it is, without an async layer.)
   */
  addTempRoots(paths: Iterable<StorePath>): Promise<void> {
    let roots: TempRoots;
    try {
      this.check();
      roots = this.tempRoots ??= TempRoots.open(this.layout.stateDir);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return roots.addAll(paths);
  }

  /**
   * Hard-link identical files of every valid path through `<realStoreDir>/.links`, as `nix-store --optimise`
   * (src/store/optimise.ts). The GC lock is held shared meanwhile, so no collector deletes a path under it.
   */
  async optimiseStore(opts: OptimiseOptions = {}): Promise<OptimiseStats> {
    this.check();
    const release = await lockPlainFile(path.join(this.layout.stateDir, 'gc.lock'), 'shared', opts.signal);
    try {
      const paths = this.st.allPaths.all() as string[];
      return await optimiseStorePaths(
        this.realStoreDir,
        paths.map((p) => this.toRealPath(p)),
        opts,
      );
    } finally {
      release();
    }
  }

  /**
   * Nix's `auto-optimise-store`: when true, the contents of every path added or registered are
   * hard-linked through `.links` before it is registered. @default false
   */
  autoOptimiseStore = false;
  private optimiser: StoreOptimiser | undefined;

  /**
   * optimisePath after a path's contents are in place, when autoOptimiseStore is set; `repair` (a path
   * added in repair mode) checks the `.links` entries' contents first, as Nix.
   */
  private autoOptimise(realPath: string, repair = false): void {
    if (!this.autoOptimiseStore) return;
    this.optimiser ??= new StoreOptimiser(this.realStoreDir);
    this.optimiser.optimisePath(realPath, repair);
  }

  /**
   * The garbage collector's roots, each with where it was found (gcroots/profiles links, `/proc/…` files,
   * `{temp:PID}`): what `nix-store --gc --print-roots` lists.
   */
  findRoots(): Map<StorePath, Set<string>> {
    this.check();
    return findRoots({ ...this.layout, db: this.db });
  }

  private autoGc: AutoGc | undefined;
  /**
   * Nix's autoGC: when less than `minFree` bytes are free on the store's file system, start a background
   * collection freeing up to `maxFree` (src/store/auto-gc.ts). Returns the running collection, if any.
   * Paths that in-flight builds and substitutions hold as temporary roots are never collected.
   */
  autoGC(settings: AutoGcSettings): Promise<void> | undefined {
    this.check();
    this.autoGc ??= new AutoGc(this.realStoreDir, (o) => this.collectGarbage(o));
    return this.autoGc.check(settings);
  }

  /** Collect garbage with Nix 2.8's semantics, interlocking with real Nix on the same store (src/store/gc.ts). */
  async collectGarbage(options: GcOptions = {}): Promise<GcResult> {
    this.check();
    // computeClosure takes a cached path as valid: each path leaves the cache as its invalidation commits
    // (this connection's own commits leave data_version as it is; another connection's change it).
    const invalidated = (paths: readonly StorePath[]): void => {
      for (const p of paths) this.refs.delete(p);
    };
    return collectGarbage({ ...this.layout, db: this.db, invalidated }, options);
  }

  async addToStore(info: PathInfo, nar: NarSource, opts: AddToStoreOptions = {}): Promise<PathInfo> {
    this.check();
    checkPathInfo(info, this.storeDir);
    await this.addTempRoot(info.path);
    const repair = opts.repair ?? false;
    // The path's own validity and its references' in one query (one read transaction, not two).
    const valid = this.queryValidPathsSync(repair ? info.references : [info.path, ...info.references]);
    if (!repair && valid.has(info.path)) return (await this.queryPathInfo(info.path))!;
    checkBatchClosure([info], () => valid);
    // Unordered: concurrent additions create their lock files at the same time instead of one by one.
    const locks = await lockStorePaths(this, [info.path], { signal: opts.signal, ordered: false });
    let target: string | undefined;
    try {
      if (!repair && this.isValidPathSync(info.path)) return (await this.queryPathInfo(info.path))!;
      const session = await this.sessionTempDir();
      // (Concatenated: the session's directory is normalised, the name has no '/' and is not '.' or '..'.)
      target = `${session.dir}/${++this.tmpCounter}-${storePathBase(info.path)}`;
      const hashed = hashingStream(nar, info.narHash.algorithm, opts.signal, info.ca);
      // Restored with canonical metadata straight away; a second canonicalising walk is needed only
      // when new files do not get our group (a setgid store directory).
      // Small NARs (the size is announced) are restored in one task on the restore thread; large ones
      // stream, so a NAR is never held in memory whole.
      const batch = !!info.narSize && info.narSize <= BATCH_RESTORE_MAX;
      await restorePath(target, hashed.stream, { canonical: true, batch });
      const got = hashed.result();
      if (!got.hash.equals(info.narHash)) throw narHashMismatch(info.path, info.narHash, got.hash);
      if (info.narSize && got.size !== info.narSize) throw narSizeMismatch(info.path, info.narSize, got.size);
      await verifyContentAddress(info, target, got.hash, got.flat);
      const text = (await opts.verify?.(target)) ?? undefined;
      if (session.walkAfterRestore) await canonicalisePathMetaData(target, { ignoredAcls: this.ignoredAcls });
      opts.signal?.throwIfAborted();
      // (Object.assign: a spread followed by a key the source lacks builds new hidden classes at each call.)
      const final: PathInfo = Object.assign({}, info, { narSize: got.size, registrationTime: info.registrationTime ?? Math.floor(Date.now() / 1000) });
      // (The registration checks the references again, in its transaction.)
      const real = this.toRealPath(info.path);
      if (existsNow(real)) {
        // A stale invalid copy, or the valid copy we are repairing: move it aside, then delete it.
        const old = `${session.dir}/${++this.tmpCounter}-old`;
        movePathSync(real, old);
        movePathSync(target, real);
        target = old;
      } else {
        movePathSync(target, real);
        target = undefined;
      }
      try {
        this.autoOptimise(real, repair);
        await this.registerSoon(final, text);
      } catch (e) {
        await deleteTree(real).catch(() => {});
        // Repairing: the registered path's old copy goes back in place.
        if (target !== undefined) {
          movePathSync(target, real);
          target = undefined;
        }
        throw e;
      }
      locks.setDeletion(true);
      // (A repaired path keeps the row it had, which is updated only in part.)
      if (repair) return (await this.queryPathInfo(info.path))!;
      // What queryPathInfo now reads back.
      return infoOfRow(info.path, rowOf(final, final.registrationTime!), final.narHash, [...new Set(final.references)].sort());
    } catch (e) {
      throw asStoreWriteError(e, `adding '${info.path}' to the store: writing`, target ?? this.toRealPath(info.path));
    } finally {
      if (target !== undefined) await deleteTree(target).catch(() => {});
      await locks.release();
    }
  }

  /** Store.expectAdditions: the NARs addToStore will restore in one batch (see there) warm the restore thread. */
  expectAdditions(narSizes: readonly number[]): void {
    expectBatchedRestores(narSizes.filter((s) => s > 0 && s <= BATCH_RESTORE_MAX));
  }

  private tmpCounter = 0;
  private session: Promise<{ dir: string; fd: number; walkAfterRestore: boolean }> | undefined;
  /**
   * This store object's temporary directory (`<hash>-realise-tmp` in the real store dir), created on first use,
   * flock-ed until close() (which deletes it), so removeStaleTempDirs of another process leaves it alone
   * and removes it once we are gone. Creating and deleting a directory per added path costs several
   * system calls, and closing a deleted directory is slow on file systems mounted with `discard`.
   */
  private sessionTempDir(): Promise<{ dir: string; fd: number; walkAfterRestore: boolean }> {
    this.session ??= this.makeTempDir().then(async (t) => {
      const st = fstatSync(t.fd);
      // Files created inside get our uid, and our gid unless the directory is setgid to another group.
      // (canonicalisePathMetaData changes owners only when running as root.)
      const canonicalOwner = MY_UID !== 0 || (st.mode & 0o2000) === 0 || st.gid === MY_GID;
      // Files restored inside get extended attributes only by inheritance (a default ACL on the store
      // directory, which the temporary directory then has too): only then must they be walked and stripped.
      return { ...t, walkAfterRestore: !canonicalOwner || (await inheritsXattrs(t.dir, this.ignoredAcls)) };
    });
    return this.session;
  }

  /**
   * A fresh `<random hash>-realise-tmp` directory in the real store dir, a temporary root (so collectors
   * leave it alone), flock-ed for as long as we write into it. Between mkdir and flock another process's
   * removeStaleTempDirs may take the (still free) lock and delete the directory: then the lock fails, or
   * it is taken on a deleted directory (no longer the one at that name), and another name is tried.
   */
  private async makeTempDir(): Promise<{ dir: string; fd: number }> {
    for (let attempt = 0; attempt < 100; attempt++) {
      const name = toNixBase32(randomBytes(20)) + TMP_SUFFIX;
      await this.addTempRoot(`${this.storeDir}/${name}`);
      const dir = path.join(this.realStoreDir, name);
      try {
        await fsp.mkdir(dir, { mode: 0o700 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      const fd = lockedDirFd(dir);
      if (fd !== undefined) return { dir, fd };
    }
    throw new StoreError('lock-failed', `cannot create and lock a temporary directory in '${this.realStoreDir}'`, {
      hint: 'another process keeps removing the new directories; check what else sweeps this store directory',
    });
  }

  /**
   * What crashed processes (kill -9) leave in the store directory, removed when a store is opened: writers'
   * temporary directories whose writer is gone (their flock is free), lock files nobody holds (`<path>.lock`), and
   * realise's sandbox debris of processes that no longer exist: chroot skeletons
   * (`<hash>-realise-chroot-<pid>-*`) and chroots set aside for deletion (`<drv>.chroot.trash-<pid>-*`).
   * Returns what was removed.
   */
  async removeCrashDebris(): Promise<string[]> {
    let names: string[];
    try {
      // One system call (getdents) at open: read synchronously rather than through the thread pool.
      names = readdirSync(this.realStoreDir);
    } catch {
      return [];
    }
    const removed = await this.removeStaleTempDirs(names);
    for (const name of names) {
      const isLock = STORE_LOCK_FILE.test(name);
      const m = isLock ? null : DEBRIS_OF_PID.exec(name);
      const pid = m?.[1] ?? m?.[2];
      if (!isLock && (pid === undefined || processAlive(Number(pid)))) continue;
      // (Joined only here: a store directory holds thousands of names, of which these few are debris.)
      const p = path.join(this.realStoreDir, name);
      // A store path may have such a name too (`<hash>-yarn.lock`, `<hash>-x.drv.chroot.trash-1-a`): never one that is valid.
      if (this.queryValidPathsSync([path.posix.join(this.storeDir, name)]).size > 0) continue;
      if (isLock) {
        // (Not an output being built under that name: that one has a lock file of its own.)
        if (!existsNow(`${p}.lock`) && removeStaleLockFile(p)) removed.push(p);
        continue;
      }
      await deleteTree(p).catch(() => {});
      removed.push(p);
    }
    return removed;
  }

  /** Remove writers' temporary directories (isStoreTempDirName) whose writer is gone (its flock is free). */
  async removeStaleTempDirs(listing?: readonly string[]): Promise<string[]> {
    const removed: string[] = [];
    let names: readonly string[];
    try {
      names = listing ?? (await fsp.readdir(this.realStoreDir));
    } catch {
      return removed;
    }
    for (const name of names) {
      if (!isStoreTempDirName(name)) continue;
      const dir = path.join(this.realStoreDir, name);
      let fd: number;
      try {
        fd = openSync(dir, FS.O_RDONLY | FS.O_DIRECTORY);
      } catch {
        continue;
      }
      try {
        if (!tryFlockFd(fd, dir)) continue;
        await deleteTree(dir);
        removed.push(dir);
      } finally {
        closeSync(fd);
      }
    }
    return removed;
  }

  async addTextToStore(name: string, text: string, references: Iterable<StorePath> = []): Promise<StorePath> {
    this.check();
    const refs = [...new Set(references)].sort();
    const p = computeTextPath(name, text, refs, this.storeDir);
    if (await this.isValidPath(p)) return p;
    const nar = narOfRegularFile(text);
    const contentHash = Hash.of('sha256', text);
    await this.addToStore(
      { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: refs, ca: `text:${contentHash.toString('base32')}` },
      streamOf(nar),
    );
    return p;
  }

  async *narFromPath(p: StorePath): AsyncGenerator<Uint8Array> {
    if (!(await this.isValidPath(p))) throw invalidPathError(p);
    yield* dumpPath(this.toRealPath(p));
  }

  async readTextFile(p: StorePath, opts: { validityChecked?: boolean } = {}): Promise<string> {
    if (!opts.validityChecked && !this.isValidPathSync(p)) throw invalidPathError(p);
    const real = this.toRealPath(p);
    // Synchronous calls for a small file (a `.drv`): an lstat, open, read and close of an existing file take
    // microseconds each, less than the thread-pool round trips they would otherwise be, one per build.
    const st = lstatSync(real);
    if (!st.isFile()) throw new StoreError('not-a-regular-file', `store path '${p}' is not a regular file`);
    return st.size <= SMALL_TEXT_FILE ? readFileSync(real, 'utf8') : fsp.readFile(real, 'utf8');
  }

  async deletePath(p: StorePath): Promise<void> {
    this.check();
    parseStorePath(p, this.storeDir);
    if (await this.isValidPath(p)) {
      throw new StoreError('path-is-valid', `cannot delete path '${p}' because it is valid`, {
        hint: 'only invalid (unregistered) paths can be deleted; use garbage collection for valid ones',
      });
    }
    await deleteTree(this.toRealPath(p));
  }

  async lockPaths(paths: Iterable<StorePath>, opts: LockWaitOptions = {}): Promise<HeldLocks> {
    return lockStorePaths(this, paths, opts);
  }

  async tryLockPaths(paths: Iterable<StorePath>, opened?: OpenedLocks): Promise<PathLocks | undefined> {
    return tryLockStorePaths(this, paths, opened instanceof OpenedLockFiles ? opened : undefined);
  }

  openLockFiles(paths: Iterable<StorePath>): OpenedLocks {
    return openStorePathLockFiles(this, paths);
  }

  logPath(drvPath: StorePath): string {
    const base = storePathBase(drvPath);
    return `${this.logDirOf(base)}/${base.slice(2)}`;
  }

  /**
   * The directory of the log of the store path whose base is `base` (`<logDir>/drvs/XX`). Joined by hand:
   * the log dir is normalised (resolveLayout) and a store path's base has no `/` or `.` component, so this
   * is what path.join gives, without its normalisation of the whole path, a character at a time (a build
   * asks for it twice; cold, as in a CLI run, a path.join of it costs 5-20 µs).
   */
  private logDirOf(base: string): string {
    return (this.logDrvsDir ??= this.layout.logDir === '/' ? '/drvs/' : `${this.layout.logDir}/drvs/`) + base.slice(0, 2);
  }

  /** `<logDir>/drvs/`, once known. */
  private logDrvsDir: string | undefined;

  /**
   * Whether addBuildLog writes `<logPath>.bz2` (Nix's `compress-build-log`, on by default) or the plain
   * file. Nix reads both; where both exist, the plain one is read.
   */
  compressBuildLog = true;
  ignoredAcls: readonly string[] | undefined;

  /** Writes the log where Nix 2.8 writes it: `drvs/XX/REST.bz2`, or uncompressed without compressBuildLog. */
  async addBuildLog(drvPath: StorePath, log: string | Uint8Array): Promise<void> {
    const base = storePathBase(drvPath);
    const dir = this.logDirOf(base);
    const plain = `${dir}/${base.slice(2)}`; // logPath
    const file = this.compressBuildLog ? plain + '.bz2' : plain;
    if (this.compressBuildLog) {
      const bytes = typeof log === 'string' ? Buffer.from(log) : log;
      // A log within one of compressBzip2Async's blocks (the usual one) compresses to the same bytes in one call, without a promise.
      log = bytes.length <= SYNC_LOG_COMPRESSION ? compressBzip2(bytes) : await compressBzip2Async(bytes);
    }
    // Each file-system call is a thread-pool round trip (and a directory creation a journal write): the
    // two-character log directories (up to 1,024) are created once per store object, not once per build, and
    // those a store used before has already are listed once (one readdir) instead of made again.
    const made = (this.logDirsMade ??= this.existingLogDirs());
    if (!made.has(dir)) {
      await this.prepareBuildLog(drvPath); // made ahead, or now
      if (!made.has(dir)) {
        // (It failed: made again here, so that the error surfaces.)
        await mkdirOnPool(dir, { recursive: true, mode: 0o755 });
        made.add(dir);
      }
    }
    // Written in place, as Nix writes its log file (no temporary name and rename: one file-system call fewer per build).
    try {
      try {
        await writeNewFile(file, log);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await fsp.mkdir(dir, { recursive: true, mode: 0o755 }); // removed behind our back: make it again
        await writeNewFile(file, log);
      }
    } catch (e) {
      await fsp.rm(file, { force: true }).catch(() => {}); // no truncated log
      throw asStoreWriteError(e, `writing the build log of '${drvPath}' to`, file);
    }
  }

  /** The log directories (`drvs/XX`) known to exist; listed at the first log written or prepared. */
  private logDirsMade: Set<string> | undefined;
  /** Log directories being made by prepareBuildLog (each promise resolves, made or not). */
  private readonly logDirsMaking = new Map<string, Promise<void>>();

  /**
   * Make the directory of `drvPath`'s log ahead, as a build waits for its slot: its creation (a thread-pool
   * round trip and a new inode) then overlaps the running builds, and its completion comes with those of
   * the build's lock files made at the same time, instead of adding a round trip between the builder's exit
   * and the registration of its outputs. A failure is left to addBuildLog (it makes the directory again and
   * says why it cannot). A build that does not run after all leaves the directory, empty, as a store's
   * later logs would make it anyway.
   */
  prepareBuildLog(drvPath: StorePath): Promise<void> {
    const dir = this.logDirOf(storePathBase(drvPath));
    const made = (this.logDirsMade ??= this.existingLogDirs());
    if (made.has(dir)) return Promise.resolve();
    let making = this.logDirsMaking.get(dir);
    if (!making) {
      making = mkdirOnPool(dir, { recursive: true, mode: 0o755 }).then(
        () => {
          made.add(dir);
          this.logDirsMaking.delete(dir);
        },
        () => {
          this.logDirsMaking.delete(dir);
        },
      );
      this.logDirsMaking.set(dir, making);
    }
    return making;
  }

  private existingLogDirs(): Set<string> {
    const drvs = path.join(this.layout.logDir, 'drvs');
    const prefix = this.logDirOf(''); // `<logDir>/drvs/`, as logDirOf joins
    try {
      return new Set(readdirSync(drvs).map((name) => prefix + name));
    } catch {
      return new Set(); // no `drvs` yet (or unreadable: mkdir says why)
    }
  }

  async readBuildLog(drvPath: StorePath): Promise<string | undefined> {
    const base = storePathBase(drvPath);
    for (const file of [this.logPath(drvPath), path.join(this.layout.logDir, base)]) {
      try {
        return await fsp.readFile(file, 'utf8');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      let bz: Buffer;
      try {
        bz = await fsp.readFile(file + '.bz2');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        continue;
      }
      return Buffer.from(decompressBzip2(bz)).toString('utf8');
    }
    return undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Registrations of additions still under way are committed first.
    if (this.pendingRegistrations) this.flushRegistrations();
    this.closed = true;
    const session = await this.session?.catch(() => undefined);
    if (session) {
      await deleteTree(session.dir).catch(() => {});
      closeSync(session.fd);
    }
    await this.optimiser?.drain();
    this.tempRoots?.close();
    this.db.close();
    this.releaseBigLock();
  }
}

/** Refuse `..` segments below the store dir, so a real path never escapes the real store dir. */
export function checkNoDotDot(p: string, storeDir: string): void {
  const rest = p.slice(storeDir.length);
  // A '.' or '..' component follows a '/': without "/." there is none (the usual case, no split).
  if (rest.includes('/.') && rest.split('/').some((seg) => seg === '..' || seg === '.')) {
    throw new InvalidStorePathError(`path '${p}' has '.' or '..' components`, { hint: 'pass a canonical path inside the store' });
  }
}

/**
 * The directories Nix 2.8's LocalStore makes when it opens a store: the store (with `.links`), the database's,
 * `temproots`, `profiles`, `gcroots` (a new one with its `profiles` link to the profiles directory), and
 * `per-user/USER` under both (mode 0755). The log directories come with the first log. Checked synchronously
 * first (a store opened before has them all); those Nix 2.8 added after other versions made the store are
 * made where they can be (a store someone else owns opens as before).
 */
async function makeStoreDirs(layout: LocalStoreLayout): Promise<void> {
  const state = (...p: string[]) => path.join(layout.stateDir, ...p);
  for (const d of [layout.realStoreDir, layout.dbDir, state('temproots'), state('profiles')]) if (!isDirectorySync(d)) await mkdirs(d, 0o755);
  const gcroots = state('gcroots');
  if (!isDirectorySync(gcroots)) {
    await mkdirs(gcroots, 0o755);
    await fsp.symlink(state('profiles'), path.join(gcroots, 'profiles')).catch(ignoreCode('EEXIST'));
  }
  const user = currentUserName();
  const extra = [path.join(layout.realStoreDir, '.links'), state('profiles/per-user'), state('gcroots/per-user')];
  if (user) extra.push(state('profiles/per-user', user), state('gcroots/per-user', user));
  for (const d of extra) {
    if (isDirectorySync(d)) continue;
    try {
      await mkdirs(d, 0o755);
      if (d.includes('/per-user')) await fsp.chmod(d, 0o755);
    } catch (e) {
      ignoreCode('EACCES', 'EPERM', 'EROFS')(e);
    }
  }
}

/**
 * Why Nix 2.8 could not open a store whose big-lock this user cannot open (a store someone else owns): its
 * LocalStore sets the mode of the `per-user` directories before it takes the lock, and fails there first
 * ("could not set permissions on '…/profiles/per-user' to 755: Operation not permitted", or "creating
 * directory '…'" for a missing one). Undefined when both can be set (the lock's own error is then the one
 * to tell). Only called on that failure.
 */
async function perUserModeError(layout: LocalStoreLayout): Promise<StoreError | undefined> {
  for (const d of [path.join(layout.stateDir, 'profiles/per-user'), path.join(layout.stateDir, 'gcroots/per-user')]) {
    try {
      await fsp.mkdir(d);
    } catch (e) {
      // (Nix's createDirs fails first when the directory is missing: "creating directory '…': Permission denied".)
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST')
        return new StoreError('store-open-failed', systemErrorMessage(e) ?? (e as Error).message, { cause: e });
    }
    try {
      await fsp.chmod(d, 0o755);
    } catch (e) {
      return new StoreError('store-open-failed', `could not set permissions on '${d}' to 755: ${strerror(e) ?? (e as Error).message}`, {
        cause: e,
        hint: `this user cannot write the store under '${layout.root ?? layout.stateDir}': run as its owner, or choose another store`,
      });
    }
  }
  return undefined;
}

const ignoreCode =
  (...codes: string[]) =>
  (e: unknown): void => {
    if (!codes.includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
  };

/** The user's name as Nix's getUserName: the password database's, else $USER. */
function currentUserName(): string | undefined {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER || undefined;
  }
}

function isDirectorySync(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export function existsNow(p: string): boolean {
  return lstatOrUndefined(p) !== undefined;
}

const MY_UID = typeof process.geteuid === 'function' ? process.geteuid() : -1;
const MY_GID = typeof process.getegid === 'function' ? process.getegid() : -1;

/** Nix keeps `db/reserved` at gc-reserved-space bytes so GC can free it when the disk is full (sparse here). */
async function ensureReserved(file: string): Promise<void> {
  try {
    if (statSync(file).size === RESERVED_SIZE) return;
  } catch {
    /* create */
  }
  const fh = await fsp.open(file, 'w', 0o600);
  try {
    await fh.truncate(RESERVED_SIZE);
  } finally {
    await fh.close();
  }
}
