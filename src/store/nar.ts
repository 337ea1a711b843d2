/**
 * NAR (Nix ARchive): streaming serialisation of a file system tree, streaming parse/restore, and the
 * NAR hash and size computed in the same pass. Restore refuses hostile archives (entries out of order,
 * duplicates, names with `/`, `.`, `..`, NUL, or empty) and never writes outside its target directory.
 */
import * as fs from 'node:fs';
import { promises as fsp, write as writeCb, constants as FS, type Dirent } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BadNarError, StoreError, storeWriteError } from './errors.js';
import { Hash, HashSink, type HashAlgorithm } from './hash.js';
import { ThreadTasks } from './thread-tasks.js';
import { processUmask } from './umask.js';

const NAR_MAGIC = 'nix-archive-1';
const CHUNK = 1 << 20;
/** Refuse absurd string fields (names, symlink targets, tokens). File contents are not limited. */
const MAX_STRING = 1 << 16;

function padLen(n: number): number {
  return (8 - (n % 8)) % 8;
}

const ZEROS = Buffer.alloc(8);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** Encode one NAR string (length, bytes, zero padding). */
export function narString(s: string | Uint8Array): Buffer {
  const body = typeof s === 'string' ? Buffer.from(s, 'utf8') : Buffer.from(s);
  const pad = padLen(body.length);
  return Buffer.concat([u64(body.length), body, ZEROS.subarray(0, pad)]);
}

function tokens(...ts: string[]): Buffer {
  return Buffer.concat(ts.map((t) => narString(t)));
}

/** Receives NAR bytes from the dumper; may return a promise to apply back-pressure. */
type Emit = (chunk: Uint8Array) => void | Promise<void>;

/** Files up to this size are read ahead (several at once) while earlier entries are being emitted. */
const SMALL_FILE = 256 * 1024;
/** How many small files of one directory may be read ahead. */
const READ_AHEAD = 16;
const COALESCE = 64 * 1024;

/**
 * Writes NAR framing into a coalescing buffer so that a tree of many small files is emitted as a few
 * large chunks. With `reuse`, the same scratch buffer is handed out again after `emit` returns (for
 * consumers that do not keep chunks, such as a hash); otherwise every chunk is a fresh buffer.
 */
class NarOut {
  private buf: Buffer;
  private n = 0;
  constructor(
    private readonly emit: Emit,
    private readonly reuse: boolean,
  ) {
    this.buf = Buffer.allocUnsafe(COALESCE);
  }
  private room(k: number): Promise<void> | void {
    if (this.n + k <= this.buf.length) return;
    return this.flush();
  }
  flush(): Promise<void> | void {
    if (this.n === 0) return;
    const chunk = this.reuse ? this.buf.subarray(0, this.n) : Buffer.from(this.buf.subarray(0, this.n));
    this.n = 0;
    return this.emit(chunk);
  }
  /** Append a NAR string; long strings (up to MAX_STRING + framing) still fit after a flush. */
  async str(s: string | Buffer): Promise<void> {
    const body = typeof s === 'string' ? Buffer.from(s, 'latin1') : s;
    const total = 8 + body.length + padLen(body.length);
    if (total > this.buf.length) {
      const f = this.flush();
      if (f) await f;
      this.buf = Buffer.allocUnsafe(total);
    }
    const r = this.room(total);
    if (r) await r;
    this.buf.writeUInt32LE(body.length >>> 0, this.n);
    this.buf.writeUInt32LE(Math.floor(body.length / 2 ** 32), this.n + 4);
    body.copy(this.buf, this.n + 8);
    this.buf.fill(0, this.n + 8 + body.length, this.n + total);
    this.n += total;
  }
  /** Pre-encoded framing (already padded). */
  async raw(b: Buffer): Promise<void> {
    if (b.length > this.buf.length - this.n) {
      const f = this.flush();
      if (f) await f;
      if (b.length > this.buf.length) {
        const e = this.emit(this.reuse ? b : Buffer.from(b));
        if (e) await e;
        return;
      }
    }
    b.copy(this.buf, this.n);
    this.n += b.length;
  }
  async u64(v: number): Promise<void> {
    const r = this.room(8);
    if (r) await r;
    this.buf.writeUInt32LE(v >>> 0, this.n);
    this.buf.writeUInt32LE(Math.floor(v / 2 ** 32), this.n + 4);
    this.n += 8;
  }
  async zeros(k: number): Promise<void> {
    if (k === 0) return;
    const r = this.room(k);
    if (r) await r;
    this.buf.fill(0, this.n, this.n + k);
    this.n += k;
  }
  /** File contents: small pieces are copied in, large ones passed through after a flush. */
  async data(b: Buffer): Promise<void> {
    if (b.length <= this.buf.length - this.n && b.length < COALESCE / 4) {
      b.copy(this.buf, this.n);
      this.n += b.length;
      return;
    }
    const f = this.flush();
    if (f) await f;
    const e = this.emit(b);
    if (e) await e;
  }
}

const T_CLOSE = narString(')');
const T_REGULAR = tokens('(', 'type', 'regular', 'contents');
const T_EXECUTABLE = tokens('(', 'type', 'regular', 'executable', '', 'contents');
const T_SYMLINK = tokens('(', 'type', 'symlink', 'target');
const T_DIRECTORY = tokens('(', 'type', 'directory');
const T_ENTRY = tokens('entry', '(', 'name');
const T_NODE = narString('node');
const T_MAGIC = narString(NAR_MAGIC);
const SLASH = Buffer.from('/');

/** A regular file opened for dumping: small files are read completely up front. */
interface OpenedFile {
  size: number;
  executable: boolean;
  data?: Buffer;
  fh?: fsp.FileHandle;
}

async function openRegular(p: Buffer): Promise<OpenedFile> {
  const fh = await fsp.open(p, FS.O_RDONLY | FS.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BadNarError(`file '${p.toString()}' changed type while it was being archived`);
    const executable = (st.mode & 0o100) !== 0;
    if (st.size > SMALL_FILE) return { size: st.size, executable, fh };
    const data = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < st.size) {
      const { bytesRead } = await fh.read(data, off, st.size - off, off);
      if (bytesRead === 0) throw new BadNarError(`file '${p.toString()}' shrank while it was being archived`);
      off += bytesRead;
    }
    await fh.close();
    return { size: st.size, executable, data };
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}

