/**
 * The Substituter interface the scheduler calls, the error type of this layer, and `substitutePath`:
 * check trust, stream the NAR into the store while verifying it, register atomically.
 */
import { checkedStream, type Step } from '../store/checked-stream.js';
import { readFile } from 'node:fs/promises';
import { RealiseError, BadNarError } from '../store/errors.js';
import { Hash } from '../store/hash.js';
import { RegularFileContentHasher, regularFileContentsOfNar } from '../store/nar.js';
import type { PathInfo, Realisation, Store } from '../store/store-api.js';
import { makeFixedOutputPath, makeTextPath, storePathName, type StorePath } from '../store/store-path.js';
import { countValidSignatures } from './narinfo.js';
import { recycleDecoded } from './compression.js';
import { caHashMismatch, LocalStore, recursiveCaSink } from '../store/local-store.js';
import { parsePublicKey, publicKeyMap, type PublicKey } from './signatures.js';

/** What a substituter knows about a path: Nix's narinfo as a PathInfo plus where the NAR file is. */
export interface SubstitutablePathInfo extends PathInfo {
  /** Location of the (compressed) NAR file, relative to the substituter's URI. */
  readonly url: string;
  /** Nix's compression name (`xz`, `zstd`, `bzip2`, `br`, `none`, ...). */
  readonly compression: string;
  readonly fileHash?: Hash | undefined;
  readonly fileSize?: number | undefined;
  /** Bytes to download: `fileSize`, or `narSize` when the cache does not say. */
  readonly downloadSize: number;
}

/**
 * What a substituter tells of its requests while it works, for logs (Nix's "querying info about '…' on
 * '…'" and "downloading '…'" activities): a path's info asked of the cache itself (not answered from a
 * narinfo cache), and each file downloaded over HTTP (nix-cache-info, narinfo, NAR files), with its
 * progress in bytes (`expected` from the response's length, 0 while unknown). Every start is followed by
 * its finish, also when the request fails.
 */
export type TransferEvent =
  | { readonly kind: 'query-started'; readonly path: StorePath }
  | { readonly kind: 'query-finished'; readonly path: StorePath; readonly found: boolean }
  | { readonly kind: 'download-started'; readonly url: string }
  | { readonly kind: 'download-progress'; readonly url: string; readonly done: number; readonly expected: number }
  | { readonly kind: 'download-finished'; readonly url: string; readonly ok: boolean };

export type TransferListener = (e: TransferEvent) => void;

export interface FetchNarOptions {
  readonly signal?: AbortSignal | undefined;
  /** Told of the NAR file's download (over HTTP). */
  readonly onTransfer?: TransferListener | undefined;
  /** Download progress in bytes of the compressed file: `done` so far of `expected` (`downloadSize`). */
  readonly onProgress?: ((done: number, expected: number) => void) | undefined;
}

/** A source of store paths (Nix's substituter). Implementations: BinaryCacheSubstituter, InMemorySubstituter. */
export interface Substituter {
  /** Identifies the substituter in messages and events, e.g. `https://cache.nixos.org`. */
  readonly uri: string;
  /** Lower is tried first (Nix's priority; cache.nixos.org has 40). Final after `init()`. */
  readonly priority: number;
  /** The logical store directory of the paths it serves. Final after `init()`. */
  readonly storeDir: string;
  /** Trusted substituters' paths need no signature. */
  readonly trusted: boolean;
  /** Public keys (`name:base64`) whose signatures this substituter's paths may carry. */
  readonly trustedPublicKeys: readonly string[];
  /** Refuse paths without a valid signature by a trusted key (Nix's `require-sigs`, default true). */
  readonly requireSigs: boolean;
  /**
   * Read the cache's metadata (nix-cache-info) once; later calls return the same promise. A cache for
   * another store dir is disabled with a warning (it then serves nothing). Throws SubstituterError.
   */
  init(signal?: AbortSignal, onTransfer?: TransferListener): Promise<void>;
  /**
   * Batched lookup; paths the substituter does not have are absent from the map. Throws SubstituterError.
   * `onTransfer` is told of each path asked of the cache and each file downloaded.
   */
  queryPathInfos(
    paths: readonly StorePath[],
    opts?: { readonly signal?: AbortSignal | undefined; readonly onTransfer?: TransferListener | undefined },
  ): Promise<Map<StorePath, SubstitutablePathInfo>>;
  /**
   * Nix's queryRealisation: the realisation `id` (`sha256:<hash modulo>!<output>`) the substituter has,
   * if any. Optional: a substituter without it serves no realisations. Throws SubstituterError.
   */
  queryRealisation?(id: string, opts?: { readonly signal?: AbortSignal | undefined }): Promise<Realisation | undefined>;
  /** The decompressed NAR of a path, as a stream. Not verified: `substitutePath` verifies. */
  fetchNar(info: SubstitutablePathInfo, opts: FetchNarOptions): AsyncIterable<Uint8Array>;
  /** Release connections and caches. */
  close?(): Promise<void>;
}

