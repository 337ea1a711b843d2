/**
 * Unpacking a tarball as Nix 2.8's unpackTarfile does with libarchive: the compression found from the
 * data (xz, gzip, bzip2, zstd or none), ustar/GNU/pax headers (long names and link targets), regular
 * files with their permission bits, directories, symlinks and hard links; names with `..` and entries
 * below a symlink are refused (libarchive's SECURE_NODOTDOT and SECURE_SYMLINKS). Streams: a member's
 * contents go to its file as they are decompressed.
 */
import { promises as fsp, createReadStream } from 'node:fs';
import * as path from 'node:path';
import { compressionOf, decompressStream } from '../substituter/compression.js';
import { BuiltinFailure, hintfmt } from './log.js';

/** Reads exact byte counts from a stream of chunks. */
class ChunkReader {
  #it: AsyncIterator<Uint8Array>;
  #buf: Buffer = Buffer.alloc(0);
  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }
  async #fill(n: number): Promise<boolean> {
    while (this.#buf.length < n) {
      const r = await this.#it.next();
      if (r.done) return false;
      this.#buf = this.#buf.length === 0 ? Buffer.from(r.value.buffer, r.value.byteOffset, r.value.length) : Buffer.concat([this.#buf, r.value]);
    }
    return true;
  }
  /** Exactly n bytes, or fewer at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    await this.#fill(n);
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }
  /** n bytes in pieces as they come (for file contents). */
  async *pieces(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.#buf.length === 0 && !(await this.#fill(1))) throw truncated();
      const take = this.#buf.subarray(0, Math.min(left, this.#buf.length));
      this.#buf = this.#buf.subarray(take.length);
      left -= take.length;
      yield take;
    }
  }
  async skip(n: number): Promise<void> {
    for await (const _ of this.pieces(n)) {
      /* discard */
    }
  }
  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

/** libarchive's error while extracting a member (Nix's `failed to extract archive (…)`). */
function extractFailure(reason: string): BuiltinFailure {
  return new BuiltinFailure(hintfmt('failed to extract archive (%s)', reason));
}

function truncated(): BuiltinFailure {
  return extractFailure('Truncated tar archive');
}

/** libarchive's error while reading a member's header: Nix finds no member name then. */
function headerFailure(reason: string): BuiltinFailure {
  return new BuiltinFailure(hintfmt('cannot get archive member name: %s', reason));
}

function cString(b: Buffer): string {
  const z = b.indexOf(0);
  return (z < 0 ? b : b.subarray(0, z)).toString('utf8');
}

function octal(b: Buffer): number {
  if (b[0]! & 0x80) {
    // GNU base-256 for big sizes.
    let v = 0;
    for (let i = 1; i < b.length; i++) v = v * 256 + b[i]!;
    return v;
  }
  const s = cString(b).trim();
  return s === '' ? 0 : parseInt(s, 8);
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
  return sum === octal(h.subarray(148, 156));
}

function paxRecords(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) break;
    const len = Number(data.subarray(i, sp).toString());
    if (!(len > 0)) break;
    const rec = data.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

/** The compression of a file, from its first bytes. */
async function sniff(file: string): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, 6, 0);
    return compressionOf(head.subarray(0, bytesRead)) ?? 'none';
  } finally {
    await fh.close();
  }
}

export interface UnpackOptions {
  readonly signal?: AbortSignal;
  /** The name messages give the tarball (its logical path). @default the file */
  readonly shownFile?: string;
  /** The name messages give the destination (its logical path). @default the destination */
  readonly shownDest?: string;
}

/** Unpack the tarball `file` into the directory `dest` (created if missing). */
export async function unpackTarfile(file: string, dest: string, opts: UnpackOptions = {}): Promise<void> {
  const { signal, shownFile: shown = file, shownDest = dest } = opts;
  let compression: string;
  try {
    compression = await sniff(file);
  } catch (e) {
    throw new BuiltinFailure(hintfmt('failed to open archive: %s', `Failed to open '${shown}'`), { cause: e });
  }
  await fsp.mkdir(dest, { recursive: true });
  const source = decompressStream(compression, createReadStream(file, { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) }));
  const reader = new ChunkReader(source);
  const symlinks = new Set<string>();
  const dirModes = new Map<string, number>();
  try {
    await extract(reader, { dest, shownDest }, symlinks, dirModes);
  } catch (e) {
    if (e instanceof BuiltinFailure) throw e;
    throw new BuiltinFailure(hintfmt('failed to extract archive (%s)', (e as Error).message), { cause: e });
  } finally {
    await reader.close();
  }
  // Directory permissions last (a read-only directory must still receive its entries).
  for (const [d, mode] of [...dirModes].reverse()) await fsp.chmod(d, mode | 0o700);
}

/** The destination directory, and the name messages give it. */
interface Dest {
  readonly dest: string;
  readonly shownDest: string;
}