async function writeRegular(p: Buffer, f: OpenedFile, out: NarOut, reuse: boolean): Promise<void> {
  await out.raw(f.executable ? T_EXECUTABLE : T_REGULAR);
  await out.u64(f.size);
  if (f.data) {
    await out.data(f.data);
  } else if (f.fh) {
    const fh = f.fh;
    try {
      // Double-buffered: the next read runs in the thread pool while the current chunk is consumed.
      let bufs = [Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK)];
      let k = 0;
      let pos = 0;
      const readAt = (b: Buffer, at: number) => fh.read(b, 0, Math.min(CHUNK, f.size - at), at);
      let pending: ReturnType<typeof readAt> | undefined = readAt(bufs[0]!, 0);
      while (pending) {
        const { bytesRead, buffer } = await pending;
        if (bytesRead === 0) throw new BadNarError(`file '${p.toString()}' shrank while it was being archived`);
        pos += bytesRead;
        k ^= 1;
        if (!reuse) bufs[k] = Buffer.allocUnsafe(CHUNK);
        pending = pos < f.size ? readAt(bufs[k]!, pos) : undefined;
        await out.data(buffer.subarray(0, bytesRead));
      }
      bufs = [];
    } finally {
      await fh.close();
    }
  }
  await out.zeros(padLen(f.size));
  await out.raw(T_CLOSE);
}

/** A directory being dumped: its sorted entries, the next one, and the regular files opened ahead. */
interface DumpDir {
  readonly p: Buffer;
  readonly entries: Dirent<Buffer>[];
  i: number;
  /** Entries up to here have been considered for reading ahead. */
  next: number;
  readonly ahead: Map<number, Promise<OpenedFile>>;
}

/** Start opening (and, when small, reading) the regular files among the next entries of `d`. */
function readAhead(d: DumpDir, upTo: number): void {
  for (; d.next < d.entries.length && d.ahead.size < READ_AHEAD && d.next <= upTo; d.next++) {
    const e = d.entries[d.next]!;
    if (e.isFile()) {
      const pr = openRegular(Buffer.concat([d.p, SLASH, e.name]));
      pr.catch(() => {}); // surfaced when awaited
      d.ahead.set(d.next, pr);
    }
  }
}

/**
 * Dump the tree at `root`. Open directories are kept on an explicit stack (no recursion), so a tree may be
 * as deep as its paths fit in PATH_MAX.
 */
async function dumpTree(root: Buffer, out: NarOut, reuse: boolean): Promise<void> {
  const open: DumpDir[] = [];
  let node: { p: Buffer; opened?: Promise<OpenedFile> | undefined } | undefined = { p: root };
  try {
    for (;;) {
      if (node) {
        const { p, opened } = node;
        node = undefined;
        const st = opened ? undefined : await fsp.lstat(p);
        if (opened || st!.isFile()) {
          await writeRegular(p, await (opened ?? openRegular(p)), out, reuse);
        } else if (st!.isSymbolicLink()) {
          await out.raw(T_SYMLINK);
          await out.str(await fsp.readlink(p, { encoding: 'buffer' }));
          await out.raw(T_CLOSE);
        } else if (st!.isDirectory()) {
          await out.raw(T_DIRECTORY);
          const entries = await fsp.readdir(p, { encoding: 'buffer', withFileTypes: true });
          entries.sort((a, b) => Buffer.compare(a.name, b.name));
          open.push({ p, entries, i: 0, next: 0, ahead: new Map() });
          continue;
        } else {
          throw new BadNarError(`file '${p.toString()}' has an unsupported type (not a regular file, directory or symlink)`);
        }
        if (open.length) await out.raw(T_CLOSE); // the entry in its directory
      }
      const d = open[open.length - 1];
      if (!d) return;
      if (d.i < d.entries.length) {
        readAhead(d, d.i + READ_AHEAD);
        const name = d.entries[d.i]!.name;
        const opened = d.ahead.get(d.i);
        d.ahead.delete(d.i);
        d.i++;
        await out.raw(T_ENTRY);
        await out.str(name);
        await out.raw(T_NODE);
        node = { p: Buffer.concat([d.p, SLASH, name]), opened };
        continue;
      }
      open.pop();
      await out.raw(T_CLOSE); // the directory
      if (open.length) await out.raw(T_CLOSE); // its entry in the parent
    }
  } finally {
    for (const d of open)
      for (const pr of d.ahead.values())
        pr.then(
          (f) => f.fh?.close(),
          () => {},
        ).catch(() => {});
  }
}

async function dumpInto(fsPath: string, emit: Emit, reuse: boolean): Promise<void> {
  const out = new NarOut(emit, reuse);
  await out.raw(T_MAGIC);
  await dumpTree(Buffer.from(resolvedPath(fsPath)), out, reuse);
  const f = out.flush();
  if (f) await f;
}

/**
 * Serialise the tree at `fsPath` as a NAR, byte for byte as `nix-store --dump`. Yields fresh buffers
 * the consumer may keep; small pieces are coalesced into chunks of about 64 KiB, large files come in
 * 1 MiB chunks and are read ahead while the consumer works. Directory entries are emitted in byte
 * order of their names, as Nix does; names need not be valid UTF-8.
 */
