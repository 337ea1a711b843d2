/**
 * Streaming (de)compression of NAR files: xz (node-liblzma), zstd (zstd-napi), br and gzip (node:zlib),
 * bzip2 (Debian's `bzip2`, through src/platform, the layer allowed to start processes), none.
 */
import type { Transform } from 'node:stream';
import { createRequire } from 'node:module';
import { ThreadTasks } from '../store/thread-tasks.js';
import { Bzip2Encoder } from '../store/bzip2.js';
import { RealiseError } from '../store/errors.js';
import type * as ZstdBinding from 'zstd-napi/binding.js';

/** zstd-napi's native binding (CommonJS whose exports Node's ESM loader cannot name statically). */
import { decompressWithProgram } from '../platform/external-decompressor.js';
import type { Compression } from './narinfo.js';

// The native codecs are loaded on first use: their imports cost tens of ms of start-up that commands
// which never (de)compress a NAR do not pay.
const requireHere = createRequire(import.meta.url);
// node:zlib too (br and gzip; about 2 ms to load).
let zlibModule: typeof import('node:zlib') | undefined;
const zlib = (): typeof import('node:zlib') => (zlibModule ??= requireHere('node:zlib') as typeof import('node:zlib'));
let lzmaModule: typeof import('node-liblzma') | undefined;
const lzma = (): typeof import('node-liblzma') => (lzmaModule ??= requireHere('node-liblzma') as typeof import('node-liblzma'));
let zstdModule: typeof import('zstd-napi') | undefined;
const zstd = (): typeof import('zstd-napi') => (zstdModule ??= requireHere('zstd-napi') as typeof import('zstd-napi'));
let zstdBindingModule: typeof ZstdBinding | undefined;
const zstdBinding = (): typeof ZstdBinding => (zstdBindingModule ??= requireHere('zstd-napi/binding.js') as typeof ZstdBinding);

const CHUNK = 1 << 20;

/** Thrown by the streams of this module when the compressed data are corrupt or truncated (code `decompression`). */
export class DecompressionError extends RealiseError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('decompression', message, options);
  }
}

/** Output buffer size: 1 MiB, or less for small NARs (the decoders allocate a buffer of this size per call). */
function outputChunk(sizeHint: number | undefined): number {
  if (sizeHint === undefined || !(sizeHint > 0)) return CHUNK;
  return Math.max(16 * 1024, Math.min(CHUNK, 2 ** Math.ceil(Math.log2(sizeHint + 1))));
}

function decoder(c: Exclude<Compression, 'none' | 'bzip2' | 'zstd'>, sizeHint: number | undefined): Transform {
  const chunkSize = outputChunk(sizeHint);
  switch (c) {
    case 'xz':
      return lzma().createUnxz({ chunkSize }) as unknown as Transform;
    case 'br':
      return zlib().createBrotliDecompress({ chunkSize });
    case 'gzip':
      return zlib().createGunzip({ chunkSize });
  }
}

function encoder(c: Exclude<Compression, 'none' | 'bzip2'>, level?: number): Transform {
  switch (c) {
    case 'xz':
      return lzma().createXz({ preset: level ?? 6, chunkSize: CHUNK }) as unknown as Transform;
    case 'zstd':
      return new (zstd().CompressStream)({ compressionLevel: level ?? 3 });
    case 'br':
      return zlib().createBrotliCompress({ chunkSize: CHUNK, params: { [zlib().constants.BROTLI_PARAM_QUALITY]: level ?? 6 } });
    case 'gzip':
      return zlib().createGzip({ chunkSize: CHUNK, level: level ?? 6 });
  }
}

const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

function crc32(b: Uint8Array): number {
  let c = -1;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/**
 * node-liblzma ends quietly on a truncated .xz; check that the input ends with a valid xz stream footer
 * (CRC32 over backward size and flags, magic 'YZ'), after optional stream padding.
 */
async function* checkXzEnd(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let tail = Buffer.alloc(0);
  for await (const chunk of source) {
    const c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    tail = c.length >= 64 ? Buffer.from(c.subarray(c.length - 64)) : Buffer.concat([tail, c]).subarray(-64);
    yield chunk;
  }
  let end = tail.length;
  while (end >= 4 && tail.readUInt32LE(end - 4) === 0) end -= 4;
  const footer = tail.subarray(end - 12, end);
  if (end < 12 || footer[10] !== 0x59 || footer[11] !== 0x5a || footer.readUInt32LE(0) !== crc32(footer.subarray(4, 10))) {
    throw new DecompressionError('xz decompression failed: the compressed data are truncated (no valid stream footer)');
  }
}

/** Resolves when `t` can take more input, or is closed. */
function drainedOrClosed(t: Transform): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      t.off('drain', done);
      t.off('close', done);
      resolve();
    };
    t.on('drain', done);
    t.on('close', done);
  });
}

