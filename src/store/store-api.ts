/**
 * The Store interface every layer above programs against. `LocalStore` (Nix's on-disk layout, SQLite)
 * and `MemoryStore` (tests) implement it and pass the same conformance suite (test/store/conformance.ts).
 */
import type { Hash } from './hash.js';
import type { LockWaitOptions } from './locks.js';
import type { StorePath } from './store-path.js';
import type { AutoGcSettings } from './auto-gc.js';

/** Nix's ValidPathInfo. `references` are full store paths, sorted; may include the path itself. */
export interface PathInfo {
  readonly path: StorePath;
  readonly narHash: Hash;
  readonly narSize: number;
  readonly references: readonly StorePath[];
  readonly deriver?: StorePath | undefined;
  /** Seconds since the epoch. */
  readonly registrationTime?: number | undefined;
  /** Built locally (trusted without signatures). */
  readonly ultimate?: boolean | undefined;
  readonly sigs?: readonly string[] | undefined;
  /** Content address, e.g. `fixed:r:sha256:...` or `text:sha256:...`. */
  readonly ca?: string | undefined;
}

/**
 * Nix's Realisation: the path an output of a derivation was built as, the derivation named by its hash
 * modulo (what content-addressed derivations are looked up by). Nix keeps them in its Realisations table.
 */
export interface Realisation {
  /** Nix's DrvOutput id: `sha256:<base16 hash modulo>!<output name>`. */
  readonly id: string;
  readonly outPath: StorePath;
  readonly signatures?: readonly string[];
  /** The realisations of inputs this output refers to (Nix's dependentRealisations): id → path. */
  readonly dependentRealisations?: ReadonlyMap<string, StorePath>;
}

/** A NAR as a byte stream. */
export type NarSource = AsyncIterable<Uint8Array>;

export interface AddToStoreOptions {
  /** Replace the contents even if the path is already valid. */
  readonly repair?: boolean;
  readonly signal?: AbortSignal;
  /**
   * Called with the real path of the new contents once they are written and their hashes checked, before
   * they are moved into place and registered: a throw registers nothing (e.g. a `.drv`'s output paths
   * checked, as Nix's registration does). It may return the contents' text, when it read them (a `.drv`'s):
   * the registration then takes what it needs from that text rather than reading the file again.
   */
  readonly verify?: (realPath: string) => Promise<void | string>;
}

/** Held locks on store paths; `release()` is idempotent. */
export interface PathLocks {
  release(): Promise<void>;
  /** Whether `release()` deletes the lock files (Nix's `setDeletion`; on by default). */
  setDeletion?(deleteFiles: boolean): void;
  /** Mark the lock files as stale so waiters re-check validity (Nix writes "d"). */
  readonly paths: readonly StorePath[];
}

/**
 * Lock files opened ahead of a `tryLockPaths` of the same paths (`Store.openLockFiles`): made, not locked.
 * Given to `tryLockPaths`, which then only locks them; `discard()` when it will not be.
 */
export interface OpenedLocks {
  discard(): void;
}

export interface Store {
  /** Logical store directory, e.g. `/nix/store`. */
  readonly storeDir: string;
  /** Physical directory holding the store paths (differs from `storeDir` in a chroot store). */
  readonly realStoreDir: string;
  /** Extended attributes canonicalisation leaves on store files (Nix's `ignored-acls`); undefined = Nix's default. */
  readonly ignoredAcls?: readonly string[] | undefined;

  /** Physical location of a logical store path (or of a file inside one). */
  toRealPath(path: string): string;

  isValidPath(path: StorePath): Promise<boolean>;
  /** The subset of `paths` that is valid, in one batched query. */
  queryValidPaths(paths: Iterable<StorePath>): Promise<Set<StorePath>>;
  queryPathInfo(path: StorePath): Promise<PathInfo | undefined>;
  queryReferrers(path: StorePath): Promise<StorePath[]>;
  /** Every valid path reachable from `paths` via references (including them). */
  computeClosure(paths: Iterable<StorePath>): Promise<Set<StorePath>>;
  /** Every valid path (Nix's queryAllValidPaths). Optional: a store that cannot enumerate may omit it. */
  queryAllValidPaths?(): Promise<Set<StorePath>>;
  /** Valid derivations that list `outPath` as an output, sorted (Nix's queryValidDerivers). Optional. */
  queryValidDerivers?(outPath: StorePath): Promise<StorePath[]>;
  /** Output name → path as registered for a derivation (Nix's DerivationOutputs table). */
  queryDerivationOutputs(drvPath: StorePath): Promise<Map<string, StorePath>>;
  /** Record derivation outputs (done by registration of a .drv, or explicitly). */
  registerDerivationOutputs(drvPath: StorePath, outputs: ReadonlyMap<string, StorePath>): Promise<void>;
  /**
   * Record a realisation (Nix's registerDrvOutput): the same id again with the same path adds its
   * signatures; with another path it is an error. Its output path and dependent realisations must be
   * registered already. Optional: a store without it keeps no realisations.
   */
  registerRealisation?(r: Realisation): Promise<void>;
  /** The realisation of `id` (`sha256:<hash modulo>!<output>`), if any. */
  queryRealisation?(id: string): Promise<Realisation | undefined>;

