/**
 * Hashes as Nix writes them: base16, nix-base32, base64 and SRI, for md5, sha1, sha256, sha512.
 * Pure: no I/O. `HashModulo` is a hash sink that zeroes a self-reference part (Nix's HashModuloSink).
 */
import { createHash, hash as oneShotHash, type Hash as NodeHash } from 'node:crypto';
import { BadHashError } from './errors.js';

export type HashAlgorithm = 'md5' | 'sha1' | 'sha256' | 'sha512';
export type HashFormat = 'base16' | 'base32' | 'base64' | 'sri';

export const HASH_SIZES: Readonly<Record<HashAlgorithm, number>> = { md5: 16, sha1: 20, sha256: 32, sha512: 64 };

export function isHashAlgorithm(s: string): s is HashAlgorithm {
  return s === 'md5' || s === 'sha1' || s === 'sha256' || s === 'sha512';
}

export function parseHashAlgorithm(s: string): HashAlgorithm {
  if (!isHashAlgorithm(s)) throw new BadHashError(`unknown hash algorithm '${s}'`, { hint: 'use md5, sha1, sha256 or sha512' });
  return s;
}

/** Nix's base-32 alphabet: no e, o, u, t. */
const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
const NIX32_REV = new Int8Array(128).fill(-1);
for (let i = 0; i < NIX32.length; i++) NIX32_REV[NIX32.charCodeAt(i)] = i;

export function nixBase32Length(bytes: number): number {
  return Math.ceil((bytes * 8) / 5);
}

/** Encode bytes in nix-base32 (Nix's bit order: least significant 5-bit group of the whole number first, printed last). */
export function toNixBase32(bytes: Uint8Array): string {
  const len = nixBase32Length(bytes.length);
  let out = '';
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    const c = ((bytes[i]! >> j) | (i + 1 < bytes.length ? bytes[i + 1]! << (8 - j) : 0)) & 0x1f;
    out += NIX32[c];
  }
  return out;
}

/** Decode nix-base32; throws BadHashError on bad characters or non-zero padding bits. */
export function fromNixBase32(s: string, size?: number): Uint8Array {
  const bytes = size ?? Math.floor((s.length * 5) / 8);
  if (nixBase32Length(bytes) !== s.length) throw new BadHashError(`nix-base32 string '${s}' has the wrong length for ${bytes} bytes`);
  const out = new Uint8Array(bytes);
  // The last character holds the lowest 5 bits: the characters from the end fill a bit buffer, written out a
  // byte at a time (one typed-array store per byte, not two read-modify-writes per character: about a
  // quarter less time in code not optimised, where a fresh process parses its narinfos' and CA fields' hashes).
  let acc = 0;
  let nbits = 0;
  let i = 0;
  for (let n = s.length - 1; n >= 0; n--) {
    const code = s.charCodeAt(n);
    const digit = code < 128 ? NIX32_REV[code]! : -1;
    if (digit < 0) throw new BadHashError(`invalid character '${s[n]}' in nix-base32 string '${s}'`);
    acc |= digit << nbits;
    nbits += 5;
    if (nbits >= 8) {
      if (i < bytes) out[i++] = acc & 0xff;
      else if (acc & 0xff) throw new BadHashError(`nix-base32 string '${s}' has non-zero padding bits`);
      acc >>>= 8;
      nbits -= 8;
    }
  }
  if (i < bytes) out[i] = acc;
  else if (acc) throw new BadHashError(`nix-base32 string '${s}' has non-zero padding bits`);
  return out;
}

/** Nothing but characters of NIX32. */
const NIX32_TEXT = /^[0-9a-df-np-sv-z]*$/;

export function isNixBase32(s: string): boolean {
  // One regular expression, not a loop over the characters: a fresh process runs such a loop in V8's
  // interpreter, some microseconds for each store path it parses.
  return NIX32_TEXT.test(s);
}

