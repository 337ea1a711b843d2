/**
 * Nix's wire format, over any duplex byte stream (a child's stdout/stdin, an ssh session):
 * integers are 64-bit little-endian; a string is its length as an integer, its bytes, then zero padding
 * to a multiple of 8; a list is its length followed by its items. A framed stream is a sequence of
 * (length, bytes) frames without padding, ended by a frame of length 0.
 *
 * `WireReader` buffers whatever arrives (so the peer never blocks on us while we write) and hands out
 * typed values; `WireWriter` batches writes and honours back-pressure on `flush()`.
 */
import type { Readable, Writable } from 'node:stream';
import { RemoteConnectionError, RemoteProtocolError } from './errors.js';

const ZEROS = Buffer.alloc(8);
/** Refuse strings larger than this (a broken or hostile peer); NAR contents are not strings. */
const MAX_STRING = 64 << 20;
/** Pause the source stream when this much is buffered and unread. */
const HIGH_WATER = 8 << 20;

export function padLength(n: number): number {
  return (8 - (n % 8)) % 8;
}

export function encodeU64(n: number | bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

export function encodeString(s: string | Uint8Array): Buffer {
  const body = typeof s === 'string' ? Buffer.from(s, 'utf8') : Buffer.from(s.buffer, s.byteOffset, s.byteLength);
  const pad = padLength(body.length);
  return Buffer.concat([encodeU64(body.length), body, ZEROS.subarray(0, pad)]);
}

/**
 * An error as Nix serialises it (its `Sink << Error`: type "Error", level 0 = error, name "Error", the
 * message, no position, then each trace as no position and its text): what the worker protocol sends
 * after STDERR_ERROR, and what a build child that fails after its setup writes into the build log.
 */
export function encodeError(message: string, traces: readonly string[] = []): Buffer {
  return Buffer.concat([
    encodeString('Error'),
    encodeU64(0),
    encodeString('Error'),
    encodeString(message),
    encodeU64(0),
    encodeU64(traces.length),
    ...traces.flatMap((t) => [encodeU64(0), encodeString(t)]),
  ]);
}

/** Reads Nix wire values from a byte stream. Not re-entrant: callers serialise their reads. */
export class WireReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private readonly source: Readable;
  /** Bytes consumed so far. */
  position = 0;

  constructor(
    source: Readable,
    private readonly describe = 'remote',
  ) {
    this.source = source;
    source.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered > HIGH_WATER) source.pause();
      this.notify();
    });
    source.on('end', () => {
      this.ended = true;
      this.notify();
    });
    source.on('close', () => {
      this.ended = true;
      this.notify();
    });
    source.on('error', (err: Error) => {
      this.failure = err;
      this.ended = true;
      this.notify();
    });
  }

  /** Make pending and future reads fail with `err` (e.g. the process exited, the user aborted). */
  fail(err: Error): void {
    this.failure ??= err;
    this.ended = true;
    this.notify();
  }

  get available(): number {
    return this.buffered;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private eof(): Error {
    if (this.failure instanceof RemoteConnectionError || this.failure instanceof RemoteProtocolError) return this.failure;
    return new RemoteConnectionError(`connection to ${this.describe} closed unexpectedly`, { cause: this.failure });
  }

  private async fill(n: number): Promise<void> {
    while (this.buffered < n) {
      if (this.ended) throw this.eof();
      if (this.source.isPaused()) this.source.resume();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    this.position += n;
    if (this.buffered < HIGH_WATER / 2 && this.source.isPaused() && !this.ended) this.source.resume();
    return out;
  }

  async bytes(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    if (this.buffered < n) await this.fill(n);
    return this.take(n);
  }

  /** Up to `max` bytes (at least one), as soon as some are available. */
  async some(max: number): Promise<Buffer> {
    if (this.buffered === 0) await this.fill(1);
    return this.take(Math.min(max, this.buffered));
  }

  async u64big(): Promise<bigint> {
    return (await this.bytes(8)).readBigUInt64LE(0);
  }

  /** A u64 that must fit in a JS number (sizes, counts, statuses, timestamps). */
  async u64(): Promise<number> {
    const b = await this.bytes(8);
    const hi = b.readUInt32LE(4);
    if (hi > 0x1fffff) throw new RemoteProtocolError(`${this.describe} sent an integer too large for this client (0x${b.readBigUInt64LE(0).toString(16)})`);
    return hi * 0x1_0000_0000 + b.readUInt32LE(0);
  }

  async bool(): Promise<boolean> {
    return (await this.u64()) !== 0;
  }

  async stringBytes(): Promise<Buffer> {
    const len = await this.u64();
    if (len > MAX_STRING) throw new RemoteProtocolError(`${this.describe} sent a string of ${len} bytes, more than the limit of ${MAX_STRING}`);
    const body = await this.bytes(len);
    const pad = padLength(len);
    if (pad) {
      const p = await this.bytes(pad);
      for (const byte of p) if (byte !== 0) throw new RemoteProtocolError(`${this.describe} sent non-zero string padding`);
    }
    return body;
  }

  async string(): Promise<string> {
    return (await this.stringBytes()).toString('utf8');
  }

  async strings(): Promise<string[]> {
    const n = await this.u64();
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(await this.string());
    return out;
  }

  /** A string→string map written as a count and key/value pairs. */
  async stringMap(): Promise<Map<string, string>> {
    const n = await this.u64();
    const out = new Map<string, string>();
    for (let i = 0; i < n; i++) {
      const k = await this.string();
      out.set(k, await this.string());
    }
    return out;
  }

  /**
   * Read exactly one NAR from the stream, yielding its raw bytes as they arrive (Nix's copyNAR: the NAR is
   * self-delimiting, so we walk its grammar to find where it ends). Consume the iterator fully, or the
   * stream position is lost.
   */
  async *nar(chunkSize = 256 << 10): AsyncGenerator<Buffer> {
    const c = new NarCopy(this, this.describe, chunkSize);
    await c.expect('nix-archive-1');
    // Iterative walk: the depth of open directory entries.
    let depth = 0;
    for (;;) {
      // At the start of a node.
      await c.expect('(');
      await c.expect('type');
      const type = await c.token();
      if (type === 'regular') yield* c.regular();
      else if (type === 'symlink') await c.symlink();
      else if (type !== 'directory') throw c.malformed(`unknown node type '${type}'`);
      else if ((await c.directoryStart()) === 'entry') {
        depth++;
        yield* c.flushPending();
        continue; // parse the child node
      }
      yield* c.flushPending();
      // A node is complete. Close enclosing entries/directories as far as they end here.
      let descended = false;
      for (; depth > 0 && !descended;) {
        descended = await c.afterEntry();
        if (!descended) depth--; // directory closed; it was itself a node
      }
      yield* c.flushPending();
      if (!descended) break;
    }
    yield* c.rest();
  }

  /** Read a framed stream (frames until an empty one), yielding the frame contents. */
  async *framed(): AsyncGenerator<Buffer> {
    for (;;) {
      const n = await this.u64();
      if (n === 0) return;
      yield await this.bytes(n);
    }
  }
}

/**
 * The walk of one NAR through a WireReader (WireReader.nar): reads its tokens, checks its grammar, and
 * passes its raw bytes on in chunks of about `chunkSize` (file contents as they arrive, tokens batched).
 */
class NarCopy {
  private batch: Buffer[] = [];
  private batchLen = 0;
  /** Bytes read but not yet passed to the batch (tokens of the node being read). */
  private pending: Buffer[] = [];

  constructor(
    private readonly r: WireReader,
    private readonly describe: string,
    private readonly chunkSize: number,
  ) {}

  malformed(what: string): RemoteProtocolError {
    return new RemoteProtocolError(`${this.describe} sent a malformed NAR: ${what}`);
  }

  /** Add `b` to the batch; the batch, joined, when it is full. */
  private emit(b: Buffer): Buffer | undefined {
    this.batch.push(b);
    this.batchLen += b.length;
    if (this.batchLen < this.chunkSize) return undefined;
    const out = Buffer.concat(this.batch);
    this.batch = [];
    this.batchLen = 0;
    return out;
  }

  *flushPending(): Generator<Buffer> {
    for (const p of this.pending) {
      const out = this.emit(p);
      if (out) yield out;
    }
    this.pending = [];
  }

  /** What is left in the batch, at the end of the NAR. */
  *rest(): Generator<Buffer> {
    if (this.batchLen > 0) yield Buffer.concat(this.batch);
  }

  /** A raw token: returns its text (for grammar checks) and queues its wire bytes. */
  async token(): Promise<string> {
    const lenBuf = await this.r.bytes(8);
    const len = Number(lenBuf.readBigUInt64LE(0));
    if (len > 1 << 16) throw new RemoteProtocolError(`${this.describe} sent a NAR with an oversized token (${len} bytes)`);
    const body = await this.r.bytes(len + padLength(len));
    this.pending.push(lenBuf, body);
    return body.subarray(0, len).toString('latin1');
  }

  async expect(want: string): Promise<void> {
    const got = await this.token();
    if (got !== want) throw this.malformed(`expected '${want}', got '${got.slice(0, 40)}'`);
  }

  /** The rest of a regular file node after its type: its contents streamed, up to its `)`. */
  async *regular(): AsyncGenerator<Buffer> {
    let t = await this.token();
    if (t === 'executable') {
      await this.expect('');
      t = await this.token();
    }
    if (t !== 'contents') throw this.malformed(`expected 'contents', got '${t}'`);
    const sizeBuf = await this.r.bytes(8);
    this.pending.push(sizeBuf);
    yield* this.flushPending();
    let remaining = Number(sizeBuf.readBigUInt64LE(0));
    const pad = padLength(remaining);
    while (remaining > 0) {
      const piece = await this.r.some(Math.min(remaining, this.chunkSize));
      remaining -= piece.length;
      const out = this.emit(piece);
      if (out) yield out;
    }
    if (pad) this.pending.push(await this.r.bytes(pad));
    await this.expect(')');
  }

  /** The rest of a symlink node after its type. */
  async symlink(): Promise<void> {
    await this.expect('target');
    await this.token();
    await this.expect(')');
  }

  /** The start of an entry after its `entry` token, up to its node. */
  private async entryStart(): Promise<void> {
    await this.expect('(');
    await this.expect('name');
    await this.token();
    await this.expect('node');
  }

  /** After a directory's type: 'entry' when its first entry starts (read up to the entry's node), 'empty' when it ends at once. */
  async directoryStart(): Promise<'entry' | 'empty'> {
    const t = await this.token();
    if (t === ')') return 'empty';
    if (t !== 'entry') throw this.malformed(`unexpected '${t}' in a directory`);
    await this.entryStart();
    return 'entry';
  }

  /** After a node inside an entry: the entry's end, then true when a next entry starts (read up to its node), false when the directory ends. */
  async afterEntry(): Promise<boolean> {
    await this.expect(')'); // end of entry
    const t = await this.token();
    if (t === 'entry') {
      await this.entryStart();
      return true;
    }
    if (t !== ')') throw this.malformed(`unexpected '${t}' after an entry`);
    return false;
  }
}

/** Collects wire values into bytes (`take()`), for a message built before it is sent. */
export class WireEncoder {
  private parts: Buffer[] = [];
  private size = 0;

  u64(n: number | bigint | boolean): this {
    return this.raw(encodeU64(typeof n === 'boolean' ? (n ? 1 : 0) : n));
  }

  string(s: string | Uint8Array): this {
    return this.raw(encodeString(s));
  }

  strings(list: Iterable<string>): this {
    const arr = [...list];
    this.u64(arr.length);
    for (const s of arr) this.string(s);
    return this;
  }

  stringMap(map: Iterable<readonly [string, string]>): this {
    const arr = [...map];
    this.u64(arr.length);
    for (const [k, v] of arr) this.string(k).string(v);
    return this;
  }

  raw(b: Uint8Array): this {
    const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    this.parts.push(buf);
    this.size += buf.length;
    return this;
  }

  /** The bytes collected so far, which are then forgotten. */
  take(): Buffer {
    const data = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    return data;
  }

  /** How many bytes are collected. */
  get pending(): number {
    return this.size;
  }
}

/** Batches wire values and writes them to a stream. */
export class WireWriter extends WireEncoder {
  private broken: Error | undefined;

  constructor(
    private readonly sink: Writable,
    private readonly describe = 'remote',
  ) {
    super();
    sink.on('error', (err: Error) => {
      this.broken ??= err;
    });
  }

  /** Write everything batched so far; resolves once the stream accepted it (back-pressure). */
  async flush(): Promise<void> {
    if (this.broken || this.sink.destroyed || this.sink.writableEnded) {
      throw new RemoteConnectionError(`cannot write to ${this.describe}: the connection is closed`, { cause: this.broken });
    }
    if (this.pending === 0) return;
    const ok = this.sink.write(this.take());
    if (!ok) await waitDrain(this.sink, this.describe);
  }

  /** Copy a byte stream as frames (Nix's FramedSink), ending with the empty frame. */
  async framed(source: AsyncIterable<Uint8Array>, frameSize = 256 << 10): Promise<void> {
    for await (const chunk of source) {
      for (let off = 0; off < chunk.length; off += frameSize) {
        const piece = chunk.subarray(off, Math.min(chunk.length, off + frameSize));
        this.u64(piece.length).raw(piece);
        await this.flush();
      }
    }
    this.u64(0);
    await this.flush();
  }

  /** Copy a byte stream as it is. */
  async stream(source: AsyncIterable<Uint8Array>): Promise<void> {
    for await (const chunk of source) {
      this.raw(chunk);
      await this.flush();
    }
  }
}

function waitDrain(sink: Writable, describe: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      sink.off('drain', onDrain);
      sink.off('close', onClose);
      sink.off('error', onError);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onClose = (): void => done(new RemoteConnectionError(`connection to ${describe} closed while writing`));
    const onError = (e: Error): void => done(new RemoteConnectionError(`cannot write to ${describe}: ${e.message}`, { cause: e }));
    sink.on('drain', onDrain);
    sink.on('close', onClose);
    sink.on('error', onError);
  });
}
