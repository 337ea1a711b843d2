/**
 * NAR (Nix ARchive): streaming serialisation of a file system tree, streaming parse/restore, and the
 * NAR hash and size computed in the same pass. Restore refuses hostile archives (entries out of order,
 * duplicates, names with `/`, `.`, `..`, NUL, or empty) and never writes outside its target directory.
 */
import { promises as fsp, constants as FS } from 'node:fs';
import * as path from 'node:path';
import { BadNarError } from './errors.js';
import { Hash, HashSink } from './hash.js';

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

/**
 * Serialise the tree at `fsPath` as a NAR. Yields buffers; file contents are read in 1 MiB chunks.
 * Directory entries are emitted in byte order of their names, as Nix does.
 */
export async function* dumpPath(fsPath: string): AsyncGenerator<Uint8Array> {
  yield narString(NAR_MAGIC);
  yield* dumpNode(fsPath);
}

async function* dumpNode(p: string): AsyncGenerator<Uint8Array> {
  const st = await fsp.lstat(p);
  if (st.isSymbolicLink()) {
    const target = await fsp.readlink(p, { encoding: 'buffer' });
    yield Buffer.concat([tokens('(', 'type', 'symlink', 'target'), narString(target), narString(')')]);
  } else if (st.isFile()) {
    const exec = (st.mode & 0o100) !== 0;
    const head = exec
      ? tokens('(', 'type', 'regular', 'executable', '', 'contents')
      : tokens('(', 'type', 'regular', 'contents');
    yield Buffer.concat([head, u64(st.size)]);
    let remaining = st.size;
    if (remaining > 0) {
      const fh = await fsp.open(p, FS.O_RDONLY);
      try {
        while (remaining > 0) {
          const buf = Buffer.allocUnsafe(Math.min(CHUNK, remaining));
          const { bytesRead } = await fh.read(buf, 0, buf.length, null);
          if (bytesRead === 0) throw new BadNarError(`file '${p}' shrank while it was being archived`);
          remaining -= bytesRead;
          yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
        }
      } finally {
        await fh.close();
      }
    }
    yield Buffer.concat([ZEROS.subarray(0, padLen(st.size)), narString(')')]);
  } else if (st.isDirectory()) {
    yield tokens('(', 'type', 'directory');
    const names = (await fsp.readdir(p, { encoding: 'buffer' })).sort(Buffer.compare);
    for (const name of names) {
      yield Buffer.concat([tokens('entry', '(', 'name'), narString(name), narString('node')]);
      yield* dumpNode(path.join(p, name.toString('utf8')));
      yield narString(')');
    }
    yield narString(')');
  } else {
    throw new BadNarError(`file '${p}' has an unsupported type (not a regular file, directory or symlink)`);
  }
}

/** NAR of a single regular file with the given contents (e.g. a `.drv` or `builtins.toFile`). */
export function narOfRegularFile(contents: string | Uint8Array, executable = false): Buffer {
  const body = typeof contents === 'string' ? Buffer.from(contents, 'utf8') : Buffer.from(contents);
  const head = executable
    ? tokens(NAR_MAGIC, '(', 'type', 'regular', 'executable', '', 'contents')
    : tokens(NAR_MAGIC, '(', 'type', 'regular', 'contents');
  return Buffer.concat([head, narString(body), narString(')')]);
}

/** Hash and size of a NAR stream in one pass. */
export async function hashNar(nar: AsyncIterable<Uint8Array>, algorithm: 'sha256' | 'sha512' | 'sha1' | 'md5' = 'sha256'): Promise<{ hash: Hash; size: number }> {
  const sink = new HashSink(algorithm);
  for await (const chunk of nar) sink.update(chunk);
  return sink.finish();
}

/** NAR hash and size of a file system tree. */
export async function hashPath(fsPath: string): Promise<{ hash: Hash; size: number }> {
  return hashNar(dumpPath(fsPath));
}