  /**
   * Add a path from a NAR stream. The NAR is restored to a temporary name, hashed while it streams,
   * checked against `info.narHash`/`info.narSize`, canonicalised, moved into place and registered in one
   * transaction; the references must already be valid (closure invariant). Nothing stays on failure.
   */
  addToStore(info: PathInfo, nar: NarSource, opts?: AddToStoreOptions): Promise<PathInfo>;
  /**
   * A hint: paths of these NAR sizes are about to be added (substitutes found). The store may prepare
   * what their additions need in the background (LocalStore: its restore thread). Optional.
   */
  expectAdditions?(narSizes: readonly number[]): void;
  /** Add a text file (like `builtins.toFile` or a `.drv`), returning its store path. */
  addTextToStore(name: string, text: string, references?: Iterable<StorePath>): Promise<StorePath>;
  /**
   * Register paths whose contents are already at their real location (e.g. build outputs), canonicalised.
   * All in one transaction; each path's references must be valid or among `infos`. `canonicalise: false`
   * says the caller has canonicalised the contents already (a store that would do it skips it).
   */
  registerValidPaths(infos: readonly PathInfo[], opts?: { readonly canonicalise?: boolean }): Promise<void>;
  /** Serialise a valid path as a NAR. */
  narFromPath(path: StorePath): NarSource;
  /**
   * Read a valid path that is a single regular file (e.g. a `.drv`) as UTF-8. `validityChecked`: the caller
   * has just found the path valid, so a store may skip asking again.
   */
  readTextFile(path: StorePath, opts?: { validityChecked?: boolean }): Promise<string>;
  /** Delete the contents of an invalid path (refuses valid ones). */
  deletePath(path: StorePath): Promise<void>;
  /**
   * Keep `path` from being garbage-collected by a concurrent collector while this store stays open
   * (Nix's temporary roots). Optional: stores without a collector may omit it.
   */
  addTempRoot?(path: StorePath): Promise<void>;
  /** `addTempRoot` of several paths at once (one record of them all, where the store can). Optional. */
  addTempRoots?(paths: Iterable<StorePath>): Promise<void>;
  /**
   * Nix's autoGC: start a background garbage collection when free space is below `minFree`. Optional:
   * stores without a collector omit it. Returns the running collection, if any (it never rejects).
   */
  autoGC?(settings: AutoGcSettings): Promise<void> | undefined;
  /**
   * Take exclusive cross-process locks on paths (sorted order; waits; honours `signal`). `onWait` is
   * called once if some lock is held by someone else, before waiting for it.
   */
  lockPaths(paths: Iterable<StorePath>, opts?: LockWaitOptions): Promise<PathLocks>;
  /**
   * Try to take the locks without waiting; undefined when someone else holds one. `opened`: the lock files
   * of these paths, opened ahead by `openLockFiles`.
   */
  tryLockPaths(paths: Iterable<StorePath>, opened?: OpenedLocks): Promise<PathLocks | undefined>;
  /**
   * Create and open the lock files of `paths` ahead of a `tryLockPaths` of them, without locking them (a
   * build waiting for its slot). Optional: stores without lock files omit it.
   */
  openLockFiles?(paths: Iterable<StorePath>): OpenedLocks;

  /** Physical path of the build log of `drvPath` (may not exist). */
  logPath(drvPath: StorePath): string;
  /** Store a build log for `drvPath` (Nix's `<logdir>/drvs/xx/rest`). */
  addBuildLog(drvPath: StorePath, log: string | Uint8Array): Promise<void>;
  /**
   * Make ahead what an `addBuildLog` of `drvPath` needs besides its file (its directory), for a build
   * waiting for its slot. Resolves when done; never rejects (`addBuildLog` makes what is still missing and
   * reports what fails). Optional: stores whose logs need nothing made omit it.
   */
  prepareBuildLog?(drvPath: StorePath): Promise<void>;
  readBuildLog(drvPath: StorePath): Promise<string | undefined>;

  close(): Promise<void>;
}