export async function* dumpPath(fsPath: string): AsyncGenerator<Uint8Array> {
  // A bounded hand-off between the walker (producer) and the generator (consumer).
  const HIGH_WATER = 4 * CHUNK;
  const queue: Uint8Array[] = [];
  let queued = 0;
  let done = false;
  let failure: { e: unknown } | undefined;
  let wakeConsumer: (() => void) | undefined;
  let wakeProducer: (() => void) | undefined;
  let cancelled = false;
  const emit: Emit = (chunk) => {
    if (cancelled) throw new DumpCancelled();
    queue.push(chunk);
    queued += chunk.length;
    wakeConsumer?.();
    if (queued >= HIGH_WATER)
      return new Promise<void>((resolve) => {
        wakeProducer = resolve;
      });
  };
  const producer = dumpInto(fsPath, emit, false).then(
    () => {
      done = true;
      wakeConsumer?.();
    },
    (e) => {
      failure = { e };
      done = true;
      wakeConsumer?.();
    },
  );
  try {
    for (;;) {
      if (queue.length > 0) {
        const chunk = queue.shift()!;
        queued -= chunk.length;
        if (queued < HIGH_WATER && wakeProducer) {
          const w = wakeProducer;
          wakeProducer = undefined;
          w();
        }
        yield chunk;
        continue;
      }
      if (done) break;
      await new Promise<void>((resolve) => {
        wakeConsumer = resolve;
      });
      wakeConsumer = undefined;
    }
    if (failure && !(failure.e instanceof DumpCancelled)) throw failure.e;
  } finally {
    if (!done) {
      cancelled = true;
      if (wakeProducer) {
        const w = wakeProducer;
        wakeProducer = undefined;
        w();
      }
      await producer;
    }
  }
}

class DumpCancelled extends Error {}

const REGULAR_HEAD = tokens(NAR_MAGIC, '(', 'type', 'regular', 'contents');
const EXECUTABLE_HEAD = tokens(NAR_MAGIC, '(', 'type', 'regular', 'executable', '', 'contents');
const NAR_CLOSE = narString(')');

/** NAR of a single regular file with the given contents (e.g. a `.drv` or `builtins.toFile`). */
export function narOfRegularFile(contents: string | Uint8Array, executable = false): Buffer {
  const body = typeof contents === 'string' ? Buffer.from(contents, 'utf8') : Buffer.from(contents);
  return Buffer.concat([executable ? EXECUTABLE_HEAD : REGULAR_HEAD, narString(body), NAR_CLOSE]);
}

/**
 * The contents of the regular file a whole NAR (`nar`, as narOfRegularFile makes it) holds; undefined when
 * it holds anything else or is not exactly such a NAR. It does not validate more than that shape.
 */
export function regularFileContentsOfNar(nar: Uint8Array): Uint8Array | undefined {
  const b = Buffer.from(nar.buffer, nar.byteOffset, nar.byteLength);
  const head = b.subarray(0, REGULAR_HEAD.length).equals(REGULAR_HEAD)
    ? REGULAR_HEAD.length
    : b.subarray(0, EXECUTABLE_HEAD.length).equals(EXECUTABLE_HEAD)
      ? EXECUTABLE_HEAD.length
      : -1;
  if (head < 0 || b.length < head + 8) return undefined;
  const len = b.readUInt32LE(head);
  if (b.readUInt32LE(head + 4) !== 0) return undefined;
  const start = head + 8;
  const end = start + len + padLen(len);
  if (end + NAR_CLOSE.length !== b.length || !b.subarray(end).equals(NAR_CLOSE)) return undefined;
  return b.subarray(start, start + len);
}

/** Hash and size of a NAR stream in one pass. */
export async function hashNar(
  nar: AsyncIterable<Uint8Array>,
  algorithm: 'sha256' | 'sha512' | 'sha1' | 'md5' = 'sha256',
): Promise<{ hash: Hash; size: number }> {
  const sink = new HashSink(algorithm);
  for await (const chunk of nar) sink.update(chunk);
  return sink.finish();
}

/**
 * NAR hash and size of a file system tree (as `nix-hash --type ALGO PATH` and the `narHash` Nix
 * registers), without materialising the NAR: the bytes go straight into the hash.
 */
export async function hashPath(fsPath: string, algorithm: 'sha256' | 'sha512' | 'sha1' | 'md5' = 'sha256'): Promise<{ hash: Hash; size: number }> {
  const sink = new HashSink(algorithm);
  await dumpInto(fsPath, (chunk) => sink.update(chunk), true);
  return sink.finish();
}

/**
 * Like `dumpPath`, but pushes every chunk into `sink` (awaiting it when it returns a promise), e.g. to
 * hash and scan for references in one pass. A chunk is only valid until the sink returns (or its
 * promise settles): its memory is reused, so copy it to keep it.
 */
export async function dumpPathTo(fsPath: string, sink: (chunk: Uint8Array) => void | Promise<void>): Promise<void> {
  await dumpInto(fsPath, sink, true);
}

/** Pass a stream through while hashing it; call `result()` once it is drained. */
export function teeHash(
  source: AsyncIterable<Uint8Array>,
  algorithm: 'sha256' | 'sha512' = 'sha256',
): { stream: AsyncIterable<Uint8Array>; result(): { hash: Hash; size: number } } {
  const sink = new HashSink(algorithm);
  let done: { hash: Hash; size: number } | undefined;
  async function* stream() {
    for await (const chunk of source) {
      sink.update(chunk);
      yield chunk;
    }
    done = sink.finish();
  }
  return {
    stream: stream(),
    result() {
      if (!done) throw new Error('teeHash: stream not fully consumed');
      return done;
    },
  };
}

/** Pull-based reader over an async byte stream. */
class ByteReader {
  private it: AsyncIterator<Uint8Array>;
  private buf: Buffer = Buffer.alloc(0);
  private off = 0;
  /** Total bytes consumed. */
  pos = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** Make the next non-empty source chunk current; false at the end of the stream. */
  private async next(): Promise<boolean> {
    for (;;) {
      const r = await this.it.next();
      if (r.done) return false;
      if (r.value.length === 0) continue;
      this.buf = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      this.off = 0;
      return true;
    }
  }