async function extract(reader: ChunkReader, { dest, shownDest }: Dest, symlinks: Set<string>, dirModes: Map<string, number>): Promise<void> {
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax = new Map<string, string>();
  let sawEntry = false;
  for (;;) {
    const h = await reader.read(512);
    if (isEnd(h, sawEntry)) return;
    sawEntry = true;
    const type = String.fromCharCode(h[156]!);
    let size = octal(h.subarray(124, 136));
    if (pax.has('size')) size = Number(pax.get('size'));
    const padded = Math.ceil(size / 512) * 512;
    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      const data = await reader.read(padded);
      if (data.length < padded) throw headerFailure('Truncated tar archive');
      const body = data.subarray(0, size);
      if (type === 'L') longName = cString(body);
      else if (type === 'K') longLink = cString(body);
      else if (type === 'x') pax = paxRecords(body);
      continue;
    }
    const ustar = h.subarray(257, 262).toString('latin1') === 'ustar';
    const prefix = ustar ? cString(h.subarray(345, 500)) : '';
    const rawName = pax.get('path') ?? longName ?? (prefix ? `${prefix}/${cString(h.subarray(0, 100))}` : cString(h.subarray(0, 100)));
    const link = pax.get('linkpath') ?? longLink ?? cString(h.subarray(157, 257));
    const mode = octal(h.subarray(100, 108)) & 0o777;
    longName = longLink = undefined;
    pax = new Map();

    const rel = safeName(rawName);
    const target = rel === '' ? dest : path.join(dest, rel);
    if (rel !== '') await ensureParents({ dest, shownDest }, rel, symlinks);
    switch (type) {
      case '0':
      case '\0':
      case '7': {
        await replace(target);
        const fh = await fsp.open(target, 'wx', 0o600);
        try {
          for await (const piece of reader.pieces(size)) await fh.write(piece);
          await fh.chmod(mode);
        } finally {
          await fh.close();
        }
        await reader.skip(padded - size);
        break;
      }
      case '5':
        if (rel !== '') {
          const st = await fsp.lstat(target).catch(() => undefined);
          if (st && !st.isDirectory()) await replace(target);
          if (!st?.isDirectory()) await fsp.mkdir(target, 0o755);
        }
        dirModes.set(target, mode);
        await reader.skip(padded);
        break;
      case '2':
        await replace(target);
        await fsp.symlink(link, target);
        symlinks.add(rel);
        await reader.skip(padded);
        break;
      case '1':
        await hardLink({ dest, shownDest }, safeName(link), target);
        await reader.skip(padded);
        break;
      default:
        // Devices, FIFOs and the like cannot be in a store path: left out.
        await reader.skip(padded);
    }
  }
}

/**
 * Whether the header block `h` ends the archive (an empty file is an empty archive; the end without the two
 * zero blocks is accepted, as by libarchive); throws libarchive's words for a bad one.
 */
function isEnd(h: Buffer, sawEntry: boolean): boolean {
  if (h.length === 0) return true;
  const zeros = h.every((b) => b === 0);
  // No format of libarchive recognises data that does not start with a tar header.
  if (!sawEntry && (h.length < 512 || (!zeros && !checksumOk(h)))) {
    throw new BuiltinFailure(hintfmt('failed to open archive: %s', 'Unrecognized archive format'));
  }
  if (h.length < 512) throw headerFailure('Truncated tar archive');
  if (zeros) return true;
  if (!checksumOk(h)) throw headerFailure('Damaged tar archive');
  return false;
}

/** A hard link at `target` to the member `original` (relative to the destination). */
async function hardLink({ dest, shownDest }: Dest, original: string, target: string): Promise<void> {
  await replace(target);
  try {
    await fsp.link(path.join(dest, original), target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw extractFailure(`Hard-link target '${shownDest}/${original}' does not exist.`);
    throw e;
  }
}

/** A member name relative to the destination; `..` components are refused as libarchive's SECURE_NODOTDOT does. */
function safeName(name: string): string {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw extractFailure("Path contains '..'");
  return parts.join('/');
}

/** Create the missing parent directories of `rel`; none of them may be a symlink (SECURE_SYMLINKS). */
async function ensureParents({ dest, shownDest }: Dest, rel: string, symlinks: Set<string>): Promise<void> {
  const parts = rel.split('/');
  for (let i = 1; i < parts.length; i++) {
    const sub = parts.slice(0, i).join('/');
    if (symlinks.has(sub)) throw extractFailure(`Cannot extract through symlink ${shownDest}/${rel}`);
  }
  if (parts.length > 1) {
    try {
      await fsp.mkdir(path.join(dest, ...parts.slice(0, -1)), { recursive: true, mode: 0o755 });
    } catch (e) {
      // A parent that is not a directory (libarchive's words).
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' || code === 'ENOTDIR') throw extractFailure(`Could not stat ${shownDest}/${rel}`);
      throw e;
    }
  }
}

/** Remove what is at `p` (a later member of the same name replaces an earlier one). */
async function replace(p: string): Promise<void> {
  const st = await fsp.lstat(p).catch(() => undefined);
  if (!st) return;
  if (st.isDirectory()) await fsp.rm(p, { recursive: true, force: true });
  else await fsp.unlink(p);
}