/**
 * Write `source` into `t` as it accepts input, then end it, unless `stopped()` (the consumer went away or
 * the transform failed). A failure of the source goes to `sourceFailed`, then destroys `t`; never rejects.
 */
async function feedTransform(
  source: AsyncIterable<Uint8Array>,
  t: Transform,
  on: { stopped: () => boolean; sourceFailed: (e: unknown) => void },
): Promise<void> {
  try {
    for await (const chunk of source) {
      if (on.stopped()) return;
      if (!t.write(chunk)) await drainedOrClosed(t);
    }
    if (!on.stopped()) t.end();
  } catch (e) {
    on.sourceFailed(e);
    t.destroy();
  }
}

/**
 * Drive a Transform from an async source and yield its output chunks as they come (no re-concatenation,
 * as a Readable's async iterator would do). At most a few output chunks are buffered: the transform is
 * paused while the consumer is behind, which stops it reading input, which stops the feeder.
 */
async function* throughTransform(source: AsyncIterable<Uint8Array>, t: Transform, what: string): AsyncGenerator<Uint8Array> {
  const queue: Buffer[] = [];
  let head = 0;
  let ended = false;
  let error: unknown;
  let sourceError: unknown;
  let failed = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  t.on('data', (b: Buffer) => {
    queue.push(b);
    if (queue.length - head >= 4) t.pause();
    notify();
  });
  t.on('end', () => {
    ended = true;
    notify();
  });
  t.on('error', (e: unknown) => {
    error ??= e;
    failed = true;
    notify();
  });
  t.on('close', () => {
    if (!ended) failed = true;
    notify();
  });
  const feeder = feedTransform(source, t, {
    stopped: () => failed,
    sourceFailed: (e) => {
      sourceError = e;
      failed = true;
      notify();
    },
  });
  try {
    for (;;) {
      if (head < queue.length) {
        const b = queue[head]!;
        queue[head++] = undefined as unknown as Buffer;
        if (head > 64) {
          queue.splice(0, head);
          head = 0;
        }
        if (t.isPaused() && queue.length - head < 2) t.resume();
        yield b;
        continue;
      }
      if (sourceError) throw sourceError;
      if (error) throw new DecompressionError(`${what} failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      if (ended) break;
      if (failed) throw new DecompressionError(`${what} failed: the stream closed early`);
      if (t.isPaused()) t.resume();
      await new Promise<void>((r) => {
        wake = r;
      });
    }
  } finally {
    failed = true;
    t.destroy();
    void feeder; // it stops at its next chunk (and closes the source); never rejects
  }
  if (sourceError) throw sourceError;
}

const zstdPool: ZstdBinding.DCtx[] = [];
const EMPTY = Buffer.alloc(0);

/**
 * zstd over zstd-napi's context API directly: contexts are pooled and reused (creating one per NAR costs
 * more than decoding a small NAR), and output buffers are sized to the NAR instead of 128 KiB each.
 */
async function* zstdDecode(source: AsyncIterable<Uint8Array>, sizeHint: number | undefined): AsyncGenerator<Uint8Array> {
  const dctx = zstdPool.pop() ?? new (zstdBinding().DCtx)();
  const size = outputChunk(sizeHint);
  let out = Buffer.allocUnsafe(size);
  let pos = 0;
  let inFrame = false;
  const step = (src: Buffer): number => {
    let r: [number, number, number];
    try {
      r = dctx.decompressStream(out.subarray(pos), src);
    } catch (e) {
      throw new DecompressionError(`zstd decompression failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    pos += r[1];
    if (src.length > 0 || r[1] > 0) inFrame = r[0] !== 0; // an idle flush call reports the next header size
    return r[2];
  };
  let clean = false;
  let streaming = false;
  try {
    for await (const chunk of source) {
      let src = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      // Until the streaming decoder has been used: whole frames in this chunk whose header gives the
      // content size are decoded in one call straight into a buffer of that size (no output chunking,
      // no copies out of the decoder's window).
      while (!streaming && src.length > 0) {
        const n = oneShotFrameSize(src, sizeHint);
        if (n === undefined) break;
        let dst: Buffer;
        let got: number;
        try {
          if (src.buffer instanceof SharedArrayBuffer && n.content >= OFF_THREAD_MIN && offThreadOk) {
            // Input in shared memory: the frame is decoded on the decoder thread, next to ours.
            ({ dst, got } = await decodeOffThread(src.subarray(0, n.frame), n.content));
          } else {
            dst = Buffer.allocUnsafe(n.content);
            got = dctx.decompress(dst, src.subarray(0, n.frame));
          }
        } catch (e) {
          if (e instanceof DecompressionError) throw e;
          throw new DecompressionError(`zstd decompression failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
        }
        if (got !== n.content) throw new DecompressionError(`zstd decompression failed: a frame declares ${n.content} bytes but holds ${got}`);
        src = src.subarray(n.frame);
        if (got > 0) yield dst;
      }
      if (src.length === 0) continue;
      if (!streaming) {
        dctx.reset(zstdBinding().ResetDirective.sessionOnly);
        streaming = true;
      }
      for (;;) {
        src = src.subarray(step(src));
        if (pos === out.length) {
          yield out;
          out = Buffer.allocUnsafe(size);
          pos = 0;
          continue; // the decoder may hold more output
        }
        if (src.length === 0) break;
      }
    }
    for (;;) {
      const before = pos;
      step(EMPTY);
      if (pos === out.length) {
        yield out;
        out = Buffer.allocUnsafe(size);
        pos = 0;
        continue;
      }
      if (pos === before) break;
    }
    if (pos > 0) yield out.subarray(0, pos);
    if (inFrame) throw new DecompressionError('zstd decompression failed: the compressed data are truncated (stream ended in the middle of a frame)');
    clean = true;
  } finally {
    if (!clean) dctx.reset(zstdBinding().ResetDirective.sessionOnly);
    if (zstdPool.length < 16) zstdPool.push(dctx);
  }
}

/** Frames of at least this content size whose input is in shared memory are decoded on the decoder thread. */
const OFF_THREAD_MIN = 64 * 1024;
let offThreadOk = true;

/**
 * The decoder thread: a worker (plain JavaScript, no imports of ours) holding one zstd context. It reads
 * a frame from shared memory and sends back the decoded bytes in a transferred ArrayBuffer, so neither
 * side copies. The worker does not keep the process alive while idle.
 */
const decoderSource = `
const { parentPort } = require('node:worker_threads');
const z = require(${JSON.stringify(requireHere.resolve('zstd-napi/binding.js'))});
const d = new z.DCtx();
parentPort.on('message', (m) => {
  try {
    const out = new Uint8Array(m.out, 0, m.size);
    const got = d.decompress(out, new Uint8Array(m.sab, m.off, m.len));
    parentPort.postMessage({ id: m.id, got });
  } catch (e) {
    try { d.reset(1); } catch {}
    parentPort.postMessage({ id: m.id, error: String((e && e.message) || e) });
  }
});
`;

interface DecoderReply {
  id: number;
  got?: number;
  error?: string;
}
/** A decoder thread that failed to run is not used again (decoding stays on the main thread). */
const decoderThread = new ThreadTasks<DecoderReply>(decoderSource, () => {
  offThreadOk = false;
});

async function decodeOffThread(frame: Buffer, size: number): Promise<{ dst: Buffer; got: number }> {
  const dst = takeShared(size);
  let m: DecoderReply;
  try {
    m = await decoderThread.run({ sab: frame.buffer, off: frame.byteOffset, len: frame.length, out: dst.buffer, size });
  } catch (e) {
    throw new DecompressionError(`zstd decoder thread failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (m.error !== undefined) throw new DecompressionError(`zstd decompression failed: ${m.error}`);
  return { dst, got: m.got! };
}

/**
 * Output buffers of the decoder thread (shared memory, so it writes in place). A consumer that is done
 * with decoded chunks hands them back with recycleDecoded(); allocating fresh memory for every NAR cost
 * page faults and garbage collections.
 */
const sharedPool: SharedArrayBuffer[] = [];
const SHARED_POOL_MAX = 32;
const SHARED_BUFFER_MAX = 4 * 1024 * 1024;
const fromPool = new WeakSet<SharedArrayBuffer>();

function takeShared(size: number): Buffer {
  for (let i = sharedPool.length - 1; i >= 0; i--) {
    if (sharedPool[i]!.byteLength >= size) {
      const sab = sharedPool.splice(i, 1)[0]!;
      return Buffer.from(sab, 0, size);
    }
  }
  const sab = new SharedArrayBuffer(size <= SHARED_BUFFER_MAX ? Math.max(64 * 1024, 2 ** Math.ceil(Math.log2(size))) : size);
  if (sab.byteLength <= SHARED_BUFFER_MAX) fromPool.add(sab);
  return Buffer.from(sab, 0, size);
}

/**
 * Give decoded chunks back to the pool of output buffers. Only for chunks from decompressStream that the
 * caller and everyone it passed them to will never read again; other buffers are ignored.
 */
export function recycleDecoded(chunks: Iterable<Uint8Array>): void {
  for (const c of chunks) {
    const b = c.buffer;
    if (b instanceof SharedArrayBuffer && fromPool.has(b) && sharedPool.length < SHARED_POOL_MAX && !sharedPool.includes(b)) sharedPool.push(b);
  }
}

/** One-shot decoding is used for frames up to this content size. */
const ONE_SHOT_MAX = 64 * 1024 * 1024;

/**
 * Sizes of the zstd frame at the start of `src` if it lies wholly in `src` and its header gives a content
 * size of at most ONE_SHOT_MAX (and at most `sizeHint`); undefined otherwise (the streaming decoder then
 * takes over and reports any error).
 */
function oneShotFrameSize(src: Buffer, sizeHint: number | undefined): { frame: number; content: number } | undefined {
  let frame: number;
  let content: number | null;
  try {
    content = zstdBinding().getFrameContentSize(src);
    if (content === null || content > ONE_SHOT_MAX || (sizeHint !== undefined && content > sizeHint)) return undefined;
    frame = zstdBinding().findFrameCompressedSize(src);
  } catch {
    return undefined;
  }
  return frame > 0 && frame <= src.length ? { frame, content } : undefined;
}

/** Decompress a stream. Unknown compressions throw DecompressionError before reading anything. */
export function decompressStream(
  compression: string,
  source: AsyncIterable<Uint8Array>,
  opts: { signal?: AbortSignal; sizeHint?: number } = {},
): AsyncIterable<Uint8Array> {
  switch (compression) {
    case 'none':
      return source;
    case 'bzip2':
      return (async function* () {
        try {
          yield* decompressWithProgram('bzip2', ['-dc'], source, opts.signal ? { signal: opts.signal } : {});
        } catch (e) {
          if (e instanceof Error && e.name === 'ExternalDecompressorError')
            throw new DecompressionError(`bzip2 decompression failed: ${e.message}`, { cause: e });
          throw e;
        }
      })();
    case 'zstd':
      return zstdDecode(source, opts.sizeHint);
    case 'xz':
    case 'br':
    case 'gzip':
      return throughTransform(compression === 'xz' ? checkXzEnd(source) : source, decoder(compression, opts.sizeHint), `${compression} decompression`);
    default:
      throw new DecompressionError(`unsupported compression '${compression}'`);
  }
}

/** Compress a stream (used to write binary caches). */
export function compressStream(compression: Compression, source: AsyncIterable<Uint8Array>, opts: { level?: number } = {}): AsyncIterable<Uint8Array> {
  switch (compression) {
    case 'none':
      return source;
    case 'bzip2':
      return bzip2Stream(source, opts.level);
    default:
      return throughTransform(source, encoder(compression, opts.level), `${compression} compression`);
  }
}

/** bzip2 with our own encoder (store/bzip2.ts), block by block as the input comes. */
async function* bzip2Stream(source: AsyncIterable<Uint8Array>, level = 9): AsyncIterable<Uint8Array> {
  const e = new Bzip2Encoder(Math.min(Math.max(level, 1), 9));
  for await (const chunk of source) {
    const out = e.write(chunk);
    if (out.length > 0) yield out;
  }
  yield e.end();
}

/** The magic numbers of the compressions libarchive recognises by itself (Nix decodes NARs and tarballs with it). */
const MAGICS: ReadonlyArray<readonly [Compression, readonly number[]]> = [
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['gzip', [0x1f, 0x8b]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
];

/** The compression data starting with `head` are in, as libarchive finds it (6 bytes are enough), or undefined. */
export function compressionOf(head: Uint8Array): Compression | undefined {
  for (const [name, magic] of MAGICS) if (head.length >= magic.length && magic.every((b, i) => head[i] === b)) return name;
  return undefined;
}

/**
 * The first bytes of `body` (at least `n` unless it ends first; whole chunks, so possibly more) and `rest`,
 * the whole body again from its start: the head, then what `body` still yields. Returning `rest` (a consumer
 * that stops early) returns `body`'s iterator, so its source is released.
 */
export async function peek(body: AsyncIterable<Uint8Array>, n: number): Promise<{ head: Buffer; rest: AsyncIterableIterator<Uint8Array> }> {
  const it = body[Symbol.asyncIterator]();
  let head = Buffer.alloc(0);
  while (head.length < n) {
    const r = await it.next();
    if (r.done) break;
    head = Buffer.concat([head, r.value]);
  }
  let first: Buffer | undefined = head.length > 0 ? head : undefined;
  const rest: AsyncIterableIterator<Uint8Array> = {
    [Symbol.asyncIterator]: () => rest,
    next: () => {
      if (first === undefined) return it.next();
      const value = first;
      first = undefined;
      return Promise.resolve({ done: false, value });
    },
    return: async () => {
      first = undefined;
      await it.return?.();
      return { done: true, value: undefined };
    },
  };
  return { head, rest };
}
