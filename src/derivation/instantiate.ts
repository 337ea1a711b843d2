/**
 * Derivations from TypeScript: what Nix's `derivation` builtin, `builtins.toFile` and `builtins.path`
 * do, as a typed API. The `.drv` written is byte-identical to the one `nix-instantiate` writes for the
 * equivalent expression, so it has the same store path.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { BadHashError, InvalidStorePathError, RealiseError } from '../store/errors.js';
import { Hash, isHashAlgorithm, type HashAlgorithm } from '../store/hash.js';
import { dumpPath, hashNar, narOfRegularFile, narString } from '../store/nar.js';
import type { PathInfo, Store } from '../store/store-api.js';
import {
  checkStorePathName,
  downstreamPlaceholder,
  makeFixedOutputPath,
  outputPathName,
  parseStorePath,
  type FileIngestionMethod,
  type StorePath,
} from '../store/store-path.js';
import {
  compareBytes,
  computeOutputPaths,
  DerivationHasher,
  isDerivationPath,
  readDerivationFromStore,
  writeDerivation,
  type Derivation,
  type OutputSpec,
} from './derivation.js';
import { InvalidDerivationAttrsError } from './errors.js';
import { NixString, coerceToString, drvPathString, outputString, storePathString, toNixJson, type AttrValue, type Contextual } from './context.js';

/** Experimental features that `derivation` may need (as Nix's `experimental-features`). */
export type ExperimentalFeature = 'ca-derivations' | 'impure-derivations';

/** The attributes of a derivation, as in Nix's `derivation { ... }`. */
export interface DerivationAttrs {
  readonly name: string;
  /** e.g. `x86_64-linux`. */
  readonly system: string | NixString;
  /** Absolute path of the builder; may carry context (e.g. `nix\`${bash.out}/bin/bash\``). */
  readonly builder: string | NixString | Contextual;
  readonly args?: readonly AttrValue[];
  /** Output names; the first is the default output. @default ['out'] */
  readonly outputs?: readonly string[];
  /** Fixed-output hash: SRI, or base16/nix-base32/base64 with `outputHashAlgo`. */
  readonly outputHash?: string;
  readonly outputHashAlgo?: string;
  readonly outputHashMode?: 'flat' | 'recursive';
  /** Put the attributes into `__json` instead of the environment. */
  readonly __structuredAttrs?: boolean;
  /** Drop attributes whose value is null. */
  readonly __ignoreNulls?: boolean;
  /** Floating content-addressed outputs (needs the `ca-derivations` experimental feature). */
  readonly __contentAddressed?: boolean;
  /** Impure derivation (needs `impure-derivations`). */
  readonly __impure?: boolean;
  readonly [attr: string]: AttrValue;
}

export interface DerivationOptions {
  /** Enabled experimental features. @default [] */
  readonly experimentalFeatures?: readonly ExperimentalFeature[];
  /** Extra input derivations (explicit form, merged with those found in string contexts). */
  readonly inputDrvs?: Readonly<Record<StorePath, readonly string[]>>;
  /** Extra input sources (explicit form). */
  readonly inputSrcs?: readonly StorePath[];
}

/** One output of an instantiated derivation; interpolating it records `inputDrvs[drvPath] ∋ outputName`. */
export class OutputValue implements Contextual {
  constructor(
    readonly drvPath: StorePath,
    readonly outputName: string,
    /** The output's store path, or a placeholder when it is only known after the build (floating CA). */
    readonly path: string,
    /** Whether `path` is the real store path (false: a placeholder). */
    readonly known: boolean,
  ) {}
  toNixString(): NixString {
    return outputString(this.drvPath, this.outputName, this.path);
  }
  toString(): string {
    return this.path;
  }
  toJSON(): string {
    return this.path;
  }
}

/** An instantiated derivation: the `.drv` is in the store. Interpolating it means its default output. */
export class DerivationValue implements Contextual {
  /** Outputs in declaration order. */
  readonly outputs: Readonly<Record<string, OutputValue>>;

  constructor(
    readonly drvPath: StorePath,
    readonly drv: Derivation,
    /** Output names in the order given (the first is the default output). */
    readonly outputNames: readonly string[],
    outputs: Record<string, OutputValue>,
  ) {
    this.outputs = outputs;
  }