/** Stable codes of SubstituterError. */
export type SubstituterErrorCode =
  | 'bad-signature' // a signature by a trusted key name does not verify
  | 'untrusted' // no signature by a trusted key (and the path is not proven by its content address)
  | 'hash-mismatch' // NAR hash differs from the narinfo
  | 'size-mismatch' // NAR size differs from the narinfo
  | 'ca-mismatch' // content does not match the claimed content address
  | 'bad-nar' // the NAR is malformed or hostile (e.g. escapes its path)
  | 'bad-narinfo' // a narinfo or nix-cache-info could not be parsed
  | 'missing-references' // a reference is not valid in the store yet
  | 'not-found' // the substituter does not have the path (or the NAR file is gone)
  | 'network' // an HTTP error other than 404, a connection failure, an I/O error
  | 'tls' // the server's TLS certificate is not trusted, or not valid for its name
  | 'truncated' // the NAR file ended early
  | 'decompression' // corrupt compressed data, or an unsupported compression
  | 'store' // the store refused the path
  | 'disabled' // an HTTP cache disabled for a while after a failure (Nix's `fallback`): not asked
  | 'aborted'; // the signal was aborted

/** Every failure of this layer. `uri` names the substituter, `path` the store path when known. */
export class SubstituterError extends RealiseError {
  declare readonly code: SubstituterErrorCode;
  readonly uri: string | undefined;
  readonly path: StorePath | undefined;
  constructor(code: SubstituterErrorCode, message: string, options: { cause?: unknown; hint?: string; uri?: string; path?: StorePath } = {}) {
    super(code, message, options);
    this.uri = options.uri;
    this.path = options.path;
  }
}

export interface SubstituteOptions extends FetchNarOptions {
  /** Keys trusted in addition to the substituter's own (the engine's `trusted-public-keys`). */
  readonly trustedPublicKeys?: Iterable<string | PublicKey> | undefined;
  /** Overrides the substituter's `requireSigs`. */
  readonly requireSigs?: boolean | undefined;
  /** Replace the contents of a path that is already valid. */
  readonly repair?: boolean | undefined;
  /**
   * The path to register it as, when it is not `info.path`: a content-addressed path without references
   * served by a cache of another store directory (see `contentAddressedAs`). @default info.path
   */
  readonly as?: StorePath | undefined;
  /** Checks a `.drv`'s text before it is registered (its output paths, as Nix's registration); a throw refuses it. */
  readonly checkDerivation?: ((drvPath: StorePath, text: string) => Promise<void>) | undefined;
}

/**
 * Whether `info` (a path of `subStoreDir`) may be registered as `target` (a path of `storeDir`), as Nix's
 * PathSubstitutionGoal takes a content-addressed path from a cache of another store directory: it has no
 * references, and its content address proves both paths.
 */
export function contentAddressedAs(info: PathInfo, subStoreDir: string, target: StorePath, storeDir: string): boolean {
  return info.references.length === 0 && caProvesPath(info, subStoreDir) && caProvesPath({ ...info, path: target }, storeDir);
}

/** caProvesPath's answers, per path info and store dir: a substitute is checked several times on its way. */
const caProofs = new WeakMap<PathInfo, Map<string, boolean>>();

/** Why a path info is acceptable without a signature: its content address proves its path. */
export function caProvesPath(info: PathInfo, storeDir: string): boolean {
  let proofs = caProofs.get(info);
  let proved = proofs?.get(storeDir);
  if (proved === undefined) {
    proved = computeCaProof(info, storeDir);
    if (!proofs) caProofs.set(info, (proofs = new Map()));
    proofs.set(storeDir, proved);
  }
  return proved;
}

