/**
 * A small bzip2 decompressor (whole buffer in, whole buffer out), enough to read the `.bz2` build logs
 * Nix 2.8 writes. Pure: no child processes (the store layer may not spawn). Verifies block and stream
 * CRCs; handles concatenated streams; refuses the obsolete "randomised" blocks.
 */
import { StoreError } from './errors.js';

export class Bzip2Error extends StoreError {
  constructor(message: string) {
    super('bad-bzip2', `bzip2 data is corrupt: ${message}`);
  }
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 24;
    for (let k = 0; k < 8; k++) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** One byte into bzip2's CRC (CRC-32, most significant bit first). */
function crcByte(crc: number, b: number): number {
  return ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ b) & 0xff]!) >>> 0;
}

class BitReader {
  private pos = 0;
  private buf = 0;
  private count = 0;
  constructor(private readonly data: Uint8Array) {}
  bits(n: number): number {
    while (this.count < n) {
      if (this.pos >= this.data.length) throw new Bzip2Error('unexpected end of input');
      this.buf = ((this.buf << 8) | this.data[this.pos++]!) >>> 0;
      this.count += 8;
    }
    this.count -= n;
    const v = (this.buf >>> this.count) & ((1 << n) - 1);
    this.buf &= (1 << this.count) - 1;
    return v >>> 0;
  }
  bit(): number {
    return this.bits(1);
  }
  u32(): number {
    return ((this.bits(16) << 16) | this.bits(16)) >>> 0;
  }
  alignToByte(): void {
    this.count -= this.count % 8;
    this.buf &= (1 << this.count) - 1;
  }
  atEnd(): boolean {
    return this.pos >= this.data.length && this.count < 8;
  }
}

const MAX_GROUPS = 6;
const MAX_CODE_LEN = 20;

/** Decompress a complete bzip2 buffer (one or more concatenated streams). */
export function decompressBzip2(input: Uint8Array): Uint8Array {
  const r = new BitReader(input);
  const out: Uint8Array[] = [];
  let streams = 0;
  while (!r.atEnd()) {
    if (r.bits(8) !== 0x42 || r.bits(8) !== 0x5a || r.bits(8) !== 0x68) throw new Bzip2Error("missing 'BZh' signature");
    const level = r.bits(8) - 0x30;
    if (level < 1 || level > 9) throw new Bzip2Error(`bad block size ${level}`);
    const blockMax = level * 100000;
    let streamCrc = 0;
    for (;;) {
      const m1 = r.bits(24),
        m2 = r.bits(24);
      if (m1 === 0x177245 && m2 === 0x385090) {
        const want = r.u32();
        if (want !== streamCrc >>> 0) throw new Bzip2Error('stream CRC mismatch');
        r.alignToByte();
        break;
      }
      if (m1 !== 0x314159 || m2 !== 0x265359) throw new Bzip2Error('bad block header');
      const blockCrc = r.u32();
      const block = decodeBlock(r, blockMax);
      let crc = 0xffffffff;
      for (let i = 0; i < block.length; i++) crc = crcByte(crc, block[i]!);
      crc = ~crc >>> 0;
      if (crc !== blockCrc) throw new Bzip2Error('block CRC mismatch');
      streamCrc = (((streamCrc << 1) | (streamCrc >>> 31)) ^ crc) >>> 0;
      out.push(block);
    }
    streams++;
  }
  if (streams === 0) throw new Bzip2Error('empty input');
  return Buffer.concat(out);
}

