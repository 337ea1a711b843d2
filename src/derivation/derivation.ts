/**
 * Store derivations: the ATerm `.drv` format of Nix 2.8 (parse and print, byte for byte), the
 * derivation hash modulo fixed-output derivations, and output path computation.
 *
 * Pure except where a callback reads input derivations (`ReadDerivation`) or `writeDerivation` adds
 * the `.drv` to a Store.
 */
import { BadHashError, InvalidStorePathError, unreachable } from '../store/errors.js';
import { Hash, isHashAlgorithm, type HashAlgorithm } from '../store/hash.js';
import {
  DEFAULT_STORE_DIR,
  computeTextPath,
  hashPlaceholder,
  makeFixedOutputPath,
  makeOutputPath,
  outputPathName,
  parseStorePath,
  storePathBase,
  type FileIngestionMethod,
  type StorePath,
} from '../store/store-path.js';
import type { Store } from '../store/store-api.js';
import { BadDerivationError } from './errors.js';

export type { FileIngestionMethod } from '../store/store-path.js';

/** An output whose path is fixed by the derivation's inputs (`("out","/nix/store/…","","")`). */
export interface InputAddressedOutput {
  readonly type: 'input-addressed';
  readonly path: StorePath;
}

/** A fixed-output (content-addressed, hash known in advance) output (`("out","/nix/store/…","r:sha256","<base16>")`). */
export interface FixedOutput {
  readonly type: 'fixed';
  readonly method: FileIngestionMethod;
  readonly hash: Hash;
  readonly path: StorePath;
}

/** A floating content-addressed output: the path is known only after the build (`("out","","r:sha256","")`). */
export interface FloatingOutput {
  readonly type: 'floating';
  readonly method: FileIngestionMethod;
  readonly algorithm: HashAlgorithm;
}

/** An input-addressed output whose path cannot be computed yet (it depends on a floating CA input): `("out","","","")`. */
export interface DeferredOutput {
  readonly type: 'deferred';
}

/** An output of an impure derivation (Nix 2.8 experimental `impure-derivations`): `("out","","r:sha256","impure")`. */
export interface ImpureOutput {
  readonly type: 'impure';
  readonly method: FileIngestionMethod;
  readonly algorithm: HashAlgorithm;
}

export type DerivationOutput = InputAddressedOutput | FixedOutput | FloatingOutput | DeferredOutput | ImpureOutput;

/** A store derivation (Nix's `Derivation`). Maps keep insertion order; printing sorts as Nix does. */
export interface Derivation {
  /** The derivation name: the `.drv` path's name without `.drv`. */
  name: string;
  outputs: Map<string, DerivationOutput>;
  /** Input derivation path → the wanted output names (sorted, unique). */
  inputDrvs: Map<StorePath, string[]>;
  inputSrcs: StorePath[];
  platform: string;
  builder: string;
  args: string[];
  env: Map<string, string>;
}

/** Reads (and parses) a `.drv` from wherever the derivations live; e.g. `readDerivationFromStore(store)`. */
export type ReadDerivation = (drvPath: StorePath) => Promise<Derivation>;

/** Compare strings as Nix's `std::string` (UTF-8 byte order = code point order). */
export function compareBytes(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      // Surrogates (non-BMP) sort after every BMP code point in UTF-8 byte order.
      const xs = x >= 0xd800 && x <= 0xdfff;
      const ys = y >= 0xd800 && y <= 0xdfff;
      if (xs !== ys) return xs ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}

/**
 * The strings sorted (as Nix's `std::set`) without duplicates. An array that already is (every list Nix
 * writes in a `.drv`) is returned itself, not a copy: parsing a derivation then allocates no Set and no
 * array per list.
 */