  get name(): string {
    return this.drv.name;
  }
  /** The default output. */
  get defaultOutput(): OutputValue {
    return this.outputs[this.outputNames[0]!]!;
  }
  /** Path of the default output (Nix's `outPath`). */
  get outPath(): string {
    return this.defaultOutput.path;
  }
  /** Output `out` (throws when the derivation has none). */
  get out(): OutputValue {
    return this.output('out');
  }
  output(name: string): OutputValue {
    const o = this.outputs[name];
    if (!o) {
      throw new InvalidDerivationAttrsError(`derivation '${this.drvPath}' has no output '${name}' (outputs: ${this.outputNames.join(', ')})`, {
        derivationName: this.name,
      });
    }
    return o;
  }
  /** `drv.drvPath` with deep context (the builder sees the `.drv` and its closure). */
  get drvPathValue(): NixString {
    return drvPathString(this.drvPath);
  }
  toNixString(): NixString {
    return this.defaultOutput.toNixString();
  }
  toString(): string {
    return this.outPath;
  }
  /** `{ drvPath, outputs: { name: path } }`. */
  toJSON(): { drvPath: StorePath; outputs: Record<string, string> } {
    return { drvPath: this.drvPath, outputs: Object.fromEntries(this.outputNames.map((n) => [n, this.outputs[n]!.path])) };
  }
}

const hashers = new WeakMap<object, DerivationHasher>();
function hasherFor(store: Store): DerivationHasher {
  let h = hashers.get(store);
  if (!h) hashers.set(store, (h = new DerivationHasher(readDerivationFromStore(store), { storeDir: store.storeDir })));
  return h;
}

function keysInByteOrder(o: object): string[] {
  return Object.keys(o).sort(compareBytes);
}

/**
 * Instantiate a derivation with the semantics of Nix's `derivation` builtin and write the `.drv` to the
 * store. Attributes are processed in byte order of their names, as Nix does; everything except
 * `args`, `__ignoreNulls`, `__contentAddressed` and `__impure` goes into the environment (or into
 * `__json` with `__structuredAttrs`). Throws `InvalidDerivationAttrsError` for what Nix rejects.
 */
export async function derivation(store: Store, attrs: DerivationAttrs, opts: DerivationOptions = {}): Promise<DerivationValue> {
  const drv = await instantiateDerivation(store, attrs, opts);
  let drvPath: StorePath;
  try {
    drvPath = await writeDerivation(store, drv);
  } catch (e) {
    if (e instanceof InvalidStorePathError) throw attrError(drv.name, `invalid derivation name: ${e.shortMessage}`, 'name', e);
    throw e;
  }
  const hasher = hasherFor(store);
  hasher.remember(drvPath, await hasher.hashModulo(drv, false));
  const declared = declaredOutputs(attrs);
  const outputs: Record<string, OutputValue> = {};
  for (const name of declared) {
    const o = drv.outputs.get(name)!;
    const p = o.type === 'input-addressed' || o.type === 'fixed' ? o.path : undefined;
    outputs[name] = new OutputValue(drvPath, name, p ?? downstreamPlaceholder(drvPath, name), p !== undefined);
  }
  return new DerivationValue(drvPath, drv, declared, outputs);
}

function attrError(drvName: string | undefined, msg: string, attribute?: string, cause?: unknown, hint?: string): InvalidDerivationAttrsError {
  const where = drvName ? ` of derivation '${drvName}'` : '';
  return new InvalidDerivationAttrsError(`${msg}${attribute ? ` (attribute '${attribute}'${where})` : where}`, {
    derivationName: drvName,
    attribute,
    cause,
    hint,
  });
}

function declaredOutputs(attrs: DerivationAttrs): string[] {
  const o = attrs.outputs;
  if (o === undefined || o === null) return ['out'];
  if (attrs.__structuredAttrs || Array.isArray(o)) return [...(o as readonly string[])];
  return String(o)
    .split(/[ \t\n\r]+/)
    .filter(Boolean);
}