function decodeBlock(r: BitReader, blockMax: number): Uint8Array {
  if (r.bit()) throw new Bzip2Error('randomised blocks are not supported');
  const origPtr = r.bits(24);
  const seqToUnseq = readSymbolMap(r);
  const alphaSize = seqToUnseq.length + 2;
  const nGroups = r.bits(3);
  if (nGroups < 2 || nGroups > MAX_GROUPS) throw new Bzip2Error(`bad number of Huffman groups ${nGroups}`);
  const selectors = readSelectors(r, nGroups);
  const tables = Array.from({ length: nGroups }, () => readDecodeTable(r, alphaSize));
  const { tt, n, counts } = decodeSymbols(r, blockMax, seqToUnseq, selectors, tables);
  if (origPtr >= n) throw new Bzip2Error('bad BWT origin pointer');
  return undoInitialRle(inverseBwt(tt, n, counts, origPtr));
}

/** The bytes the block uses, in order (its symbol map): sequence number → byte. */
function readSymbolMap(r: BitReader): number[] {
  const used16 = r.bits(16);
  const seqToUnseq: number[] = [];
  for (let i = 0; i < 16; i++) {
    if (used16 & (0x8000 >> i)) {
      const bits = r.bits(16);
      for (let j = 0; j < 16; j++) if (bits & (0x8000 >> j)) seqToUnseq.push(i * 16 + j);
    }
  }
  if (seqToUnseq.length === 0) throw new Bzip2Error('no symbols in use');
  return seqToUnseq;
}

/** Which Huffman table each group of 50 symbols uses (move-to-front coded in unary). */
function readSelectors(r: BitReader, nGroups: number): Uint8Array {
  const nSelectors = r.bits(15);
  if (nSelectors < 1) throw new Bzip2Error('no selectors');
  const mtfGroups = Array.from({ length: nGroups }, (_, i) => i);
  const selectors = new Uint8Array(nSelectors);
  for (let i = 0; i < nSelectors; i++) {
    let j = 0;
    while (r.bit()) {
      j++;
      if (j >= nGroups) throw new Bzip2Error('bad selector');
    }
    const v = mtfGroups[j]!;
    mtfGroups.splice(j, 1);
    mtfGroups.unshift(v);
    selectors[i] = v;
  }
  return selectors;
}

interface DecodeTable {
  minLen: number;
  limit: Int32Array;
  base: Int32Array;
  perm: Int32Array;
}

/** One group's code lengths (delta coded), as canonical Huffman decode tables. */
function readDecodeTable(r: BitReader, alphaSize: number): DecodeTable {
  const len = new Uint8Array(alphaSize);
  let cur = r.bits(5);
  for (let s = 0; s < alphaSize; s++) {
    for (;;) {
      if (cur < 1 || cur > MAX_CODE_LEN) throw new Bzip2Error('bad code length');
      if (!r.bit()) break;
      cur += r.bit() ? -1 : 1;
    }
    len[s] = cur;
  }
  let minLen = 32,
    maxLen = 0;
  for (const l of len) {
    if (l < minLen) minLen = l;
    if (l > maxLen) maxLen = l;
  }
  const perm = new Int32Array(alphaSize);
  let pp = 0;
  for (let i = minLen; i <= maxLen; i++) for (let s = 0; s < alphaSize; s++) if (len[s] === i) perm[pp++] = s;
  const base = new Int32Array(MAX_CODE_LEN + 2);
  const limit = new Int32Array(MAX_CODE_LEN + 1).fill(-1);
  for (let s = 0; s < alphaSize; s++) base[len[s]! + 1]!++;
  for (let i = 1; i < base.length; i++) base[i]! += base[i - 1]!;
  let vec = 0;
  for (let i = minLen; i <= maxLen; i++) {
    vec += base[i + 1]! - base[i]!;
    limit[i] = vec - 1;
    vec <<= 1;
  }
  for (let i = minLen + 1; i <= maxLen; i++) base[i] = ((limit[i - 1]! + 1) << 1) - base[i]!;
  return { minLen, limit, base, perm };
}

