/**
 * InMemorySubstituter: a Substituter over NARs held in memory, for tests and examples. It behaves as a
 * binary cache with `Compression: none` would, and passes the same conformance suite.
 */
import { hashNar, streamOf } from '../store/nar.js';
import type { PathInfo } from '../store/store-api.js';
import { DEFAULT_STORE_DIR, storePathHashPart, type StorePath } from '../store/store-path.js';
import { signPathInfo } from './narinfo.js';
import type { SecretKey } from './signatures.js';
import { SubstituterError, type FetchNarOptions, type SubstitutablePathInfo, type Substituter } from './substituter.js';

export interface InMemorySubstituterOptions {
  /** @default 'memory://<n>' */
  readonly uri?: string;
  /** @default 50 */
  readonly priority?: number;
  /** @default '/nix/store' */
  readonly storeDir?: string;
  /** @default false */
  readonly trusted?: boolean;
  /** @default [] */
  readonly trustedPublicKeys?: readonly string[];
  /** @default true */
  readonly requireSigs?: boolean;
  /** Chunk size of `fetchNar` streams. @default 65536 */
  readonly chunkSize?: number;
}

let counter = 0;

export class InMemorySubstituter implements Substituter {
  readonly uri: string;
  readonly priority: number;
  readonly storeDir: string;
  readonly trusted: boolean;
  readonly trustedPublicKeys: readonly string[];
  readonly requireSigs: boolean;
  private readonly chunkSize: number;
  private readonly entries = new Map<StorePath, { info: SubstitutablePathInfo; nar: Uint8Array }>();
  /** Number of `fetchNar` calls (for tests). */
  fetches = 0;
  /** Number of paths asked for through `queryPathInfos` (for tests). */
  queried = 0;

  constructor(opts: InMemorySubstituterOptions = {}) {
    this.uri = opts.uri ?? `memory://${++counter}`;
    this.priority = opts.priority ?? 50;
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    this.trusted = opts.trusted ?? false;
    this.trustedPublicKeys = opts.trustedPublicKeys ?? [];
    this.requireSigs = opts.requireSigs ?? true;
    this.chunkSize = opts.chunkSize ?? 65536;
  }

  /**
   * Serve `nar` for `info.path`. `narHash`/`narSize` default to the NAR's own; pass wrong ones to test
   * verification. `secretKey` adds a signature.
   */
  async add(
    info: Omit<PathInfo, 'narHash' | 'narSize'> & Partial<Pick<PathInfo, 'narHash' | 'narSize'>>,
    nar: Uint8Array,
    opts: { secretKey?: SecretKey | string } = {},
  ): Promise<SubstitutablePathInfo> {
    const actual = info.narHash && info.narSize !== undefined ? undefined : await hashNar(streamOf(nar));
    const narHash = info.narHash ?? actual!.hash;
    const narSize = info.narSize ?? actual!.size;
    const base: PathInfo = { ...info, narHash, narSize, references: [...info.references].sort() };
    const sigs = [...(info.sigs ?? [])];
    if (opts.secretKey) sigs.push(signPathInfo(base, opts.secretKey));
    const full: SubstitutablePathInfo = {
      ...base,
      sigs,
      url: `nar/${narHash.base32}.nar`,
      compression: 'none',
      fileHash: narHash,
      fileSize: nar.length,
      downloadSize: nar.length,
    };
    this.entries.set(info.path, { info: full, nar });
    return full;
  }

  remove(path: StorePath): void {
    this.entries.delete(path);
  }

  async init(): Promise<void> {}

  async queryPathInfos(paths: readonly StorePath[], opts: { signal?: AbortSignal | undefined } = {}): Promise<Map<StorePath, SubstitutablePathInfo>> {
    if (opts.signal?.aborted)
      throw new SubstituterError('aborted', `query of ${paths.length} paths on '${this.uri}' was cancelled`, { uri: this.uri, cause: opts.signal.reason });
    this.queried += paths.length;
    const out = new Map<StorePath, SubstitutablePathInfo>();
    for (const p of paths) {
      const e = this.entries.get(p);
      if (e && storePathHashPart(p) === storePathHashPart(e.info.path)) out.set(p, e.info);
    }
    return out;
  }

  async *fetchNar(info: SubstitutablePathInfo, opts: FetchNarOptions): AsyncGenerator<Uint8Array> {
    this.fetches++;
    const e = this.entries.get(info.path);
    if (!e || e.info.url !== info.url)
      throw new SubstituterError('not-found', `'${this.uri}' no longer has the NAR of '${info.path}'`, { uri: this.uri, path: info.path });
    const { nar } = e;
    let done = 0;
    for (let off = 0; off < nar.length; off += this.chunkSize) {
      if (opts.signal?.aborted)
        throw new SubstituterError('aborted', `download of '${info.path}' was cancelled`, { uri: this.uri, path: info.path, cause: opts.signal.reason });
      const chunk = nar.subarray(off, Math.min(nar.length, off + this.chunkSize));
      done += chunk.length;
      yield chunk;
      opts.onProgress?.(done, info.downloadSize);
    }
  }

  async close(): Promise<void> {}
}