export function toBase16(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

export function fromBase16(s: string): Uint8Array {
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw new BadHashError(`invalid base-16 string '${s}'`);
  return new Uint8Array(Buffer.from(s, 'hex'));
}

export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_REV = new Int8Array(256).fill(-1);
for (let i = 0; i < B64.length; i++) B64_REV[B64.charCodeAt(i)] = i;

/**
 * Decode base-64 exactly as Nix 2.8 does: decoding stops at the first `=`, newlines are skipped, any
 * other character outside the alphabet is an error, and left-over bits are dropped. Callers check the
 * decoded length.
 */
export function fromBase64(s: string): Uint8Array {
  const out = new Uint8Array(Math.floor((s.length * 6) / 8));
  let n = 0;
  let d = 0;
  let bits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x3d /* = */) break;
    if (c === 0x0a /* \n */) continue;
    const digit = c < 256 ? B64_REV[c]! : -1;
    if (digit < 0) throw new BadHashError(`invalid character '${s[i]}' in base-64 string '${s}'`);
    d = ((d << 6) | digit) & 0xfff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (d >> bits) & 0xff;
    }
  }
  return out.slice(0, n);
}

/** A hash value with its algorithm. Immutable. */
export class Hash {
  readonly algorithm: HashAlgorithm;
  readonly bytes: Uint8Array;

  constructor(algorithm: HashAlgorithm, bytes: Uint8Array) {
    if (bytes.length !== HASH_SIZES[algorithm]) {
      throw new BadHashError(`a ${algorithm} hash has ${HASH_SIZES[algorithm]} bytes, got ${bytes.length}`);
    }
    this.algorithm = algorithm;
    this.bytes = bytes;
  }

  /** Hash a byte string or UTF-8 text (one call of Node's one-shot hash: no hash object, no stream). */
  static of(algorithm: HashAlgorithm, data: string | Uint8Array): Hash {
    return new Hash(algorithm, new Uint8Array(oneShotHash(algorithm, data, 'buffer')));
  }

  /**
   * Parse any form Nix accepts: `algo:base16|base32|base64`, SRI `algo-base64`, or a bare hash when
   * `algorithm` is given (the encoding is told apart by length, as Nix does).
   */
  static parse(s: string, algorithm?: HashAlgorithm): Hash {
    let algo = algorithm;
    let rest = s;
    let sri = false;
    const colon = s.indexOf(':');
    const dash = s.indexOf('-');
    if (colon >= 0) {
      const a = parseHashAlgorithm(s.slice(0, colon));
      if (algo && a !== algo) throw new BadHashError(`hash '${s}' should have type '${algo}'`);
      algo = a;
      rest = s.slice(colon + 1);
    } else if (dash >= 0) {
      const a = parseHashAlgorithm(s.slice(0, dash));
      if (algo && a !== algo) throw new BadHashError(`hash '${s}' should have type '${algo}'`);
      algo = a;
      rest = s.slice(dash + 1);
      sri = true;
    }
    if (!algo) throw new BadHashError(`hash '${s}' does not include a type`, { hint: "prefix it with 'sha256:' or use SRI form 'sha256-...'" });
    const size = HASH_SIZES[algo];
    if (sri) {
      const bytes = fromBase64(rest);
      if (bytes.length !== size) throw new BadHashError(`invalid SRI hash '${s}'`);
      return new Hash(algo, bytes);
    }
    if (rest.length === size * 2) return new Hash(algo, fromBase16(rest));
    if (rest.length === nixBase32Length(size)) return new Hash(algo, fromNixBase32(rest, size));
    if (rest.length === Math.ceil(size / 3) * 4) {
      const bytes = fromBase64(rest);
      if (bytes.length !== size) throw new BadHashError(`invalid base-64 hash '${s}'`);
      return new Hash(algo, bytes);
    }
    throw new BadHashError(`hash '${s}' has wrong length for hash type '${algo}'`);
  }