/** Huffman + MTF + RUNA/RUNB decoding into the BWT block `tt` (`n` bytes), with each byte's count. */
function decodeSymbols(
  r: BitReader,
  blockMax: number,
  seqToUnseq: readonly number[],
  selectors: Uint8Array,
  tables: readonly DecodeTable[],
): { tt: Uint8Array; n: number; counts: Int32Array } {
  const alphaSize = seqToUnseq.length + 2;
  const eob = alphaSize - 1;
  const mtf = new Uint8Array(256).map((_, i) => i);
  const tt = new Uint8Array(blockMax);
  const counts = new Int32Array(256);
  let n = 0;
  let groupPos = 0,
    selIdx = 0;
  let table = tables[0]!;
  let runLen = 0,
    runWeight = 1;
  const flushRun = () => {
    if (runLen === 0) return;
    const b = seqToUnseq[mtf[0]!]!;
    if (n + runLen > blockMax) throw new Bzip2Error('block overflow');
    tt.fill(b, n, n + runLen);
    counts[b]! += runLen;
    n += runLen;
    runLen = 0;
    runWeight = 1;
  };
  for (;;) {
    if (groupPos === 0) {
      if (selIdx >= selectors.length) throw new Bzip2Error('ran out of selectors');
      table = tables[selectors[selIdx++]!]!;
      groupPos = 50;
    }
    groupPos--;
    let zn = table.minLen;
    let zvec = r.bits(zn);
    while (zvec > table.limit[zn]!) {
      zn++;
      if (zn > MAX_CODE_LEN) throw new Bzip2Error('bad Huffman code');
      zvec = (zvec << 1) | r.bit();
    }
    const idx = zvec - table.base[zn]!;
    if (idx < 0 || idx >= alphaSize) throw new Bzip2Error('bad Huffman code');
    const sym = table.perm[idx]!;
    if (sym <= 1) {
      runLen += (sym + 1) * runWeight;
      runWeight <<= 1;
      if (runLen > blockMax) throw new Bzip2Error('run too long');
      continue;
    }
    flushRun();
    if (sym === eob) break;
    const m = sym - 1;
    const v = mtf[m]!;
    mtf.copyWithin(1, 0, m);
    mtf[0] = v;
    const b = seqToUnseq[v]!;
    if (n >= blockMax) throw new Bzip2Error('block overflow');
    tt[n++] = b;
    counts[b]!++;
  }
  return { tt, n, counts };
}

/** The inverse Burrows–Wheeler transform of the first `n` bytes of `tt`. */
function inverseBwt(tt: Uint8Array, n: number, counts: Int32Array, origPtr: number): Uint8Array {
  const cftab = new Int32Array(256);
  for (let i = 0, sum = 0; i < 256; i++) {
    cftab[i] = sum;
    sum += counts[i]!;
  }
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) next[cftab[tt[i]!]!++] = i;
  const bwt = new Uint8Array(n);
  let pos = next[origPtr]!;
  for (let k = 0; k < n; k++) {
    bwt[k] = tt[pos]!;
    pos = next[pos]!;
  }
  return bwt;
}

/** Undo the initial run-length encoding (4 equal bytes + a count). */
function undoInitialRle(bwt: Uint8Array): Uint8Array {
  const n = bwt.length;
  let outBuf = new Uint8Array(n * 2 + 16);
  let o = 0;
  const push = (b: number, times: number) => {
    if (o + times > outBuf.length) {
      const bigger = new Uint8Array(Math.max(outBuf.length * 2, o + times));
      bigger.set(outBuf.subarray(0, o));
      outBuf = bigger;
    }
    outBuf.fill(b, o, o + times);
    o += times;
  };
  let last = -1,
    same = 0;
  for (let i = 0; i < n; i++) {
    const b = bwt[i]!;
    if (same === 4) {
      push(last, b);
      same = 0;
      last = -1;
      continue;
    }
    if (b === last) same++;
    else {
      last = b;
      same = 1;
    }
    push(b, 1);
  }
  return outBuf.subarray(0, o);
}

