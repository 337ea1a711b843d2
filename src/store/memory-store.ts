/**
 * MemoryStore: the Store interface with path metadata and NARs held in memory, for tests and for
 * embedding without a database. It passes the same conformance suite as LocalStore.
 *
 * Builders and sandboxes need real files, so every valid path is also materialised (restored and
 * canonicalised) under `realStoreDir`, a temporary directory the store creates and `close()` removes
 * (unless one was given). `toRealPath` points there. The NAR kept in memory is what `narFromPath`
 * serves; locks are real `<real path>.lock` flocks, so they behave exactly like LocalStore's.
 */
import { mkdirSync, mkdtempSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { canonicalisePathMetaData, deleteTree, movePathSync } from './canonicalise.js';
import { InvalidStorePathError, StoreError } from './errors.js';
import { Hash } from './hash.js';
import { HeldLocks, type LockWaitOptions, lockStorePaths, openStorePathLockFiles, OpenedLockFiles, tryLockStorePaths } from './locks.js';
import {
  checkBatchClosure,
  checkNoDotDot,
  checkPathInfo,
  BATCH_RESTORE_MAX,
  existsNow,
  hashingStream,
  invalidPathError,
  narHashMismatch,
  narSizeMismatch,
  verifyContentAddress,
} from './local-store.js';
import { collect, dumpPath, narOfRegularFile, restorePath, streamOf } from './nar.js';
import type { AddToStoreOptions, NarSource, OpenedLocks, PathInfo, PathLocks, Realisation, Store } from './store-api.js';
import { computeTextPath, DEFAULT_STORE_DIR, parseStorePath, storePathBase, type StorePath } from './store-path.js';

export interface MemoryStoreOptions {
  /** Logical store directory. @default '/nix/store' */
  readonly storeDir?: string;
  /** Where valid paths are materialised. @default a fresh temporary directory, removed by `close()` */
  readonly realStoreDir?: string;
}

interface Entry {
  info: PathInfo;
  nar: Buffer;
}

export class MemoryStore implements Store {
  readonly storeDir: string;
  readonly realStoreDir: string;
  private readonly logDir: string;
  private readonly ownedDir: string | undefined;
  private readonly paths = new Map<StorePath, Entry>();
  private readonly drvOutputs = new Map<StorePath, Map<string, StorePath>>();
  private readonly realisations = new Map<string, Realisation>();
  private closed = false;

  constructor(opts: MemoryStoreOptions = {}) {
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    if (opts.realStoreDir) {
      this.realStoreDir = path.resolve(opts.realStoreDir);
      this.logDir = path.join(this.realStoreDir, '..', 'log');
      this.ownedDir = undefined;
    } else {
      this.ownedDir = mkdtempSync(path.join(tmpdir(), 'realise-memstore-'));
      this.realStoreDir = path.join(this.ownedDir, 'store');
      this.logDir = path.join(this.ownedDir, 'log');
    }
    mkdirSync(this.realStoreDir, { recursive: true });
  }

  private tmpCounter = 0;
  private tmp: string | undefined;
  /** One directory under `realStoreDir` that additions are restored into before their move into place. */
  private tempDir(): string {
    return (this.tmp ??= mkdtempSync(path.join(this.realStoreDir, '.tmp-')));
  }

  private check(): void {
    if (this.closed) throw new StoreError('store-closed', 'the memory store has been closed');
  }

  toRealPath(p: string): string {
    if (p === this.storeDir || p.startsWith(this.storeDir + '/')) {
      checkNoDotDot(p, this.storeDir);
      return this.realStoreDir + p.slice(this.storeDir.length);
    }
    throw new InvalidStorePathError(`path '${p}' is not in the Nix store '${this.storeDir}'`);
  }

  private validSet(ps: Iterable<StorePath>): Set<StorePath> {
    const out = new Set<StorePath>();
    for (const p of ps) if (this.paths.has(p)) out.add(p);
    return out;
  }

  async isValidPath(p: StorePath): Promise<boolean> {
    this.check();
    return this.paths.has(p);
  }

  async queryValidPaths(ps: Iterable<StorePath>): Promise<Set<StorePath>> {
    this.check();
    return this.validSet(ps);
  }

  async queryPathInfo(p: StorePath): Promise<PathInfo | undefined> {
    this.check();
    const e = this.paths.get(p);
    return e ? { ...e.info, references: [...e.info.references].sort() } : undefined;
  }

  async queryReferrers(p: StorePath): Promise<StorePath[]> {
    this.check();
    const out: StorePath[] = [];
    for (const [q, e] of this.paths) if (e.info.references.includes(p)) out.push(q);
    return out.sort();
  }

  async computeClosure(ps: Iterable<StorePath>): Promise<Set<StorePath>> {
    this.check();
    const out = new Set<StorePath>();
    const todo = [...new Set(ps)];
    for (const p of todo) if (!this.paths.has(p)) throw invalidPathError(p);
    while (todo.length) {
      const p = todo.pop()!;
      if (out.has(p)) continue;
      out.add(p);
      for (const r of this.paths.get(p)?.info.references ?? []) if (!out.has(r) && this.paths.has(r)) todo.push(r);
    }
    return out;
  }

  /** Nothing collects garbage in a memory store: a no-op. */
  async addTempRoot(_p: StorePath): Promise<void> {
    this.check();
  }

  /** Valid derivations that list `outPath` as an output (Nix's queryValidDerivers). */
  async queryValidDerivers(outPath: StorePath): Promise<StorePath[]> {
    this.check();
    const out: StorePath[] = [];
    for (const [drv, m] of this.drvOutputs) if (this.paths.has(drv) && [...m.values()].includes(outPath)) out.push(drv);
    return out.sort();
  }

  /** Every valid path of the store. */
  async queryAllValidPaths(): Promise<Set<StorePath>> {
    this.check();
    return new Set(this.paths.keys());
  }

  async queryDerivationOutputs(drvPath: StorePath): Promise<Map<string, StorePath>> {
    this.check();
    return new Map(this.drvOutputs.get(drvPath) ?? []);
  }

  async queryRealisation(id: string): Promise<Realisation | undefined> {
    this.check();
    return this.realisations.get(id);
  }

  async registerRealisation(r: Realisation): Promise<void> {
    this.check();
    parseStorePath(r.outPath, this.storeDir);
    const old = this.realisations.get(r.id);
    if (old && old.outPath !== r.outPath) {
      throw new StoreError(
        'realisation-conflict',
        `Trying to register a realisation of '${r.id}', but we already have another one locally.\nLocal:  ${old.outPath}\nRemote: ${r.outPath}`,
      );
    }
    if (!old && !this.paths.has(r.outPath)) throw invalidPathError(r.outPath, 'is not valid, so no realisation can name it');
    for (const [depId, depPath] of r.dependentRealisations ?? []) {
      const have = this.realisations.get(depId);
      if (!have) throw new StoreError('realisation-missing', `unable to register the derivation '${r.id}' as it depends on the non existent '${depId}'`);
      if (have.outPath !== depPath) {
        throw new StoreError(
          'realisation-conflict',
          `unable to register the derivation '${r.id}' as it depends on a realisation of '${depId}' that doesn\u2019tmatch what we have locally`,
        );
      }
    }
    const signatures = [...new Set([...(old?.signatures ?? []), ...(r.signatures ?? [])])].sort();
    const deps = new Map([...(old?.dependentRealisations ?? []), ...(r.dependentRealisations ?? [])]);
    this.realisations.set(r.id, { id: r.id, outPath: r.outPath, signatures, dependentRealisations: deps });
  }

  async registerDerivationOutputs(drvPath: StorePath, outputs: ReadonlyMap<string, StorePath>): Promise<void> {
    this.check();
    parseStorePath(drvPath, this.storeDir);
    for (const p of outputs.values()) parseStorePath(p, this.storeDir);
    if (!this.paths.has(drvPath)) throw invalidPathError(drvPath, 'is not valid, so its outputs cannot be registered');
    const m = this.drvOutputs.get(drvPath) ?? new Map<string, StorePath>();
    for (const [k, v] of outputs) m.set(k, v);
    this.drvOutputs.set(drvPath, m);
  }

  private register(infos: readonly PathInfo[], nars: ReadonlyMap<StorePath, Buffer>): void {
    const order = checkBatchClosure(infos, (ps) => this.validSet(ps));
    const now = Math.floor(Date.now() / 1000);
    for (const i of order) {
      const old = this.paths.get(i.path);
      const info: PathInfo = {
        ...i,
        references: [...new Set(i.references)].sort(),
        registrationTime: old?.info.registrationTime ?? i.registrationTime ?? now,
        deriver: old ? old.info.deriver : i.deriver,
        ultimate: i.ultimate ?? false,
        sigs: i.sigs ?? [],
      };
      this.paths.set(i.path, { info, nar: nars.get(i.path)! });
    }
  }

  async registerValidPaths(infos: readonly PathInfo[]): Promise<void> {
    this.check();
    if (infos.length === 0) return;
    for (const i of infos) checkPathInfo(i, this.storeDir);
    checkBatchClosure(infos, (ps) => this.validSet(ps));
    const nars = new Map<StorePath, Buffer>();
    for (const i of infos) {
      const real = this.toRealPath(i.path);
      try {
        await fsp.lstat(real);
      } catch {
        throw new StoreError('missing-contents', `cannot register path '${i.path}': its contents are missing at '${real}'`, {
          hint: 'write the contents first; nothing was registered',
        });
      }
      await canonicalisePathMetaData(real);
      nars.set(i.path, await collect(dumpPath(real)));
    }
    this.register(infos, nars);
  }

  async addToStore(info: PathInfo, nar: NarSource, opts: AddToStoreOptions = {}): Promise<PathInfo> {
    this.check();
    checkPathInfo(info, this.storeDir);
    if (!opts.repair && this.paths.has(info.path)) return (await this.queryPathInfo(info.path))!;
    checkBatchClosure([info], (ps) => this.validSet(ps));
    const locks = await this.lockPaths([info.path], { signal: opts.signal });
    const tmp = this.tempDir();
    const target = path.join(tmp, `${++this.tmpCounter}-${storePathBase(info.path)}`);
    try {
      if (!opts.repair && this.paths.has(info.path)) return (await this.queryPathInfo(info.path))!;
      const hashed = hashingStream(nar, info.narHash.algorithm, opts.signal);
      const chunks: Uint8Array[] = [];
      async function* keep() {
        for await (const c of hashed.stream) {
          chunks.push(c);
          yield c;
        }
      }
      await restorePath(target, keep(), { canonical: true, batch: !!info.narSize && info.narSize <= BATCH_RESTORE_MAX });
      const got = hashed.result();
      if (!got.hash.equals(info.narHash)) throw narHashMismatch(info.path, info.narHash, got.hash);
      if (info.narSize && got.size !== info.narSize) throw narSizeMismatch(info.path, info.narSize, got.size);
      await verifyContentAddress(info, target, got.hash);
      await canonicalisePathMetaData(target);
      const final: PathInfo = { ...info, narSize: got.size };
      checkBatchClosure([final], (ps) => this.validSet(ps));
      const real = this.toRealPath(info.path);
      if (existsNow(real)) await deleteTree(real);
      movePathSync(target, real);
      this.register([final], new Map([[info.path, Buffer.concat(chunks)]]));
      return (await this.queryPathInfo(info.path))!;
    } finally {
      if (existsNow(target)) await deleteTree(target).catch(() => {});
      await locks.release();
    }
  }

  async addTextToStore(name: string, text: string, references: Iterable<StorePath> = []): Promise<StorePath> {
    this.check();
    const refs = [...new Set(references)].sort();
    const p = computeTextPath(name, text, refs, this.storeDir);
    if (this.paths.has(p)) return p;
    const nar = narOfRegularFile(text);
    await this.addToStore(
      { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: refs, ca: `text:${Hash.of('sha256', text).toString('base32')}` },
      streamOf(nar),
    );
    return p;
  }

  async *narFromPath(p: StorePath): AsyncGenerator<Uint8Array> {
    const e = this.paths.get(p);
    if (!e) throw invalidPathError(p);
    yield e.nar;
  }

  async readTextFile(p: StorePath): Promise<string> {
    if (!this.paths.has(p)) throw invalidPathError(p);
    const real = this.toRealPath(p);
    const st = await fsp.lstat(real);
    if (!st.isFile()) throw new StoreError('not-a-regular-file', `store path '${p}' is not a regular file`);
    return fsp.readFile(real, 'utf8');
  }

  async deletePath(p: StorePath): Promise<void> {
    this.check();
    parseStorePath(p, this.storeDir);
    if (this.paths.has(p)) {
      throw new StoreError('path-is-valid', `cannot delete path '${p}' because it is valid`, {
        hint: 'only invalid (unregistered) paths can be deleted; use garbage collection for valid ones',
      });
    }
    await deleteTree(this.toRealPath(p));
  }

  async lockPaths(ps: Iterable<StorePath>, opts: LockWaitOptions = {}): Promise<HeldLocks> {
    return lockStorePaths(this, ps, opts);
  }

  async tryLockPaths(ps: Iterable<StorePath>, opened?: OpenedLocks): Promise<PathLocks | undefined> {
    return tryLockStorePaths(this, ps, opened instanceof OpenedLockFiles ? opened : undefined);
  }

  openLockFiles(ps: Iterable<StorePath>): OpenedLocks {
    return openStorePathLockFiles(this, ps);
  }

  logPath(drvPath: StorePath): string {
    const base = storePathBase(drvPath);
    return path.join(this.logDir, 'drvs', base.slice(0, 2), base.slice(2));
  }

  async addBuildLog(drvPath: StorePath, log: string | Uint8Array): Promise<void> {
    const file = this.logPath(drvPath);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await fsp.writeFile(file, log);
  }

  async readBuildLog(drvPath: StorePath): Promise<string | undefined> {
    try {
      return await fsp.readFile(this.logPath(drvPath), 'utf8');
    } catch {
      return undefined;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownedDir) await deleteTree(this.ownedDir);
    else if (this.tmp) await deleteTree(this.tmp).catch(() => {});
  }
}