  /** Parse an SRI string `algo-base64` only. */
  static parseSri(s: string): Hash {
    const dash = s.indexOf('-');
    if (dash < 0 || !isHashAlgorithm(s.slice(0, dash))) throw new BadHashError(`'${s}' is not an SRI hash`);
    return Hash.parse(s);
  }

  /** Render; `withAlgorithm` prefixes `algo:` (ignored for SRI, which always has it). */
  toString(format: HashFormat = 'base32', withAlgorithm = true): string {
    if (format === 'sri') return `${this.algorithm}-${toBase64(this.bytes)}`;
    const body = format === 'base16' ? toBase16(this.bytes) : format === 'base32' ? toNixBase32(this.bytes) : toBase64(this.bytes);
    return withAlgorithm ? `${this.algorithm}:${body}` : body;
  }

  get base16(): string {
    return toBase16(this.bytes);
  }
  get base32(): string {
    return toNixBase32(this.bytes);
  }
  get sri(): string {
    return this.toString('sri');
  }

  equals(other: Hash): boolean {
    return this.algorithm === other.algorithm && Buffer.compare(this.bytes, other.bytes) === 0;
  }
}

/** Nix's compressHash: XOR-fold a hash down to `size` bytes. */
export function compressHash(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < bytes.length; i++) out[i % size]! ^= bytes[i]!;
  return out;
}

/** Streaming hash sink that also counts bytes. */
export class HashSink {
  readonly algorithm: HashAlgorithm;
  private readonly h: NodeHash;
  size = 0;
  constructor(algorithm: HashAlgorithm = 'sha256') {
    this.algorithm = algorithm;
    this.h = createHash(algorithm);
  }
  update(chunk: Uint8Array): void {
    this.h.update(chunk);
    this.size += chunk.length;
  }
  finish(): { hash: Hash; size: number } {
    return { hash: new Hash(this.algorithm, new Uint8Array(this.h.digest())), size: this.size };
  }
}

/**
 * Nix's HashModuloSink: hashes a stream in which every occurrence of `modulus` (a store path hash part)
 * is replaced by zeroes, and records the offsets where it occurred (appended to the hash input as
 * `|offset` for each, as Nix does for self-references of content-addressed outputs).
 */
export class HashModulo {
  private readonly inner: HashSink;
  private readonly modulus: Buffer;
  private pending: Buffer = Buffer.alloc(0);
  private pos = 0;
  private readonly offsets: number[] = [];

  constructor(algorithm: HashAlgorithm, modulus: string) {
    this.inner = new HashSink(algorithm);
    this.modulus = Buffer.from(modulus, 'latin1');
  }

  update(chunk: Uint8Array): void {
    const m = this.modulus.length;
    if (m === 0) {
      this.inner.update(chunk);
      this.pos += chunk.length;
      return;
    }
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let from = 0;
    let owned = this.pending.length > 0;
    for (;;) {
      const i = buf.indexOf(this.modulus, from);
      if (i < 0) break;
      this.offsets.push(this.pos + i);
      if (!owned) {
        buf = Buffer.from(buf);
        owned = true;
      } // never mutate the caller's memory
      buf.fill(0, i, i + m);
      from = i + m;
    }
    const keep = Math.min(m - 1, buf.length - from);
    const emit = buf.length - keep;
    if (emit > 0) this.inner.update(buf.subarray(0, emit));
    this.pos += emit;
    this.pending = Buffer.from(buf.subarray(emit));
  }

  finish(): { hash: Hash; size: number; offsets: number[] } {
    if (this.pending.length) {
      this.inner.update(this.pending);
      this.pos += this.pending.length;
      this.pending = Buffer.alloc(0);
    }
    for (const off of this.offsets) this.inner.update(Buffer.from(`|${off}`));
    const { hash } = this.inner.finish();
    return { hash, size: this.pos, offsets: [...this.offsets] };
  }
}