// ---------------------------------------------------------------------------------------------------------
// Compression (Nix writes its build logs with libbz2, level 9). Our own encoder, block by block: run-length
// encoding of the input, the Burrows–Wheeler transform (rotations sorted by prefix doubling with counting
// sorts: O(n log n) whatever the data), move-to-front with zero runs as RUNA/RUNB, and one Huffman table
// (lengths at most 17, as libbz2) sent twice, since the format wants at least two. Any bzip2 reader takes it.

class BitWriter {
  private readonly chunks: Buffer[] = [];
  private buf = Buffer.allocUnsafe(1 << 16);
  private pos = 0;
  private acc = 0;
  private count = 0;

  /** Write the low `n` bits of `v` (n ≤ 24), most significant first. */
  bits(n: number, v: number): void {
    this.acc = ((this.acc << n) | (v & ((1 << n) - 1))) >>> 0;
    this.count += n;
    while (this.count >= 8) {
      this.count -= 8;
      this.byte((this.acc >>> this.count) & 0xff);
    }
    this.acc &= (1 << this.count) - 1;
  }

  u32(v: number): void {
    this.bits(16, v >>> 16);
    this.bits(16, v & 0xffff);
  }

  private byte(b: number): void {
    if (this.pos === this.buf.length) {
      this.chunks.push(this.buf);
      this.buf = Buffer.allocUnsafe(this.buf.length * 2);
      this.pos = 0;
    }
    this.buf[this.pos++] = b;
  }

  /** The whole bytes written so far (the bits of an unfinished byte stay). */
  take(): Buffer {
    this.chunks.push(Buffer.from(this.buf.subarray(0, this.pos)));
    this.pos = 0;
    const out = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    return out;
  }

  /** take(), after padding the last byte with zero bits. */
  finish(): Buffer {
    if (this.count > 0) this.bits(8 - this.count, 0);
    return this.take();
  }
}

const MAX_ENCODE_LEN = 17;
const GROUP_SIZE = 50;

/** Huffman code lengths for `freqs` (every symbol gets one, even unused), at most `maxLen` bits. */
function codeLengths(freqs: readonly number[], maxLen: number): number[] {
  const n = freqs.length;
  let weights = freqs.map((f) => Math.max(f, 1));
  for (;;) {
    // Nodes 0..n-1 are leaves; internal nodes follow. A simple O(n²) merge: alphabets are ≤ 258 symbols.
    const w = [...weights];
    const parent = new Array<number>(2 * n).fill(-1);
    const alive = new Set<number>(w.keys());
    while (alive.size > 1) {
      let a = -1,
        b = -1;
      for (const i of alive) {
        if (a === -1 || w[i]! < w[a]!) {
          b = a;
          a = i;
        } else if (b === -1 || w[i]! < w[b]!) b = i;
      }
      const node = w.length;
      w.push(w[a]! + w[b]!);
      parent[a] = node;
      parent[b] = node;
      alive.delete(a);
      alive.delete(b);
      alive.add(node);
    }
    const lens = new Array<number>(n);
    let longest = 0;
    for (let i = 0; i < n; i++) {
      let d = 0;
      for (let j = i; parent[j] !== -1; j = parent[j]!) d++;
      lens[i] = Math.max(d, 1);
      longest = Math.max(longest, lens[i]!);
    }
    if (longest <= maxLen) return lens;
    weights = weights.map((x) => 1 + (x >> 1)); // flatten, as libbz2 does, and build again
  }
}