  /** Exactly `n` bytes; a view into the source chunk when possible, else a copy assembled across chunks. */
  async exactly(n: number): Promise<Buffer> {
    const avail = this.buf.length - this.off;
    if (avail >= n) {
      const out = this.buf.subarray(this.off, this.off + n);
      this.off += n;
      this.pos += n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.buf.copy(out, 0, this.off);
    let got = avail;
    this.off = this.buf.length;
    while (got < n) {
      if (!(await this.next())) throw new BadNarError(`NAR ends unexpectedly at byte ${this.pos + got} (wanted ${n - got} more bytes)`);
      const take = Math.min(n - got, this.buf.length);
      this.buf.copy(out, got, 0, take);
      got += take;
      this.off = take;
    }
    this.pos += n;
    return out;
  }

  /** Up to `max` bytes that are available now (at least 1). */
  async some(max: number): Promise<Buffer> {
    if (this.buf.length - this.off === 0) {
      if (!(await this.next())) throw new BadNarError(`NAR ends unexpectedly at byte ${this.pos}`);
    }
    const n = Math.min(max, this.buf.length - this.off);
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    this.pos += n;
    return out;
  }

  async atEnd(): Promise<boolean> {
    if (this.buf.length - this.off > 0) return false;
    return !(await this.next());
  }

  // Synchronous variants, for a token that lies whole in the current chunk (the usual case: a small NAR
  // read in one buffer is then parsed without an await per token). Each consumes nothing and returns
  // undefined when it would have to wait for the next chunk; the async method then reads that token, with
  // the same checks in the same order.

  /** The little-endian u64 at `at` of the current chunk (at least 8 bytes there), checked as u64() checks it. */
  private u64At(at: number): number {
    const hi = this.buf.readUInt32LE(at + 4);
    // (Above 2^53 - 1: the same error as u64()'s, with the value it prints.)
    if (hi > 0x1fffff) throw new BadNarError(`NAR length field ${this.buf.readBigUInt64LE(at)} is too large`);
    return hi * 0x100000000 + this.buf.readUInt32LE(at);
  }

  u64Now(): number | undefined {
    if (this.buf.length - this.off < 8) return undefined;
    const v = this.u64At(this.off);
    this.off += 8;
    this.pos += 8;
    return v;
  }

  someNow(max: number): Buffer | undefined {
    const avail = this.buf.length - this.off;
    if (avail === 0) return undefined;
    const n = Math.min(max, avail);
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    this.pos += n;
    return out;
  }

  /** padding(len) when the padding is here; false (nothing consumed) when not. */
  paddingNow(len: number): boolean {
    const pad = padLen(len);
    if (this.buf.length - this.off < pad) return false;
    for (let i = 0; i < pad; i++) if (this.buf[this.off + i] !== 0) throw new BadNarError('NAR has non-zero padding');
    this.off += pad;
    this.pos += pad;
    return true;
  }

  /**
   * Where the string at the read position lies in the current chunk (its length checked against `max` and its
   * padding against zero, as bytes() checks them), consuming it; undefined (nothing consumed) when it does
   * not lie whole in this chunk.
   */
  private stringNow(max: number): number | undefined {
    const avail = this.buf.length - this.off;
    if (avail < 8) return undefined;
    const len = this.u64At(this.off);
    if (len > max) throw new BadNarError(`NAR string of ${len} bytes exceeds the limit of ${max}`);
    const pad = padLen(len);
    if (avail < 8 + len + pad) return undefined;
    const start = this.off + 8;
    for (let i = 0; i < pad; i++) if (this.buf[start + len + i] !== 0) throw new BadNarError('NAR has non-zero padding');
    this.off = start + len + pad;
    this.pos += 8 + len + pad;
    this.nowLen = len;
    return start;
  }

  /** The length of the string stringNow last found. */
  private nowLen = 0;

  bytesNow(max = MAX_STRING): Buffer | undefined {
    const start = this.stringNow(max);
    if (start === undefined) return undefined;
    // (A copy, as bytes() returns: the chunk may be a reused buffer.)
    return Buffer.from(this.buf.subarray(start, start + this.nowLen));
  }

  strNow(): string | undefined {
    const start = this.stringNow(MAX_STRING);
    return start === undefined ? undefined : this.buf.toString('utf8', start, start + this.nowLen);
  }

  /** expect(tok) when the token is here; false (nothing consumed) when not. `tok` is ASCII. */
  expectNow(tok: string): boolean {
    const start = this.stringNow(MAX_STRING);
    if (start === undefined) return false;
    let same = this.nowLen === tok.length;
    for (let i = 0; same && i < tok.length; i++) same = this.buf[start + i] === tok.charCodeAt(i);
    if (!same) throw new BadNarError(`bad NAR: expected '${tok}', got '${this.buf.toString('utf8', start, start + this.nowLen).slice(0, 64)}'`);
    return true;
  }

  /** Read the first chunk, when none is here yet (then the tokens in it are read without an await). */
  async fill(): Promise<void> {
    if (this.buf.length - this.off === 0) await this.next();
  }

  /** atEnd() when this chunk still has bytes (false); undefined when the next chunk must be awaited. */
  atEndNow(): false | undefined {
    return this.buf.length - this.off > 0 ? false : undefined;
  }

  async u64(): Promise<number> {
    const b = await this.exactly(8);
    const v = b.readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BadNarError(`NAR length field ${v} is too large`);
    return Number(v);
  }

  async padding(len: number): Promise<void> {
    const pad = padLen(len);
    if (pad) {
      const p = await this.exactly(pad);
      for (const x of p) if (x !== 0) throw new BadNarError('NAR has non-zero padding');
    }
  }

  async bytes(max = MAX_STRING): Promise<Buffer> {
    const len = await this.u64();
    if (len > max) throw new BadNarError(`NAR string of ${len} bytes exceeds the limit of ${max}`);
    const b = Buffer.from(await this.exactly(len));
    await this.padding(len);
    return b;
  }

  async str(): Promise<string> {
    return (await this.bytes()).toString('utf8');
  }

  async expect(tok: string): Promise<void> {
    const s = await this.str();
    if (s !== tok) throw new BadNarError(`bad NAR: expected '${tok}', got '${s.slice(0, 64)}'`);
  }
}

/**
 * Receiver of NAR parse events; `restorePath` writes them to disk, `parseNar` validates only. `rel` is
 * the entry's path relative to the root ('' for the root itself) decoded as UTF-8 for display; names in
 * a NAR are bytes and need not be UTF-8, so sinks that touch the file system should use `relBytes`.
 */
export interface NarSink {
  createDirectory(rel: string, relBytes: Buffer): Promise<void> | void;
  createSymlink(rel: string, target: Buffer, relBytes: Buffer): Promise<void> | void;
  /** Begin a regular file; return a writer for its contents. */
  createFile(rel: string, executable: boolean, size: number, relBytes: Buffer): Promise<FileWriter> | FileWriter;
  /** Called after the last entry of a directory (optional). */
  endDirectory?(rel: string, relBytes: Buffer): Promise<void> | void;
}

export interface FileWriter {
  write(chunk: Buffer): Promise<void> | void;
  close(): Promise<void> | void;
}

function checkEntryName(name: Buffer): string {
  if (name.length === 0) throw new BadNarError('NAR contains an entry with an empty name');
  if (name.includes(0)) throw new BadNarError('NAR contains an entry name with a NUL byte');
  if (name.includes(0x2f)) throw new BadNarError(`NAR contains an entry name with a slash: '${name.toString('utf8')}'`);
  const s = name.toString('utf8');
  if (s === '.' || s === '..') throw new BadNarError(`NAR contains an invalid entry name '${s}'`);
  return s;
}

/**
 * Parse a NAR stream, feeding `sink`. Throws BadNarError on malformed input, including trailing bytes
 * when `expectEnd` (default) is set.
 */
export async function parseNar(source: AsyncIterable<Uint8Array>, sink: NarSink, opts: { expectEnd?: boolean } = {}): Promise<{ size: number }> {
  const r = new ByteReader(source);
  let magic: Buffer;
  try {
    await r.fill();
    magic = r.bytesNow(64) ?? (await r.bytes(64));
  } catch (e) {
    throw e instanceof BadNarError ? new BadNarError(`input is not a NAR: ${e.shortMessage}`) : e;
  }
  if (magic.toString('latin1') !== NAR_MAGIC)
    throw new BadNarError('input is not a NAR archive (bad magic)', { hint: 'is it compressed? decompress it first' });
  await parseTree(r, sink);
  if (opts.expectEnd ?? true) {
    if (!(r.atEndNow() ?? (await r.atEnd()))) throw new BadNarError(`NAR has trailing data after byte ${r.pos}`);
  }
  return { size: r.pos };
}

/**
 * Longest relative path a NAR entry may have: Linux's PATH_MAX. No longer path can be created or dumped
 * through a path name (as Nix 2.8 restores and dumps), and the bound keeps the parser's stack of open
 * directories, and the path of the current entry, small.
 */
const MAX_REL_PATH = 4096;

const EMPTY: Buffer = Buffer.alloc(0);

/** A directory being parsed: where it is, and its last entry's name (entries must be sorted). */
interface OpenDir {
  rel: string;
  relBytes: Buffer;
  prev: Buffer | undefined;
  inEntry: boolean;
}

/**
 * Parse the root node and everything below it. Directories are kept on an explicit stack (no recursion),
 * so a NAR may nest as deep as its paths fit in MAX_REL_PATH, with memory bounded by that.
 */
async function parseTree(r: ByteReader, sink: NarSink): Promise<void> {
  const open: OpenDir[] = [];
  let rel = '';
  let relBytes: Buffer = EMPTY;
  for (;;) {
    // One node at rel.
    // (Each token read without an await when it is in the current chunk: `r.xNow() ?? await r.x()`.)
    if (!r.expectNow('(')) await r.expect('(');
    if (!r.expectNow('type')) await r.expect('type');
    const type = r.strNow() ?? (await r.str());
    if (type === 'regular') {
      await parseRegular(r, sink, rel, relBytes);
    } else if (type === 'symlink') {
      if (!r.expectNow('target')) await r.expect('target');
      const target = r.bytesNow(4096) ?? (await r.bytes(4096));
      if (target.length === 0) throw new BadNarError('NAR contains a symlink with an empty target');
      if (target.includes(0)) throw new BadNarError('NAR contains a symlink target with a NUL byte');
      const linked = sink.createSymlink(rel, target, relBytes);
      if (linked) await linked;
      if (!r.expectNow(')')) await r.expect(')');
    } else if (type === 'directory') {
      const made = sink.createDirectory(rel, relBytes);
      if (made) await made;
      open.push({ rel, relBytes, prev: undefined, inEntry: false });
    } else {
      throw new BadNarError(`bad NAR: unknown file type '${type.slice(0, 64)}'`);
    }
    // The next node: the next entry of the innermost open directory, closing directories that end.
    for (;;) {
      const dir = open[open.length - 1];
      if (!dir) return;
      if (dir.inEntry) {
        if (!r.expectNow(')')) await r.expect(')');
        dir.inEntry = false;
      }
      const tag = r.strNow() ?? (await r.str());
      if (tag === ')') {
        open.pop();
        const ended = sink.endDirectory?.(dir.rel, dir.relBytes);
        if (ended) await ended;
        continue;
      }
      if (tag !== 'entry') throw new BadNarError(`bad NAR: expected 'entry' or ')', got '${tag.slice(0, 64)}'`);
      if (!r.expectNow('(')) await r.expect('(');
      if (!r.expectNow('name')) await r.expect('name');
      const nameBuf = r.bytesNow(255) ?? (await r.bytes(255));
      const name = checkEntryName(nameBuf);
      if (dir.prev) {
        const c = Buffer.compare(dir.prev, nameBuf);
        if (c === 0) throw new BadNarError(`NAR contains duplicate entry '${name}'`);
        if (c > 0) throw new BadNarError(`NAR directory entries are not sorted ('${dir.prev.toString('utf8')}' before '${name}')`);
      }
      dir.prev = nameBuf;
      if (!r.expectNow('node')) await r.expect('node');
      dir.inEntry = true;
      if (dir.relBytes.length + 1 + nameBuf.length > MAX_REL_PATH) {
        throw new BadNarError(`NAR contains a path longer than ${MAX_REL_PATH} bytes (Linux's PATH_MAX), under '${dir.rel.slice(0, 64)}...'`);
      }
      rel = dir.rel === '' ? name : `${dir.rel}/${name}`;
      relBytes = dir.relBytes.length === 0 ? nameBuf : Buffer.concat([dir.relBytes, SLASH, nameBuf]);
      break;
    }
  }
}

async function parseRegular(r: ByteReader, sink: NarSink, rel: string, relBytes: Buffer): Promise<void> {
  let tag = r.strNow() ?? (await r.str());
  let executable = false;
  if (tag === 'executable') {
    const empty = r.strNow() ?? (await r.str());
    if (empty !== '') throw new BadNarError("bad NAR: 'executable' must be followed by an empty string");
    executable = true;
    tag = r.strNow() ?? (await r.str());
  }
  if (tag !== 'contents') throw new BadNarError(`bad NAR: expected 'contents', got '${tag.slice(0, 64)}'`);
  const size = r.u64Now() ?? (await r.u64());
  const made = sink.createFile(rel, executable, size, relBytes);
  const w = made instanceof Promise ? await made : made;
  let left = size;
  try {
    while (left > 0) {
      const chunk = r.someNow(Math.min(left, CHUNK)) ?? (await r.some(Math.min(left, CHUNK)));
      left -= chunk.length;
      const written = w.write(chunk);
      if (written) await written;
    }
  } finally {
    const closed = w.close();
    if (closed) await closed;
  }
  if (!r.paddingNow(size)) await r.padding(size);
  if (!r.expectNow(')')) await r.expect(')');
}

/** A sink that only validates. */
export const validatingSink: NarSink = {
  createDirectory() {},
  createSymlink() {},
  createFile() {
    return { write() {}, close() {} };
  },
};

/** Options of restorePath. */
export interface RestoreOptions {
  /**
   * Bytes after the end of the archive are an error (Nix's restorePath of a whole NAR file stops reading
   * at the archive's end instead: builtin:fetchurl's `unpack` accepts them). Not with `batch`.
   * @default true
   */
  readonly expectEnd?: boolean;
  /**
   * Create everything with the store's canonical metadata as it is restored (regular files 0444 or
   * 0555, directories 0555 once their entries are written, mtime 1 everywhere, as
   * canonicalisePathMetaData leaves them), so no second walk is needed.
   * @default false
   */
  readonly canonical?: boolean;
  /**
   * With `canonical`: parse the whole NAR first, then make every file, directory and symlink in one task
   * on a worker thread with synchronous calls (one message instead of a thread-pool round trip per
   * call, ~15 per path). The file contents are held until then, so use it for small NARs only.
   * @default false
   */
  readonly batch?: boolean;
}

/** One file-system step of a batched restore (paths absolute, as bytes). */
type RestoreOp =
  | { k: 'd' | 'e'; rel: string; p: Uint8Array }
  | { k: 'l'; rel: string; p: Uint8Array; t: Uint8Array }
  | { k: 'f'; rel: string; p: Uint8Array; mode: number; data: { sab: SharedArrayBuffer; off: number; len: number }[] };

/** The thread of a batched restore: restore-thread.cjs (plain JavaScript, shipped beside this module). */

interface RestoreReply {
  id: number;
  op?: number;
  code?: string;
  message?: string;
}
const RESTORE_THREAD_SCRIPT = new URL('./restore-thread.cjs', import.meta.url);
const restoreThread = new ThreadTasks<RestoreReply>(RESTORE_THREAD_SCRIPT);

/**
 * A batched restore of at most this many bytes of file contents (and MAIN_THREAD_RESTORE_OPS steps) is made
 * on the main thread while the restore thread is not running: starting a thread costs tens of milliseconds,
 * more than a few such restores (a `.drv`, a small output: one file), and a command that substitutes one
 * small path needs no thread at all. The second one starts the thread for those that may follow.
 */
const MAIN_THREAD_RESTORE_BYTES = 64 * 1024;
const MAIN_THREAD_RESTORE_OPS = 16;
let mainThreadRestores = 0;
let restoreOnMainThread: ((m: { id: number; ops: RestoreOp[]; now: number }) => RestoreReply) | undefined;

/**
 * Start the restore thread now when batched restores of NARs of these sizes are coming that it will serve:
 * one whose NAR is larger than the main thread restores, or more than one (the second starts it anyway).
 * Its start takes tens of milliseconds (far more on a busy machine), which the first restore for it would
 * otherwise wait for, and with it every substitution that refers to that path (a builder every `.drv` names).
 */
export function expectBatchedRestores(narSizes: readonly number[]): void {
  if (restoreThread.online) return;
  if (narSizes.length > 1 || narSizes.some((s) => s > MAIN_THREAD_RESTORE_BYTES)) restoreThread.warm();
}

/** Whether the restore thread is running (batched restores go to it, whatever their size). */
export function restoreThreadOnline(): boolean {
  return restoreThread.online;
}

/** Run the steps on the restore thread, or here when they are few and small; a thread that died is reported as step -1. */
function runRestoreOps(ops: RestoreOp[], now: number, bytes: number): Promise<RestoreReply> | RestoreReply {
  if (!restoreThread.online && bytes <= MAIN_THREAD_RESTORE_BYTES && ops.length <= MAIN_THREAD_RESTORE_OPS) {
    if (++mainThreadRestores > 1) restoreThread.warm();
    // The thread's own code (restore-thread.cjs), required from its file as the thread runs it.
    restoreOnMainThread ??= (createRequire(import.meta.url)(fileURLToPath(RESTORE_THREAD_SCRIPT)) as { runOps: typeof restoreOnMainThread }).runOps!;
    return restoreOnMainThread({ id: 0, ops, now });
  }
  // Small restores that get here in the same turn go to the thread as one message.
  return (bytes <= MAIN_THREAD_RESTORE_BYTES ? restoreThread.runTogether({ ops, now }) : restoreThread.run({ ops, now })).catch((e: unknown) => ({
    id: 0,
    op: -1,
    message: `the restore thread failed: ${e instanceof Error ? e.message : String(e)}`,
  }));
}

/** File contents for the restore thread: shared memory as is (its producer keeps it until the restore is over), else copied. */
function shareable(chunk: Buffer): { sab: SharedArrayBuffer; off: number; len: number } {
  if (chunk.buffer instanceof SharedArrayBuffer) return { sab: chunk.buffer, off: chunk.byteOffset, len: chunk.length };
  const sab = new SharedArrayBuffer(chunk.length);
  new Uint8Array(sab).set(chunk);
  return { sab, off: 0, len: chunk.length };
}

/** Promise of a Node callback-style call (cheaper than the FileHandle API for one call). */
function cb<T>(start: (k: (e: NodeJS.ErrnoException | null, v?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => start((e, v) => (e ? reject(e) : resolve(v as T))));
}

/**
 * One restore of a NAR into `abs`: where each entry goes, how a failure is reported (and whether the root
 * was made, so that it is removed again), and the sinks that write the entries in each way.
 */
class NarRestore {
  private readonly absBytes: Buffer;
  /** Whether the root was created (by us): then a failure removes it. */
  created = false;
  /** Canonical: atime now (as Nix), mtime 1 (STORE_MTIME in canonicalise.ts). */
  readonly now = Date.now() / 1000;
  /**
   * The process umask (creation modes lose its bits; then the mode is set explicitly); 0o777 when unknown.
   * Read when a sink first needs it (the canonical one): a batched restore sets every mode explicitly on
   * the restore thread instead, so its main-thread part reads no /proc/self/status.
   */
  private umaskValue: number | undefined;

  constructor(readonly abs: string) {
    this.absBytes = Buffer.from(abs);
  }

  private get umask(): number {
    if (this.umaskValue === undefined) {
      try {
        this.umaskValue = processUmask();
      } catch {
        this.umaskValue = 0o777; // unknown: always chmod
      }
    }
    return this.umaskValue;
  }

  /**
   * A umask that takes the owner's bits away would leave a new directory unwritable by a non-root owner
   * until its end (root writes anyway): then it gets 0755 explicitly when made.
   */
  get dirChmod(): boolean {
    return (this.umask & 0o700) !== 0;
  }

  at(relBytes: Buffer): Buffer {
    return relBytes.length === 0 ? this.absBytes : Buffer.concat([this.absBytes, SLASH, relBytes]);
  }

  needChmod(mode: number): boolean {
    return (this.umask & mode) !== 0;
  }

  /** The error for a failed step on entry `rel` ('' is the root). */
  fail(rel: string, e: unknown): never {
    const code = (e as NodeJS.ErrnoException).code;
    const where = rel === '' ? this.abs : `${this.abs}/${rel}`;
    if (rel === '' && code === 'EEXIST') {
      throw new StoreError('restore-target-exists', `cannot restore a NAR to '${this.abs}': it already exists`, {
        cause: e,
        hint: 'delete it first or restore to a fresh path',
      });
    }
    if (code === 'ENAMETOOLONG')
      throw new BadNarError(`NAR contains a name, path or symlink target that is too long for the file system at '${where}'`, { cause: e });
    const err = storeWriteError(e, 'restoring a NAR entry to', where);
    throw err.code === 'store-write-failed'
      ? new StoreError('nar-restore-failed', `cannot restore a NAR entry to '${where}': ${(e as Error).message}`, { cause: e })
      : err;
  }

  /** Run one file-system step on entry `rel`, its failure reported by `fail`. */
  async fsOp<T>(rel: string, op: () => Promise<T>): Promise<T> {
    try {
      const r = await op();
      if (rel === '') this.created = true;
      return r;
    } catch (e) {
      return this.fail(rel, e);
    }
  }

  /** Entries as they are in the NAR, through Node's promise API (modes as the umask leaves them). */
  plainSink(): NarSink {
    return {
      createDirectory: async (rel, relBytes) => {
        await this.fsOp(rel, () => fsp.mkdir(this.at(relBytes), { mode: 0o755 }));
      },
      createSymlink: async (rel, t, relBytes) => {
        await this.fsOp(rel, () => fsp.symlink(t, this.at(relBytes)));
      },
      createFile: async (rel, executable, _size, relBytes) => {
        const fh = await this.fsOp(rel, () => fsp.open(this.at(relBytes), FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, executable ? 0o755 : 0o644));
        return {
          write: async (chunk) => {
            await this.fsOp(rel, async () => {
              let off = 0;
              while (off < chunk.length) {
                const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
                off += bytesWritten;
              }
            });
          },
          close: () => fh.close(),
        };
      },
    };
  }

  /**
   * Entries canonical as they are made (read-only modes, mtime 1), through libuv's thread pool: a metadata
   * call can wait for the file system's journal for a millisecond or more when the disk is busy, which must
   * not block the event loop.
   */
  canonicalSink(): NarSink {
    const step = (rel: string, call: (k: (e: NodeJS.ErrnoException | null) => void) => void) => this.fsOp(rel, () => cb<void>((k) => call((e) => k(e))));
    return {
      createDirectory: async (rel, relBytes) => {
        const p = this.at(relBytes);
        await step(rel, (k) => fs.mkdir(p, 0o755, k));
        if (this.dirChmod) await step(rel, (k) => fs.chmod(p, 0o755, k));
      },
      endDirectory: async (rel, relBytes) => {
        const p = this.at(relBytes);
        await step(rel, (k) => fs.chmod(p, 0o555, k));
        await step(rel, (k) => fs.lutimes(p, this.now, 1, k));
      },
      createSymlink: async (rel, t, relBytes) => {
        const p = this.at(relBytes);
        await step(rel, (k) => fs.symlink(t, p, k));
        await step(rel, (k) => fs.lutimes(p, this.now, 1, k));
      },
      createFile: (rel, executable, _size, relBytes) => this.canonicalFile(rel, executable ? 0o555 : 0o444, relBytes),
    };
  }

  private async canonicalFile(rel: string, mode: number, relBytes: Buffer): Promise<FileWriter> {
    const fd = await this.fsOp(rel, () => cb<number>((k) => fs.open(this.at(relBytes), FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, mode, k)));
    let open = true;
    return {
      write: async (chunk) => {
        try {
          let off = 0;
          while (off < chunk.length) off += await cb<number>((k) => writeCb(fd, chunk, off, chunk.length - off, null, k));
        } catch (e) {
          this.fail(rel, e);
        }
      },
      close: async () => {
        if (!open) return;
        open = false;
        try {
          if (this.needChmod(mode)) await cb<void>((k) => fs.fchmod(fd, mode, (e) => k(e)));
          await cb<void>((k) => fs.futimes(fd, this.now, 1, (e) => k(e)));
        } catch (e) {
          await cb<void>((k) => fs.close(fd, (e2) => k(e2))).catch(() => {});
          this.fail(rel, e);
        }
        await cb<void>((k) => fs.close(fd, (e) => k(e)));
      },
    };
  }

  /** Batched: records the steps into `ops` while parsing (the parser validates everything), to run later on the restore thread. */
  recordingSink(ops: RestoreOp[]): NarSink {
    return {
      createDirectory: (rel, relBytes) => {
        ops.push({ k: 'd', rel, p: this.at(relBytes) });
      },
      endDirectory: (rel, relBytes) => {
        ops.push({ k: 'e', rel, p: this.at(relBytes) });
      },
      createSymlink: (rel, t, relBytes) => {
        ops.push({ k: 'l', rel, p: this.at(relBytes), t: Buffer.from(t) });
      },
      createFile: (rel, executable, _size, relBytes) => {
        const mode = executable ? 0o555 : 0o444;
        const data: { sab: SharedArrayBuffer; off: number; len: number }[] = [];
        ops.push({ k: 'f', rel, p: this.at(relBytes), mode, data });
        return {
          write(chunk) {
            if (chunk.length) data.push(shareable(chunk));
          },
          close() {},
        };
      },
    };
  }

  /** Parse the NAR into recorded steps, then run them on the restore thread in one go. */
  async batched(source: AsyncIterable<Uint8Array>): Promise<{ size: number }> {
    const ops: RestoreOp[] = [];
    const r = await parseNar(source, this.recordingSink(ops));
    let bytes = 0;
    for (const o of ops) if (o.k === 'f') for (const d of o.data) bytes += d.len;
    const reply = await runRestoreOps(ops, this.now, bytes);
    if (reply.op !== undefined) {
      // Step 0 makes the root: when it failed nothing is ours to remove. A dead thread (-1) may have
      // left a partial tree.
      if (reply.op !== 0) this.created = true;
      this.fail(ops[reply.op]?.rel ?? '', Object.assign(new Error(reply.message ?? 'restore failed'), { code: reply.code }));
    }
    return r;
  }
}

/**
 * path.resolve(p), without its normalisation, a character at a time (some 10 µs in code not optimised, as in
 * a CLI run), when p is absolute and normalised already: then path.resolve gives it back unchanged.
 */
export function resolvedPath(p: string): string {
  const normal =
    p === '/' ||
    (p.startsWith('/') && !p.endsWith('/') && !p.endsWith('/.') && !p.endsWith('/..') && !p.includes('//') && !p.includes('/./') && !p.includes('/../'));
  return normal ? p : path.resolve(p);
}

/**
 * Restore a NAR into `target`, which must not exist (its parent must). Every file is created with
 * O_EXCL|O_NOFOLLOW and every entry lies under a directory restored by us, so nothing can be written
 * through a symlink or outside `target`. On any failure the partly restored `target` is removed again.
 * Throws BadNarError for malformed or hostile input (including names or symlink targets the file system
 * refuses as too long) and StoreError (`restore-target-exists`, `nar-restore-failed`) for I/O problems.
 */
export async function restorePath(target: string, source: AsyncIterable<Uint8Array>, opts: RestoreOptions = {}): Promise<{ size: number }> {
  const restore = new NarRestore(resolvedPath(target));
  try {
    if (opts.canonical && opts.batch) return await restore.batched(source);
    return await parseNar(source, opts.canonical ? restore.canonicalSink() : restore.plainSink(), { expectEnd: opts.expectEnd ?? true });
  } catch (e) {
    if (restore.created) {
      if (opts.canonical) await makeTreeWritable(restore.abs).catch(() => {});
      await fsp.rm(restore.abs, { recursive: true, force: true }).catch(() => {});
    }
    throw e;
  }
}

/** Give every directory of a tree u+rwx so it can be deleted. */
async function makeTreeWritable(p: string): Promise<void> {
  const st = await fsp.lstat(p);
  if (!st.isDirectory()) return;
  await fsp.chmod(p, 0o755);
  for (const ent of await fsp.readdir(p, { withFileTypes: true })) if (ent.isDirectory()) await makeTreeWritable(path.join(p, ent.name));
}

/** Collect an async byte stream into one buffer. */
export async function collect(source: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of source) parts.push(c);
  return Buffer.concat(parts);
}

/** A one-chunk async stream. */
export async function* streamOf(...bufs: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const b of bufs) yield b;
}

