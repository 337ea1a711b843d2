/**
 * Writing binary caches that real Nix can substitute from: `copyToBinaryCache(store, paths, url, opts)`
 * writes the closure of `paths` into a `file://` cache as `nar/<filehash>.nar<ext>`, `<hashpart>.narinfo`
 * and `nix-cache-info`. Each NAR file is complete (temp name + rename) before its narinfo appears, and
 * a path's narinfo is written only after those of its references, so a reader never sees a dangling entry.
 */
import { createWriteStream, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { HashSink } from '../store/hash.js';
import { systemErrorMessage } from '../store/system-error.js';
import type { PathInfo, Store } from '../store/store-api.js';
import { storePathHashPart, type StorePath } from '../store/store-path.js';
import { compressStream } from './compression.js';
import { compressionExtension, isCompression, parseCacheInfo, printCacheInfo, printNarInfo, signPathInfo, type Compression, type NarInfo } from './narinfo.js';
import { parseSecretKey, type SecretKey } from './signatures.js';
import { makeBinaryCacheDirs } from './binary-cache.js';
import { SubstituterError } from './substituter.js';

export interface CopyToBinaryCacheOptions {
  /** @default 'xz' (as Nix) */
  readonly compression?: Compression;
  /** Compression level (xz preset 0–9, zstd 1–19, brotli 0–11). @default the tool's default */
  readonly compressionLevel?: number;
  /** Secret key `name:base64` (or parsed) to sign narinfos with. */
  readonly secretKey?: string | SecretKey;
  /** Rewrite paths whose narinfo already exists. @default false */
  readonly overwrite?: boolean;
  /** Priority written into a new nix-cache-info. */
  readonly priority?: number;
  /** WantMassQuery written into a new nix-cache-info. */
  readonly wantMassQuery?: boolean;
  readonly signal?: AbortSignal;
  /** Called after each path is written (or skipped). */
  readonly onPath?: (path: StorePath, written: boolean) => void;
  /** Called once the cache is open (made if needed), before any path is looked at or written. */
  readonly onOpen?: () => void;
}

let tmpCounter = 0;

/** A writable `file://` binary cache. */
export class BinaryCacheWriter {
  readonly dir: string;
  readonly storeDir: string;
  private constructor(dir: string, storeDir: string) {
    this.dir = dir;
    this.storeDir = storeDir;
  }

  /** Open (creating when needed) a cache directory; refuses a cache for another store dir. */
  static async open(url: string, opts: { storeDir: string; priority?: number; wantMassQuery?: boolean }): Promise<BinaryCacheWriter> {
    const dir = url.startsWith('file://') ? fileURLToPath(url.replace(/\?.*$/, '')) : url.includes('://') ? undefined : path.resolve(url);
    if (!dir)
      throw new SubstituterError('network', `cannot write to '${url}': only file:// binary caches can be written`, {
        uri: url,
        hint: 'copy to a directory and serve it over HTTP',
      });
    try {
      await makeBinaryCacheDirs(dir);
    } catch (e) {
      // Nix's words for the call that failed ("creating directory '…': …", "'…' is not a directory").
      throw new SubstituterError('store', systemErrorMessage(e) ?? (e as Error).message, { uri: url, cause: e, hint: `cannot create binary cache '${url}'` });
    }
    const infoFile = path.join(dir, 'nix-cache-info');
    const existing = await fsp.readFile(infoFile, 'utf8').catch(() => undefined);
    if (existing !== undefined) {
      const ci = parseCacheInfo(existing);
      if (ci.storeDir !== undefined && ci.storeDir !== opts.storeDir) {
        throw new SubstituterError('store', `binary cache '${url}' is for Nix stores with prefix '${ci.storeDir}', not '${opts.storeDir}'`, { uri: url });
      }
    } else {
      await writeAtomic(infoFile, printCacheInfo({ storeDir: opts.storeDir, wantMassQuery: opts.wantMassQuery, priority: opts.priority }));
    }
    return new BinaryCacheWriter(dir, opts.storeDir);
  }

  narInfoFile(p: StorePath): string {
    return path.join(this.dir, `${storePathHashPart(p)}.narinfo`);
  }

  async has(p: StorePath): Promise<boolean> {
    return fsp.access(this.narInfoFile(p)).then(
      () => true,
      () => false,
    );
  }

  /**
   * Add one path from its NAR stream. The NAR is hashed (narHash/narSize checked against `info`),
   * compressed and hashed again (FileHash/FileSize) on the way to disk.
   */
  async addPath(
    info: PathInfo,
    nar: AsyncIterable<Uint8Array>,
    opts: { compression?: Compression; compressionLevel?: number; secretKey?: SecretKey | string | undefined; signal?: AbortSignal | undefined } = {},
  ): Promise<NarInfo> {
    const key = typeof opts.secretKey === 'string' ? parseSecretKey(opts.secretKey) : opts.secretKey;
    const compression = opts.compression ?? 'xz';
    const narSink = new HashSink('sha256');
    const fileSink = new HashSink('sha256');
    async function* hashed(): AsyncGenerator<Uint8Array> {
      for await (const c of nar) {
        if (opts.signal?.aborted) throw new SubstituterError('aborted', `copying '${info.path}' was cancelled`, { path: info.path });
        narSink.update(c);
        yield c;
      }
    }
    const tmp = path.join(this.dir, 'nar', `.tmp-${process.pid}-${++tmpCounter}`);
    try {
      const out = createWriteStream(tmp, { flags: 'wx' });
      const closed = new Promise<void>((resolve, reject) => {
        out.on('close', resolve);
        out.on('error', reject);
      });
      try {
        for await (const c of compressStream(compression, hashed(), opts.compressionLevel !== undefined ? { level: opts.compressionLevel } : {})) {
          fileSink.update(c);
          if (!out.write(c)) await new Promise<void>((r) => out.once('drain', r));
        }
      } finally {
        out.end();
        await closed;
      }
      const narResult = narSink.finish();
      if (!narResult.hash.equals(info.narHash) || narResult.size !== info.narSize) {
        throw new SubstituterError(
          'hash-mismatch',
          `NAR of '${info.path}' does not match its registered hash/size (${narResult.hash.toString('sri')}, ${narResult.size} bytes)`,
          { path: info.path, hint: 'the store path was modified; repair it first' },
        );
      }
      const file = fileSink.finish();
      const url = `nar/${file.hash.base32}.nar${compressionExtension(compression)}`;
      await fsp.rename(tmp, path.join(this.dir, url));
      const base: NarInfo = {
        storePath: info.path,
        url,
        compression,
        fileHash: file.hash,
        fileSize: file.size,
        narHash: info.narHash,
        narSize: info.narSize,
        references: [...info.references].sort(),
        deriver: info.deriver,
        sigs: [...(info.sigs ?? [])],
        ca: info.ca,
      };
      const sigs = key ? [...new Set([...base.sigs, signPathInfo(info, key)])] : base.sigs;
      const ni: NarInfo = { ...base, sigs };
      await writeAtomic(this.narInfoFile(info.path), printNarInfo(ni));
      return ni;
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${++tmpCounter}`;
  await fsp.writeFile(tmp, text, { flag: 'wx' });
  await fsp.rename(tmp, file);
}

/** Order `paths` so every path comes after its references (all within `infos`). */
function topoSort(infos: ReadonlyMap<StorePath, PathInfo>): StorePath[] {
  const out: StorePath[] = [];
  const state = new Map<StorePath, 1 | 2>();
  const visit = (p: StorePath): void => {
    if (state.get(p) === 2) return;
    if (state.get(p) === 1) return; // cycles other than self-references cannot occur in a valid store
    state.set(p, 1);
    for (const r of infos.get(p)!.references) if (r !== p && infos.has(r)) visit(r);
    state.set(p, 2);
    out.push(p);
  };
  for (const p of [...infos.keys()].sort()) visit(p);
  return out;
}

/**
 * Copy the closure of `paths` from `store` into the binary cache at `url` (`file:///dir` or a directory).
 * Paths whose narinfo exists are skipped unless `overwrite`. Returns the paths written.
 */
/**
 * The store settings Nix reads from a binary cache URL's query (`file:///c?compression=zstd&secret-key=F`):
 * `compression`, `compression-level`, `secret-key` (a file holding the key). Others (`priority` and
 * `want-mass-query` are for readers, as in Nix, which does not write them into nix-cache-info;
 * `write-nar-listing`, `parallel-compression`, …) change nothing here.
 */
export function binaryCacheUrlSettings(url: string): Pick<CopyToBinaryCacheOptions, 'compression' | 'compressionLevel' | 'secretKey'> {
  const q = url.indexOf('?');
  if (q < 0) return {};
  const bad = (key: string, value: string) =>
    new SubstituterError('store', `binary cache '${url}': setting '${key}' has invalid value '${value}'`, { uri: url });
  const out: { -readonly [K in keyof CopyToBinaryCacheOptions]: CopyToBinaryCacheOptions[K] } = {};
  for (const [key, value] of new URLSearchParams(url.slice(q + 1))) {
    if (key === 'compression') {
      if (!isCompression(value)) throw bad(key, value);
      out.compression = value;
    } else if (key === 'compression-level') {
      if (!/^-?\d+$/.test(value)) throw bad(key, value);
      out.compressionLevel = Number(value);
    } else if (key === 'secret-key') {
      try {
        out.secretKey = readFileSync(value, 'utf8').trim();
      } catch (e) {
        throw new SubstituterError('store', `binary cache '${url}': cannot read secret key file '${value}': ${(e as Error).message}`, { uri: url, cause: e });
      }
    }
  }
  return out;
}

/** The settings Nix 2.8's file:// binary cache store has (the binary cache's and every store's). */
const BINARY_CACHE_SETTINGS: ReadonlySet<string> = new Set([
  'compression',
  'compression-level',
  'parallel-compression',
  'secret-key',
  'write-nar-listing',
  'index-debug-info',
  'local-nar-cache',
  'path-info-cache-size',
  'trusted',
  'priority',
  'want-mass-query',
  'system-features',
  'store',
]);

/**
 * The settings of a binary cache URL's query that Nix 2.8's binary cache store does not have, sorted: Nix
 * opens the cache anyway and warns "unknown setting 'NAME'" for each (`write-debug-info`, `root` too).
 */
export function unknownBinaryCacheSettings(url: string): string[] {
  const q = url.indexOf('?');
  if (q < 0) return [];
  const keys = [...new URLSearchParams(url.slice(q + 1)).keys()].filter((k) => !BINARY_CACHE_SETTINGS.has(k));
  return [...new Set(keys)].sort();
}

export async function copyToBinaryCache(store: Store, paths: Iterable<StorePath>, url: string, options: CopyToBinaryCacheOptions = {}): Promise<StorePath[]> {
  // Settings in the URL are defaults; explicit options win.
  const opts: CopyToBinaryCacheOptions = { ...binaryCacheUrlSettings(url), ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) };
  const key = typeof opts.secretKey === 'string' ? parseSecretKey(opts.secretKey) : opts.secretKey;
  const closure = await store.computeClosure(paths);
  const infos = new Map<StorePath, PathInfo>();
  for (const p of closure) {
    const info = await store.queryPathInfo(p);
    if (!info) throw new SubstituterError('store', `cannot copy '${p}' to '${url}': it is not valid in the store`, { path: p });
    infos.set(p, info);
  }
  const writer = await BinaryCacheWriter.open(url, {
    storeDir: store.storeDir,
    ...(opts.priority !== undefined ? { priority: opts.priority } : {}),
    ...(opts.wantMassQuery !== undefined ? { wantMassQuery: opts.wantMassQuery } : {}),
  });
  opts.onOpen?.();
  const written: StorePath[] = [];
  for (const p of topoSort(infos)) {
    if (opts.signal?.aborted) throw new SubstituterError('aborted', `copying to '${url}' was cancelled`, { uri: url });
    if (!opts.overwrite && (await writer.has(p))) {
      opts.onPath?.(p, false);
      continue;
    }
    await writer.addPath(infos.get(p)!, store.narFromPath(p), {
      compression: opts.compression ?? 'xz',
      secretKey: key,
      signal: opts.signal,
      ...(opts.compressionLevel !== undefined ? { compressionLevel: opts.compressionLevel } : {}),
    });
    written.push(p);
    opts.onPath?.(p, true);
  }
  return written;
}