/** Sorted cyclic rotations of `block` (prefix doubling, counting sorts): the start of each, in order. */
function sortRotations(block: Uint8Array): Int32Array {
  const n = block.length;
  let sa = new Int32Array(n);
  let rank = new Int32Array(n);
  let tmp = new Int32Array(n);
  const count = new Int32Array(Math.max(256, n) + 1);
  for (let i = 0; i < n; i++) count[block[i]! + 1]!++;
  for (let i = 1; i <= 256; i++) count[i]! += count[i - 1]!;
  for (let i = 0; i < n; i++) sa[count[block[i]!]!++] = i;
  let classes = 0;
  for (let j = 0; j < n; j++) {
    if (j > 0 && block[sa[j]!] !== block[sa[j - 1]!]) classes++;
    rank[sa[j]!] = classes;
  }
  classes++;
  for (let k = 1; classes < n && k < n; k <<= 1) {
    // Order by the second half (rotation i+k), which is `sa` shifted back by k, then stably by the first.
    for (let j = 0; j < n; j++) tmp[j] = (sa[j]! - k + n) % n;
    count.fill(0, 0, classes + 1);
    for (let j = 0; j < n; j++) count[rank[tmp[j]!]! + 1]!++;
    for (let c = 1; c <= classes; c++) count[c]! += count[c - 1]!;
    for (let j = 0; j < n; j++) sa[count[rank[tmp[j]!]!]!++] = tmp[j]!;
    tmp[sa[0]!] = 0;
    classes = 1;
    for (let j = 1; j < n; j++) {
      const a = sa[j]!,
        b = sa[j - 1]!;
      if (rank[a] !== rank[b] || rank[(a + k) % n] !== rank[(b + k) % n]) classes++;
      tmp[a] = classes - 1;
    }
    [rank, tmp] = [tmp, rank];
  }
  void tmp;
  return sa;
}

function encodeBlock(w: BitWriter, block: Uint8Array, crc: number): void {
  const { bwt, origPtr } = forwardBwt(block);
  const inUse = new Array<boolean>(256).fill(false);
  for (let i = 0; i < bwt.length; i++) inUse[bwt[i]!] = true;
  const syms = mtfSymbols(bwt, inUse);
  const alphaSize = syms[syms.length - 1]! + 1; // the last symbol is the end of block, the largest
  const freqs = new Array<number>(alphaSize).fill(0);
  for (const s of syms) freqs[s]!++;
  const lens = codeLengths(freqs, MAX_ENCODE_LEN);
  w.bits(24, 0x314159);
  w.bits(24, 0x265359);
  w.u32(crc);
  w.bits(1, 0); // not randomised
  w.bits(24, origPtr);
  writeSymbolMap(w, inUse);
  writeTables(w, syms.length, lens);
  const codes = canonicalCodes(lens);
  for (const s of syms) w.bits(lens[s]!, codes[s]!);
}

/** The Burrows–Wheeler transform of `block`: the last column, and the row of the original. */
function forwardBwt(block: Uint8Array): { bwt: Uint8Array; origPtr: number } {
  const n = block.length;
  const sa = sortRotations(block);
  let origPtr = 0;
  const bwt = new Uint8Array(n);
  for (let j = 0; j < n; j++) {
    const s = sa[j]!;
    if (s === 0) origPtr = j;
    bwt[j] = block[s === 0 ? n - 1 : s - 1]!;
  }
  return { bwt, origPtr };
}

/** Move-to-front over the bytes in use, zero runs as RUNA/RUNB, ended by the end-of-block symbol. */
function mtfSymbols(bwt: Uint8Array, inUse: readonly boolean[]): number[] {
  const mtf = new Uint8Array(256);
  let nInUse = 0;
  for (let b = 0; b < 256; b++) if (inUse[b]) mtf[nInUse++] = b;
  const syms: number[] = [];
  let zeros = 0;
  const flushZeros = () => {
    if (zeros === 0) return;
    let z = zeros - 1;
    for (;;) {
      syms.push(z & 1); // RUNB = 1, RUNA = 0
      if (z < 2) break;
      z = (z - 2) >> 1;
    }
    zeros = 0;
  };
  for (let i = 0; i < bwt.length; i++) {
    const b = bwt[i]!;
    if (mtf[0] === b) {
      zeros++;
      continue;
    }
    flushZeros();
    // Move to front, shifting by hand (a typed array's copyWithin costs more for these short moves).
    let j = 1;
    let prev = mtf[0]!;
    while (mtf[j] !== b) {
      const t = mtf[j]!;
      mtf[j] = prev;
      prev = t;
      j++;
    }
    mtf[j] = prev;
    mtf[0] = b;
    syms.push(j + 1);
  }
  flushZeros();
  syms.push(nInUse + 1);
  return syms;
}