function computeCaProof(info: PathInfo, storeDir: string): boolean {
  const ca = parseContentAddress(info.ca);
  if (!ca) return false;
  const name = storePathName(info.path);
  const self = info.references.includes(info.path);
  const others = info.references.filter((r) => r !== info.path);
  try {
    if (ca.method === 'text') {
      if (self) return false;
      return makeTextPath(name, ca.hash, others, storeDir) === info.path;
    }
    if (ca.method === 'flat' && info.references.length > 0) return false;
    return makeFixedOutputPath(ca.method, ca.hash, name, { references: others, hasSelfReference: self, storeDir }) === info.path;
  } catch {
    return false;
  }
}

interface ParsedCa {
  readonly method: 'text' | 'flat' | 'recursive';
  readonly hash: Hash;
}

function parseContentAddress(ca: string | undefined): ParsedCa | undefined {
  if (!ca) return undefined;
  try {
    if (ca.startsWith('text:')) return { method: 'text', hash: Hash.parse(ca.slice(5)) };
    if (ca.startsWith('fixed:r:')) return { method: 'recursive', hash: Hash.parse(ca.slice(8)) };
    if (ca.startsWith('fixed:')) return { method: 'flat', hash: Hash.parse(ca.slice(6)) };
  } catch {
    return undefined;
  }
  return undefined;
}

function isAbort(e: unknown, signal: AbortSignal | undefined): boolean {
  return !!signal?.aborted || (e instanceof Error && (e.name === 'AbortError' || (e as { code?: string }).code === 'ABORT_ERR'));
}

/** Parsed trusted keys, by their text (a key object is made once, not once per substitute). */
const parsedKeys = new Map<string, PublicKey>();

/** A trusted key parsed (once per text); throws BadKeyError in Nix's words for a malformed one. */
function parsedKey(k: string | PublicKey): PublicKey {
  if (typeof k !== 'string') return k;
  let pk = parsedKeys.get(k);
  if (!pk) parsedKeys.set(k, (pk = parsePublicKey(k)));
  return pk;
}

/** The valid and invalid signatures of `info` by `keys`, counted once per path info and key set (an ed25519 verification each). */
const signatureCounts = new WeakMap<PathInfo, Map<string, { valid: number; invalid: number }>>();

function signatureCount(info: PathInfo, keys: readonly (string | PublicKey)[]): { valid: number; invalid: number } {
  const id = keys.map((k) => (typeof k === 'string' ? k : `${k.name}:${Buffer.from(k.bytes).toString('base64')}`)).join('\n');
  let counts = signatureCounts.get(info);
  const known = counts?.get(id);
  if (known) return known;
  const map = publicKeyMap(keys.map(parsedKey));
  const { valid, invalid } = countValidSignatures(info, map);
  if (!counts) signatureCounts.set(info, (counts = new Map()));
  counts.set(id, { valid, invalid });
  return { valid, invalid };
}

/**
 * Check that `info` may be trusted; throws SubstituterError 'untrusted' or 'bad-signature', or BadKeyError
 * for a malformed trusted key when signatures are required (as Nix, whatever the path).
 * Trusted substituters and `requireSigs: false` skip the check; so do content-addressed paths whose CA
 * proves the path (the content is then checked against the CA while it streams).
 */
