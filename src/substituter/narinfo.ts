/**
 * The `.narinfo` format of binary caches: parse, print, and the fingerprint that signatures cover.
 * Pure: no I/O. Parsing is strict about the fields it knows (a garbage value is a `BadNarInfoError`
 * naming the field) and ignores unknown fields, as Nix does.
 */
import { RealiseError } from '../store/errors.js';
import { Hash } from '../store/hash.js';
import type { PathInfo } from '../store/store-api.js';
import { DEFAULT_STORE_DIR, parseStorePath, parseStorePathBase, storePathBase, type StorePath } from '../store/store-path.js';
import { checkSignature, signDetached, type PublicKey, type SecretKey } from './signatures.js';

/** A malformed narinfo (or nix-cache-info). */
export class BadNarInfoError extends RealiseError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('bad-narinfo', message, options);
  }
}

/** Compressions of NAR files we can read (Nix's names). */
export type Compression = 'xz' | 'zstd' | 'bzip2' | 'br' | 'gzip' | 'none';
export const COMPRESSIONS: readonly Compression[] = ['xz', 'zstd', 'bzip2', 'br', 'gzip', 'none'];

/** File name extension Nix uses for a compression (`nar/<filehash>.nar<ext>`; Nix 2.8 gives gzip none). */
export function compressionExtension(c: Compression): string {
  switch (c) {
    case 'xz':
      return '.xz';
    case 'zstd':
      return '.zst';
    case 'bzip2':
      return '.bz2';
    case 'br':
      return '.br';
    case 'gzip':
    case 'none':
      return '';
  }
}

export function isCompression(s: string): s is Compression {
  return (COMPRESSIONS as readonly string[]).includes(s);
}

/** A parsed narinfo. References are full store paths, sorted. */
export interface NarInfo {
  readonly storePath: StorePath;
  /** Location of the (compressed) NAR, relative to the cache URL. */
  readonly url: string;
  /** Nix's compression name; unknown names are kept (refused later, at download). */
  readonly compression: string;
  readonly fileHash?: Hash | undefined;
  readonly fileSize?: number | undefined;
  readonly narHash: Hash;
  readonly narSize: number;
  readonly references: readonly StorePath[];
  readonly deriver?: StorePath | undefined;
  readonly system?: string | undefined;
  readonly sigs: readonly string[];
  readonly ca?: string | undefined;
}

function bad(field: string, value: string, what: string, whence: string, cause?: unknown): BadNarInfoError {
  const v = value.length > 80 ? value.slice(0, 80) + '…' : value;
  return new BadNarInfoError(`narinfo ${whence}has a bad ${field} '${v}': ${what}`, {
    cause,
    hint: 'the binary cache is corrupt or not a Nix binary cache; remove it from the substituters or repair the file',
  });
}

function parseSize(field: string, value: string, whence: string): number {
  if (!/^[0-9]{1,15}$/.test(value)) throw bad(field, value, 'expected a non-negative integer', whence);
  return Number(value);
}

function parseHashField(field: string, value: string, whence: string): Hash {
  try {
    return Hash.parse(value);
  } catch (cause) {
    throw bad(field, value, 'expected a hash like sha256:<nix-base32>', whence, cause);
  }
}

const CA_RE = /^(text:sha256|fixed:(r:)?(md5|sha1|sha256|sha512)):[0-9a-zA-Z+/=]+$/;

/** A narinfo as its fields are read. */
type NarInfoFields = { -readonly [K in keyof NarInfo]?: NarInfo[K] } & { sigs: string[]; references: StorePath[] };

/** What a field parser knows: the store directory, and how the file is named in messages. */
interface FieldContext {
  readonly storeDir: string;
  readonly whence: string;
}

/** The base name `value` of a store path, as a full path (or a BadNarInfoError saying it expected `what`). */
function baseNameField(name: string, value: string, what: string, ctx: FieldContext): StorePath {
  try {
    parseStorePathBase(value, ctx.storeDir);
  } catch (cause) {
    throw bad(name, value, what, ctx.whence, cause);
  }
  return `${ctx.storeDir}/${value}`;
}