/** Canonical Huffman codes for the code lengths `lens`. */
function canonicalCodes(lens: readonly number[]): number[] {
  const codes = new Array<number>(lens.length).fill(0);
  let next = 0;
  for (let len = 1; len <= MAX_ENCODE_LEN; len++) {
    for (let s = 0; s < lens.length; s++) if (lens[s] === len) codes[s] = next++;
    next <<= 1;
  }
  return codes;
}

/** The bytes in use: which of the 16 ranges of 16 have any, then each such range's bitmap. */
function writeSymbolMap(w: BitWriter, inUse: readonly boolean[]): void {
  let ranges = 0;
  for (let r = 0; r < 16; r++)
    for (let b = 0; b < 16; b++)
      if (inUse[r * 16 + b]) {
        ranges |= 0x8000 >> r;
        break;
      }
  w.bits(16, ranges);
  for (let r = 0; r < 16; r++) {
    if (!(ranges & (0x8000 >> r))) continue;
    let m = 0;
    for (let b = 0; b < 16; b++) if (inUse[r * 16 + b]) m |= 0x8000 >> b;
    w.bits(16, m);
  }
}

/** Two Huffman tables (the format's minimum), both `lens` delta coded, and every group of `nSyms` symbols on table 0. */
function writeTables(w: BitWriter, nSyms: number, lens: readonly number[]): void {
  const nGroups = 2;
  const nSelectors = Math.ceil(nSyms / GROUP_SIZE);
  w.bits(3, nGroups);
  w.bits(15, nSelectors);
  for (let i = 0; i < nSelectors; i++) w.bits(1, 0); // every group uses table 0 (MTF index 0, unary)
  for (let t = 0; t < nGroups; t++) {
    let cur = lens[0]!;
    w.bits(5, cur);
    for (let s = 0; s < lens.length; s++) {
      while (cur < lens[s]!) {
        w.bits(2, 2);
        cur++;
      }
      while (cur > lens[s]!) {
        w.bits(2, 3);
        cur--;
      }
      w.bits(1, 0);
    }
  }
}

/**
 * A bzip2 stream being written: `write` input as it comes, `end` once. Each returns the compressed bytes
 * ready so far (a block is written when it is full, so most writes return nothing). Block size `level` ×
 * 100,000 bytes, as `bzip2 -LEVEL`; `blockBytes` makes blocks smaller (less work between returns) while
 * the header still says `level`. The output is what bzip2, libbz2 and decompressBzip2 read back; it need
 * not be byte for byte what libbz2 writes.
 */
export class Bzip2Encoder {
  private readonly w = new BitWriter();
  private readonly block: Uint8Array;
  private readonly blockMax: number;
  private len = 0;
  private crc = 0xffffffff;
  private streamCrc = 0;
  /** The run being counted (at most 255 of `runByte`); -1: none yet. */
  private runByte = -1;
  private runLength = 0;
  private ended = false;

  constructor(level = 9, blockBytes = level * 100000) {
    if (!Number.isInteger(level) || level < 1 || level > 9) throw new RangeError(`bzip2 level must be 1..9, not ${level}`);
    this.w.bits(24, 0x425a68); // "BZh"
    this.w.bits(8, 0x30 + level);
    // libbz2 leaves room for one run-length group of 5 bytes at the end of each block.
    this.blockMax = Math.max(Math.min(blockBytes, level * 100000) - 19, 5);
    this.block = new Uint8Array(this.blockMax + 5);
  }