/** Nix's `forceStringNoCtx` (structured attributes): a string without context, nothing coerced. */
function noContext(drvName: string, attr: string, v: AttrValue): string {
  if (typeof v !== 'string' && !(v instanceof NixString)) {
    throw attrError(drvName, `value is ${v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v} while a string was expected`, attr);
  }
  const local = new Set<string>();
  const s = coerceToString(v, local, false, attr);
  if (local.size > 0) throw attrError(drvName, `the string '${s}' is not allowed to refer to a store path`, attr);
  return s;
}

/** The attributes of a derivation as Nix's derivationStrict reads them, one by one in byte order. */
class DerivationAttrsReader {
  readonly drv: Omit<Derivation, 'outputs'>;
  /** The string context of everything read: the derivation's inputs. */
  readonly context = new Set<string>();
  contentAddressed = false;
  isImpure = false;
  outputHash: string | undefined;
  outputHashAlgo = '';
  ingestionMethod: FileIngestionMethod | undefined;
  outputs: string[] = ['out'];
  private readonly features: Set<ExperimentalFeature>;

  constructor(
    readonly drvName: string,
    opts: DerivationOptions,
  ) {
    this.drv = { name: drvName, inputDrvs: new Map(), inputSrcs: [], platform: '', builder: '', args: [], env: new Map() };
    this.features = new Set(opts.experimentalFeatures ?? []);
  }

  read(attrs: DerivationAttrs): void {
    const structured = attrs.__structuredAttrs === true;
    const ignoreNulls = attrs.__ignoreNulls === true;
    const json: string[] = [];
    for (const key of keysInByteOrder(attrs)) {
      if (key === '__ignoreNulls') continue;
      const value = attrs[key];
      if (value === undefined) continue;
      if (ignoreNulls && value === null) continue;
      if (key === '__contentAddressed') this.contentAddressed = this.featureFlag(key, value, 'ca-derivations');
      else if (key === '__impure') this.isImpure = this.featureFlag(key, value, 'impure-derivations');
      else if (key === 'args') {
        if (!Array.isArray(value)) throw attrError(this.drvName, "'args' must be a list", key);
        for (const [i, a] of (value as readonly AttrValue[]).entries()) this.drv.args.push(coerceToString(a, this.context, true, `args[${i}]`));
      } else if (!structured) this.plain(key, value);
      else if (key !== '__structuredAttrs') {
        json.push(toNixJson(key, new Set(), key) + ':' + toNixJson(value, this.context, key));
        this.structured(key, value);
      }
    }
    if (structured) this.drv.env.set('__json', '{' + json.join(',') + '}');
  }

  /** A Boolean attribute that, when true, needs an experimental feature. */
  private featureFlag(key: string, value: AttrValue, feature: ExperimentalFeature): boolean {
    if (typeof value !== 'boolean') throw attrError(this.drvName, `value is ${typeof value} while a Boolean was expected`, key);
    if (value && !this.features.has(feature)) {
      throw attrError(this.drvName, `experimental Nix feature '${feature}' is disabled`, key, undefined, `pass { experimentalFeatures: ['${feature}'] }`);
    }
    return value;
  }

  /** An attribute of a structured-attributes derivation (all of them go into `__json`): the ones the derivation itself takes. */
  private structured(key: string, value: AttrValue): void {
    const name = this.drvName;
    if (key === 'builder') this.drv.builder = coerceToString(value, this.context, false, key);
    else if (key === 'system') this.drv.platform = noContext(name, key, value);
    else if (key === 'outputHash') this.outputHash = noContext(name, key, value);
    else if (key === 'outputHashAlgo') this.outputHashAlgo = noContext(name, key, value);
    else if (key === 'outputHashMode') this.hashMode(noContext(name, key, value));
    else if (key === 'outputs') {
      if (!Array.isArray(value)) throw attrError(name, "'outputs' must be a list of strings", key);
      this.setOutputs((value as readonly AttrValue[]).map((v, i) => noContext(name, `outputs[${i}]`, v)));
    }
  }

