/**
 * Store paths: `<storeDir>/<32 nix-base32 chars>-<name>`. Pure functions; paths are plain strings.
 * Computation of input-addressed, fixed-output and text paths exactly as Nix's `makeStorePath` family.
 */
import { InvalidStorePathError } from './errors.js';
import { Hash, compressHash, isNixBase32, toNixBase32 } from './hash.js';

export const DEFAULT_STORE_DIR = '/nix/store';
export const HASH_PART_LENGTH = 32;
export const MAX_NAME_LENGTH = 211;

/** A full store path, e.g. `/nix/store/0c6...-hello-2.12`. */
export type StorePath = string;

export interface ParsedStorePath {
  readonly storeDir: string;
  readonly hashPart: string;
  readonly name: string;
}

/** A name of store path characters only (its length is checked apart). */
const GOOD_NAME = /^[0-9a-zA-Z+\-._?=]+$/;

/**
 * Why `name` is not a valid store path name, or undefined when it is. Nix 2.8's rules: 1 to 211
 * characters from `[0-9a-zA-Z+-._?=]`. (Nix 2.8 accepts names starting with '.', even '.' and '..',
 * since the file name `<hash>-<name>` never does.)
 */
export function storePathNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'has an empty name';
  if (name.length > MAX_NAME_LENGTH) return `has a name longer than ${MAX_NAME_LENGTH} characters`;
  // One test for a good name; the loop (a regular expression per character, which a fresh process runs in
  // V8's interpreter: some microseconds a path) only finds the offending character of a bad one.
  if (GOOD_NAME.test(name)) return undefined;
  for (let i = 0; i < name.length; i++) {
    const c = name[i]!;
    if (!/[0-9a-zA-Z+\-._?=]/.test(c)) return `contains illegal character '${c}'`;
  }
  return undefined;
}

/** Throws InvalidStorePathError unless `name` is a valid store path name. */
export function checkStorePathName(name: string): string {
  const problem = storePathNameProblem(name);
  if (problem) {
    throw new InvalidStorePathError(`store path name '${name}' ${problem}`, {
      hint: 'names may contain letters, digits and + - . _ ? = and have at most 211 characters',
    });
  }
  return name;
}

/** Parse and validate a full store path under `storeDir`. */
export function parseStorePath(path: string, storeDir: string = DEFAULT_STORE_DIR): ParsedStorePath {
  const prefix = storeDir.endsWith('/') ? storeDir : storeDir + '/';
  if (!path.startsWith(prefix)) throw new InvalidStorePathError(`path '${path}' is not in the Nix store '${storeDir}'`);
  const base = path.slice(prefix.length);
  if (base.includes('/')) throw new InvalidStorePathError(`path '${path}' is not a store path (it is inside one)`, { hint: 'use the top-level store path' });
  return parseStorePathBase(base, storeDir, path);
}

/** Parse the base name `<hash>-<name>` of a store path. */
export function parseStorePathBase(base: string, storeDir: string = DEFAULT_STORE_DIR, full = base): ParsedStorePath {
  if (base.length < HASH_PART_LENGTH + 2 || base[HASH_PART_LENGTH] !== '-') {
    throw new InvalidStorePathError(`path '${full}' is not a valid store path: expected '<32-char hash>-<name>'`);
  }
  const hashPart = base.slice(0, HASH_PART_LENGTH);
  if (!isNixBase32(hashPart)) throw new InvalidStorePathError(`store path '${full}' has an invalid hash part '${hashPart}'`);
  const name = base.slice(HASH_PART_LENGTH + 1);
  const problem = storePathNameProblem(name);
  if (problem) throw new InvalidStorePathError(`store path '${full}' ${problem}`);
  return { storeDir, hashPart, name };
}

export function isStorePath(path: string, storeDir: string = DEFAULT_STORE_DIR): boolean {
  try {
    parseStorePath(path, storeDir);
    return true;
  } catch {
    return false;
  }
}

export function storePathHashPart(path: StorePath): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.slice(0, HASH_PART_LENGTH);
}

export function storePathName(path: StorePath): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.slice(HASH_PART_LENGTH + 1);
}