export function checkTrust(
  sub: Substituter,
  info: PathInfo,
  opts: Pick<SubstituteOptions, 'trustedPublicKeys' | 'requireSigs'> = {},
): 'trusted-substituter' | 'not-required' | 'content-addressed' | 'signed' {
  if (sub.trusted) return 'trusted-substituter';
  if (!(opts.requireSigs ?? sub.requireSigs)) return 'not-required';
  // The keys are parsed before anything else is looked at (a bad key is an error even for a path its CA proves).
  const keys = [...sub.trustedPublicKeys, ...(opts.trustedPublicKeys ?? [])].map(parsedKey);
  if (caProvesPath(info, sub.storeDir)) return 'content-addressed';
  const { valid, invalid } = signatureCount(info, keys);
  if (valid > 0) return 'signed';
  if (invalid > 0) {
    throw new SubstituterError(
      'bad-signature',
      `cannot add path '${info.path}' from '${sub.uri}': its signature does not verify against the trusted key of the same name`,
      {
        uri: sub.uri,
        path: info.path,
        hint: 'the binary cache is corrupt or was tampered with; do not trust it, or check that the trusted public key is the right one',
      },
    );
  }
  const names = (info.sigs ?? []).map((s) => s.slice(0, s.indexOf(':')));
  throw new SubstituterError(
    'untrusted',
    `cannot add path '${info.path}' from '${sub.uri}' because it lacks a signature by a trusted key${names.length ? ` (signed by: ${names.join(', ')})` : ' (it has no signature)'}`,
    {
      uri: sub.uri,
      path: info.path,
      hint: "add the cache's public key to trustedPublicKeys, or mark the substituter trusted",
    },
  );
}

type Fail = (code: SubstituterErrorCode, message: string, extra?: { cause?: unknown; hint?: string }) => SubstituterError;

/** What to do about a substitute whose references are not valid. */
const MISSING_REFERENCES_HINT = 'substitute (or build) the references first; the closure of a path must be valid before the path';

/** Refuse a path whose references (but itself) are not all valid in `store`. */
async function requireValidReferences(store: Store, info: SubstitutablePathInfo, fail: Fail): Promise<void> {
  const refs = info.references.filter((r) => r !== info.path);
  if (refs.length === 0) return;
  const valid = await store.queryValidPaths(refs);
  const missing = refs.filter((r) => !valid.has(r));
  if (missing.length > 0) {
    throw fail('missing-references', `cannot substitute '${info.path}': its references ${missing.map((m) => `'${m}'`).join(', ')} are not valid in the store`, {
      hint: MISSING_REFERENCES_HINT,
    });
  }
}

/**
 * The hashers a content address needs while the NAR streams, when the CA proves the path of an untrusted
 * substitute. The NAR hash itself is checked by the store (Store.addToStore hashes the stream and refuses a
 * mismatch before anything is registered); hashing it here as well cost a second SHA-256 pass over every
 * NAR. Only a content address with another algorithm, or over the file contents, is hashed here.
 */
function contentAddressCheck(sub: Substituter, info: SubstitutablePathInfo, fail: Fail) {
  const ca = parseContentAddress(info.ca);
  if (ca === undefined || !caProvesPath(info, sub.storeDir) || sub.trusted) return undefined;
  // Self-references are left out of a recursive content address's hash (recursiveCaSink).
  const selfRef = info.references.includes(info.path);
  // The NAR hash with the content address's algorithm: the store checks the NAR against info.narHash.
  const sameAsNarHash = ca.method === 'recursive' && ca.hash.algorithm === info.narHash.algorithm && !selfRef;
  if (sameAsNarHash && ca.hash.equals(info.narHash)) return undefined;
  const recursive = ca.method !== 'recursive' ? undefined : recursiveCaSink(info, ca.hash.algorithm);
  const file = ca.method !== 'recursive' ? new RegularFileContentHasher(ca.hash.algorithm) : undefined;
  return {
    /** The hash the content address gives. */
    hash: ca.hash,
    update(chunk: Uint8Array): void {
      recursive?.update(chunk);
      file?.update(chunk);
    },
    /** The hash the contents have, when it is not their content address's (undefined: they match, or are for the store to refuse). */
    mismatch: (): Hash | undefined => {
      const got = recursive ? recursive.finish().hash : file!.finish();
      // A narinfo whose CA and NarHash differ: a NAR of neither hash is the store's to refuse, as Nix does
      // ("hash mismatch importing path"); one of its NarHash does not match its content address.
      if (!got || (sameAsNarHash && !got.equals(info.narHash))) return undefined;
      return got.equals(ca.hash) ? undefined : got;
    },
  };
}

/**
 * The NAR of `info` from `sub`, checked as it streams: not unreasonably longer than announced, and of
 * its content address (`ca`, from contentAddressCheck). Chunks are kept in `seen` when given. The first failure is kept in `failure.error`
 * (as a SubstituterError) before it is thrown into the store.
 */