  write(data: Uint8Array): Buffer {
    if (this.ended) throw new Error('write after end');
    let b = this.runByte,
      run = this.runLength;
    for (let i = 0; i < data.length; i++) {
      const c = data[i]!;
      if (c === b && run < 255) {
        run++;
        continue;
      }
      if (run > 0) this.putRun(b, run);
      b = c;
      run = 1;
    }
    this.runByte = b;
    this.runLength = run;
    return this.w.take();
  }

  end(): Buffer {
    if (this.ended) throw new Error('end after end');
    this.ended = true;
    if (this.runLength > 0) this.putRun(this.runByte, this.runLength);
    if (this.len > 0) this.endBlock();
    this.w.bits(24, 0x177245);
    this.w.bits(24, 0x385090);
    this.w.u32(this.streamCrc);
    return this.w.finish();
  }

  /** A run of 1–255 bytes `b`: 1–3 stay as they are, 4 or more become 4 and a count. */
  private putRun(b: number, run: number): void {
    if (this.len + Math.min(run, 5) > this.blockMax) this.endBlock();
    let crc = this.crc;
    for (let k = 0; k < run; k++) crc = crcByte(crc, b);
    this.crc = crc;
    const block = this.block;
    if (run < 4) for (let k = 0; k < run; k++) block[this.len++] = b;
    else {
      block[this.len++] = b;
      block[this.len++] = b;
      block[this.len++] = b;
      block[this.len++] = b;
      block[this.len++] = run - 4;
    }
  }

  private endBlock(): void {
    const blockCrc = ~this.crc >>> 0;
    encodeBlock(this.w, this.block.subarray(0, this.len), blockCrc);
    this.streamCrc = (((this.streamCrc << 1) | (this.streamCrc >>> 31)) ^ blockCrc) >>> 0;
    this.len = 0;
    this.crc = 0xffffffff;
  }
}

/**
 * The stream of no data (the log of a builder that printed nothing, most of them): the header and the
 * end-of-stream marker with a zero CRC, as `bzip2 -LEVEL` writes it; no encoder to set up.
 */
function emptyStream(level: number): Buffer | undefined {
  if (!Number.isInteger(level) || level < 1 || level > 9) return undefined; // (the encoder says what is wrong)
  const z = Buffer.from(EMPTY_STREAM); // (a copy: the caller owns what it gets)
  z[3] = 0x30 + level;
  return z;
}

const EMPTY_STREAM = Buffer.from([0x42, 0x5a, 0x68, 0x39, 0x17, 0x72, 0x45, 0x38, 0x50, 0x90, 0, 0, 0, 0]);

/** Compress `data` as one bzip2 stream (see Bzip2Encoder). Synchronous: about 4 MB/s of text here. */
export function compressBzip2(data: Uint8Array, level = 9): Buffer {
  const empty = data.length === 0 ? emptyStream(level) : undefined;
  if (empty) return empty;
  const e = new Bzip2Encoder(level, Math.min(level * 100000, data.length + 24)); // no bigger a block buffer than needed
  return Buffer.concat([e.write(data), e.end()]);
}

/**
 * compressBzip2 without holding the event loop for long: blocks of at most `blockBytes` input bytes
 * (default 100,000; the header still says `level`), with a turn of the event loop between them.
 */
export async function compressBzip2Async(data: Uint8Array, opts: { level?: number; blockBytes?: number } = {}): Promise<Buffer> {
  const blockBytes = opts.blockBytes ?? 100000;
  const empty = data.length === 0 ? emptyStream(opts.level ?? 9) : undefined;
  if (empty) return empty;
  const e = new Bzip2Encoder(opts.level ?? 9, Math.min(blockBytes, data.length + 24));
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += blockBytes) {
    if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    out.push(e.write(data.subarray(i, i + blockBytes)));
  }
  out.push(e.end());
  return Buffer.concat(out);
}