/**
 * Hash of the contents of the single regular file a NAR holds (for flat and text content addresses),
 * computed while the NAR streams. `finish()` is undefined when the NAR is not a single regular file.
 */
export class RegularFileContentHasher {
  private static readonly heads = [
    ['nix-archive-1', '(', 'type', 'regular', 'contents'],
    ['nix-archive-1', '(', 'type', 'regular', 'executable', '', 'contents'],
  ].map((ts) => Buffer.concat(ts.map((t) => narString(t))));
  private head: Buffer[] = [];
  private headLen = 0;
  private state: 'head' | 'body' | 'done' | 'bad' = 'head';
  private left = 0;
  private readonly sink: HashSink;
  constructor(algorithm: HashAlgorithm) {
    this.sink = new HashSink(algorithm);
  }

  update(chunk: Uint8Array): void {
    let c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.state === 'head') {
      this.head.push(c);
      this.headLen += c.length;
      const all = Buffer.concat(this.head);
      const h = RegularFileContentHasher.heads.find((p) => all.length >= p.length + 8 && all.subarray(0, p.length).equals(p));
      if (!h) {
        const maybe = RegularFileContentHasher.heads.some(
          (p) => all.length < p.length + 8 && p.subarray(0, Math.min(all.length, p.length)).equals(all.subarray(0, Math.min(all.length, p.length))),
        );
        if (!maybe) this.state = 'bad';
        return;
      }
      const size = all.readBigUInt64LE(h.length);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) {
        this.state = 'bad';
        return;
      }
      this.left = Number(size);
      this.state = 'body';
      this.head = [];
      c = all.subarray(h.length + 8);
    }
    if (this.state === 'body') {
      const n = Math.min(this.left, c.length);
      this.sink.update(c.subarray(0, n));
      this.left -= n;
      if (this.left === 0) this.state = 'done';
    }
  }

  finish(): Hash | undefined {
    if (this.state !== 'done') return undefined;
    return this.sink.finish().hash;
  }
}