  /** An attribute of an ordinary derivation: a string in the environment, some of them also taken by the derivation. */
  private plain(key: string, value: AttrValue): void {
    if (
      typeof value === 'object' &&
      value !== null &&
      !Array.isArray(value) &&
      !(value instanceof NixString) &&
      typeof (value as Contextual).toNixString !== 'function'
    ) {
      throw attrError(this.drvName, 'cannot coerce an attribute set to a string', key, undefined, 'use __structuredAttrs = true to pass attribute sets');
    }
    const s = coerceToString(value, this.context, true, key);
    this.drv.env.set(key, s);
    if (key === 'builder') this.drv.builder = s;
    else if (key === 'system') this.drv.platform = s;
    else if (key === 'outputHash') this.outputHash = s;
    else if (key === 'outputHashAlgo') this.outputHashAlgo = s;
    else if (key === 'outputHashMode') this.hashMode(s);
    else if (key === 'outputs') this.setOutputs(s.split(/[ \t\n\r]+/).filter(Boolean));
  }

  private hashMode(s: string): void {
    if (s === 'recursive') this.ingestionMethod = 'recursive';
    else if (s === 'flat') this.ingestionMethod = 'flat';
    else throw attrError(this.drvName, `invalid value '${s}' for 'outputHashMode' attribute`, 'outputHashMode', undefined, "use 'flat' or 'recursive'");
  }

  private setOutputs(ss: string[]): void {
    const drvName = this.drvName;
    const seen = new Set<string>();
    for (const j of ss) {
      if (seen.has(j)) throw attrError(drvName, `duplicate derivation output '${j}'`, 'outputs');
      if (j === 'drv') throw attrError(drvName, "invalid derivation output name 'drv'", 'outputs');
      if (j.length === 0 || j.includes('/'))
        throw attrError(drvName, `invalid derivation output name '${j}'`, 'outputs', undefined, 'output names are store path name parts: no /, no spaces');
      try {
        checkStorePathName(outputPathName(drvName, j));
      } catch (e) {
        throw attrError(drvName, `invalid derivation output name '${j}'`, 'outputs', e);
      }
      seen.add(j);
    }
    if (seen.size === 0) throw attrError(drvName, 'derivation cannot have an empty set of outputs', 'outputs');
    this.outputs = ss;
  }

  /** What each output is: fixed (by outputHash), floating or impure content-addressed, or input-addressed. */
  outputSpecs(): Map<string, OutputSpec> {
    const { drvName, outputs, ingestionMethod } = this;
    const specs = new Map<string, OutputSpec>();
    if (this.outputHash !== undefined) {
      if (outputs.length !== 1 || outputs[0] !== 'out') {
        throw attrError(drvName, 'multiple outputs are not supported in fixed-output derivations', 'outputs');
      }
      const hash = parseOutputHash(drvName, this.outputHash, this.outputHashAlgo);
      specs.set('out', { type: 'fixed', method: ingestionMethod ?? 'flat', hash });
    } else if (this.contentAddressed || this.isImpure) {
      if (this.contentAddressed && this.isImpure) throw attrError(drvName, 'derivation cannot be both content-addressed and impure', '__impure');
      const algorithm = optionalAlgorithm(drvName, this.outputHashAlgo) ?? 'sha256';
      for (const o of outputs) specs.set(o, { type: this.isImpure ? 'impure' : 'floating', method: ingestionMethod ?? 'recursive', algorithm });
    } else {
      for (const o of outputs) specs.set(o, { type: 'input-addressed' });
    }
    return specs;
  }
}

/** The derivation's name: a string without context. */
function derivationName(attrs: DerivationAttrs): string {
  if (typeof attrs !== 'object' || attrs === null) throw attrError(undefined, 'derivation attributes must be an object');
  if (attrs.name === undefined) throw attrError(undefined, "required attribute 'name' missing");
  const nameCtx = new Set<string>();
  const drvName = coerceToString(attrs.name as AttrValue, nameCtx, false, 'name');
  if (nameCtx.size > 0) throw attrError(drvName, `the string '${drvName}' is not allowed to refer to a store path`, 'name');
  return drvName;
}

/**
 * The inputs named by a string context (and `opts`), as Nix's derivationStrict turns them into inputSrcs
 * and inputDrvs: in Nix's PathSet order ('!' < '/' < '='); `=` (a .drv's whole closure) reads the
 * derivations of that closure from the store.
 */
