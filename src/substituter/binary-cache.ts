/**
 * BinaryCacheSubstituter: a Nix binary cache over `file://` or `http(s)://` as a Substituter.
 * Reads `nix-cache-info` once, `<hashpart>.narinfo` per path (bounded parallelism, remembered in a
 * NarInfoCache), and streams `nar/...` files through the right decompressor.
 */
import { closeSync, createReadStream, promises as fsp, openSync, readFileSync, readSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Agent, Dispatcher } from 'undici';
import { undici, verifyingConnector } from './undici.js';
import { curlWords, isAbortError, isCertificateError, statusReason } from './curl-words.js';
import { DEFAULT_STORE_DIR, storePathHashPart, toStorePath, type StorePath } from '../store/store-path.js';
import type { Realisation } from '../store/store-api.js';
import { compressionOf, decompressStream, DecompressionError } from './compression.js';
import { BadNarInfoError, parseCacheInfo, parseNarInfo, type NarInfo } from './narinfo.js';
import { NarInfoCache, type NarInfoCacheOptions } from './narinfo-cache.js';
import { mkdirs } from '../store/local-store.js';
import { systemErrorMessage } from '../store/system-error.js';
import { SubstituterError, type FetchNarOptions, type SubstitutablePathInfo, type Substituter, type TransferListener } from './substituter.js';

export interface BinaryCacheSubstituterOptions {
  /** Public keys `name:base64` whose signatures are trusted. @default [] */
  readonly trustedPublicKeys?: readonly string[];
  /** Refuse paths without a valid signature by a trusted key. @default true */
  readonly requireSigs?: boolean;
  /** Skip signature checks for this cache (Nix's `?trusted=1`). @default false */
  readonly trusted?: boolean;
  /** Overrides the cache's own `Priority` (Nix's `?priority=N`). @default nix-cache-info's, else 0 (as Nix 2.8: first) */
  readonly priority?: number;
  /** The store dir paths must be for; a cache for another store dir is skipped with a warning. @default '/nix/store' */
  readonly storeDir?: string;
  /**
   * Shared narinfo cache (one per engine), or the options of one of its own (e.g. a `cacheDir`: lookups and
   * nix-cache-info remembered across runs, as Nix's disk cache for HTTP caches), opened when first used and
   * closed with the substituter. @default a private in-memory one
   */
  readonly narInfoCache?: NarInfoCache | NarInfoCacheOptions;
  /** Maximum parallel narinfo requests of one `queryPathInfos`. @default 16 */
  readonly maxParallelQueries?: number;
  /** HTTP connections per origin (keep-alive). @default 8 */
  readonly maxConnections?: number;
  /** Retries of a failed request (not of 404s), with exponential backoff from `retryBaseMs`. @default 2 (Nix: 4) */
  readonly retries?: number;
  /** The first retry's delay; each next one doubles, with Nix's jitter (×2^U(0,0.5)). @default 100 (Nix: 250) */
  readonly retryBaseMs?: number;
  /** Told before each retry: the failure's message and the delay (Nix warns `error: …; retrying in N ms`). */
  readonly onRetry?: (message: string, delayMs: number) => void;
  /** Abort an HTTP request whose headers or body stall for this long. @default 30000 */
  readonly timeoutMs?: number;
  /** Warnings (e.g. a cache for another store dir). @default process.emitWarning */
  readonly onWarning?: (message: string) => void;
  /**
   * Nix's `fallback` setting (give the engine's): an HTTP cache whose request fails other than for a missing
   * file (after its retries) is disabled for 60 s, as Nix disables it; its requests meanwhile throw
   * SubstituterError `disabled` (`substituter '…' is disabled`) without asking the server. @default false
   */
  readonly fallback?: boolean;
  /** Told when the cache is disabled (Nix prints `disabling binary cache '…' for 60 seconds` without prefix). @default onWarning */
  readonly onDisabled?: (message: string) => void;
  /** An undici dispatcher to use instead of a private Agent. */
  readonly dispatcher?: Dispatcher;
}

interface Transport {
  /** Whole small file, or undefined when absent (404/410, ENOENT). Downloads are told to `onTransfer`. */
  getFile(rel: string, signal?: AbortSignal, onTransfer?: TransferListener): Promise<Buffer | undefined>;
  /**
   * Stream a file; throws SubstituterError 'not-found' when absent. `sizeHint` is the size when known.
   * With `reuse`, a yielded chunk may be overwritten once the consumer asks for the next one (for
   * consumers that are done with a chunk by then, like the zstd decoder).
   */
  stream(rel: string, signal?: AbortSignal, sizeHint?: number, reuse?: boolean, onTransfer?: TransferListener): AsyncIterable<Uint8Array>;
  close(): Promise<void>;
}

function validate(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min)
    throw new TypeError(`Expected \`${name}\` to be an integer from ${min} and up, got \`${value}\` (${typeof value})`);
  return value;
}

/**
 * What Nix 2.8 says when a NAR file does not decompress. Nix decodes xz, zstd, bzip2 and gzip with
 * libarchive: a file of none of its formats is "input compression not recognized"; an error while the
 * first block is decoded (libarchive reads ahead when it opens the input) is "Failed to open archive (…)",
 * a later one "failed to read compressed data (…)", with libarchive's description. Brotli is Nix's own.
 */
