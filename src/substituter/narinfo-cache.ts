/**
 * NarInfoCache: positive and negative narinfo lookups remembered with a TTL, in SQLite with the tables
 * of Nix's `binary-cache-v6.sqlite` (BinaryCaches, NARs). One per engine; substituters share it.
 * `NarInfoCache.open({ cacheDir })` uses `<cacheDir>/binary-cache-v6.sqlite`; without a cacheDir (or if
 * the file cannot be opened) it lives in memory: in maps holding the parsed narinfos, as Nix's in-memory
 * cache of path infos (a substituter of a `file://` cache, which Nix 2.8 keeps in no file, has one of these:
 * no database to open, no row to encode per narinfo and decode per lookup).
 */
import type Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { Hash } from '../store/hash.js';
import { openDatabase } from '../store/sqlite.js';
import { storePathBase, storePathHashPart, type StorePath } from '../store/store-path.js';
import type { CacheInfo, NarInfo } from './narinfo.js';

export interface NarInfoCacheOptions {
  /** Directory for `binary-cache-v6.sqlite`; in memory when absent. */
  readonly cacheDir?: string | undefined;
  /** Seconds a positive lookup stays valid (Nix's `narinfo-cache-positive-ttl`). @default 2592000 */
  readonly positiveTtl?: number;
  /** Seconds a negative lookup stays valid (Nix's `narinfo-cache-negative-ttl`). @default 3600 */
  readonly negativeTtl?: number;
  /** Seconds cache metadata (nix-cache-info) stays valid. @default 604800 */
  readonly cacheInfoTtl?: number;
  /** Clock in seconds, for tests. @default Date.now()/1000 */
  readonly now?: () => number;
  /** Called when the file could not be opened and memory is used instead. */
  readonly onWarning?: (message: string) => void;
}

const SCHEMA = `
create table if not exists BinaryCaches (
    id        integer primary key autoincrement not null,
    url       text unique not null,
    timestamp integer not null,
    storeDir  text not null,
    wantMassQuery integer not null,
    priority  integer not null
);
create table if not exists NARs (
    cache            integer not null,
    hashPart         text not null,
    namePart         text,
    url              text,
    compression      text,
    fileHash         text,
    fileSize         integer,
    narHash          text,
    narSize          integer,
    refs             text,
    deriver          text,
    sigs             text,
    ca               text,
    timestamp        integer not null,
    present          integer not null,
    primary key (cache, hashPart),
    foreign key (cache) references BinaryCaches(id) on delete cascade
);
create table if not exists LastPurge (
    dummy            text primary key,
    value            integer
);
`;

export type CachedLookup = { readonly present: true; readonly info: NarInfo } | { readonly present: false };

/** A lookup remembered in memory: the narinfo (undefined: not in the cache) and when (seconds). */
interface MemoryNar {
  readonly info: NarInfo | undefined;
  readonly timestamp: number;
}

/** The maps of a cache in memory: narinfos by `<uri>\0<hashPart>`, nix-cache-info by uri. */
interface Memory {
  readonly nars: Map<string, MemoryNar>;
  readonly caches: Map<string, { readonly info: Required<CacheInfo>; readonly timestamp: number }>;
}

interface NarRow {
  namePart: string | null;
  url: string | null;
  compression: string | null;
  fileHash: string | null;
  fileSize: number | null;
  narHash: string | null;
  narSize: number | null;
  refs: string | null;
  deriver: string | null;
  sigs: string | null;
  ca: string | null;
  timestamp: number;
  present: number;
}

export class NarInfoCache {
  readonly file: string | undefined;
  /** The file's database; undefined for a cache in memory (`memory`). */
  private readonly db: Database.Database | undefined;
  private readonly memory: Memory | undefined;
  private readonly positiveTtl: number;
  private readonly negativeTtl: number;
  private readonly cacheInfoTtl: number;
  private readonly now: () => number;
  private readonly ids = new Map<string, number>();
  private readonly stmts:
    | {
        getCache: Database.Statement<[string], { id: number; timestamp: number; storeDir: string; wantMassQuery: number; priority: number }>;
        upsertCache: Database.Statement<[string, number, string, number, number]>;
        getNar: Database.Statement<[number, string], NarRow>;
        putNar: Database.Statement<unknown[]>;
      }
    | undefined;