async function contextInputs(
  store: Store,
  drvName: string,
  context: ReadonlySet<string>,
  opts: DerivationOptions,
): Promise<Pick<Derivation, 'inputSrcs' | 'inputDrvs'>> {
  const inputDrvs = new Map<StorePath, Set<string>>();
  const inputSrcs = new Set<StorePath>();
  const addDrvOutputs = (d: StorePath, outs: Iterable<string>) => {
    let s = inputDrvs.get(d);
    if (!s) inputDrvs.set(d, (s = new Set()));
    for (const o of outs) s.add(o);
  };
  for (const [d, outs] of Object.entries(opts.inputDrvs ?? {})) addDrvOutputs(d, outs);
  for (const p of opts.inputSrcs ?? []) inputSrcs.add(p);
  const readDrv = readDerivationFromStore(store);
  for (const c of [...context].sort(compareBytes)) {
    if (c.startsWith('=')) {
      for (const j of await store.computeClosure([c.slice(1)])) {
        inputSrcs.add(j);
        if (isDerivationPath(j)) addDrvOutputs(j, (await readDrv(j)).outputs.keys());
      }
    } else if (c.startsWith('!')) {
      const bang = c.indexOf('!', 1);
      addDrvOutputs(c.slice(bang + 1), [c.slice(1, bang)]);
    } else {
      inputSrcs.add(c);
    }
  }
  for (const p of [...inputSrcs, ...inputDrvs.keys()]) {
    try {
      parseStorePath(p, store.storeDir);
    } catch (e) {
      throw attrError(drvName, `input '${p}' is not a store path of '${store.storeDir}'`, undefined, e);
    }
  }
  return { inputSrcs: [...inputSrcs].sort(compareBytes), inputDrvs: new Map([...inputDrvs].map(([k, v]) => [k, [...v].sort(compareBytes)])) };
}

/** The checks Nix makes once all attributes are read: a builder, a system, a name that makes a .drv path. */
function checkComplete(drv: Omit<Derivation, 'outputs'>): void {
  const drvName = drv.name;
  if (drv.builder === '') throw attrError(drvName, "required attribute 'builder' missing");
  if (drv.platform === '') throw attrError(drvName, "required attribute 'system' missing");
  if (drvName.endsWith('.drv')) throw attrError(drvName, "derivation names are not allowed to end in '.drv'", 'name');
  try {
    checkStorePathName(drvName + '.drv');
  } catch (e) {
    throw attrError(drvName, `invalid derivation name: ${(e as RealiseError).shortMessage}`, 'name', e);
  }
}

/**
 * Build the `Derivation` value (outputs and their paths computed) without writing it. Reads input
 * derivations from the store to hash them.
 */
export async function instantiateDerivation(store: Store, attrs: DerivationAttrs, opts: DerivationOptions = {}): Promise<Derivation> {
  const reader = new DerivationAttrsReader(derivationName(attrs), opts);
  reader.read(attrs);
  const drv = { ...reader.drv, ...(await contextInputs(store, reader.drvName, reader.context, opts)) };
  checkComplete(drv);
  const specs = reader.outputSpecs();
  try {
    return await computeOutputPaths(hasherFor(store), drv, specs);
  } catch (e) {
    if (e instanceof InvalidStorePathError) throw attrError(reader.drvName, e.shortMessage, undefined, e);
    throw e;
  }
}

function optionalAlgorithm(drvName: string, algo: string): HashAlgorithm | undefined {
  if (algo === '') return undefined;
  if (!isHashAlgorithm(algo)) {
    throw attrError(drvName, `unknown hash algorithm '${algo}'`, 'outputHashAlgo', undefined, 'use md5, sha1, sha256 or sha512');
  }
  return algo;
}