function nixDecompressionMessage(compression: string, ours: string, head: Buffer, short: boolean, produced: number): string {
  if (compression === 'br') return 'error while decompressing brotli file';
  // libarchive finds the compression from the data, whatever the narinfo says.
  if (head.length > 0 && compressionOf(head) === undefined) return 'input compression not recognized';
  const truncated = short || /truncated|unexpected end|ended early|closed early|end of (input|file)/i.test(ours);
  let detail: string;
  switch (compression) {
    case 'xz':
      detail = truncated ? 'Lzma library error:  No progress is possible' : 'Lzma library error: Corrupted input data';
      break;
    case 'zstd':
      detail = truncated ? 'Truncated zstd input' : `Zstd decompression failed: ${ours.replace(/^zstd decompression failed: /, '')}`;
      break;
    case 'bzip2':
      detail = truncated ? 'truncated bzip2 input' : 'bzip decompression failed';
      break;
    case 'gzip':
      detail = truncated ? 'truncated gzip input' : 'gzip decompression failed';
      break;
    default:
      return ours;
  }
  return produced < LIBARCHIVE_READ_AHEAD ? `Failed to open archive (${detail})` : `failed to read compressed data (${detail})`;
}

/** How many decompressed bytes (up to LIBARCHIVE_READ_AHEAD) come out of a file before its decoder fails. */
async function decodedBeforeError(compression: string, source: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined): Promise<number> {
  let n = 0;
  try {
    for await (const chunk of decompressStream(compression, source, { ...(signal ? { signal } : {}), sizeHint: 16 * 1024 })) {
      n += chunk.byteLength;
      if (n >= LIBARCHIVE_READ_AHEAD) break;
    }
  } catch {
    // the error itself: n is what came before it
  }
  return n;
}

/** A realisation as Nix writes it into a binary cache (`{"dependentRealisations":{id:name},"id":…,"outPath":name,"signatures":[…]}`). */
function parseRealisation(text: string, id: string, storeDir: string): Realisation {
  const j = JSON.parse(text) as { id?: unknown; outPath?: unknown; signatures?: unknown; dependentRealisations?: unknown };
  const name = (v: unknown, what: string): StorePath => {
    if (typeof v !== 'string' || v.includes('/')) throw new Error(`${what} is not a store path name`);
    return toStorePath(`${storeDir}/${v}`, storeDir);
  };
  if (j.id !== id) throw new Error(`it is the realisation of '${String(j.id)}'`);
  const sigs = Array.isArray(j.signatures) ? j.signatures.filter((x): x is string => typeof x === 'string') : [];
  const deps = new Map<string, StorePath>();
  if (j.dependentRealisations && typeof j.dependentRealisations === 'object')
    for (const [k, v] of Object.entries(j.dependentRealisations)) deps.set(k, name(v, `the dependent realisation '${k}'`));
  return { id, outPath: name(j.outPath, 'outPath'), signatures: sigs, dependentRealisations: deps };
}

/** What was read of a NAR file that did not decompress. */
interface ReadSoFar {
  /** The bytes the file had, when it ended before its FileSize. */
  short: number | undefined;
  fileBytes: number;
  /** Its first bytes (its compression's magic). */
  head: Buffer;
  /** Decompressed bytes that came out before the error. */
  produced: number;
}

