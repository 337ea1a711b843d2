/**
 * A tiny on-disk Store for the substituter tests (only what substitution and cache writing use):
 * addToStore restores into a temporary name inside the store dir, checks narHash/narSize and the closure,
 * renames into place and registers in memory; on failure it removes everything it wrote.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { StoreError } from '../../src/store/errors.js';
import { HashSink } from '../../src/store/hash.js';
import { dumpPath, restorePath } from '../../src/store/nar.js';
import type { AddToStoreOptions, NarSource, PathInfo, Store } from '../../src/store/store-api.js';
import { storePathBase, type StorePath } from '../../src/store/store-path.js';

let n = 0;

export class FakeStore implements Partial<Store> {
  readonly storeDir = '/nix/store';
  readonly realStoreDir: string;
  readonly infos = new Map<StorePath, PathInfo>();
  addCalls = 0;

  constructor(dir: string) {
    this.realStoreDir = dir;
  }

  static async create(dir: string): Promise<FakeStore & Store> {
    await fsp.mkdir(dir, { recursive: true });
    return new FakeStore(dir) as unknown as FakeStore & Store;
  }

  toRealPath(p: string): string {
    return this.realStoreDir + p.slice(this.storeDir.length);
  }

  async isValidPath(p: StorePath): Promise<boolean> {
    return this.infos.has(p);
  }
  async queryValidPaths(ps: Iterable<StorePath>): Promise<Set<StorePath>> {
    return new Set([...ps].filter((p) => this.infos.has(p)));
  }
  async queryPathInfo(p: StorePath): Promise<PathInfo | undefined> {
    return this.infos.get(p);
  }

  async computeClosure(ps: Iterable<StorePath>): Promise<Set<StorePath>> {
    const out = new Set<StorePath>();
    const todo = [...ps];
    while (todo.length) {
      const p = todo.pop()!;
      if (out.has(p)) continue;
      const info = this.infos.get(p);
      if (!info) throw new StoreError('invalid-path', `path '${p}' is not valid`);
      out.add(p);
      todo.push(...info.references);
    }
    return out;
  }

  async addToStore(info: PathInfo, nar: NarSource, opts: AddToStoreOptions = {}): Promise<PathInfo> {
    this.addCalls++;
    if (this.infos.has(info.path) && !opts.repair) return this.infos.get(info.path)!;
    for (const r of info.references) {
      if (r !== info.path && !this.infos.has(r)) throw new StoreError('missing-references', `cannot add '${info.path}': reference '${r}' is not valid`);
    }
    const tmp = path.join(this.realStoreDir, `.tmp-${process.pid}-${++n}`);
    const sink = new HashSink('sha256');
    async function* hashed() {
      for await (const c of nar) {
        sink.update(c);
        yield c;
      }
    }
    try {
      await restorePath(tmp, hashed());
      const { hash, size } = sink.finish();
      if (!hash.equals(info.narHash)) throw new StoreError('hash-mismatch', `hash mismatch importing '${info.path}'`);
      if (size !== info.narSize) throw new StoreError('size-mismatch', `size mismatch importing '${info.path}'`);
      const dest = this.toRealPath(info.path);
      await fsp.rm(dest, { recursive: true, force: true });
      await fsp.rename(tmp, dest);
    } catch (e) {
      await fsp.rm(tmp, { recursive: true, force: true });
      throw e;
    }
    this.infos.set(info.path, info);
    return info;
  }

  narFromPath(p: StorePath): NarSource {
    return dumpPath(this.toRealPath(p));
  }

  /** Entries of the physical store dir (for "no stray files" checks). */
  async listing(): Promise<string[]> {
    return (await fsp.readdir(this.realStoreDir)).sort();
  }

  validBaseNames(): string[] {
    return [...this.infos.keys()].map(storePathBase).sort();
  }

  async close(): Promise<void> {}
}
