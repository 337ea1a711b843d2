/**
 * The garbage collector of a LocalStore, with Nix 2.8's semantics (gc.cc's collectGarbage) so that it
 * and real Nix can share a store:
 *   - the GC lock: `<state>/gc.lock` is held exclusively for the whole collection; a writer that cannot
 *     take it shared (Nix's addTempRoot, and ours in temp-roots.ts) sends its new temporary roots to the
 *     collector's socket `<state>/gc-socket/socket` (`PATH\n`, answered with `1`), which this collector
 *     serves; an answer for a path being deleted waits until its deletion is finished;
 *   - roots: gcroots/ and profiles/ (direct, indirect, gcroots/auto), runtime roots from /proc, temporary
 *     roots of live processes (gc-roots.ts); live = every path reachable from a root through references,
 *     plus (keep-derivations) the valid deriver of a live path and (keep-outputs) the valid outputs of a
 *     live derivation: the set Nix's per-path referrer walks compute, found here in one pass in memory;
 *   - dead valid paths are invalidated and deleted referrers first, so the store stays closed under
 *     references at every moment; right before a path is invalidated it is checked again for a new
 *     temporary root and for referrers registered meanwhile (a build that finished during the
 *     collection), and kept if it has either;
 *   - invalid entries of the store directory are garbage unless their hash part is a temporary root (a
 *     path being built or added); other names are deleted too (as Nix), except `.links` and the locked
 *     temporary directories of live writers;
 *   - `max-freed`: stop once more than that many bytes were freed (bytes counted as Nix does: regular
 *     files and symlinks with one or two links); unused `.links` entries are deleted after a deleting run.
 */