/** A NAR file that did not decompress, in the words Nix prints (libarchive's, which decodes them); ours go into the hint. */
async function decompressionFailure(
  e: DecompressionError,
  info: SubstitutablePathInfo,
  uri: string,
  read: ReadSoFar,
  again: () => AsyncIterable<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<SubstituterError> {
  const { short, fileBytes, head } = read;
  let produced = read.produced;
  // An empty file: Nix's NAR reader finds nothing to decode, whatever the compression.
  if (fileBytes === 0 && short !== undefined)
    return new SubstituterError('truncated', `NAR for '${info.path}' fetched from '${uri}' is incomplete`, {
      uri,
      path: info.path,
      cause: e,
      hint: `NAR file '${info.url}' on '${uri}' is empty; the binary cache is corrupt`,
    });
  if (short !== undefined && info.fileSize) {
    // A file cut short: what it held decodes to about its share of the NAR.
    produced = Math.max(produced, Math.floor(info.narSize * (short / info.fileSize)));
  } else if ((info.compression === 'xz' || info.compression === 'gzip') && produced < LIBARCHIVE_READ_AHEAD && !signal?.aborted) {
    // Our decoder hands out large blocks, so little may have come out before the error although much
    // was decoded: decode the file again in small blocks to tell (only on this error path).
    produced = await decodedBeforeError(info.compression, again(), signal);
  }
  const ours =
    short !== undefined
      ? `NAR file '${info.url}' of '${info.path}' on '${uri}' ended after ${short} of ${info.fileSize} bytes`
      : `NAR file '${info.url}' of '${info.path}' on '${uri}' is corrupt: ${e.message}`;
  return new SubstituterError(
    short !== undefined ? 'truncated' : 'decompression',
    nixDecompressionMessage(info.compression, e.message, head, short !== undefined, produced),
    {
      uri,
      path: info.path,
      cause: e,
      hint: `${ours}; the binary cache is corrupt or the download was cut short`,
    },
  );
}

/** Decompressed bytes libarchive decodes when Nix opens a NAR file (errors in them are "Failed to open archive"). */
const LIBARCHIVE_READ_AHEAD = 64 * 1024;

/** How much longer than its FileSize a NAR file may run before the download is cut off. */
const FILE_OVERRUN_MAX = 64 * 1024 * 1024;

/**
 * Files of a file:// cache up to this size whose size is known (a NAR of its narinfo's FileSize), and every
 * narinfo, are read with synchronous calls into one buffer: an open, a read and a close take tens of
 * microseconds, a round trip through the thread pool each about a hundred of main-thread time. Larger files
 * stream through the thread pool.
 */
const SYNC_READ_MAX = 1024 * 1024;

/** Whether a file of announced size `size` is read with synchronous calls (SYNC_READ_MAX). */
function readsAtOnce(size: number | undefined): size is number {
  return size !== undefined && size >= 0 && size <= SYNC_READ_MAX;
}

/** Files of a file:// cache up to this size whose size is known are read into one buffer (larger ones stream). */
const WHOLE_READ_MAX = 16 * 1024 * 1024;

/**
 * Make the directories Nix 2.8 makes in a file:// binary cache it opens (`nar`, `realisations`, `log`), one
 * level at a time: Node's recursive mkdir never returns under e.g. /proc (see mkdirs).
 */
export async function makeBinaryCacheDirs(dir: string): Promise<void> {
  for (const d of ['nar', 'realisations', 'log']) await mkdirs(path.join(dir, d), 0o755);
}

class FileTransport implements Transport {
  constructor(
    private readonly dir: string,
    private readonly uri: string,
  ) {}

  private resolve(rel: string): string {
    const p = path.resolve(this.dir, rel);
    if (p !== this.dir && !p.startsWith(this.dir + path.sep)) {
      throw new SubstituterError('bad-narinfo', `'${rel}' points outside the binary cache '${this.uri}'`, { uri: this.uri });
    }
    return p;
  }

  /**
   * What Nix's LocalBinaryCacheStore does when it opens a cache, reading or writing: its `nar`,
   * `realisations` and `log` directories made, and a missing `nix-cache-info` written with the store dir.
   * Failing that (a cache that cannot be made) is an error in Nix's words; for a cache that has its
   * `nix-cache-info` (one made elsewhere, perhaps read-only) the directories are not needed.
   */
  async prepare(storeDir: string, hasInfo: boolean): Promise<void> {
    try {
      await makeBinaryCacheDirs(this.dir);
      if (!hasInfo) await fsp.writeFile(path.join(this.dir, 'nix-cache-info'), `StoreDir: ${storeDir}\n`, { flag: 'wx' });
    } catch (e) {
      if (hasInfo || (e as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw new SubstituterError('network', systemErrorMessage(e) ?? (e as Error).message, { uri: this.uri, cause: e });
    }
  }

  getFile(rel: string): Promise<Buffer | undefined> {
    try {
      return Promise.resolve(this.getFileSync(rel));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** getFile with a synchronous read (a narinfo or nix-cache-info: a few hundred bytes); throws what getFile rejects with. */
  getFileSync(rel: string): Buffer | undefined {
    try {
      return readFileSync(this.resolve(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      if (e instanceof SubstituterError) throw e;
      throw new SubstituterError('network', `cannot read '${rel}' of '${this.uri}': ${(e as Error).message}`, { uri: this.uri, cause: e });
    }
  }

  /** Read buffers of `reuse` streams, free for the next one (allocating ~1 MB per NAR drove most GCs). */
  private readonly pool: Buffer[] = [];

  private takeBuffer(size: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.pool.length; i++) if (this.pool[i]!.length >= size && (best < 0 || this.pool[i]!.length < this.pool[best]!.length)) best = i;
    if (best >= 0) return this.pool.splice(best, 1)[0]!;
    // Shared memory, so the zstd decoder thread can read it in place.
    return Buffer.from(new SharedArrayBuffer(Math.max(64 * 1024, 2 ** Math.ceil(Math.log2(size)))));
  }

  private giveBuffer(b: Buffer): void {
    if (this.pool.length < 32) this.pool.push(b);
  }

  /**
   * The file at `file`, of announced size `size`, read whole: a buffer of exactly `size` bytes, shorter when
   * the file is, and then what follows it (normally nothing), so that the caller sees a file too short or too long.
   */
  private readWhole(file: string, size: number, into: Buffer | undefined): Buffer[] {
    const fd = openSync(file, 'r');
    try {
      const buf = into ? into.subarray(0, size) : Buffer.allocUnsafe(size);
      let got = 0;
      for (let n = 1; got < size && n > 0; got += n) n = readSync(fd, buf, got, size - got, got);
      const parts = got > 0 ? [got === size ? buf : buf.subarray(0, got)] : [];
      if (got < size) return parts; // shorter than announced: the caller reports the truncation
      for (let pos = got; ;) {
        const extra = Buffer.allocUnsafe(4000); // from the shared pool: normally this read only sees EOF
        const n = readSync(fd, extra, 0, extra.length, pos);
        if (n === 0) return parts;
        pos += n;
        parts.push(Buffer.from(extra.subarray(0, n)));
      }
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The file at `rel` read whole with synchronous calls, when its announced size is small (SYNC_READ_MAX):
   * its bytes (see readWhole; in `into` when given), or undefined when it is not small or its size is not known.
   */
  readSmall(rel: string, size: number | undefined, signal?: AbortSignal, into?: Buffer): Buffer[] | undefined {
    if (!readsAtOnce(size)) return undefined;
    const file = this.resolve(rel);
    signal?.throwIfAborted();
    try {
      return this.readWhole(file, size, into);
    } catch (e) {
      throw this.readError(rel, e, signal);
    }
  }

  /** A failed read of `rel` in Nix's words where Nix has them. */
  private readError(rel: string, e: unknown, signal: AbortSignal | undefined): unknown {
    // Nix's words (LocalBinaryCacheStore::getFile).
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      return new SubstituterError('not-found', `file '${rel}' does not exist in binary cache`, {
        uri: this.uri,
        cause: e,
        hint: `the binary cache '${this.uri}' lost the NAR file; try another substituter or build`,
      });
    if (signal?.aborted || isAbortError(e) || e instanceof SubstituterError) return e;
    return new SubstituterError('network', `cannot read '${rel}' of '${this.uri}': ${(e as Error).message}`, { uri: this.uri, cause: e });
  }

  async *stream(rel: string, signal?: AbortSignal, sizeHint?: number, reuse = false): AsyncGenerator<Uint8Array> {
    // Size known and small: read it into one buffer of exactly that size (a ReadStream would copy a short
    // last read into a fresh buffer).
    const pooled = reuse && readsAtOnce(sizeHint) ? this.takeBuffer(sizeHint) : undefined;
    try {
      const parts = this.readSmall(rel, sizeHint, signal, pooled);
      if (parts) {
        yield* parts;
        return;
      }
    } finally {
      if (pooled) this.giveBuffer(pooled);
    }
    const file = this.resolve(rel);
    const wrap = (e: unknown): unknown => this.readError(rel, e, signal);
    if (sizeHint !== undefined && sizeHint >= 0 && sizeHint <= WHOLE_READ_MAX) {
      yield* this.readWholeAsync(file, sizeHint, reuse, signal, wrap);
      return;
    }
    // Read buffers are allocated at highWaterMark: size them to the file (+1 to see EOF in one read).
    const hwm = sizeHint !== undefined && sizeHint >= 0 ? Math.max(4096, Math.min(1 << 20, sizeHint + 1)) : 1 << 20;
    const s = createReadStream(file, { highWaterMark: hwm, ...(signal ? { signal } : {}) });
    try {
      for await (const chunk of s as AsyncIterable<Buffer>) yield chunk;
    } catch (e) {
      throw wrap(e);
    } finally {
      s.destroy();
    }
  }

  /** readWhole through the thread pool, for files too large to read while the main thread waits. */
  private async *readWholeAsync(
    file: string,
    size: number,
    reuse: boolean,
    signal: AbortSignal | undefined,
    wrap: (e: unknown) => unknown,
  ): AsyncGenerator<Uint8Array> {
    let fh: FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      throw wrap(e);
    }
    const pooled = reuse ? this.takeBuffer(size) : undefined;
    try {
      const buf = pooled ? pooled.subarray(0, size) : Buffer.allocUnsafe(size);
      let got = 0;
      while (got < size) {
        signal?.throwIfAborted();
        const { bytesRead } = await fh.read(buf, got, size - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got > 0) yield got === size ? buf : buf.subarray(0, got);
      if (got < size) return; // shorter than announced: the caller reports the truncation
      // anything beyond the announced size is passed on, so the caller sees that it is too large
      for (let pos = got; ;) {
        const extra = Buffer.allocUnsafe(4000); // from the shared pool: normally this read only sees EOF
        const { bytesRead } = await fh.read(extra, 0, extra.length, pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
        yield Buffer.from(extra.subarray(0, bytesRead));
      }
    } catch (e) {
      throw wrap(e);
    } finally {
      if (pooled) this.giveBuffer(pooled);
      await fh.close().catch(() => {});
    }
  }

  async close(): Promise<void> {}
}

class HttpTransport implements Transport {
  private readonly dispatcher: Dispatcher;
  private readonly ownAgent: Agent | undefined;
  constructor(
    private readonly base: string,
    private readonly uri: string,
    private readonly opts: {
      maxConnections: number;
      retries: number;
      retryBaseMs: number;
      onRetry?: ((message: string, delayMs: number) => void) | undefined;
      timeoutMs: number;
      dispatcher?: Dispatcher | undefined;
      fallback: boolean;
      onDisabled: (message: string) => void;
    },
  ) {
    if (opts.dispatcher) {
      this.dispatcher = opts.dispatcher;
    } else {
      const connect = verifyingConnector();
      this.ownAgent = new (undici().Agent)({
        connections: opts.maxConnections,
        keepAliveTimeout: 30_000,
        headersTimeout: opts.timeoutMs,
        bodyTimeout: opts.timeoutMs,
        ...(connect ? { connect } : {}),
      });
      this.dispatcher = this.ownAgent;
    }
  }

  private url(rel: string): string {
    // As Nix, a narinfo URL may be absolute (the NAR is still verified against the narinfo).
    return /^https?:\/\//.test(rel) ? rel : this.base + rel;
  }

  /** When the cache was disabled (Nix's `fallback`), until when (performance.now(), monotonic ms); 0 when enabled. */
  private disabledUntil = 0;

  /** Nix's checkEnabled: a disabled cache is not asked, until its 60 s are over. */
  private checkEnabled(): void {
    if (this.disabledUntil === 0) return;
    if (performance.now() > this.disabledUntil) this.disabledUntil = 0;
    else
      throw new SubstituterError('disabled', `substituter '${this.uri}' is disabled`, {
        uri: this.uri,
        hint: 'a request to it failed; it is asked again after 60 s',
      });
  }

  /**
   * Nix's maybeDisable: with `fallback`, a failed transfer (headers or body; not a missing file, not one
   * the caller cancelled) disables the cache for 60 s.
   */
  private maybeDisable(e: unknown): void {
    if (!(e instanceof SubstituterError) || e.code === 'aborted' || e.code === 'not-found') return;
    if (!this.opts.fallback || this.disabledUntil !== 0) return;
    this.disabledUntil = performance.now() + 60_000;
    this.opts.onDisabled(`disabling binary cache '${this.uri}' for 60 seconds`);
  }

  /** GET with retries of transient failures; undefined on 404/410/403. */
  private async get(
    rel: string,
    signal: AbortSignal | undefined,
    onMissing?: (bodyBytes: number, expected: number) => void,
  ): Promise<Dispatcher.ResponseData | undefined> {
    let attempt = 0;
    for (;;) {
      let failure: SubstituterError;
      try {
        const res = await undici().request(this.url(rel), {
          method: 'GET',
          dispatcher: this.dispatcher,
          ...(signal ? { signal } : {}),
          headers: { 'user-agent': 'realise' },
        });
        if (res.statusCode === 200) return res;
        // As Nix: 403 too means "not in this cache" (S3 answers it for a missing key).
        if (res.statusCode === 404 || res.statusCode === 410 || res.statusCode === 403) {
          if (onMissing) onMissing(await errorPageSize(res.body), contentLength(res));
          else await res.body.dump().catch(() => undefined);
          return undefined;
        }
        const body = await res.body.text().catch(() => '');
        // Nix's words (curl's reason phrase, and a short response body as Nix shows it).
        const shown = body.length < 1024 || body.includes('<html>') ? `\n\nresponse body:\n\n${body.replace(/\s+$/, '')}` : '';
        failure = new SubstituterError(
          'network',
          `unable to download '${this.url(rel)}': HTTP error ${res.statusCode} ('${statusReason(res.statusCode) ?? ''}')${shown}`,
          { uri: this.uri, hint: 'the cache server failed; retry later, or use --fallback to build instead' },
        );
        // As Nix: server errors are retried, except 501, 505 and 511; of the client errors only 408 and 429.
        const code = res.statusCode;
        if (!((code >= 500 && code !== 501 && code !== 505 && code !== 511) || code === 408 || code === 429)) throw failure;
      } catch (e) {
        if (e instanceof SubstituterError) throw e;
        if (isAbortError(e) || signal?.aborted)
          throw new SubstituterError('aborted', `download of '${this.url(rel)}' was cancelled`, { uri: this.uri, cause: e });
        const certificate = isCertificateError(e);
        failure = new SubstituterError(certificate ? 'tls' : 'network', `unable to download '${this.url(rel)}': ${curlWords(e)}`, {
          uri: this.uri,
          cause: e,
          hint: certificate
            ? `the server's TLS certificate is not trusted (${(e as Error).message}): add the CA that signed it to NODE_EXTRA_CA_CERTS`
            : `check the network and the substituter URL (${(e as Error).message})`,
        });
      }
      if (attempt >= this.opts.retries) throw failure;
      const delay = Math.round(this.opts.retryBaseMs * 2 ** (attempt + Math.random() * 0.5));
      this.opts.onRetry?.(failure.shortMessage, delay);
      await new Promise((r) => setTimeout(r, delay));
      attempt++;
    }
  }

  /** Nix's getFile: a disabled cache is not asked; a transfer that fails disables it (maybeDisable). */
  async getFile(rel: string, signal?: AbortSignal, onTransfer?: TransferListener): Promise<Buffer | undefined> {
    this.checkEnabled();
    try {
      return await this.getFileReporting(rel, signal, onTransfer);
    } catch (e) {
      this.maybeDisable(e);
      throw e;
    }
  }

  private async getFileReporting(rel: string, signal?: AbortSignal, onTransfer?: TransferListener): Promise<Buffer | undefined> {
    if (!onTransfer) return this.getFileQuietly(rel, signal);
    const url = this.url(rel);
    onTransfer({ kind: 'download-started', url });
    onTransfer({ kind: 'download-progress', url, done: 0, expected: 0 });
    let ok = false;
    try {
      const progress = (done: number, expected: number) => onTransfer({ kind: 'download-progress', url, done, expected });
      const b = await this.getFileQuietly(rel, signal, progress, progress);
      ok = true;
      return b;
    } finally {
      onTransfer({ kind: 'download-finished', url, ok });
    }
  }

  /** A whole file; `onDone` and `onMissing` are told its bytes and the length the server announced (0 if none). */
  private async getFileQuietly(
    rel: string,
    signal: AbortSignal | undefined,
    onDone?: (bytes: number, expected: number) => void,
    onMissing?: (bytes: number, expected: number) => void,
  ): Promise<Buffer | undefined> {
    const res = await this.get(rel, signal, onMissing);
    if (!res) return undefined;
    try {
      const b = Buffer.from(await res.body.arrayBuffer());
      onDone?.(b.length, contentLength(res));
      return b;
    } catch (e) {
      if (isAbortError(e) || signal?.aborted)
        throw new SubstituterError('aborted', `download of '${this.url(rel)}' was cancelled`, { uri: this.uri, cause: e });
      throw new SubstituterError('network', `download of '${this.url(rel)}' failed: ${(e as Error).message}`, { uri: this.uri, cause: e });
    }
  }

  /** As getFile, for a NAR: checked before its request, and a failure of its headers or body disables the cache. */
  async *stream(rel: string, signal?: AbortSignal, _sizeHint?: number, _reuse?: boolean, onTransfer?: TransferListener): AsyncGenerator<Uint8Array> {
    this.checkEnabled();
    try {
      yield* this.streamReporting(rel, signal, onTransfer);
    } catch (e) {
      this.maybeDisable(e);
      throw e;
    }
  }

  private async *streamReporting(rel: string, signal?: AbortSignal, onTransfer?: TransferListener): AsyncGenerator<Uint8Array> {
    if (!onTransfer) return yield* this.streamQuietly(rel, signal);
    const url = this.url(rel);
    onTransfer({ kind: 'download-started', url });
    onTransfer({ kind: 'download-progress', url, done: 0, expected: 0 });
    let ok = false;
    try {
      for await (const chunk of this.streamQuietly(rel, signal, (done, expected) => onTransfer({ kind: 'download-progress', url, done, expected })))
        yield chunk;
      ok = true;
    } finally {
      onTransfer({ kind: 'download-finished', url, ok });
    }
  }

  private async *streamQuietly(
    rel: string,
    signal: AbortSignal | undefined,
    onProgress?: (done: number, expected: number) => void,
  ): AsyncGenerator<Uint8Array> {
    const res = await this.get(rel, signal);
    // Nix's words (HttpBinaryCacheStore::getFile).
    if (!res)
      throw new SubstituterError('not-found', `file '${rel}' does not exist in binary cache '${this.uri}'`, {
        uri: this.uri,
        hint: 'the cache lost the NAR file; try another substituter or build',
      });
    const lenHeader = res.headers['content-length'];
    const expected = typeof lenHeader === 'string' ? Number(lenHeader) : undefined;
    let got = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        got += chunk.length;
        onProgress?.(got, expected ?? 0);
        yield chunk;
      }
    } catch (e) {
      if (isAbortError(e) || signal?.aborted)
        throw new SubstituterError('aborted', `download of '${this.url(rel)}' was cancelled`, { uri: this.uri, cause: e });
      const code = expected !== undefined && got < expected ? 'truncated' : 'network';
      throw new SubstituterError(
        code,
        `download of '${this.url(rel)}' failed after ${got}${expected !== undefined ? ` of ${expected}` : ''} bytes: ${(e as Error).message}`,
        { uri: this.uri, cause: e },
      );
    } finally {
      if (!res.body.destroyed) res.body.destroy();
    }
    if (expected !== undefined && got !== expected) {
      throw new SubstituterError('truncated', `download of '${this.url(rel)}' ended after ${got} of ${expected} bytes`, { uri: this.uri });
    }
  }

  async close(): Promise<void> {
    await this.ownAgent?.close();
  }
}

/** The length a response announced, 0 when it did not (as curl's total for a chunked body). */
function contentLength(res: Dispatcher.ResponseData): number {
  const n = Number(res.headers['content-length']);
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

/** The bytes of an error page (Nix's download activity counts what it received), read up to 64 KiB. */
async function errorPageSize(body: AsyncIterable<Buffer> & { destroy(): unknown }): Promise<number> {
  let n = 0;
  try {
    for await (const chunk of body) {
      n += chunk.length;
      if (n > 65536) break;
    }
  } catch {
    /* what came is what counts */
  }
  body.destroy();
  return n;
}

/** Bounded parallelism without p-queue (which belongs to the scheduler). */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  async function worker(): Promise<void> {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  }
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected) throw rejected.reason;
  return out;
}

/** Parse Nix-style store URL parameters (`?priority=10&trusted=1&want-mass-query=1`). */
function splitUri(uri: string): { base: string; params: URLSearchParams } {
  const q = uri.indexOf('?');
  return q < 0 ? { base: uri, params: new URLSearchParams() } : { base: uri.slice(0, q), params: new URLSearchParams(uri.slice(q + 1)) };
}

export class BinaryCacheSubstituter implements Substituter {
  readonly uri: string;
  readonly trusted: boolean;
  readonly trustedPublicKeys: readonly string[];
  readonly requireSigs: boolean;
  readonly storeDir: string;
  private _priority: number;
  private _wantMassQuery = false;
  private _enabled = true;
  private readonly priorityFixed: boolean;
  private readonly transport: Transport;
  /** The shared narinfo cache, else (once opened) our own. */
  private cache: NarInfoCache | undefined;
  private readonly ownCacheOptions: NarInfoCacheOptions | undefined;
  private readonly maxParallel: number;
  private readonly warn: (m: string) => void;
  private initPromise: Promise<void> | undefined;
  /** Set when init() has succeeded (queryPathInfos of a file:// cache then reads synchronously). */
  private initDone = false;

  constructor(uri: string, opts: BinaryCacheSubstituterOptions = {}) {
    const { base, params } = splitUri(uri);
    this.uri = base.replace(/\/+$/, '');
    this.trusted = opts.trusted ?? (params.get('trusted') === '1' || params.get('trusted') === 'true');
    this.trustedPublicKeys = [...(opts.trustedPublicKeys ?? [])];
    this.requireSigs = opts.requireSigs ?? true;
    // Nix's `store` setting of any store URI (`file:///cache?store=/my/store`): the store dir it serves.
    this.storeDir = opts.storeDir ?? params.get('store') ?? DEFAULT_STORE_DIR;
    const pParam = params.get('priority');
    const prio = opts.priority ?? (pParam !== null ? Number(pParam) : undefined);
    this.priorityFixed = prio !== undefined;
    this._priority = validate('priority', prio ?? 0, 0);
    if (params.get('want-mass-query') === '1' || params.get('want-mass-query') === 'true') this._wantMassQuery = true;
    this.maxParallel = validate('maxParallelQueries', opts.maxParallelQueries ?? 16, 1);
    this.warn = opts.onWarning ?? ((m) => process.emitWarning(m));
    if (opts.narInfoCache instanceof NarInfoCache) this.cache = opts.narInfoCache;
    else this.ownCacheOptions = opts.narInfoCache ?? {};
    if (this.uri.startsWith('file://')) {
      this.transport = new FileTransport(path.resolve(fileURLToPath(this.uri)), this.uri);
    } else if (this.uri.startsWith('http://') || this.uri.startsWith('https://')) {
      this.transport = new HttpTransport(this.uri + '/', this.uri, {
        maxConnections: validate('maxConnections', opts.maxConnections ?? 8, 1),
        retries: validate('retries', opts.retries ?? 2, 0),
        retryBaseMs: validate('retryBaseMs', opts.retryBaseMs ?? 100, 0),
        onRetry: opts.onRetry,
        timeoutMs: validate('timeoutMs', opts.timeoutMs ?? 30_000, 1),
        dispatcher: opts.dispatcher,
        fallback: opts.fallback ?? false,
        onDisabled: opts.onDisabled ?? this.warn,
      });
    } else {
      throw new SubstituterError('network', `unsupported binary cache URL '${uri}'`, { uri, hint: 'use file:///dir, http://host/path or https://host/path' });
    }
  }

  get priority(): number {
    return this._priority;
  }

  private get narInfoCache(): NarInfoCache {
    this.cache ??= NarInfoCache.open({ onWarning: this.warn, ...this.ownCacheOptions });
    return this.cache;
  }
  /** Nix's WantMassQuery from nix-cache-info (or `?want-mass-query=1`). */
  get wantMassQuery(): boolean {
    return this._wantMassQuery;
  }
  /** False when the cache is for another store dir (it then serves nothing). */
  get enabled(): boolean {
    return this._enabled;
  }

  init(signal?: AbortSignal, onTransfer?: TransferListener): Promise<void> {
    this.initPromise ??= this.doInit(signal, onTransfer);
    return this.initPromise;
  }

  private async doInit(signal?: AbortSignal, onTransfer?: TransferListener): Promise<void> {
    let info = this.narInfoCache.getCacheInfo(this.uri);
    if (!info) {
      let text: Buffer | undefined;
      try {
        text = await this.transport.getFile('nix-cache-info', signal, onTransfer);
      } catch (e) {
        this.initPromise = undefined; // let a later call retry
        throw e;
      }
      if (this.transport instanceof FileTransport) await this.transport.prepare(this.storeDir, text !== undefined);
      // As Nix: an HTTP cache without nix-cache-info is not a binary cache (Nix would try to create the
      // file, which HTTP cannot); the substituter is left out. (A file:// one gets defaults.)
      if (!text && this.transport instanceof HttpTransport) {
        throw new SubstituterError('network', `'${this.uri}' does not appear to be a binary cache`, {
          uri: this.uri,
          hint: `'${this.uri}/nix-cache-info' does not exist; check the URL`,
        });
      }
      let parsed;
      try {
        parsed = text ? parseCacheInfo(text.toString('utf8'), `${this.uri}/nix-cache-info`) : {};
      } catch (e) {
        throw new SubstituterError('bad-narinfo', (e as Error).message, { uri: this.uri, cause: e });
      }
      info = { storeDir: parsed.storeDir ?? this.storeDir, wantMassQuery: parsed.wantMassQuery ?? false, priority: parsed.priority ?? 0 };
      this.narInfoCache.setCacheInfo(this.uri, info);
    }
    if (!this.priorityFixed) this._priority = info.priority;
    this._wantMassQuery ||= info.wantMassQuery;
    if (info.storeDir !== this.storeDir) {
      this._enabled = false;
      // Nix's words (its BinaryCacheStore::init refuses the cache; the substituter is then left out).
      this.warn(`binary cache '${this.uri}' is for Nix stores with prefix '${info.storeDir}', not '${this.storeDir}'`);
    }
    this.initDone = true;
  }

  queryPathInfos(
    paths: readonly StorePath[],
    opts: { signal?: AbortSignal | undefined; onTransfer?: TransferListener | undefined } = {},
  ): Promise<Map<StorePath, SubstitutablePathInfo>> {
    // An open file:// cache is read with synchronous calls, one path after the other, in this call: the
    // same reads, lookups and events as queryPathInfosAsync's without its promises (mapLimit's worker,
    // each path's queryOne and fetchNarInfo, about twenty per path, each looked-up `.drv` and output of a build).
    if (this.initDone && this.transport instanceof FileTransport) {
      try {
        return Promise.resolve(this.queryPathInfosSync(this.transport, paths, opts.onTransfer));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return this.queryPathInfosAsync(paths, opts);
  }

  private queryPathInfosSync(
    transport: FileTransport,
    paths: readonly StorePath[],
    onTransfer: TransferListener | undefined,
  ): Map<StorePath, SubstitutablePathInfo> {
    const out = new Map<StorePath, SubstitutablePathInfo>();
    if (!this._enabled) return out;
    for (const p of new Set(paths)) {
      const hashPart = storePathHashPart(p);
      const cached = this.narInfoCache.lookup(this.uri, hashPart, this.storeDir);
      let info: SubstitutablePathInfo | undefined;
      if (cached) info = cached.present ? this.pathInfo(p, cached.info) : undefined;
      else {
        onTransfer?.({ kind: 'query-started', path: p });
        try {
          const rel = `${hashPart}.narinfo`;
          info = this.pathInfo(p, this.narInfoOf(p, hashPart, rel, transport.getFileSync(rel)));
        } finally {
          onTransfer?.({ kind: 'query-finished', path: p, found: info !== undefined });
        }
      }
      if (info) out.set(p, info);
    }
    return out;
  }

  private async queryPathInfosAsync(
    paths: readonly StorePath[],
    opts: { signal?: AbortSignal | undefined; onTransfer?: TransferListener | undefined },
  ): Promise<Map<StorePath, SubstitutablePathInfo>> {
    await this.init(opts.signal, opts.onTransfer);
    const out = new Map<StorePath, SubstitutablePathInfo>();
    if (!this._enabled) return out;
    const unique = [...new Set(paths)];
    await mapLimit(unique, this.maxParallel, async (p) => {
      const info = await this.queryOne(p, opts.signal, opts.onTransfer);
      if (info) out.set(p, info);
    });
    return out;
  }

  private async queryOne(p: StorePath, signal: AbortSignal | undefined, onTransfer: TransferListener | undefined): Promise<SubstitutablePathInfo | undefined> {
    const hashPart = storePathHashPart(p);
    const cached = this.narInfoCache.lookup(this.uri, hashPart, this.storeDir);
    if (cached) return cached.present ? this.pathInfo(p, cached.info) : undefined;
    // As Nix, a path asked of the cache itself (no answer in the narinfo cache) is an activity.
    onTransfer?.({ kind: 'query-started', path: p });
    let info: SubstitutablePathInfo | undefined;
    try {
      info = this.pathInfo(p, await this.fetchNarInfo(p, hashPart, signal, onTransfer));
      return info;
    } finally {
      onTransfer?.({ kind: 'query-finished', path: p, found: info !== undefined });
    }
  }

  /** Nix's BinaryCacheStore::queryRealisation: `realisations/<id>.doi`, the realisation as JSON. */
  async queryRealisation(id: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<Realisation | undefined> {
    await this.init(opts.signal);
    if (!this._enabled) return undefined;
    const rel = `realisations/${id}.doi`;
    const text = await this.transport.getFile(rel, opts.signal);
    if (!text) return undefined;
    try {
      return parseRealisation(text.toString('utf8'), id, this.storeDir);
    } catch (e) {
      throw new SubstituterError('bad-narinfo', `realisation '${rel}' of '${this.uri}' is corrupt: ${(e as Error).message}`, { uri: this.uri, cause: e });
    }
  }

  /** Read and parse a path's narinfo from the cache (undefined when it has none) and remember the answer. */
  private async fetchNarInfo(
    p: StorePath,
    hashPart: string,
    signal: AbortSignal | undefined,
    onTransfer: TransferListener | undefined,
  ): Promise<NarInfo | undefined> {
    const rel = `${hashPart}.narinfo`;
    return this.narInfoOf(p, hashPart, rel, await this.transport.getFile(rel, signal, onTransfer));
  }

  /** The narinfo `rel` of `p` from its bytes (`text`; undefined: the cache has none), parsed and remembered. */
  private narInfoOf(p: StorePath, hashPart: string, rel: string, text: Buffer | undefined): NarInfo | undefined {
    let ni: NarInfo | undefined;
    if (text) {
      try {
        ni = parseNarInfo(text.toString('utf8'), { storeDir: this.storeDir, whence: `${this.uri}/${rel}` });
      } catch (e) {
        // Nix's words (its NarInfo parser); what is wrong goes into the hint.
        if (e instanceof BadNarInfoError)
          throw new SubstituterError('bad-narinfo', `NAR info file '${rel}' is corrupt`, {
            uri: this.uri,
            path: p,
            cause: e,
            hint: `${e.shortMessage}${e.hint ? `; ${e.hint}` : ''}`,
          });
        throw e;
      }
    }
    this.narInfoCache.insert(this.uri, hashPart, ni);
    return ni;
  }

  private pathInfo(p: StorePath, ni: NarInfo | undefined): SubstitutablePathInfo | undefined {
    if (!ni || ni.storePath !== p) return undefined;
    return {
      path: ni.storePath,
      narHash: ni.narHash,
      narSize: ni.narSize,
      references: ni.references,
      deriver: ni.deriver,
      sigs: ni.sigs,
      ca: ni.ca,
      url: ni.url,
      compression: ni.compression,
      fileHash: ni.fileHash,
      fileSize: ni.fileSize,
      // As Nix: the download size is the narinfo's FileSize, 0 when it has none.
      downloadSize: ni.fileSize ?? 0,
    };
  }

  fetchNar(info: SubstitutablePathInfo, opts: FetchNarOptions = {}): AsyncIterable<Uint8Array> {
    return this.fetchNarImpl(info, opts);
  }

  private async *fetchNarImpl(info: SubstitutablePathInfo, opts: FetchNarOptions): AsyncGenerator<Uint8Array> {
    const { signal, onProgress, onTransfer } = opts;
    await this.init(signal);
    const transport = this.transport;
    const uri = this.uri;
    // As Nix, FileSize is not enforced: a file of another size is decoded, and the NAR it holds is
    // judged by its hash and size (Nix's messages). Only a file far longer than announced is cut off.
    const max = info.fileSize !== undefined ? info.fileSize + info.narSize + FILE_OVERRUN_MAX : Infinity;
    /** Count the file's bytes read so far (`done`), refusing a file far longer than announced. */
    const counted = (done: number): void => {
      fileBytes = done;
      if (done > max) {
        throw new SubstituterError('network', `NAR file '${info.url}' of '${info.path}' on '${uri}' is larger than its FileSize ${info.fileSize}`, {
          uri,
          path: info.path,
        });
      }
      onProgress?.(done, info.downloadSize);
    };
    async function* raw(): AsyncGenerator<Uint8Array> {
      let done = 0;
      for await (const chunk of transport.stream(info.url, signal, info.fileSize, info.compression === 'zstd', onTransfer)) {
        if (head.length < 6) head = Buffer.concat([head, Buffer.from(chunk.buffer, chunk.byteOffset, Math.min(chunk.byteLength, 6 - head.length))]);
        done += chunk.length;
        counted(done);
        yield chunk;
      }
      if (info.fileSize !== undefined && done < info.fileSize) short = done;
    }
    let short: number | undefined;
    let fileBytes = 0;
    /** The file's first bytes (its compression's magic), and how much of the NAR came out before an error. */
    let head = Buffer.alloc(0);
    let produced = 0;
    // An uncompressed NAR file of small announced size in a file:// cache (a `.drv`'s) is read here at once and
    // its bytes handed on from here, without the streaming layers (an async generator layer costs several
    // microseconds of main-thread CPU per NAR). Its errors are the stream's, caught below.
    if (info.compression === 'none' && transport instanceof FileTransport) {
      let whole: Buffer[] | undefined;
      try {
        whole = transport.readSmall(info.url, info.fileSize, signal);
      } catch (e) {
        throw this.narReadFailure(e, info, signal);
      }
      if (whole) {
        let done = 0;
        for (const chunk of whole) {
          done += chunk.length;
          counted(done);
          yield chunk;
        }
        return;
      }
    }
    let decompressed: AsyncIterable<Uint8Array>;
    try {
      decompressed = decompressStream(info.compression, raw(), { ...(signal ? { signal } : {}), sizeHint: info.narSize });
    } catch (e) {
      throw new SubstituterError('decompression', `cannot read NAR of '${info.path}' from '${uri}': ${(e as Error).message}`, {
        uri,
        path: info.path,
        cause: e,
      });
    }
    try {
      for await (const chunk of decompressed) {
        produced += chunk.byteLength;
        yield chunk;
      }
    } catch (e) {
      if (e instanceof DecompressionError && !(signal?.aborted || isAbortError(e)))
        throw await decompressionFailure(e, info, uri, { short, fileBytes, head, produced }, () => transport.stream(info.url, signal, info.fileSize), signal);
      throw this.narReadFailure(e, info, signal);
    }
  }

  /** A failed read of the NAR file of `info` (not a decompression error) as the SubstituterError thrown. */
  private narReadFailure(e: unknown, info: SubstitutablePathInfo, signal: AbortSignal | undefined): unknown {
    if (e instanceof SubstituterError) return e;
    if (signal?.aborted || isAbortError(e))
      return new SubstituterError('aborted', `download of '${info.path}' was cancelled`, { uri: this.uri, path: info.path, cause: e });
    return new SubstituterError('network', `download of '${info.path}' from '${this.uri}' failed: ${(e as Error).message}`, {
      uri: this.uri,
      path: info.path,
      cause: e,
    });
  }

  async close(): Promise<void> {
    await this.transport.close();
    if (this.ownCacheOptions) this.cache?.close();
  }
}