/** How each known field is checked and stored; unknown fields are ignored, as Nix does. */
const FIELD_PARSERS: Readonly<Record<string, (f: NarInfoFields, value: string, ctx: FieldContext) => void>> = {
  StorePath(f, value, { storeDir, whence }) {
    try {
      parseStorePath(value, storeDir);
    } catch (cause) {
      throw bad('StorePath', value, `not a store path in '${storeDir}'`, whence, cause);
    }
    f.storePath = value;
  },
  URL(f, value, { whence }) {
    if (value === '' || /[\0\r]/.test(value) || value.split('/').some((s) => s === '..'))
      throw bad('URL', value, 'expected a relative location of the NAR', whence);
    f.url = value;
  },
  Compression(f, value, { whence }) {
    if (!/^[a-z0-9-]*$/.test(value)) throw bad('Compression', value, 'expected a compression name such as xz', whence);
    f.compression = value;
  },
  FileHash: (f, value, { whence }) => void (f.fileHash = parseHashField('FileHash', value, whence)),
  FileSize: (f, value, { whence }) => void (f.fileSize = parseSize('FileSize', value, whence)),
  NarHash: (f, value, { whence }) => void (f.narHash = parseHashField('NarHash', value, whence)),
  NarSize: (f, value, { whence }) => void (f.narSize = parseSize('NarSize', value, whence)),
  References(f, value, ctx) {
    f.references = value
      .split(' ')
      .filter((s) => s !== '')
      .map((base) => baseNameField('References', base, 'expected store path base names', ctx));
  },
  Deriver(f, value, ctx) {
    if (value !== 'unknown-deriver') f.deriver = baseNameField('Deriver', value, 'expected a .drv base name', ctx);
  },
  System: (f, value) => void (f.system = value),
  Sig(f, value, { whence }) {
    if (!/^[^:\s]+:[A-Za-z0-9+/]+={0,2}$/.test(value)) throw bad('Sig', value, "expected 'keyname:base64'", whence);
    if (!f.sigs.includes(value)) f.sigs.push(value);
  },
  CA(f, value, { whence }) {
    if (value === '') return;
    if (!CA_RE.test(value)) throw bad('CA', value, 'expected text:sha256:<hash> or fixed:[r:]<algo>:<hash>', whence);
    f.ca = value;
  },
};

/** The `Name: value` lines of a narinfo, each field once (but Sig). */
function* narInfoLines(text: string, whence: string): Generator<[string, string]> {
  const seen = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line === '') {
      if (i === lines.length - 1) continue; // the end of the last line
      // Nix 2.8 reads from a line's start to the next ':' as the field's name: after a blank line, the next
      // field is one of an unknown name (ignored), and a blank line with no field after it is corrupt.
      let j = i + 1;
      while (j < lines.length && !lines[j]!.includes(':')) j++;
      if (j === lines.length) throw new BadNarInfoError(`narinfo ${whence}has a blank line at line ${i + 1}`, { hint: 'the binary cache is corrupt' });
      i = j;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0)
      throw new BadNarInfoError(`narinfo ${whence}line ${i + 1} is not 'Name: value': '${line.slice(0, 80)}'`, {
        hint: 'the binary cache is corrupt or not a Nix binary cache',
      });
    const name = line.slice(0, colon);
    let value = line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name !== 'Sig' && seen.has(name)) throw bad(name, value, 'field appears twice', whence);
    seen.add(name);
    yield [name, value];
  }
}

/** The narinfo read, once the required fields are known to be there. */
function completeNarInfo(f: NarInfoFields, whence: string): NarInfo {
  const { storePath, url, narHash, narSize } = f;
  if (storePath === undefined) throw new BadNarInfoError(`narinfo ${whence}has no StorePath field`);
  if (url === undefined) throw new BadNarInfoError(`narinfo ${whence}has no URL field`);
  if (narHash === undefined) throw new BadNarInfoError(`narinfo ${whence}has no NarHash field`);
  if (narSize === undefined || narSize === 0) throw new BadNarInfoError(`narinfo ${whence}has no NarSize field (or it is 0)`);
  if (narHash.algorithm !== 'sha256') throw bad('NarHash', narHash.toString(), 'NAR hashes must be sha256', whence);
  return {
    storePath,
    url,
    compression: f.compression || 'bzip2',
    fileHash: f.fileHash,
    fileSize: f.fileSize,
    narHash,
    narSize,
    references: [...new Set(f.references)].sort(),
    deriver: f.deriver,
    system: f.system,
    sigs: f.sigs,
    ca: f.ca,
  };
}

/**
 * Parse narinfo text. `whence` names the file in messages (e.g. the URL). Missing Compression means bzip2
 * (as Nix). StorePath, URL, NarHash and NarSize are required.
 */
export function parseNarInfo(text: string, opts: { storeDir?: string; whence?: string } = {}): NarInfo {
  const ctx: FieldContext = { storeDir: opts.storeDir ?? DEFAULT_STORE_DIR, whence: opts.whence ? `'${opts.whence}' ` : '' };
  const fields: NarInfoFields = { sigs: [], references: [] };
  for (const [name, value] of narInfoLines(text, ctx.whence)) if (Object.hasOwn(FIELD_PARSERS, name)) FIELD_PARSERS[name]!(fields, value, ctx);
  return completeNarInfo(fields, ctx.whence);
}