import type Database from 'better-sqlite3';
import { chmodSync, closeSync, constants as FS, lstatSync, mkdirSync, openSync, readdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import type * as net from 'node:net';
import * as path from 'node:path';
import { StoreError } from './errors.js';
import { findPermanentRoots, findTempRoots, type Roots, type RootsContext } from './gc-roots.js';
import { lockPlainFile, tryFlockFd } from './locks.js';
import { HASH_PART_LENGTH, parseStorePathBase, type StorePath } from './store-path.js';

/** What a collection does (Nix's GCOptions::GCAction). */
export type GcAction = 'delete-dead' | 'print-dead' | 'print-live' | 'delete-specific';

export interface GcOptions {
  /** @default 'delete-dead' */
  readonly action?: GcAction | undefined;
  /** The paths to delete with `action: 'delete-specific'` (nix-store --delete). */
  readonly paths?: Iterable<StorePath> | undefined;
  /** Consider no permanent or runtime root (nix-store --delete --ignore-liveness). @default false */
  readonly ignoreLiveness?: boolean | undefined;
  /** Stop deleting once more than this many bytes were freed (nix-store --gc --max-freed). @default Infinity */
  readonly maxFreed?: number | undefined;
  /** Keep the outputs of live derivations (nix.conf keep-outputs). @default false */
  readonly keepOutputs?: boolean | undefined;
  /** Keep the derivers of live paths (nix.conf keep-derivations). @default true */
  readonly keepDerivations?: boolean | undefined;
  /** Scan /proc for paths running processes use. @default true */
  readonly runtimeRoots?: boolean | undefined;
  /** Cancels the collection between paths (what was deleted stays deleted; the store stays consistent). */
  readonly signal?: AbortSignal | undefined;
  /** Messages and progress as the collection runs. */
  readonly onEvent?: ((e: GcEvent) => void) | undefined;
}

/** Events of a collection. `info` lines are Nix's (printInfo) words. */
export type GcEvent =
  | { readonly type: 'info'; readonly message: string }
  | { readonly type: 'roots-found'; readonly roots: number; readonly tempRoots: number }
  /** A process made `path` a temporary root through the collector's socket while it ran. */
  | { readonly type: 'temp-root'; readonly path: string }
  | { readonly type: 'deleted'; readonly path: string; readonly bytesFreed: number }
  | { readonly type: 'progress'; readonly done: number; readonly expected: number; readonly bytesFreed: number };

export interface GcResult {
  readonly action: GcAction;
  /** Deleted paths (deleting actions) or the dead/live paths (printing actions), sorted. */
  readonly paths: readonly string[];
  /** Bytes freed (Nix's accounting: files and symlinks with one or two links). */
  readonly bytesFreed: number;
  /** The collection stopped because `maxFreed` was exceeded. */
  readonly limitReached: boolean;
  /** Unused `.links` entries deleted. */
  readonly linksDeleted: number;
}

/** Thrown by `delete-specific` for a path that is still alive (Nix's words). */
export class PathAliveError extends StoreError {
  constructor(readonly path: StorePath) {
    super('path-alive', `Cannot delete path '${path}' since it is still alive. To find out why, use: nix-store --query --roots`, {
      hint: 'remove its GC roots (or its live referrers) first, or pass ignoreLiveness',
    });
  }
}

/** What the collector needs of a LocalStore. */
export interface GcStoreAccess {
  readonly storeDir: string;
  readonly realStoreDir: string;
  readonly stateDir: string;
  readonly dbDir: string;
  readonly db: Database.Database;
  /** Told the paths that a committed transaction of the collection just invalidated (before their contents go). */
  readonly invalidated?: ((paths: readonly StorePath[]) => void) | undefined;
}

const LINKS = '.links';

function rootsContext(store: GcStoreAccess, info?: (m: string) => void): RootsContext {
  const validStmt = store.db.prepare('select 1 from ValidPaths where path = ?').pluck();
  return {
    storeDir: store.storeDir,
    realStoreDir: store.realStoreDir,
    stateDir: store.stateDir,
    isValid: (p) => validStmt.get(p) !== undefined,
    info,
  };
}

/**
 * Every root and where it was found (Nix's findRoots(false), what `nix-store --gc --print-roots` prints):
 * gcroots and profiles links, `/proc/…` files of running processes, `{temp:PID}` for temporary roots.
 */
export function findRoots(store: GcStoreAccess): Map<StorePath, Set<string>> {
  const ctx = rootsContext(store);
  return findTempRoots(ctx, findPermanentRoots(ctx));
}

/** Collect garbage in a LocalStore (see the file comment). */
export async function collectGarbage(store: GcStoreAccess, options: GcOptions = {}): Promise<GcResult> {
  const action = options.action ?? 'delete-dead';
  const shouldDelete = action === 'delete-dead' || action === 'delete-specific';
  let keepOutputs = options.keepOutputs ?? false;
  let keepDerivations = options.keepDerivations ?? true;
  // As Nix: --delete with --ignore-liveness would follow keep edges into outputs or derivers.
  if (action === 'delete-specific' && options.ignoreLiveness) {
    keepOutputs = false;
    keepDerivations = false;
  }
  const maxFreed = options.maxFreed ?? Infinity;
  if (!(maxFreed >= 0)) throw new StoreError('bad-gc-options', `Expected \`maxFreed\` to be a number from 0 and up, got \`${String(maxFreed)}\``);
  const emit = options.onEvent ?? (() => {});
  const info = (message: string) => emit({ type: 'info', message });

  if (shouldDelete) {
    try {
      unlinkSync(path.join(store.dbDir, 'reserved'));
    } catch {
      /* absent */
    }
  }

  const releaseGcLock = await lockPlainFile(path.join(store.stateDir, 'gc.lock'), 'exclusive', options.signal);
  const server = await RootsServer.start(store, emit);
  try {
    const c = new Collection(store, options, { action, shouldDelete, keepOutputs, keepDerivations, maxFreed }, server, emit);
    return await c.run();
  } finally {
    await server.stop();
    releaseGcLock();
  }
}

/**
 * The collector's side of `<state>/gc-socket/socket`: each line is a store path that a process made a
 * temporary root while the collector holds the GC lock. The answer `1` means the collector will not
 * delete it; for a path being deleted right now it comes once the deletion is finished.
 */
class RootsServer {
  readonly tempRootHashes = new Set<string>();
  private readonly pending = new Map<string, Promise<void>>();
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly server: net.Server,
    private readonly emit: (e: GcEvent) => void,
  ) {}

  static async start(store: GcStoreAccess, emit: (e: GcEvent) => void): Promise<RootsServer> {
    const dir = path.join(store.stateDir, 'gc-socket');
    mkdirSync(dir, { recursive: true });
    const socketPath = path.join(dir, 'socket');
    // (node:net is loaded only when a collection runs.)
    const { createServer } = await import('node:net');
    const server = createServer();
    const rs = new RootsServer(server, emit);
    server.on('connection', (s) => rs.serve(s, store.storeDir));
    // The socket is bound under a name of its own, then renamed over `socket`: a client never finds the name
    // missing. Nix 2.8's client treats a refused connection (a socket nobody listens on: the last
    // collector's) as "the collector is gone, retry with the lock", but a missing one as sent, and from then
    // on never reaches a collector again. For the same reason the name is left behind at the end, as Nix's
    // collector leaves it (closing the server removes only the name it was bound under, gone by then).
    const boundAt = `${socketPath}.${process.pid}`;
    try {
      unlinkSync(boundAt);
    } catch {
      /* absent */
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(boundAt, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(boundAt, 0o666);
    renameSync(boundAt, socketPath);
    return rs;
  }

  private serve(s: net.Socket, storeDir: string): void {
    this.sockets.add(s);
    let buf = '';
    let chain = Promise.resolve();
    s.setEncoding('latin1');
    s.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const hash = hashPartOf(line, storeDir);
        if (hash) {
          this.tempRootHashes.add(hash);
          this.emit({ type: 'temp-root', path: line });
        }
        const wait = hash ? this.pending.get(hash) : undefined;
        chain = chain
          .then(() => wait)
          .then(() => {
            if (!s.destroyed) s.write('1');
          });
      }
    });
    s.on('error', () => {});
    s.on('close', () => this.sockets.delete(s));
  }

  /** Run `work` (deleting the paths with these hash parts); roots sent for them meanwhile are answered after it. */
  async deleting<T>(hashes: readonly string[], work: () => Promise<T> | T): Promise<T> {
    let done!: () => void;
    const p = new Promise<void>((r) => {
      done = r;
    });
    for (const h of hashes) this.pending.set(h, p);
    try {
      return await work();
    } finally {
      for (const h of hashes) if (this.pending.get(h) === p) this.pending.delete(h);
      done();
    }
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** Hash part of `<storeDir>/<hash>-<name>`, or undefined for anything else. */
function hashPartOf(p: string, storeDir: string): string | undefined {
  if (!p.startsWith(storeDir + '/')) return undefined;
  const base = p.slice(storeDir.length + 1);
  return isStorePathBase(base, storeDir) ? base.slice(0, HASH_PART_LENGTH) : undefined;
}

function isStorePathBase(base: string, storeDir: string): boolean {
  if (base.length < HASH_PART_LENGTH + 2 || base[HASH_PART_LENGTH] !== '-' || base.includes('/')) return false;
  try {
    parseStorePathBase(base, storeDir);
    return true;
  } catch {
    return false;
  }
}

interface Settings {
  action: GcAction;
  shouldDelete: boolean;
  keepOutputs: boolean;
  keepDerivations: boolean;
  maxFreed: number;
}

/** The store's path graph, read in three queries. */
interface Graph {
  ids: Map<StorePath, number>;
  paths: StorePath[]; // by id
  derivers: Map<number, number>; // path id → valid deriver id
  narSizes: number[]; // by id
  refs: Map<number, number[]>; // referrer → references
  outputs: Map<number, number[]>; // drv id → valid output ids
}

function loadGraph(db: Database.Database, withOutputs: boolean): Graph {
  const ids = new Map<StorePath, number>();
  const paths: StorePath[] = [];
  const narSizes: number[] = [];
  const deriverOf: Array<[number, string]> = [];
  for (const r of db.prepare('select id, path, deriver, narSize from ValidPaths').raw().iterate() as Iterable<[number, string, string | null, number | null]>) {
    ids.set(r[1], r[0]);
    paths[r[0]] = r[1];
    narSizes[r[0]] = r[3] ?? 0;
    if (r[2]) deriverOf.push([r[0], r[2]]);
  }
  const derivers = new Map<number, number>();
  for (const [id, d] of deriverOf) {
    const did = ids.get(d);
    if (did !== undefined) derivers.set(id, did);
  }
  const refs = new Map<number, number[]>();
  for (const [a, b] of db.prepare('select referrer, reference from Refs').raw().iterate() as Iterable<[number, number]>) {
    let l = refs.get(a);
    if (!l) refs.set(a, (l = []));
    l.push(b);
  }
  const outputs = new Map<number, number[]>();
  if (withOutputs) {
    for (const [drv, out] of db.prepare('select drv, path from DerivationOutputs').raw().iterate() as Iterable<[number, string]>) {
      const oid = ids.get(out);
      if (oid === undefined) continue;
      let l = outputs.get(drv);
      if (!l) outputs.set(drv, (l = []));
      l.push(oid);
    }
  }
  return { ids, paths, derivers, narSizes, refs, outputs };
}

/** Delete a file tree, counting freed bytes as Nix's deletePath does. Missing is fine. */
async function deleteCounting(p: string): Promise<number> {
  let st;
  try {
    st = await fsp.lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
  if (!st.isDirectory()) {
    try {
      await fsp.unlink(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw e;
    }
    return st.nlink <= 2 ? st.size : 0;
  }
  if ((st.mode & 0o700) !== 0o700) await fsp.chmod(p, (st.mode & 0o7777) | 0o700);
  let freed = 0;
  for (const name of await fsp.readdir(p)) freed += await deleteCounting(p + '/' + name);
  try {
    await fsp.rmdir(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  return freed;
}

/** Paths whose contents are deleted at once (their file-system waits overlap). */
const DELETE_CONCURRENCY = 8;

/** A `.tmp-*` directory of a live writer (it holds the directory's flock): never garbage. */
function isLockedTempDir(realPath: string): boolean {
  let fd: number;
  try {
    fd = openSync(realPath, FS.O_RDONLY | FS.O_DIRECTORY);
  } catch {
    return false;
  }
  try {
    return !tryFlockFd(fd, realPath);
  } finally {
    closeSync(fd);
  }
}

class GcLimitReached extends Error {}

class Collection {
  private readonly results = new Set<string>();
  private bytesFreed = 0;
  private limitReached = false;

  constructor(
    private readonly store: GcStoreAccess,
    private readonly options: GcOptions,
    private readonly s: Settings,
    private readonly server: RootsServer,
    private readonly emit: (e: GcEvent) => void,
  ) {}

  private info(message: string): void {
    this.emit({ type: 'info', message });
  }

  async run(): Promise<GcResult> {
    const { store, s } = this;
    const db = store.db;
    const ctx = rootsContext(store, (m) => this.info(m));
    this.info('finding garbage collector roots...');
    // Temporary roots written before we took the lock (later ones come through the socket), read before
    // the permanent roots: a process that makes a permanent root and exits while we look has its path in
    // its temporary roots file until then. (Nix reads them the other way round and relies on the socket
    // alone for this; Nix 2.8's client sometimes fails to reach it, see readTempRoots.)
    const temp = this.readTempRoots(ctx);
    const roots: Roots = this.options.ignoreLiveness ? new Map() : findPermanentRoots(ctx, { runtime: this.options.runtimeRoots ?? true });
    this.emit({ type: 'roots-found', roots: roots.size, tempRoots: temp.size });
    // Nix's synchronisation point for tests (tests/gc-concurrent.sh): read this file (a FIFO) before the walk.
    const sync = process.env._NIX_TEST_GC_SYNC;
    if (sync) await fsp.readFile(sync);

    const g = loadGraph(db, s.keepOutputs);
    const alive = this.liveSet(g, [...roots.keys(), ...temp.keys()]);

    if (s.action === 'delete-specific') return this.deleteSpecific(g, alive);

    // Entries of the store directory that are not valid paths.
    const junk: string[] = [];
    const invalidLive: string[] = [];
    if (s.maxFreed > 0) {
      for (const name of readdirSync(store.realStoreDir)) {
        if (name === LINKS) continue;
        const p = `${store.storeDir}/${name}`;
        if (g.ids.has(p)) continue;
        if (isStorePathBase(name, store.storeDir)) {
          if (this.server.tempRootHashes.has(name.slice(0, HASH_PART_LENGTH))) invalidLive.push(p);
          else junk.push(p);
        } else if (!(name.startsWith('.tmp-') && isLockedTempDir(path.join(store.realStoreDir, name)))) {
          junk.push(p);
        }
      }
    }

    if (!s.shouldDelete) this.info('determining live/dead paths...');
    if (s.action === 'print-live') {
      const live = [...alive].map((id) => g.paths[id]!);
      return this.result([...live, ...invalidLive]);
    }
    const deadValid = s.maxFreed > 0 ? this.referrersFirst(g, alive) : [];
    if (s.action === 'print-dead') return this.result([...junk, ...deadValid.map((id) => g.paths[id]!)]);

    this.info('deleting garbage...');
    this.readTempRoots(ctx);
    try {
      await this.deleteInvalid(junk);
      await this.deleteValid(g, deadValid);
    } catch (e) {
      if (!(e instanceof GcLimitReached)) throw e;
      this.info(`deleted more than ${s.maxFreed} bytes; stopping`);
    }
    const linksDeleted = this.deleteUnusedLinks();
    return this.result([...this.results], linksDeleted);
  }

  /**
   * Add the temporary roots files' paths to the roots that keep a path from deletion. Read once more right
   * before deleting: a Nix 2.8 client whose connection to a collector's socket failed in a way it does not
   * retry (the name missing, a reset) records its roots in its file only, even while we run.
   */
  private readTempRoots(ctx: RootsContext): Roots {
    const sd = this.store.storeDir.length + 1;
    const temp = findTempRoots(ctx);
    for (const p of temp.keys()) this.server.tempRootHashes.add(p.slice(sd, sd + HASH_PART_LENGTH));
    return temp;
  }

  private result(paths: string[], linksDeleted = 0): GcResult {
    return { action: this.s.action, paths: [...new Set(paths)].sort(), bytesFreed: this.bytesFreed, limitReached: this.limitReached, linksDeleted };
  }

  /** Every path reachable from the roots through references and the keep-outputs/keep-derivations edges. */
  private liveSet(g: Graph, roots: Iterable<StorePath>): Set<number> {
    const alive = new Set<number>();
    const todo: number[] = [];
    const add = (id: number | undefined) => {
      if (id !== undefined && !alive.has(id)) {
        alive.add(id);
        todo.push(id);
      }
    };
    for (const r of roots) add(g.ids.get(r));
    // Temporary roots are matched by hash part (they may be sent for a path before it is valid).
    for (const [p, id] of g.ids)
      if (this.server.tempRootHashes.has(p.slice(this.store.storeDir.length + 1, this.store.storeDir.length + 1 + HASH_PART_LENGTH))) add(id);
    while (todo.length) {
      const id = todo.pop()!;
      for (const r of g.refs.get(id) ?? []) add(r);
      if (this.s.keepDerivations) add(g.derivers.get(id));
      if (this.s.keepOutputs) for (const o of g.outputs.get(id) ?? []) add(o);
    }
    return alive;
  }

  /** The valid paths not in `alive`, each before every path it references. */
  private referrersFirst(g: Graph, alive: Set<number>, only?: Set<number>): number[] {
    const order: number[] = [];
    const state = new Map<number, 1 | 2>();
    // Post-order over references gives references first; reversed, referrers first.
    for (const start of only ?? g.ids.values()) {
      if (alive.has(start) || state.has(start)) continue;
      const stack: Array<[number, number]> = [[start, 0]];
      state.set(start, 1);
      while (stack.length) {
        const top = stack[stack.length - 1]!;
        const refs = g.refs.get(top[0]) ?? [];
        if (top[1] < refs.length) {
          const r = refs[top[1]++]!;
          if (r !== top[0] && !alive.has(r) && !state.has(r) && (!only || only.has(r))) {
            state.set(r, 1);
            stack.push([r, 0]);
          }
        } else {
          stack.pop();
          state.set(top[0], 2);
          order.push(top[0]);
        }
      }
    }
    return order.reverse();
  }

  private checkAbort(): void {
    this.options.signal?.throwIfAborted();
  }

  /** Account for a deleted path; false once more than maxFreed bytes are freed. */
  private counted(p: string, freed: number): boolean {
    this.results.add(p);
    this.bytesFreed += freed;
    this.emit({ type: 'deleted', path: p, bytesFreed: this.bytesFreed });
    if (this.bytesFreed <= this.s.maxFreed) return true;
    this.limitReached = true;
    return false;
  }

  private realPath(p: string): string {
    return this.store.realStoreDir + p.slice(this.store.storeDir.length);
  }

  /** Invalid entries: deleted unless they became temporary roots meanwhile. */
  private async deleteInvalid(junk: string[]): Promise<void> {
    const sd = this.store.storeDir.length + 1;
    for (const p of junk) {
      this.checkAbort();
      const hash = p.slice(sd, sd + HASH_PART_LENGTH);
      if (this.server.tempRootHashes.has(hash)) continue;
      this.info(`deleting '${p}'`);
      const freed = await this.server.deleting([hash], () => deleteCounting(this.realPath(p)));
      if (!this.counted(p, freed)) throw new GcLimitReached();
    }
  }

  /**
   * Dead valid paths, referrers first, in batches: one transaction invalidates a batch (skipping any
   * path that became a temporary root or got a referrer since the graph was read), then its contents go.
   */
  private async deleteValid(g: Graph, dead: number[]): Promise<void> {
    const db = this.store.db;
    const referrers = db.prepare('select referrer from Refs where reference = ? and referrer != reference limit 1').pluck();
    const idOf = db.prepare('select id from ValidPaths where path = ?').pluck();
    const del = db.prepare('delete from ValidPaths where id = ?');
    const sd = this.store.storeDir.length + 1;
    let done = 0;
    for (let i = 0; i < dead.length;) {
      this.checkAbort();
      // Up to 256 paths a transaction; under maxFreed, no more than the NAR sizes say the rest of the budget allows.
      let end = i + 1;
      let budget = this.s.maxFreed - this.bytesFreed - (g.narSizes[dead[i]!] ?? 0);
      while (end < dead.length && end - i < 256 && (budget -= g.narSizes[dead[end]!] ?? 0) >= 0) end++;
      const batch = dead.slice(i, end).map((id) => g.paths[id]!);
      i = end;
      const gone: string[] = [];
      db.transaction(() => {
        for (const p of batch) {
          if (this.server.tempRootHashes.has(p.slice(sd, sd + HASH_PART_LENGTH))) continue;
          const id = idOf.get(p) as number | undefined;
          if (id === undefined) continue; // invalidated by someone else
          if (referrers.get(id) !== undefined) continue; // a path registered meanwhile refers to it
          del.run(id);
          gone.push(p);
        }
      }).immediate();
      this.store.invalidated?.(gone);
      await this.server.deleting(
        gone.map((p) => p.slice(sd, sd + HASH_PART_LENGTH)),
        async () => {
          let stop = false;
          let next = 0;
          const worker = async () => {
            while (next < gone.length) {
              const p = gone[next++]!;
              // Once the limit is reached, the rest of the batch (already invalidated) still goes.
              if (!stop) this.info(`deleting '${p}'`);
              const freed = await deleteCounting(this.realPath(p));
              if (stop) {
                this.results.add(p);
                this.bytesFreed += freed;
              } else stop = !this.counted(p, freed);
            }
          };
          await Promise.all(Array.from({ length: Math.min(DELETE_CONCURRENCY, gone.length) }, worker));
          if (stop) throw new GcLimitReached();
        },
      );
      done = i;
      this.emit({ type: 'progress', done, expected: dead.length, bytesFreed: this.bytesFreed });
      await new Promise((r) => setImmediate(r)); // let the roots server answer
    }
  }

  /**
   * nix-store --delete: a requested path goes only with everything that keeps it (its referrers, and
   * through keep-derivations/keep-outputs its outputs/derivers), all of which must be requested and dead
   * too; otherwise it is still alive, an error. As Nix's collectGarbage, the requested paths are taken one
   * by one in store path order, each deleted with what keeps it before the next is looked at: the error
   * for a live path comes after the paths before it were deleted.
   */
  private async deleteSpecific(g: Graph, alive: Set<number>): Promise<GcResult> {
    const sd = this.store.storeDir.length + 1;
    const requested = [...new Set(this.options.paths ?? [])].sort();
    const wanted = new Set<number>();
    for (const p of requested) {
      const id = g.ids.get(p);
      if (id !== undefined) wanted.add(id);
    }
    const keepers = this.keepers(g);
    const deletable = new Set<number>();
    /** Found deletable since the last deletion: what the next one takes. */
    let fresh: number[] = [];
    const blocked = new Set<number>();
    const canDelete = (id: number): boolean => {
      if (deletable.has(id)) return true;
      if (blocked.has(id)) return false;
      blocked.add(id); // until proven deletable (also ends cycles through keep edges)
      if (!wanted.has(id) || alive.has(id) || !(keepers.get(id) ?? []).every(canDelete)) return false;
      blocked.delete(id);
      deletable.add(id);
      fresh.push(id);
      return true;
    };
    // (No "deleting garbage..." here: Nix says it for a collection, not for a deletion of given paths.)
    try {
      for (const p of requested) {
        const id = g.ids.get(p);
        if (id === undefined) {
          if (this.server.tempRootHashes.has(p.slice(sd, sd + HASH_PART_LENGTH))) throw new PathAliveError(p);
          await this.deleteInvalid([p]);
          continue;
        }
        if (!canDelete(id)) throw new PathAliveError(p);
        const now = new Set(fresh);
        fresh = [];
        await this.deleteValid(g, this.referrersFirst(g, alive, now));
      }
    } catch (e) {
      if (!(e instanceof GcLimitReached)) throw e;
    }
    const linksDeleted = this.deleteUnusedLinks();
    return this.result([...this.results], linksDeleted);
  }

  /** For each path, the paths that keep it alive when they are alive (the reverse of liveSet's edges). */
  private keepers(g: Graph): Map<number, number[]> {
    const k = new Map<number, number[]>();
    const add = (kept: number, by: number) => {
      if (kept === by) return;
      let l = k.get(kept);
      if (!l) k.set(kept, (l = []));
      l.push(by);
    };
    for (const [a, refs] of g.refs) for (const b of refs) add(b, a);
    if (this.s.keepDerivations) for (const [out, drv] of g.derivers) add(drv, out);
    if (this.s.keepOutputs) for (const [drv, outs] of g.outputs) for (const o of outs) add(o, drv);
    return k;
  }

  /** `.links` entries nothing else links to any more (link count 1), as Nix does after deleting. */
  private deleteUnusedLinks(): number {
    const dir = path.join(this.store.realStoreDir, LINKS);
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return 0;
    }
    this.info('deleting unused links...');
    let deleted = 0;
    let actual = 0;
    let unshared = 0;
    for (const name of names) {
      const f = path.join(dir, name);
      let st;
      try {
        st = lstatSync(f);
      } catch {
        continue;
      }
      if (st.nlink !== 1) {
        actual += st.size;
        unshared += (st.nlink - 1) * st.size;
        continue;
      }
      try {
        unlinkSync(f);
        deleted++;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    const overhead = statSync(dir).blocks * 512;
    this.info(`note: currently hard linking saves ${((unshared - actual - overhead) / (1024 * 1024)).toFixed(2)} MiB`);
    return deleted;
  }
}