  private constructor(db: Database.Database | undefined, file: string | undefined, opts: NarInfoCacheOptions) {
    this.db = db;
    this.file = file;
    this.positiveTtl = opts.positiveTtl ?? 30 * 24 * 3600;
    this.negativeTtl = opts.negativeTtl ?? 3600;
    this.cacheInfoTtl = opts.cacheInfoTtl ?? 7 * 24 * 3600;
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    if (!db) {
      this.memory = { nars: new Map(), caches: new Map() };
      return;
    }
    db.exec(SCHEMA);
    this.stmts = {
      getCache: db.prepare('select id, timestamp, storeDir, wantMassQuery, priority from BinaryCaches where url = ?'),
      upsertCache: db.prepare(
        'insert into BinaryCaches(url, timestamp, storeDir, wantMassQuery, priority) values (?, ?, ?, ?, ?) on conflict(url) do update set timestamp = excluded.timestamp, storeDir = excluded.storeDir, wantMassQuery = excluded.wantMassQuery, priority = excluded.priority',
      ),
      getNar: db.prepare(
        'select namePart, url, compression, fileHash, fileSize, narHash, narSize, refs, deriver, sigs, ca, timestamp, present from NARs where cache = ? and hashPart = ?',
      ),
      putNar: db.prepare(
        'insert or replace into NARs(cache, hashPart, namePart, url, compression, fileHash, fileSize, narHash, narSize, refs, deriver, sigs, ca, timestamp, present) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
    };
  }

  static open(opts: NarInfoCacheOptions = {}): NarInfoCache {
    if (opts.cacheDir) {
      const file = path.join(opts.cacheDir, 'binary-cache-v6.sqlite');
      try {
        mkdirSync(opts.cacheDir, { recursive: true });
        const db = openDatabase(file, { timeout: 60_000 });
        db.pragma('journal_mode = WAL');
        db.pragma('synchronous = OFF');
        return new NarInfoCache(db, file, opts);
      } catch (e) {
        (opts.onWarning ?? ((m: string) => process.emitWarning(m)))(
          `cannot open narinfo cache '${file}' (${e instanceof Error ? e.message : String(e)}); using memory instead`,
        );
      }
    }
    return new NarInfoCache(undefined, undefined, opts);
  }

  private cacheId(uri: string): number {
    const stmts = this.stmts!;
    let id = this.ids.get(uri);
    if (id === undefined) {
      const row = stmts.getCache.get(uri);
      if (row) id = row.id;
      else {
        stmts.upsertCache.run(uri, 0, '', 0, 0);
        id = stmts.getCache.get(uri)!.id;
      }
      this.ids.set(uri, id);
    }
    return id;
  }

  /** Remembered nix-cache-info of a cache, if fresh. */
  getCacheInfo(uri: string): Required<CacheInfo> | undefined {
    const row = this.memory ? this.memory.caches.get(uri) : this.stmts!.getCache.get(uri);
    // Fresh while younger than the TTL, as Nix's `timestamp > now - ttl` (so a TTL of 0 never keeps one).
    if (!row || row.timestamp === 0 || this.now() - row.timestamp >= this.cacheInfoTtl) return undefined;
    if ('info' in row) return { ...row.info };
    return { storeDir: row.storeDir, wantMassQuery: row.wantMassQuery !== 0, priority: row.priority };
  }

  setCacheInfo(uri: string, info: Required<CacheInfo>): void {
    if (this.memory) {
      this.memory.caches.set(uri, { info: { storeDir: info.storeDir, wantMassQuery: info.wantMassQuery, priority: info.priority }, timestamp: this.now() });
      return;
    }
    this.stmts!.upsertCache.run(uri, this.now(), info.storeDir, info.wantMassQuery ? 1 : 0, info.priority);
    this.ids.delete(uri);
  }

  /**
   * Whether a lookup remembered at `timestamp` (seconds) is too old: fresh while younger than the TTL of
   * its kind, present or not (Nix: `timestamp > now - ttl`), so with a TTL of 0 never fresh.
   */
  private expired(present: boolean, timestamp: number): boolean {
    return this.now() - timestamp >= (present ? this.positiveTtl : this.negativeTtl);
  }

  /** A fresh remembered lookup of `hashPart` on `uri`, or undefined when unknown or expired. */
  lookup(uri: string, hashPart: string, storeDir: string): CachedLookup | undefined {
    if (this.memory) return this.lookupInMemory(this.memory, uri, hashPart, storeDir);
    const row = this.stmts!.getNar.get(this.cacheId(uri), hashPart);
    if (!row || this.expired(row.present !== 0, row.timestamp)) return undefined;
    if (row.present === 0) return { present: false };
    try {
      const info: NarInfo = {
        storePath: `${storeDir}/${hashPart}-${row.namePart}`,
        url: row.url!,
        compression: row.compression ?? 'bzip2',
        fileHash: row.fileHash ? Hash.parse(row.fileHash) : undefined,
        fileSize: row.fileSize ?? undefined,
        narHash: Hash.parse(row.narHash!),
        narSize: row.narSize!,
        references: (row.refs ?? '')
          .split(' ')
          .filter(Boolean)
          .map((b) => `${storeDir}/${b}`)
          .sort(),
        deriver: row.deriver ? `${storeDir}/${row.deriver}` : undefined,
        sigs: (row.sigs ?? '').split(' ').filter(Boolean),
        ca: row.ca || undefined,
      };
      return { present: true, info };
    } catch {
      return undefined; // a damaged row is just a miss
    }
  }

  /** lookup() of a cache in memory: the narinfo remembered, in `storeDir` (as a row of the file would give it). */
  private lookupInMemory(memory: Memory, uri: string, hashPart: string, storeDir: string): CachedLookup | undefined {
    const e = memory.nars.get(`${uri}\0${hashPart}`);
    if (!e || this.expired(e.info !== undefined, e.timestamp)) return undefined;
    if (!e.info) return { present: false };
    const { info } = e;
    if (info.storePath.startsWith(`${storeDir}/`) && info.storePath.length === storeDir.length + 1 + storePathBase(info.storePath).length) {
      return { present: true, info };
    }
    // Asked for in another store dir: its paths there, as the file's rows (base names) give them.
    const at = (p: StorePath) => `${storeDir}/${storePathBase(p)}`;
    return {
      present: true,
      info: { ...info, storePath: at(info.storePath), references: info.references.map(at).sort(), deriver: info.deriver && at(info.deriver) },
    };
  }

  /** Remember a lookup: the narinfo, or `undefined` for "not in this cache". */
  insert(uri: string, hashPart: string, info: NarInfo | undefined): void {
    if (this.memory) {
      if (info && storePathHashPart(info.storePath) !== hashPart) return;
      // (A parsed narinfo's references are sorted and unique, as a row's decoded ones.)
      this.memory.nars.set(`${uri}\0${hashPart}`, { info, timestamp: this.now() });
      return;
    }
    const stmts = this.stmts!;
    const id = this.cacheId(uri);
    if (!info) {
      stmts.putNar.run(id, hashPart, null, null, null, null, null, null, null, null, null, null, null, this.now(), 0);
      return;
    }
    if (storePathHashPart(info.storePath) !== hashPart) return;
    const base = storePathBase(info.storePath);
    stmts.putNar.run(
      id,
      hashPart,
      base.slice(33),
      info.url,
      info.compression,
      info.fileHash?.toString('base32', true) ?? null,
      info.fileSize ?? null,
      info.narHash.toString('base32', true),
      info.narSize,
      info.references.map(storePathBase).join(' '),
      info.deriver ? storePathBase(info.deriver) : null,
      info.sigs.join(' '),
      info.ca ?? null,
      this.now(),
      1,
    );
  }

  close(): void {
    this.db?.close();
  }
}