/** Print a narinfo exactly as Nix 2.8 does (field order, base32 hashes, trailing newline). */
export function printNarInfo(info: NarInfo): string {
  let s = `StorePath: ${info.storePath}\n`;
  s += `URL: ${info.url}\n`;
  s += `Compression: ${info.compression}\n`;
  if (info.fileHash) s += `FileHash: ${info.fileHash.toString('base32', true)}\n`;
  if (info.fileSize !== undefined && info.fileSize !== 0) s += `FileSize: ${info.fileSize}\n`;
  s += `NarHash: ${info.narHash.toString('base32', true)}\n`;
  s += `NarSize: ${info.narSize}\n`;
  s += `References: ${info.references.map(storePathBase).join(' ')}\n`;
  if (info.deriver) s += `Deriver: ${storePathBase(info.deriver)}\n`;
  if (info.system) s += `System: ${info.system}\n`;
  for (const sig of info.sigs) s += `Sig: ${sig}\n`;
  if (info.ca) s += `CA: ${info.ca}\n`;
  return s;
}

/** Nix's fingerprint of a path: `1;<path>;<sha256:base32 narHash>;<narSize>;<comma-joined full references>`. */
export function fingerprintPath(path: StorePath, narHash: Hash, narSize: number, references: Iterable<StorePath>): string {
  if (narHash.algorithm !== 'sha256') throw new BadNarInfoError(`cannot fingerprint '${path}': its NAR hash is not sha256`);
  return `1;${path};${narHash.toString('base32', true)};${narSize};${[...references].sort().join(',')}`;
}

type Fingerprintable = Pick<PathInfo, 'narHash' | 'narSize' | 'references'> & { readonly path?: StorePath; readonly storePath?: StorePath };

function pathOf(info: Fingerprintable): StorePath {
  const p = info.path ?? info.storePath;
  if (!p) throw new BadNarInfoError('path info has no path');
  return p;
}

export function fingerprintOf(info: Fingerprintable): string {
  return fingerprintPath(pathOf(info), info.narHash, info.narSize, info.references);
}

/** Signature over a path info's fingerprint, `keyname:base64`. */
export function signPathInfo(info: Fingerprintable, key: SecretKey | string): string {
  return signDetached(fingerprintOf(info), key);
}

/** How many of `sigs` are valid signatures by `keys` (each key counted once), and whether any was bad. */
export function countValidSignatures(
  info: Fingerprintable & { readonly sigs?: readonly string[] | undefined },
  keys: ReadonlyMap<string, PublicKey>,
): { valid: number; invalid: number; unknown: number } {
  const fp = fingerprintOf(info);
  const validKeys = new Set<string>();
  let invalid = 0;
  let unknown = 0;
  for (const sig of info.sigs ?? []) {
    const r = checkSignature(fp, sig, keys);
    if (r === 'valid') validKeys.add(sig.slice(0, sig.indexOf(':')));
    else if (r === 'unknown-key') unknown++;
    else invalid++;
  }
  return { valid: validKeys.size, invalid, unknown };
}

/** The `nix-cache-info` file of a binary cache. */
export interface CacheInfo {
  readonly storeDir?: string | undefined;
  readonly wantMassQuery?: boolean | undefined;
  readonly priority?: number | undefined;
}

export function parseCacheInfo(text: string, whence = 'nix-cache-info'): CacheInfo {
  let storeDir: string | undefined;
  let wantMassQuery: boolean | undefined;
  let priority: number | undefined;
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (name === 'StoreDir') storeDir = value;
    else if (name === 'WantMassQuery') wantMassQuery = value === '1';
    else if (name === 'Priority') {
      if (!/^[0-9]{1,9}$/.test(value)) throw new BadNarInfoError(`'${whence}' has a bad Priority '${value.slice(0, 40)}'`);
      priority = Number(value);
    }
  }
  return { storeDir, wantMassQuery, priority };
}

export function printCacheInfo(info: CacheInfo): string {
  let s = '';
  if (info.storeDir !== undefined) s += `StoreDir: ${info.storeDir}\n`;
  if (info.wantMassQuery !== undefined) s += `WantMassQuery: ${info.wantMassQuery ? 1 : 0}\n`;
  if (info.priority !== undefined) s += `Priority: ${info.priority}\n`;
  return s;
}
