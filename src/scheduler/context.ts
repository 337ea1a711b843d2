/**
 * What goals share within one engine: the store, options, slots (p-queue: only leaf work takes one),
 * substituters, progress counters and the event emitter.
 */
import type PQueue from 'p-queue';
import type { Store } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import type { Sandbox } from '../platform/sandbox.js';
import type { Substituter, SubstitutablePathInfo } from '../substituter/substituter.js';
import type { EventPayloads, ProgressTracker } from './events.js';
import type { ResolvedOptions } from './options.js';
import type { DrvView } from './drv-view.js';

export interface EngineContext {
  readonly store: Store;
  readonly options: ResolvedOptions;
  /** Substituters sorted by priority (lower first). */
  readonly substituters: readonly Substituter[];
  readonly progress: ProgressTracker;
  readonly buildQueue: PQueue;
  /** Emit an event; the engine stamps it with its monotonic `time`. */
  emit<E extends keyof EventPayloads>(event: E, payload: EventPayloads[E]): void;
  /** Run `fn`, the substitution of `path`, in a substitution slot (a free one goes to the lowest goal key, as in Nix). */
  substitutionSlot<T>(path: StorePath, fn: () => Promise<T>): Promise<T>;
  /** `sub`'s infos of `paths` (those it has), cached a while; a substituter disabled after a failure has none. */
  queryPathInfosCached(sub: Substituter, paths: StorePath[], signal: AbortSignal): Promise<Map<StorePath, SubstitutablePathInfo>>;
  /** What queryPathInfosCached knows of `path` on `sub` without asking: its info, null (the substituter has none), or undefined (not known). */
  knownPathInfo(sub: Substituter, path: StorePath): SubstitutablePathInfo | null | undefined;
  /** Fetch a path from a substituter into the store (verifies signature, hash, size; registers atomically). */
  fetchPath(sub: Substituter, info: SubstitutablePathInfo, signal: AbortSignal, repair: boolean, as?: StorePath): Promise<void>;
  /** Whether the caller handed us this derivation (buildDerivation), so it need not be in the store. */
  isProvidedDrv(drvPath: StorePath): boolean;
  /** Load (and cache) a derivation; `validityChecked`: the caller has just found the `.drv` valid. */
  loadDrv(drvPath: StorePath, validityChecked?: boolean): Promise<DrvView>;
  /** The derivation loadDrv gives at once, when it is cached or handed to us (no load to start); else undefined. */
  cachedDrv?(drvPath: StorePath): Promise<DrvView> | undefined;
  /** Drop a derivation loadDrv cached: it was read before its validity was known, and it is not valid. */
  forgetDrv?(drvPath: StorePath): void;
  /** The sandbox to use for a derivation, or an error message saying why none can be used. */
  pickSandbox(view: DrvView): Promise<Sandbox>;
  /**
   * The sandbox pickSandbox gives `view`, when that is known at once and asking has no effect (no probe
   * started, no warning, no error); else undefined. What a build prepares ahead of its slot depends on it.
   */
  knownSandbox?(view: DrvView): Sandbox | undefined;
}