function verifiedNar(
  sub: Substituter,
  info: SubstitutablePathInfo,
  opts: SubstituteOptions,
  fail: Fail,
  ca: ReturnType<typeof contentAddressCheck>,
  seen: Uint8Array[] | undefined,
  failure: { error?: SubstituterError },
): AsyncIterableIterator<Uint8Array> {
  const { signal } = opts;
  let size = 0;
  const check: Step<Uint8Array> = (r, stop) => {
    if (r.done) {
      // A NAR of another size than announced: the store refuses it (Store.addToStore checks the hash, then
      // the size, as Nix), so the message is Nix's.
      const got = ca && size === info.narSize ? ca.mismatch() : undefined;
      // (Nix's words, as its store says them.)
      if (got)
        throw fail('ca-mismatch', caHashMismatch(info.path, ca!.hash, got).shortMessage, {
          hint: `from '${sub.uri}'; the binary cache is corrupt or hostile, nothing was registered`,
        });
      return r;
    }
    const chunk = r.value;
    // A NAR somewhat longer than announced is read to its end, so that the store reports what Nix
    // does (the hash mismatch, which it checks first); only an unreasonably long one is cut off here.
    if (size + chunk.length > info.narSize + NAR_OVERRUN_MAX) {
      stop();
      throw fail('size-mismatch', `NAR of '${info.path}' from '${sub.uri}' is larger than its declared size ${info.narSize}`, {
        hint: 'the binary cache is corrupt',
      });
    }
    size += chunk.length;
    seen?.push(chunk);
    ca?.update(chunk);
    return r;
  };
  // The stream's end by a failure: kept in `failure.error` (the first one) as a SubstituterError, which is thrown.
  return checkedStream(
    () => sub.fetchNar(info, { signal, onProgress: opts.onProgress, onTransfer: opts.onTransfer }),
    check,
    (e) => (failure.error ??= toSubstituterError(e, sub, info, signal)),
  );
}

/** What the store refusing a substitute means, in Nix's words where Nix has them. */
function storeRefusal(e: unknown, sub: Substituter, info: SubstitutablePathInfo, fail: Fail, signal: AbortSignal | undefined): SubstituterError {
  if (e instanceof SubstituterError) return e;
  if (isAbort(e, signal)) return fail('aborted', `substitution of '${info.path}' was cancelled`, { cause: e });
  const from = `from '${sub.uri}'; the binary cache is corrupt, nothing was registered`;
  if (e instanceof BadNarError) {
    // Nix's words: the NAR stream ended before the archive did.
    if (/ends unexpectedly/.test(e.shortMessage))
      return fail('truncated', `NAR for '${info.path}' fetched from '${sub.uri}' is incomplete`, {
        cause: e,
        hint: 'the NAR file is truncated; nothing was registered',
      });
    // Nix's words when the data is not a NAR at all (its parseDump).
    if (/^input is not a NAR/.test(e.shortMessage))
      return fail('bad-nar', "bad archive: input doesn't look like a Nix archive", { cause: e, hint: `the NAR of '${info.path}' ${from} (${e.shortMessage})` });
    return fail('bad-nar', `NAR of '${info.path}' from '${sub.uri}' is invalid: ${e.shortMessage}`, {
      cause: e,
      hint: 'the binary cache is corrupt or hostile; nothing was registered',
    });
  }
  if (e instanceof RealiseError && e.code === 'missing-references')
    return fail('missing-references', `cannot substitute '${info.path}' from '${sub.uri}': ${e.shortMessage}`, { cause: e, hint: MISSING_REFERENCES_HINT });
  // The store's own messages are Nix's ("hash mismatch importing path '…';\n  specified: …\n  got: …").
  if (e instanceof RealiseError && e.code === 'nar-hash-mismatch') return fail('hash-mismatch', e.shortMessage, { cause: e, hint: from });
  if (e instanceof RealiseError && e.code === 'ca-hash-mismatch') return fail('ca-mismatch', e.shortMessage, { cause: e, hint: from });
  if (e instanceof RealiseError && e.code === 'nar-size-mismatch') return fail('size-mismatch', e.shortMessage, { cause: e, hint: from });
  if (e instanceof RealiseError && e.code === 'size-mismatch')
    return fail('size-mismatch', `size mismatch importing path '${info.path}' from '${sub.uri}'`, {
      cause: e,
      hint: 'the binary cache is corrupt; nothing was registered',
    });
  if (e instanceof RealiseError && e.code === 'hash-mismatch') {
    return fail(
      'hash-mismatch',
      `hash mismatch importing path '${info.path}' from '${sub.uri}': the NAR does not have the hash its narinfo gives (${info.narHash.toString('sri')})`,
      { cause: e, hint: 'the binary cache is corrupt; nothing was registered' },
    );
  }
  const msg = e instanceof Error ? e.message : String(e);
  return fail('store', `the store refused '${info.path}' from '${sub.uri}': ${msg}`, { cause: e });
}