/** Nix's `newHashAllowEmpty`: SRI, or `algo:hash`, or a bare base16/nix-base32/base64 hash of `outputHashAlgo`. */
function parseOutputHash(drvName: string, outputHash: string, outputHashAlgo: string): Hash {
  const algo = optionalAlgorithm(drvName, outputHashAlgo);
  if (outputHash === '') {
    if (!algo) throw attrError(drvName, 'empty hash requires explicit hash type', 'outputHash');
    // Nix warns and uses an all-zero hash, so the build fails with the real hash in the message.
    return new Hash(algo, new Uint8Array(Hash.of(algo, '').bytes.length));
  }
  try {
    return Hash.parse(outputHash, algo);
  } catch (e) {
    if (e instanceof BadHashError) throw attrError(drvName, `invalid outputHash: ${e.shortMessage}`, 'outputHash', e, e.hint);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// builtins.toFile and builtins.path

/**
 * `builtins.toFile`: a text file in the store. `text` may refer to store paths (from `addText`,
 * `addPath`, or `references`) but not to derivation outputs, as in Nix. Returns the path with context.
 */
export async function addText(store: Store, name: string, text: string | NixString, references: Iterable<StorePath> = []): Promise<NixString> {
  const refs = new Set<StorePath>(references);
  const ctx = new Set<string>();
  const s = coerceToString(text, ctx, false, 'text');
  for (const c of ctx) {
    if (!c.startsWith('/')) {
      throw new InvalidDerivationAttrsError(`in 'toFile': the file named '${name}' must not contain a reference to a derivation but contains (${c})`, {
        attribute: 'text',
        hint: 'build the derivation and refer to its output path, or write the file in a derivation',
      });
    }
    refs.add(c);
  }
  try {
    checkStorePathName(name);
  } catch (e) {
    throw new InvalidDerivationAttrsError(`invalid file name for toFile: ${(e as RealiseError).shortMessage}`, { attribute: 'name', cause: e });
  }
  const p = await store.addTextToStore(name, s, refs);
  return storePathString(p);
}

/** File types passed to an `addPath` filter, as Nix names them. */
export type PathType = 'regular' | 'directory' | 'symlink' | 'unknown';

export interface AddPathOptions {
  /** Store path name. @default the base name of `localPath` */
  readonly name?: string;
  /** NAR-hash the tree (true) or hash a single regular file's contents (false). @default true */
  readonly recursive?: boolean;
  /** Keep an entry (called with its absolute path and type; the root is always kept). */
  readonly filter?: (absolutePath: string, type: PathType) => boolean;
  /** Expected hash (SRI, or sha256 in any encoding): the result must match. */
  readonly sha256?: string;
}

function fileType(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): PathType {
  return st.isFile() ? 'regular' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'unknown';
}

/** NAR serialisation of `p` keeping only what `filter` accepts (small trees; files are read whole). */
async function* dumpFiltered(p: string, filter: (p: string, t: PathType) => boolean): AsyncGenerator<Uint8Array> {
  yield narString('nix-archive-1');
  yield* dumpNode(p, filter);
}

async function* dumpNode(p: string, filter: (p: string, t: PathType) => boolean): AsyncGenerator<Uint8Array> {
  const st = await fsp.lstat(p);
  yield narString('(');
  yield narString('type');
  if (st.isSymbolicLink()) {
    yield Buffer.concat([narString('symlink'), narString('target'), narString(await fsp.readlink(p, { encoding: 'buffer' }))]);
  } else if (st.isFile()) {
    const data = await fsp.readFile(p);
    const parts = [narString('regular')];
    if (st.mode & 0o100) parts.push(narString('executable'), narString(''));
    parts.push(narString('contents'), narString(data));
    yield Buffer.concat(parts);
  } else if (st.isDirectory()) {
    yield narString('directory');
    const names = (await fsp.readdir(p, { encoding: 'buffer' })).sort(Buffer.compare);
    for (const nameBuf of names) {
      const child = path.join(p, nameBuf.toString());
      const cst = await fsp.lstat(child);
      if (!filter(child, fileType(cst))) continue;
      yield Buffer.concat([narString('entry'), narString('('), narString('name'), narString(nameBuf), narString('node')]);
      yield* dumpNode(child, filter);
      yield narString(')');
    }
  } else {
    throw new InvalidDerivationAttrsError(`file '${p}' has an unsupported type`, {
      hint: 'only regular files, directories and symlinks can be added to the store',
    });
  }
  yield narString(')');
}

/**
 * `builtins.path`: copy a local file or tree into the store as a content-addressed (`source`) path,
 * executable bits and symlinks kept. Returns the path with context.
 */
export async function addPath(store: Store, localPath: string, opts: AddPathOptions = {}): Promise<NixString> {
  const abs = path.resolve(localPath);
  const name = opts.name ?? path.basename(abs);
  try {
    checkStorePathName(name);
  } catch (e) {
    throw new InvalidDerivationAttrsError(`cannot add '${abs}' to the store: ${(e as RealiseError).shortMessage}`, {
      attribute: 'name',
      cause: e,
      hint: 'pass a valid { name }',
    });
  }
  let st;
  try {
    st = await fsp.lstat(abs);
  } catch (e) {
    throw new InvalidDerivationAttrsError(`cannot add '${abs}' to the store: ${(e as Error).message}`, { cause: e });
  }
  const recursive = opts.recursive ?? true;
  let method: FileIngestionMethod;
  let hash: Hash;
  let nar: () => AsyncIterable<Uint8Array>;
  if (recursive) {
    method = 'recursive';
    const filter = opts.filter;
    nar = filter ? () => dumpFiltered(abs, filter) : () => dumpPath(abs);
    hash = (await hashNar(nar())).hash;
  } else {
    if (!st.isFile())
      throw new InvalidDerivationAttrsError(`cannot add '${abs}' with recursive = false: it is not a regular file`, {
        hint: 'use recursive: true for directories and symlinks',
      });
    method = 'flat';
    const data = await fsp.readFile(abs);
    hash = Hash.of('sha256', data);
    const narBytes = narOfRegularFile(data, false);
    nar = async function* () {
      yield narBytes;
    };
  }
  if (opts.sha256 !== undefined) {
    const want = Hash.parse(opts.sha256, opts.sha256.includes('-') || opts.sha256.includes(':') ? undefined : 'sha256');
    if (!want.equals(hash)) {
      throw new InvalidDerivationAttrsError(`hash mismatch for '${abs}': expected ${want.sri}, got ${hash.sri}`, { attribute: 'sha256' });
    }
  }
  const p = makeFixedOutputPath(method, hash, name, { storeDir: store.storeDir });
  if (!(await store.isValidPath(p))) {
    const { hash: narHash, size: narSize } = await hashNar(nar());
    const info: PathInfo = {
      path: p,
      narHash,
      narSize,
      references: [],
      ca: `fixed:${method === 'recursive' ? 'r:' : ''}sha256:${hash.base32}`,
    };
    await store.addToStore(info, nar());
  }
  return storePathString(p);
}

/**
 * A derivation already in the store, as a value (e.g. one `nix-instantiate` wrote). The declared output
 * order (for the default output) comes from the `outputs` attribute when the derivation has one (legacy
 * environment or `__json`), else `out` first and the rest sorted.
 */
export async function derivationFromStore(store: Store, drvPath: StorePath): Promise<DerivationValue> {
  const drv = await readDerivationFromStore(store)(drvPath);
  const sorted = [...drv.outputs.keys()].sort(compareBytes);
  let declared: string[] | undefined;
  const json = drv.env.get('__json');
  try {
    const fromAttr =
      json !== undefined
        ? (JSON.parse(json) as { outputs?: unknown }).outputs
        : drv.env
            .get('outputs')
            ?.split(/[ \t\n\r]+/)
            .filter(Boolean);
    if (Array.isArray(fromAttr) && fromAttr.length === sorted.length && fromAttr.every((o) => typeof o === 'string' && drv.outputs.has(o)))
      declared = fromAttr as string[];
  } catch {
    declared = undefined;
  }
  const names = declared ?? (drv.outputs.has('out') ? ['out', ...sorted.filter((n) => n !== 'out')] : sorted);
  const outputs: Record<string, OutputValue> = {};
  for (const n of names) {
    const o = drv.outputs.get(n)!;
    const p = o.type === 'input-addressed' || o.type === 'fixed' ? o.path : undefined;
    outputs[n] = new OutputValue(drvPath, n, p ?? downstreamPlaceholder(drvPath, n), p !== undefined);
  }
  return new DerivationValue(drvPath, drv, names, outputs);
}
