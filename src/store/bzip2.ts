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
  bit(): number { return this.bits(1); }
  u32(): number { return ((this.bits(16) << 16) | this.bits(16)) >>> 0; }
  alignToByte(): void { this.count -= this.count % 8; this.buf &= (1 << this.count) - 1; }
  atEnd(): boolean { return this.pos >= this.data.length && this.count < 8; }
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
      const m1 = r.bits(24), m2 = r.bits(24);
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
      for (let i = 0; i < block.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ block[i]!) & 0xff]!) >>> 0;
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
  // Symbol map.
  const used16 = r.bits(16);
  const seqToUnseq: number[] = [];
  for (let i = 0; i < 16; i++) {
    if (used16 & (0x8000 >> i)) {
      const bits = r.bits(16);
      for (let j = 0; j < 16; j++) if (bits & (0x8000 >> j)) seqToUnseq.push(i * 16 + j);
    }
  }
  if (seqToUnseq.length === 0) throw new Bzip2Error('no symbols in use');
  const alphaSize = seqToUnseq.length + 2;
  const nGroups = r.bits(3);
  if (nGroups < 2 || nGroups > MAX_GROUPS) throw new Bzip2Error(`bad number of Huffman groups ${nGroups}`);
  const nSelectors = r.bits(15);
  if (nSelectors < 1) throw new Bzip2Error('no selectors');
  const mtfGroups = Array.from({ length: nGroups }, (_, i) => i);
  const selectors = new Uint8Array(nSelectors);
  for (let i = 0; i < nSelectors; i++) {
    let j = 0;
    while (r.bit()) { j++; if (j >= nGroups) throw new Bzip2Error('bad selector'); }
    const v = mtfGroups[j]!;
    mtfGroups.splice(j, 1);
    mtfGroups.unshift(v);
    selectors[i] = v;
  }
  // Code lengths and decode tables per group.
  const tables = [] as Array<{ minLen: number; limit: Int32Array; base: Int32Array; perm: Int32Array }>;
  for (let g = 0; g < nGroups; g++) {
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
    let minLen = 32, maxLen = 0;
    for (const l of len) { if (l < minLen) minLen = l; if (l > maxLen) maxLen = l; }
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
    tables.push({ minLen, limit, base, perm });
  }
  // Huffman + MTF + RUNA/RUNB decoding into the BWT block.
  const eob = alphaSize - 1;
  const mtf = new Uint8Array(256).map((_, i) => i);
  const tt = new Uint8Array(blockMax);
  const counts = new Int32Array(256);
  let n = 0;
  let groupPos = 0, selIdx = 0;
  let table = tables[0]!;
  let runLen = 0, runWeight = 1;
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
      if (selIdx >= nSelectors) throw new Bzip2Error('ran out of selectors');
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
  if (origPtr >= n) throw new Bzip2Error('bad BWT origin pointer');
  // Inverse BWT.
  const cftab = new Int32Array(256);
  for (let i = 0, sum = 0; i < 256; i++) { cftab[i] = sum; sum += counts[i]!; }
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) next[cftab[tt[i]!]!++] = i;
  const bwt = new Uint8Array(n);
  let pos = next[origPtr]!;
  for (let k = 0; k < n; k++) { bwt[k] = tt[pos]!; pos = next[pos]!; }
  // Undo the initial run-length encoding (4 equal bytes + a count).
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
  let last = -1, same = 0;
  for (let i = 0; i < n; i++) {
    const b = bwt[i]!;
    if (same === 4) {
      push(last, b);
      same = 0;
      last = -1;
      continue;
    }
    if (b === last) same++;
    else { last = b; same = 1; }
    push(b, 1);
  }
  return outBuf.subarray(0, o);
}