/**
 * Substitute one path: check trust, verify that its references are valid, stream the decompressed NAR
 * into `store.addToStore` while hashing it, and return the registered PathInfo. A wrong hash or size, a
 * truncated or hostile NAR registers nothing (the store cleans up). Throws SubstituterError.
 */
export async function substitutePath(store: Store, sub: Substituter, info: SubstitutablePathInfo, opts: SubstituteOptions = {}): Promise<PathInfo> {
  const { signal } = opts;
  const fail: Fail = (code, message, extra = {}) => new SubstituterError(code, message, { ...extra, uri: sub.uri, path: info.path });
  if (signal?.aborted) throw fail('aborted', `substitution of '${info.path}' was cancelled`, { cause: signal.reason });
  const target = opts.as ?? info.path;
  if ((sub.storeDir !== store.storeDir || target !== info.path) && !contentAddressedAs(info, sub.storeDir, target, store.storeDir)) {
    throw fail(
      'store',
      sub.storeDir !== store.storeDir
        ? `cannot substitute '${info.path}' from '${sub.uri}': the cache is for store '${sub.storeDir}', the store is '${store.storeDir}'`
        : `asked '${sub.uri}' for '${target}' but got '${info.path}'`,
    );
  }
  // A LocalStore's addToStore does what the rest of this paragraph does for other stores: it returns the
  // path's info when the path is valid (before it reads a byte of the NAR, and again under the path's lock),
  // checks the references (storeRefusal gives its error this function's code), and checks the contents
  // against their content address before it registers them. Doing it here as well cost a validity query and
  // a second hash of the contents (a `.drv`'s `text:` address) per path.
  const local = store instanceof LocalStore;
  const existing = async (): Promise<PathInfo | undefined> => (!opts.repair && (await store.isValidPath(target)) ? store.queryPathInfo(target) : undefined);
  if (!local) {
    const valid = await existing();
    if (valid) return valid;
  }
  try {
    checkTrust(sub, info, opts);
  } catch (e) {
    // (A valid path is returned as it is, whoever offers it.)
    const valid = local ? await existing() : undefined;
    if (valid) return valid;
    throw e;
  }
  if (!local) await requireValidReferences(store, info, fail);
  const ca = local ? undefined : contentAddressCheck(sub, info, fail);
  const toRegister: PathInfo = {
    path: target,
    narHash: info.narHash,
    narSize: info.narSize,
    references: info.references,
    // (Re-rooted in this store's directory, as Nix keeps the deriver's name.)
    deriver: info.deriver && target !== info.path ? `${store.storeDir}/${info.deriver.slice(sub.storeDir.length + 1)}` : info.deriver,
    sigs: info.sigs,
    ca: info.ca,
    ultimate: false,
    registrationTime: Math.floor(Date.now() / 1000),
  };
  // A LocalStore is done with every chunk once addToStore settles (streamed or batched, every chunk is
  // written before it returns, and none is kept), so decoded buffers can be handed back to the decoder's pool.
  const seen: Uint8Array[] | undefined = store instanceof LocalStore ? [] : undefined;
  const failure: { error?: SubstituterError } = {};
  try {
    const nar = verifiedNar(sub, info, opts, fail, ca, seen, failure);
    const check = opts.checkDerivation;
    // (The check's own words are the error, as in Nix.)
    // (The text checked is returned: the store's registration takes the `.drv`'s outputs from it.)
    const verify =
      check && target.endsWith('.drv')
        ? async (real: string): Promise<string> => {
            try {
              const text = drvTextOf(seen, info.narSize) ?? (await readFile(real, 'utf8'));
              await check(target, text);
              return text;
            } catch (e) {
              failure.error = fail('store', e instanceof RealiseError ? e.shortMessage : (e as Error).message, { cause: e });
              throw e;
            }
          }
        : undefined;
    return await store.addToStore(toRegister, nar, { repair: opts.repair ?? false, ...(signal ? { signal } : {}), ...(verify ? { verify } : {}) });
  } catch (e) {
    throw failure.error ?? storeRefusal(e, sub, info, fail, signal);
  } finally {
    if (seen) {
      recycleDecoded(seen);
      seen.length = 0;
    }
  }
}