function sortedUnique(xs: Iterable<string>): string[] {
  if (Array.isArray(xs)) {
    let i = 1;
    while (i < xs.length && compareBytes(xs[i - 1] as string, xs[i] as string) < 0) i++;
    if (i >= xs.length) return xs as string[];
  }
  const out = [...new Set(xs)];
  out.sort(compareBytes);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Printing

const NEEDS_ESCAPE = /["\\\n\r\t]/;
const ESCAPES = /["\\\n\r\t]/g;
const ESCAPE_OF: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escapeString(s: string): string {
  if (!NEEDS_ESCAPE.test(s)) return '"' + s + '"';
  return '"' + s.replace(ESCAPES, (c) => ESCAPE_OF[c]!) + '"';
}

function printList(items: readonly string[]): string {
  return '[' + items.map(escapeString).join(',') + ']';
}

/** `r:` for recursive, nothing for flat (Nix's makeFileIngestionPrefix). */
export function ingestionPrefix(method: FileIngestionMethod): string {
  return method === 'recursive' ? 'r:' : '';
}

/** The `hashAlgo` field of an output: `r:sha256`, `sha1`, ... */
export function printMethodAlgo(method: FileIngestionMethod, algorithm: HashAlgorithm): string {
  return ingestionPrefix(method) + algorithm;
}

function outputFields(o: DerivationOutput, maskOutputs: boolean): [string, string, string] {
  switch (o.type) {
    case 'input-addressed':
      return [maskOutputs ? '' : o.path, '', ''];
    case 'fixed':
      return [maskOutputs ? '' : o.path, printMethodAlgo(o.method, o.hash.algorithm), o.hash.base16];
    case 'floating':
      return ['', printMethodAlgo(o.method, o.algorithm), ''];
    case 'deferred':
      return ['', '', ''];
    case 'impure':
      return ['', printMethodAlgo(o.method, o.algorithm), 'impure'];
    default:
      return unreachable(o);
  }
}

/**
 * Print a derivation in the ATerm format, exactly as Nix 2.8 writes `.drv` files. With `maskOutputs`,
 * output paths and the environment variables named after outputs are empty. `inputDrvsOverride`
 * replaces the input derivations (as hashDerivationModulo does with its hashes).
 */
export function printDerivation(drv: Derivation, opts: { maskOutputs?: boolean; inputDrvsOverride?: ReadonlyMap<string, Iterable<string>> } = {}): string {
  const mask = opts.maskOutputs ?? false;
  const parts: string[] = ['Derive(['];
  const outNames = [...drv.outputs.keys()].sort(compareBytes);
  parts.push(
    outNames
      .map((name) => {
        const [p, algo, hash] = outputFields(drv.outputs.get(name)!, mask);
        return '(' + escapeString(name) + ',' + escapeString(p) + ',' + escapeString(algo) + ',' + escapeString(hash) + ')';
      })
      .join(','),
  );
  parts.push('],[');
  const inputs = opts.inputDrvsOverride ?? drv.inputDrvs;
  const inputKeys = [...inputs.keys()].sort(compareBytes);
  parts.push(inputKeys.map((k) => '(' + escapeString(k) + ',' + printList(sortedUnique(inputs.get(k)!)) + ')').join(','));
  parts.push('],');
  parts.push(printList(sortedUnique(drv.inputSrcs)));
  parts.push(',', escapeString(drv.platform), ',', escapeString(drv.builder), ',', printList(drv.args), ',[');
  const envKeys = [...drv.env.keys()].sort(compareBytes);
  parts.push(envKeys.map((k) => '(' + escapeString(k) + ',' + escapeString(mask && drv.outputs.has(k) ? '' : drv.env.get(k)!) + ')').join(','));
  parts.push('])');
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------------
// Parsing

/**
 * Fast acceptance of a well-formed store path base name (`parseStorePath` explains the rejects). Sticky:
 * matched in the path from `lastIndex` (the base name's start), so no substring is made for it.
 */
const STORE_PATH_BASE = /[0-9a-df-np-sv-z]{32}-[0-9a-zA-Z+\-._?=]{1,211}$/y;

function validStorePath(p: string, storeDir: string): boolean {
  if (!(p.length > storeDir.length + 1 && p.startsWith(storeDir) && p[storeDir.length] === '/')) return false;
  STORE_PATH_BASE.lastIndex = storeDir.length + 1;
  return STORE_PATH_BASE.test(p);
}

/** Largest .drv text we accept (256 Mi characters is not a derivation). */
const MAX_DRV_LENGTH = 1 << 28;

class Parser {
  pos = 0;
  constructor(
    readonly text: string,
    readonly drvName: string,
  ) {}

  fail(what: string): never {
    const at = this.pos;
    const near = JSON.stringify(this.text.slice(at, at + 20));
    throw new BadDerivationError(`derivation '${this.drvName}' is malformed: ${what} at offset ${at} (near ${near})`, {
      drv: this.drvName,
      offset: at,
      hint: 'the .drv file is corrupt or not a Nix derivation; re-instantiate it',
    });
  }

  expect(s: string): void {
    if (!this.text.startsWith(s, this.pos)) this.fail(`expected '${s}'`);
    this.pos += s.length;
  }

  peek(): string {
    return this.text[this.pos] ?? '';
  }

  /** Where the next backslash at or after `pos` is (text length when none): found once, so scanning stays linear. */
  private backslash = -1;

  string(): string {
    this.expect('"');
    const t = this.text;
    const from = this.pos;
    // Most strings have no escape: two native searches instead of a loop over their characters.
    const quote = t.indexOf('"', from);
    if (this.backslash < from) {
      const b = t.indexOf('\\', from);
      this.backslash = b < 0 ? t.length : b;
    }
    if (quote >= 0 && quote < this.backslash) {
      this.pos = quote + 1;
      return t.slice(from, quote);
    }
    return this.escapedString(from);
  }

  /** The rest of a string that has escapes (or no end), from `from`, character by character. */
  private escapedString(start: number): string {
    const t = this.text;
    let out = '';
    let from = start;
    for (let i = from; i < t.length; i++) {
      const c = t.charCodeAt(i);
      if (c === 0x22) {
        out += t.slice(from, i);
        this.pos = i + 1;
        return out;
      }
      if (c === 0x5c) {
        out += t.slice(from, i);
        if (i + 1 >= t.length) break;
        const e = t[i + 1]!;
        out += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e;
        i++;
        from = i + 1;
      }
    }
    this.pos = t.length;
    this.fail('unterminated string');
  }

  /**
   * `[` already consumed; parses `"a","b"]`. Lists of one or two strings (the wanted outputs of an input
   * derivation, most argument lists) are made at their size: an array grown by push from empty takes room
   * for 17, which a parsed derivation would keep.
   */
  stringsUntilClose(): string[] {
    if (this.peek() === ']') {
      this.pos++;
      return [];
    }
    const a = this.string();
    if (this.closesList()) return [a];
    const b = this.string();
    if (this.closesList()) return [a, b];
    const out = [a, b];
    for (;;) {
      out.push(this.string());
      if (this.closesList()) return out;
    }
  }

  /** After a list element: consumes `]` (true) or `,` (false, another element follows). */
  private closesList(): boolean {
    const c = this.peek();
    if (c === ',') {
      this.pos++;
      return false;
    }
    if (c !== ']') this.fail("expected ',' or ']'");
    this.pos++;
    return true;
  }

  /** Runs `item` for each element of a list whose `[` is consumed, up to and including `]`. */
  listUntilClose(item: () => void): void {
    if (this.peek() === ']') {
      this.pos++;
      return;
    }
    do item();
    while (!this.closesList());
  }
}

function parseOutput(p: Parser, name: string, path: string, algo: string, hash: string, storeDir: string): DerivationOutput {
  const storePath = (): StorePath => {
    if (validStorePath(path, storeDir)) return flatCopy(path);
    try {
      parseStorePath(path, storeDir);
    } catch (e) {
      p.fail(`output '${name}' has an invalid path '${path}' (${(e as Error).message})`);
    }
    return path;
  };
  if (algo !== '') {
    let method: FileIngestionMethod = 'flat';
    let a = algo;
    if (a.startsWith('r:')) {
      method = 'recursive';
      a = a.slice(2);
    }
    if (!isHashAlgorithm(a)) p.fail(`output '${name}' has an unknown hash algorithm '${algo}'`);
    if (hash === 'impure') {
      if (path !== '') p.fail(`impure output '${name}' must not have a path`);
      return { type: 'impure', method, algorithm: a };
    }
    if (hash !== '') {
      if (hash.includes(':') || hash.includes('-')) p.fail(`output '${name}' has a hash '${hash}' that is not a bare hash`);
      let h: Hash;
      try {
        h = Hash.parse(hash, a);
      } catch (e) {
        if (e instanceof BadHashError) p.fail(`output '${name}' has an invalid hash: ${e.shortMessage}`);
        throw e;
      }
      return { type: 'fixed', method, hash: h, path: storePath() };
    }
    if (path !== '') p.fail(`floating content-addressed output '${name}' must not have a path`);
    return { type: 'floating', method, algorithm: a };
  }
  if (hash !== '') p.fail(`output '${name}' has a hash but no hash algorithm`);
  if (path === '') return { type: 'deferred' };
  return { type: 'input-addressed', path: storePath() };
}

/**
 * A copy of a store path that does not point into the `.drv` text. Parsed strings are slices of the text,
 * and V8 keeps the whole text alive for as long as any slice lives: store paths outlive their derivation
 * (the scheduler keys goals by them), so they are copied: V8 flattens the concatenation into a new string
 * of its own, and the slice of that holds nothing of the text (0.3-0.8 µs a path, where a round trip
 * through a Buffer took 3-6 µs and allocated from Buffer's pool).
 */
function flatCopy(s: string): string {
  return (' ' + s).slice(1);
}

/**
 * Parse a `.drv` file's text. `name` is the derivation name (`derivationNameFromPath(drvPath)`).
 * Throws `BadDerivationError` for anything malformed; never hangs (linear in the input).
 */
export function parseDerivation(text: string, name: string, opts: { storeDir?: string } = {}): Derivation {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  if (typeof text !== 'string') throw new BadDerivationError(`derivation '${name}' is not text`, { drv: name });
  const p = new Parser(text, name);
  if (text.length > MAX_DRV_LENGTH) p.fail('derivation too large');
  const checkPath = (s: string, what: string): StorePath => {
    if (validStorePath(s, storeDir)) return flatCopy(s);
    try {
      parseStorePath(s, storeDir);
    } catch (e) {
      if (e instanceof InvalidStorePathError) p.fail(`${what} '${s}' is not a valid store path: ${e.shortMessage}`);
      throw e;
    }
    return s;
  };
  const drv: Derivation = {
    name,
    outputs: new Map(),
    inputDrvs: new Map(),
    inputSrcs: [],
    platform: '',
    builder: '',
    args: [],
    env: new Map(),
  };
  p.expect('Derive([');
  p.listUntilClose(() => {
    p.expect('(');
    const id = p.string();
    p.expect(',');
    const path = p.string();
    p.expect(',');
    const algo = p.string();
    p.expect(',');
    const hash = p.string();
    p.expect(')');
    if (drv.outputs.has(id)) p.fail(`duplicate output '${id}'`);
    drv.outputs.set(id, parseOutput(p, id, path, algo, hash, storeDir));
  });
  p.expect(',[');
  p.listUntilClose(() => {
    p.expect('(');
    const path = checkPath(p.string(), 'input derivation');
    p.expect(',[');
    const outs = p.stringsUntilClose();
    p.expect(')');
    if (drv.inputDrvs.has(path)) p.fail(`duplicate input derivation '${path}'`);
    drv.inputDrvs.set(path, sortedUnique(outs));
  });
  p.expect(',[');
  const srcs = p.stringsUntilClose();
  for (let i = 0; i < srcs.length; i++) srcs[i] = checkPath(srcs[i]!, 'input source');
  drv.inputSrcs = sortedUnique(srcs);
  p.expect(',');
  drv.platform = p.string();
  p.expect(',');
  drv.builder = p.string();
  p.expect(',[');
  drv.args = p.stringsUntilClose();
  p.expect(',[');
  p.listUntilClose(() => {
    p.expect('(');
    const k = p.string();
    p.expect(',');
    const v = p.string();
    p.expect(')');
    if (drv.env.has(k)) p.fail(`duplicate environment variable '${k}'`);
    drv.env.set(k, v);
  });
  p.expect(')');
  if (p.pos !== text.length) p.fail('trailing data after the derivation');
  return drv;
}

/** `/nix/store/…-hello-2.12.drv` → `hello-2.12`. */
export function derivationNameFromPath(drvPath: StorePath): string {
  const base = storePathBase(drvPath);
  const name = base.slice(33);
  if (!name.endsWith('.drv')) {
    throw new BadDerivationError(`'${drvPath}' is not a derivation path (it does not end in '.drv')`, { drv: drvPath });
  }
  return name.slice(0, -4);
}

export function isDerivationPath(path: string): boolean {
  return path.endsWith('.drv');
}

/** A `ReadDerivation` over a Store (reads with `store.readTextFile`). */
export function readDerivationFromStore(store: Pick<Store, 'readTextFile' | 'storeDir'>): ReadDerivation {
  return async (drvPath) => {
    const text = await store.readTextFile(drvPath);
    return parseDerivation(text, derivationNameFromPath(drvPath), { storeDir: store.storeDir });
  };
}

// ---------------------------------------------------------------------------------------------------
// Derivation types and hashing modulo

export type DerivationKind = 'input-addressed' | 'deferred' | 'fixed' | 'floating' | 'impure';

/**
 * The kind of a whole derivation (Nix's DerivationType). Throws BadDerivationError for mixtures Nix
 * rejects (e.g. a fixed output next to another output).
 */
export function derivationKind(drv: Derivation): DerivationKind {
  let ia = 0,
    deferred = 0,
    fixed = 0,
    floating = 0,
    impure = 0;
  for (const o of drv.outputs.values()) {
    if (o.type === 'input-addressed') ia++;
    else if (o.type === 'deferred') deferred++;
    else if (o.type === 'fixed') fixed++;
    else if (o.type === 'floating') floating++;
    else impure++;
  }
  const n = drv.outputs.size;
  const bad = (msg: string): never => {
    throw new BadDerivationError(`derivation '${drv.name}' ${msg}`, { drv: drv.name });
  };
  if (n === 0) bad('has no outputs');
  if (ia === n) return 'input-addressed';
  if (deferred === n) return 'deferred';
  if (fixed === n) {
    if (n > 1) bad('has several fixed outputs; only one fixed output (named "out") is allowed');
    if (!drv.outputs.has('out')) bad('has a single fixed output that is not named "out"');
    return 'fixed';
  }
  if (floating === n) {
    const first = [...drv.outputs.values()][0] as FloatingOutput;
    for (const o of drv.outputs.values()) {
      const f = o as FloatingOutput;
      if (f.algorithm !== first.algorithm) bad('has floating outputs with different hash algorithms');
    }
    return 'floating';
  }
  if (impure === n) return 'impure';
  return bad('mixes output types (input-addressed, deferred, fixed, floating, impure); all outputs must be of one type');
}

/** Nix's DrvHash: one hash per output, and whether it is deferred (depends on floating CA derivations). */
export interface DrvHash {
  readonly hashes: ReadonlyMap<string, Hash>;
  readonly kind: 'regular' | 'deferred';
}

/** sha256("impure"), made on first use (a command that hashes nothing loads no hashing code). */
let impureOutputHash: Hash | undefined;

/** How many parsed derivations a DerivationHasher keeps for hashing (DerivationHasher.parsedFrom). */
const PARSED_MAX = 4096;

/**
 * Computes `hashDerivationModulo` with a memo of input derivations by path (as Nix's drvHashes).
 * Keep one per store (or per batch of work) to avoid re-reading inputs.
 */
export class DerivationHasher {
  readonly storeDir: string;
  private readonly readDrv: ReadDerivation;
  /**
   * Each derivation's hash: its promise while it is computed, the hash once it is (a derivation whose
   * inputs are all hashed is hashed without awaiting them).
   */
  private readonly memo = new Map<StorePath, DrvHash | Promise<DrvHash>>();

  constructor(readDrv: ReadDerivation, opts: { storeDir?: string } = {}) {
    this.readDrv = readDrv;
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  }

  /**
   * Derivations just parsed from their valid `.drv` files (`parsed`), hashed from here rather than read
   * again when an input needs them: the oldest are forgotten past PARSED_MAX, and each once hashed.
   */
  private readonly parsed = new Map<StorePath, Derivation>();

  /** The hash modulo of the derivation at `drvPath` (unmasked), memoised. */
  pathHashModulo(drvPath: StorePath): Promise<DrvHash> {
    const m = this.memo.get(drvPath);
    if (m !== undefined) return m instanceof Promise ? m : Promise.resolve(m);
    const drv = this.parsed.get(drvPath);
    if (drv) this.parsed.delete(drvPath);
    const p = drv ? this.hashModulo(drv, false) : this.readDrv(drvPath).then((d) => this.hashModulo(d, false));
    // (Unless remember() put the hash in meanwhile.)
    p.then(
      (h) => this.memo.get(drvPath) === p && this.memo.set(drvPath, h),
      () => this.memo.get(drvPath) === p && this.memo.delete(drvPath),
    );
    this.memo.set(drvPath, p);
    return p;
  }

  /**
   * `drv` is the derivation of the `.drv` at `drvPath` (just read and parsed, e.g. to check a substitute):
   * if a derivation that has it as an input is hashed next, its hash comes from `drv`, not from reading
   * the file again (a substituted closure is checked bottom-up, each `.drv` hashing its inputs).
   */
  parsedFrom(drvPath: StorePath, drv: Derivation): void {
    if (this.memo.has(drvPath) || this.parsed.has(drvPath)) return;
    if (this.parsed.size >= PARSED_MAX) this.parsed.delete(this.parsed.keys().next().value!);
    this.parsed.set(drvPath, drv);
  }

  /** Seed the memo (e.g. right after writing a derivation whose hash was just computed). */
  remember(drvPath: StorePath, h: DrvHash): void {
    this.memo.set(drvPath, h);
  }

  /**
   * Nix's `hashDerivationModulo`: a fixed-output derivation hashes as
   * `fixed:out:<method><algo>:<base16>:<path>`; any other derivation hashes its ATerm with every input
   * derivation replaced by the base16 of that input's hash modulo (and outputs masked if asked).
   */
  async hashModulo(drv: Derivation, maskOutputs: boolean): Promise<DrvHash> {
    const kind = derivationKind(drv);
    if (kind === 'fixed') {
      const hashes = new Map<string, Hash>();
      for (const [outName, o] of drv.outputs) {
        const f = o as FixedOutput;
        const path = fixedOutputPath(drv.name, outName, f.method, f.hash, this.storeDir);
        hashes.set(outName, Hash.of('sha256', `fixed:out:${printMethodAlgo(f.method, f.hash.algorithm)}:${f.hash.base16}:${path}`));
      }
      return { hashes, kind: 'regular' };
    }
    if (kind === 'impure') {
      const hashes = new Map<string, Hash>();
      for (const outName of drv.outputs.keys()) hashes.set(outName, (impureOutputHash ??= Hash.of('sha256', 'impure')));
      return { hashes, kind: 'deferred' };
    }
    let resultKind: DrvHash['kind'] = kind === 'floating' ? 'deferred' : 'regular';
    const inputs2 = new Map<string, Set<string>>();
    const entries = [...drv.inputDrvs];
    // (Inputs hashed already, as when a closure is checked bottom-up, are not awaited one by one.)
    let results: DrvHash[] | undefined = [];
    for (const [p] of entries) {
      const h = this.memo.get(p);
      if (h === undefined || h instanceof Promise) {
        results = undefined;
        break;
      }
      results.push(h);
    }
    results ??= await Promise.all(entries.map(([p]) => this.pathHashModulo(p)));
    entries.forEach(([drvPath, wanted], i) => {
      const res = results[i]!;
      if (res.kind === 'deferred') resultKind = 'deferred';
      for (const outName of wanted) {
        const h = res.hashes.get(outName);
        if (!h) {
          throw new BadDerivationError(`derivation '${drv.name}' wants output '${outName}' of '${drvPath}', which has no such output`, {
            drv: drv.name,
            hint: 'the input derivation changed or the .drv is corrupt; re-instantiate it',
          });
        }
        const key = h.base16;
        let set = inputs2.get(key);
        if (!set) inputs2.set(key, (set = new Set()));
        set.add(outName);
      }
    });
    const h = Hash.of('sha256', printDerivation(drv, { maskOutputs, inputDrvsOverride: inputs2 }));
    const hashes = new Map<string, Hash>();
    for (const outName of drv.outputs.keys()) hashes.set(outName, h);
    return { hashes, kind: resultKind };
  }
}

/**
 * `hashDerivationModulo(readDrv, drv, maskOutputs)`. Pass a `DerivationHasher` to share its memo
 * between calls; a bare `ReadDerivation` gets a fresh memo.
 */
export function hashDerivationModulo(
  reader: DerivationHasher | ReadDerivation,
  drv: Derivation,
  maskOutputs: boolean,
  opts: { storeDir?: string } = {},
): Promise<DrvHash> {
  const hasher = reader instanceof DerivationHasher ? reader : new DerivationHasher(reader, opts);
  return hasher.hashModulo(drv, maskOutputs);
}

/**
 * Nix's `staticOutputHashes`: output name → hash modulo with the derivation's own outputs masked (its input
 * derivations count with their unmasked hashes), what realisations are named by (`sha256:<base16>!out`).
 */
export async function staticOutputHashes(
  reader: DerivationHasher | ReadDerivation,
  drv: Derivation,
  opts: { storeDir?: string } = {},
): Promise<Map<string, Hash>> {
  return new Map((await hashDerivationModulo(reader, drv, true, opts)).hashes);
}

// ---------------------------------------------------------------------------------------------------
// Output paths

/** Path of a fixed output (`makeFixedOutputPath` with the output's name). */
export function fixedOutputPath(drvName: string, outputName: string, method: FileIngestionMethod, hash: Hash, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  return makeFixedOutputPath(method, hash, outputPathName(drvName, outputName), { storeDir });
}

/**
 * Path of a floating content-addressed output once its contents are known (after the build):
 * `hash` is the NAR hash (recursive) or the flat file hash, `references` exclude the output itself.
 */
export function makeCaOutputPath(
  drvName: string,
  outputName: string,
  method: FileIngestionMethod,
  hash: Hash,
  opts: { references?: Iterable<StorePath>; hasSelfReference?: boolean; storeDir?: string } = {},
): StorePath {
  return makeFixedOutputPath(method, hash, outputPathName(drvName, outputName), opts);
}

/** Nix's `outputsAndOptPaths`: every output with its path when statically known. */
export function derivationOutputsAndPaths(drv: Derivation): Map<string, { output: DerivationOutput; path: StorePath | undefined }> {
  const out = new Map<string, { output: DerivationOutput; path: StorePath | undefined }>();
  for (const name of [...drv.outputs.keys()].sort(compareBytes)) {
    const o = drv.outputs.get(name)!;
    out.set(name, { output: o, path: o.type === 'input-addressed' || o.type === 'fixed' ? o.path : undefined });
  }
  return out;
}

/** Output names, sorted. */
export function derivationOutputNames(drv: Derivation): string[] {
  return [...drv.outputs.keys()].sort(compareBytes);
}

/** Whether the derivation is fixed-output (Nix's `isFixedOutput`; such builds get network access). */
export function isFixedOutputDerivation(drv: Derivation): boolean {
  return derivationKind(drv) === 'fixed';
}

/** Description of a derivation's outputs before their paths are computed (as the `derivation` builtin has them). */
export type OutputSpec =
  | { readonly type: 'input-addressed' }
  | { readonly type: 'fixed'; readonly method: FileIngestionMethod; readonly hash: Hash }
  | { readonly type: 'floating'; readonly method: FileIngestionMethod; readonly algorithm: HashAlgorithm }
  | { readonly type: 'impure'; readonly method: FileIngestionMethod; readonly algorithm: HashAlgorithm };

/**
 * Fill in the outputs and their environment variables as Nix's `derivation` builtin does:
 * fixed → the fixed path; floating/impure → `hashPlaceholder(out)`; input-addressed → hash the
 * derivation with outputs masked (`""`) and use `makeOutputPath`, or leave the outputs deferred
 * when an input is a floating CA derivation. `drv.outputs`/`drv.env` are replaced, the rest is kept.
 */
export async function computeOutputPaths(
  reader: DerivationHasher | ReadDerivation,
  drv: Omit<Derivation, 'outputs'>,
  outputs: ReadonlyMap<string, OutputSpec>,
  opts: { storeDir?: string } = {},
): Promise<Derivation> {
  const hasher = reader instanceof DerivationHasher ? reader : new DerivationHasher(reader, opts);
  const storeDir = hasher.storeDir;
  const result: Derivation = { ...drv, outputs: new Map(), env: new Map(drv.env) };
  const specs = [...outputs];
  if (specs.length === 0) throw new BadDerivationError(`derivation '${drv.name}' has no outputs`, { drv: drv.name });
  const kinds = new Set(specs.map(([, s]) => s.type));
  if (kinds.size !== 1) throw new BadDerivationError(`derivation '${drv.name}' mixes output kinds ${[...kinds].join(', ')}`, { drv: drv.name });
  const kind = specs[0]![1].type;
  if (kind === 'fixed') {
    if (specs.length !== 1) {
      throw new BadDerivationError(`fixed-output derivation '${drv.name}' must have exactly one output`, { drv: drv.name });
    }
    for (const [name, s] of specs) {
      const f = s as Extract<OutputSpec, { type: 'fixed' }>;
      const path = fixedOutputPath(drv.name, name, f.method, f.hash, storeDir);
      result.env.set(name, path);
      result.outputs.set(name, { type: 'fixed', method: f.method, hash: f.hash, path });
    }
    return result;
  }
  if (kind === 'floating' || kind === 'impure') {
    for (const [name, s] of specs) {
      const f = s as Extract<OutputSpec, { type: 'floating' | 'impure' }>;
      result.env.set(name, hashPlaceholder(name));
      result.outputs.set(name, { type: kind, method: f.method, algorithm: f.algorithm });
    }
    return result;
  }
  for (const [name] of specs) {
    result.env.set(name, '');
    result.outputs.set(name, { type: 'deferred' });
  }
  const h = await hasher.hashModulo(result, true);
  if (h.kind === 'regular') {
    for (const [name] of specs) {
      const path = makeOutputPath(name, h.hashes.get(name)!, drv.name, storeDir);
      result.env.set(name, path);
      result.outputs.set(name, { type: 'input-addressed', path });
    }
  }
  return result;
}

/**
 * Nix's LocalStore::checkDerivationOutputs, run before a `.drv` is registered: each output path it names
 * is the one its contents give (input-addressed: from its hash modulo, outputs masked; the name is the
 * `.drv` path's), and each output's environment variable names that path. A `.drv` that claims another
 * derivation's output path (tests/secure-drv-outputs.sh) is refused with Nix's message.
 */
export async function checkDerivationOutputs(hasher: DerivationHasher, drvPath: StorePath, drv: Derivation): Promise<void> {
  const drvName = derivationNameFromPath(drvPath);
  const envHasRightPath = (actual: StorePath, varName: string) => {
    if (drv.env.get(varName) !== actual) {
      throw new BadDerivationError(`derivation '${drvPath}' has incorrect environment variable '${varName}', should be '${actual}'`, { drv: drvPath });
    }
  };
  let masked: DrvHash | undefined;
  for (const [name, o] of drv.outputs) {
    if (o.type === 'input-addressed') {
      masked ??= await hasher.hashModulo(drv, true);
      const recomputed = makeOutputPath(name, masked.hashes.get(name)!, drvName, hasher.storeDir);
      if (o.path !== recomputed) {
        throw new BadDerivationError(`derivation '${drvPath}' has incorrect output '${o.path}', should be '${recomputed}'`, { drv: drvPath });
      }
      envHasRightPath(o.path, name);
    } else if (o.type === 'fixed') {
      envHasRightPath(fixedOutputPath(drvName, name, o.method, o.hash, hasher.storeDir), name);
    }
  }
}

/** References of a `.drv` file: its input sources and input derivations. */
export function derivationReferences(drv: Derivation): StorePath[] {
  return sortedUnique([...drv.inputSrcs, ...drv.inputDrvs.keys()]);
}

/** The store path the `.drv` of `drv` gets (without writing it). */
export function computeDerivationPath(drv: Derivation, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  return computeTextPath(drv.name + '.drv', printDerivation(drv), derivationReferences(drv), storeDir);
}

/**
 * Write the `.drv` to the store (a text path referencing its inputs) and register the statically
 * known output paths in the store's derivation output table. Returns the `.drv` path.
 */
export async function writeDerivation(store: Pick<Store, 'addTextToStore' | 'registerDerivationOutputs'>, drv: Derivation): Promise<StorePath> {
  const drvPath = await store.addTextToStore(drv.name + '.drv', printDerivation(drv), derivationReferences(drv));
  const known = new Map<string, StorePath>();
  for (const [name, { path }] of derivationOutputsAndPaths(drv)) if (path) known.set(name, path);
  if (known.size > 0) await store.registerDerivationOutputs(drvPath, known);
  return drvPath;
}

/** Deep copy (Maps and arrays) of a derivation. */
export function cloneDerivation(drv: Derivation): Derivation {
  return {
    name: drv.name,
    outputs: new Map(drv.outputs),
    inputDrvs: new Map([...drv.inputDrvs].map(([k, v]) => [k, [...v]])),
    inputSrcs: [...drv.inputSrcs],
    platform: drv.platform,
    builder: drv.builder,
    args: [...drv.args],
    env: new Map(drv.env),
  };
}