export function storePathBase(path: StorePath): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Given `/nix/store/xxx-foo/bin/sh`, return `/nix/store/xxx-foo`. */
export function toStorePath(path: string, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  const prefix = storeDir + '/';
  if (!path.startsWith(prefix)) throw new InvalidStorePathError(`path '${path}' is not in the Nix store '${storeDir}'`);
  const slash = path.indexOf('/', prefix.length);
  const top = slash < 0 ? path : path.slice(0, slash);
  parseStorePath(top, storeDir);
  return top;
}

/** Nix's `makeStorePath(type, hash, name)`. */
export function makeStorePath(type: string, hash: Hash, name: string, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  checkStorePathName(name);
  const s = `${type}:${hash.algorithm}:${hash.base16}:${storeDir}:${name}`;
  const h = compressHash(Hash.of('sha256', s).bytes, 20);
  return `${storeDir}/${toNixBase32(h)}-${name}`;
}

/** Nix's `makeType`: `type(:ref)*(:self)?` with references sorted. */
export function makeType(type: string, references: Iterable<StorePath>, hasSelfReference = false): string {
  let s = type;
  for (const r of [...references].sort()) s += ':' + r;
  if (hasSelfReference) s += ':self';
  return s;
}

/** Name of the store path of output `outputName` of a derivation called `drvName`. */
export function outputPathName(drvName: string, outputName: string): string {
  return outputName === 'out' ? drvName : `${drvName}-${outputName}`;
}

/** Input-addressed output path (`makeOutputPath`). */
export function makeOutputPath(outputName: string, hash: Hash, drvName: string, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  return makeStorePath(`output:${outputName}`, hash, outputPathName(drvName, outputName), storeDir);
}

export type FileIngestionMethod = 'flat' | 'recursive';

/** Fixed-output (content-addressed by NAR or flat hash) store path (`makeFixedOutputPath`). */
export function makeFixedOutputPath(
  method: FileIngestionMethod,
  hash: Hash,
  name: string,
  opts: { references?: Iterable<StorePath>; hasSelfReference?: boolean; storeDir?: string } = {},
): StorePath {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  const refs = [...(opts.references ?? [])];
  if (hash.algorithm === 'sha256' && method === 'recursive') {
    return makeStorePath(makeType('source', refs, opts.hasSelfReference ?? false), hash, name, storeDir);
  }
  if (refs.length > 0 || opts.hasSelfReference) {
    throw new InvalidStorePathError(`fixed-output path '${name}' cannot have references unless it is sha256 and recursive`);
  }
  const inner = Hash.of('sha256', `fixed:out:${method === 'recursive' ? 'r:' : ''}${hash.toString('base16', true)}:`);
  return makeStorePath('output:out', inner, name, storeDir);
}

/** Text path (`makeTextPath`, as `builtins.toFile` and .drv files). */
export function makeTextPath(name: string, hash: Hash, references: Iterable<StorePath> = [], storeDir: string = DEFAULT_STORE_DIR): StorePath {
  return makeStorePath(makeType('text', references), hash, name, storeDir);
}

/** Store path of a text file with the given contents. */
export function computeTextPath(
  name: string,
  contents: string | Uint8Array,
  references: Iterable<StorePath> = [],
  storeDir: string = DEFAULT_STORE_DIR,
): StorePath {
  return makeTextPath(name, Hash.of('sha256', contents), references, storeDir);
}

/** Placeholders already computed, by output name (a handful of names: out, dev, lib, ...; each build asks). */
const placeholders = new Map<string, string>();

/** `hashPlaceholder(outputName)`: the `/<hash>` string a derivation uses for its own output paths. */
export function hashPlaceholder(outputName: string): string {
  let p = placeholders.get(outputName);
  if (p === undefined) {
    p = '/' + toNixBase32(Hash.of('sha256', `nix-output:${outputName}`).bytes);
    if (placeholders.size < 1024) placeholders.set(outputName, p);
  }
  return p;
}

/** Placeholder for an output of a content-addressed input derivation whose path is not known yet. */
export function downstreamPlaceholder(drvPath: StorePath, outputName: string): string {
  const drvBase = storePathBase(drvPath);
  const drvName = drvBase.slice(HASH_PART_LENGTH + 1).replace(/\.drv$/, '');
  const hashPart = storePathHashPart(drvPath);
  const clear = `nix-upstream-output:${hashPart}:${outputPathName(drvName, outputName)}`;
  return '/' + toNixBase32(Hash.of('sha256', clear).bytes);
}