/** A `.drv` of a NAR up to this size is checked from the NAR's bytes (`seen`), not read back from its file. */
const SMALL_DRV = 64 * 1024;

/** The text of the `.drv` file the NAR in `seen` (all of it, `narSize` bytes) holds, when small; else undefined. */
function drvTextOf(seen: readonly Uint8Array[] | undefined, narSize: number): string | undefined {
  if (!seen || narSize > SMALL_DRV) return undefined;
  let size = 0;
  for (const c of seen) size += c.length;
  if (size !== narSize) return undefined;
  const contents = regularFileContentsOfNar(seen.length === 1 ? seen[0]! : Buffer.concat(seen));
  return contents && Buffer.from(contents.buffer, contents.byteOffset, contents.byteLength).toString('utf8');
}

/** How much longer than its narinfo's NarSize a NAR may run before the download is cut off. */
const NAR_OVERRUN_MAX = 64 * 1024 * 1024;

function toSubstituterError(e: unknown, sub: Substituter, info: PathInfo, signal: AbortSignal | undefined): SubstituterError {
  if (e instanceof SubstituterError) return e;
  if (isAbort(e, signal)) return new SubstituterError('aborted', `substitution of '${info.path}' was cancelled`, { cause: e, uri: sub.uri, path: info.path });
  const msg = e instanceof Error ? e.message : String(e);
  return new SubstituterError('network', `downloading '${info.path}' from '${sub.uri}' failed: ${msg}`, { cause: e, uri: sub.uri, path: info.path });
}

/** Sort substituters as Nix tries them: by priority, lower first; stable for equal priorities. */
export function sortByPriority<T extends Pick<Substituter, 'priority'>>(subs: readonly T[]): T[] {
  return subs
    .map((s, i) => [s, i] as const)
    .sort((a, b) => a[0].priority - b[0].priority || a[1] - b[1])
    .map(([s]) => s);
}

/** A path found on a substituter. */
export interface FoundSubstitute {
  readonly substituter: Substituter;
  readonly info: SubstitutablePathInfo;
}

/**
 * Ask substituters in priority order for `paths`; each path is taken from the first substituter that has
 * it (later ones are asked only for what is still missing). A failing substituter is reported in `errors`
 * and skipped, so the caller can apply Nix's `fallback` policy (throw the first error unless falling back).
 */
export async function querySubstitutablePaths(
  substituters: readonly Substituter[],
  paths: Iterable<StorePath>,
  opts: { readonly signal?: AbortSignal | undefined } = {},
): Promise<{ found: Map<StorePath, FoundSubstitute>; errors: SubstituterError[] }> {
  const found = new Map<StorePath, FoundSubstitute>();
  const errors: SubstituterError[] = [];
  let remaining = [...new Set(paths)];
  for (const sub of sortByPriority(substituters)) {
    if (remaining.length === 0) break;
    try {
      await sub.init(opts.signal);
      const m = await sub.queryPathInfos(remaining, { signal: opts.signal });
      for (const [p, info] of m) found.set(p, { substituter: sub, info });
      remaining = remaining.filter((p) => !m.has(p));
    } catch (e) {
      if (opts.signal?.aborted) throw new SubstituterError('aborted', 'query of substituters was cancelled', { cause: e });
      // A cache disabled after a failure (Nix's fallback) is passed over silently, as Nix.
      if (e instanceof SubstituterError && e.code === 'disabled') continue;
      errors.push(
        e instanceof SubstituterError
          ? e
          : new SubstituterError('network', `querying '${sub.uri}' failed: ${e instanceof Error ? e.message : String(e)}`, { uri: sub.uri, cause: e }),
      );
    }
  }
  return { found, errors };
}