/** Pass a stream through while hashing it; call `result()` once it is drained. */
export function teeHash(source: AsyncIterable<Uint8Array>, algorithm: 'sha256' | 'sha512' = 'sha256'): { stream: AsyncIterable<Uint8Array>; result(): { hash: Hash; size: number } } {
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

  private async fill(): Promise<boolean> {
    for (;;) {
      const r = await this.it.next();
      if (r.done) return false;
      if (r.value.length === 0) continue;
      const chunk = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      this.buf = this.off < this.buf.length ? Buffer.concat([this.buf.subarray(this.off), chunk]) : chunk;
      this.off = 0;
      return true;
    }
  }

  async exactly(n: number): Promise<Buffer> {
    while (this.buf.length - this.off < n) {
      if (!(await this.fill())) throw new BadNarError(`NAR ends unexpectedly at byte ${this.pos + (this.buf.length - this.off)} (wanted ${n} more bytes)`);
    }
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    this.pos += n;
    return out;
  }

  /** Up to `max` bytes that are available now (at least 1). */
  async some(max: number): Promise<Buffer> {
    if (this.buf.length - this.off === 0) {
      if (!(await this.fill())) throw new BadNarError(`NAR ends unexpectedly at byte ${this.pos}`);
    }
    const n = Math.min(max, this.buf.length - this.off);
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    this.pos += n;
    return out;
  }

  async atEnd(): Promise<boolean> {
    if (this.buf.length - this.off > 0) return false;
    return !(await this.fill());
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

/** Receiver of NAR parse events; `restorePath` writes them to disk, `parseNar` validates only. */
export interface NarSink {
  createDirectory(rel: string): Promise<void> | void;
  createSymlink(rel: string, target: Buffer): Promise<void> | void;
  /** Begin a regular file; return a writer for its contents. */
  createFile(rel: string, executable: boolean, size: number): Promise<FileWriter> | FileWriter;
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
  if (!Buffer.from(s, 'utf8').equals(name)) throw new BadNarError('NAR contains an entry name that is not valid UTF-8');
  return s;
}

/**
 * Parse a NAR stream, feeding `sink`. Throws BadNarError on malformed input, including trailing bytes
 * when `expectEnd` (default) is set.
 */
export async function parseNar(source: AsyncIterable<Uint8Array>, sink: NarSink, opts: { expectEnd?: boolean } = {}): Promise<{ size: number }> {
  const r = new ByteReader(source);
  const magic = await r.bytes(64).catch((e) => { throw e instanceof BadNarError ? new BadNarError(`input is not a NAR: ${e.shortMessage}`) : e; });
  if (magic.toString('latin1') !== NAR_MAGIC) throw new BadNarError('input is not a NAR archive (bad magic)', { hint: 'is it compressed? decompress it first' });
  await parseNode(r, sink, '', 0);
  if (opts.expectEnd ?? true) {
    if (!(await r.atEnd())) throw new BadNarError(`NAR has trailing data after byte ${r.pos}`);
  }
  return { size: r.pos };
}

const MAX_DEPTH = 512;

async function parseNode(r: ByteReader, sink: NarSink, rel: string, depth: number): Promise<void> {
  if (depth > MAX_DEPTH) throw new BadNarError('NAR is nested too deeply');
  await r.expect('(');
  await r.expect('type');
  const type = await r.str();
  if (type === 'regular') {
    let tag = await r.str();
    let executable = false;
    if (tag === 'executable') {
      const empty = await r.str();
      if (empty !== '') throw new BadNarError("bad NAR: 'executable' must be followed by an empty string");
      executable = true;
      tag = await r.str();
    }
    if (tag !== 'contents') throw new BadNarError(`bad NAR: expected 'contents', got '${tag.slice(0, 64)}'`);
    const size = await r.u64();
    const w = await sink.createFile(rel, executable, size);
    let left = size;
    try {
      while (left > 0) {
        const chunk = await r.some(Math.min(left, CHUNK));
        left -= chunk.length;
        await w.write(chunk);
      }
    } finally {
      await w.close();
    }
    await r.padding(size);
    await r.expect(')');
  } else if (type === 'symlink') {
    await r.expect('target');
    const target = await r.bytes(4096);
    if (target.length === 0) throw new BadNarError('NAR contains a symlink with an empty target');
    if (target.includes(0)) throw new BadNarError('NAR contains a symlink target with a NUL byte');
    await sink.createSymlink(rel, target);
    await r.expect(')');
  } else if (type === 'directory') {
    await sink.createDirectory(rel);
    let prev: Buffer | undefined;
    for (;;) {
      const tag = await r.str();
      if (tag === ')') break;
      if (tag !== 'entry') throw new BadNarError(`bad NAR: expected 'entry' or ')', got '${tag.slice(0, 64)}'`);
      await r.expect('(');
      await r.expect('name');
      const nameBuf = await r.bytes(255);
      const name = checkEntryName(nameBuf);
      if (prev) {
        const c = Buffer.compare(prev, nameBuf);
        if (c === 0) throw new BadNarError(`NAR contains duplicate entry '${name}'`);
        if (c > 0) throw new BadNarError(`NAR directory entries are not sorted ('${prev.toString('utf8')}' before '${name}')`);
      }
      prev = nameBuf;
      await r.expect('node');
      await parseNode(r, sink, rel === '' ? name : `${rel}/${name}`, depth + 1);
      await r.expect(')');
    }
  } else {
    throw new BadNarError(`bad NAR: unknown file type '${type.slice(0, 64)}'`);
  }
}

/** A sink that only validates. */
export const validatingSink: NarSink = {
  createDirectory() {},
  createSymlink() {},
  createFile() { return { write() {}, close() {} }; },
};

/**
 * Restore a NAR into `target`, which must not exist. Every file is created with O_EXCL under a directory
 * restored by us, so no entry can be written through a symlink or outside `target`.
 */
export async function restorePath(target: string, source: AsyncIterable<Uint8Array>): Promise<{ size: number }> {
  const abs = path.resolve(target);
  const at = (rel: string) => (rel === '' ? abs : path.join(abs, rel));
  const sink: NarSink = {
    async createDirectory(rel) {
      await fsp.mkdir(at(rel), { mode: 0o755 });
    },
    async createSymlink(rel, t) {
      await fsp.symlink(t.toString('utf8'), at(rel));
    },
    async createFile(rel, executable) {
      const fh = await fsp.open(at(rel), FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, executable ? 0o755 : 0o644);
      return {
        async write(chunk) {
          let off = 0;
          while (off < chunk.length) {
            const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
            off += bytesWritten;
          }
        },
        async close() { await fh.close(); },
      };
    },
  };
  return parseNar(source, sink);
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
