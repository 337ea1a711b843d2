/**
 * BuildEngine: the public entry point. Each call gets its own Worker (one goal per path per call); slots
 * (p-queue) and progress counters are per engine.
 */
import * as path from 'node:path';
import { EventEmitter } from 'eventemitter3';
import PQueue from 'p-queue';
import { shortMessageOf } from '../store/errors.js';
import type { Store } from '../store/store-api.js';
import type { GcEvent } from '../store/gc.js';
import { LocalStore } from '../store/local-store.js';
import { parseStorePath, type StorePath } from '../store/store-path.js';
import { flushRemovals } from '../platform/chroot.js';
import { NoSandbox } from '../platform/no-sandbox.js';
import type { Sandbox } from '../platform/sandbox.js';
import { useSandbox, type SandboxMode } from '../platform/sandbox-config.js';
import {
  substitutePath,
  sortByPriority,
  SubstituterError,
  type Substituter,
  type SubstitutablePathInfo,
  type TransferListener,
} from '../substituter/substituter.js';
import { checkDerivationOutputs, cloneDerivation, derivationNameFromPath, parseDerivation, type Derivation } from '../derivation/derivation.js';
import { hasherFor } from './realisations.js';
import type { EngineContext } from './context.js';
import { loadDrv, viewOf, type DrvView } from './drv-view.js';
import { BuildCancelledError, BuildFailedError, BuildSetupError } from './errors.js';
import { ProgressTracker, type BuildEngineEvents, type Progress } from './events.js';
import { resolveOptions, type BuildEngineOptions, type ResolvedOptions } from './options.js';
import { failure, isSuccess, type BuildResult, type BuildTarget, type TargetResult } from './results.js';
import { Worker, type BuildMode } from './worker.js';
import { queryMissing, type MissingInfo } from './query-missing.js';
import { SubstitutionSlots } from './substitution-slots.js';
import { goalKey } from './paths.js';
import { probeLinuxSandbox, type LinuxSandboxChoice } from './sandbox-factory.js';
import { DaemonStore } from '../remote/daemon-store.js';
import { buildThroughDaemon, daemonSettingsOf, queryMissingThroughDaemon } from './daemon-build.js';
import type { WorkerOptions } from '../remote/worker-protocol.js';
import { BuiltinBuilders, isBuiltinBuilder } from '../builtins/builtin-builders.js';
import { SandboxError } from '../platform/sandbox-errors.js';
import { buildDirPool } from '../platform/build-dir-pool.js';

/** How many parsed derivations an engine keeps. */
const DRV_CACHE_SIZE = 4_096;

/** How long an engine trusts what a substituter said of a path (its info, or that it has none). */
const INFO_CACHE_TTL_MS = 3600_000;

export interface BuildPathsOptions {
  readonly mode?: BuildMode;
  readonly signal?: AbortSignal;
}

/**
 * Whether a build runs sandboxed under a sandbox setting (not a Sandbox object), in a store whose logical
 * directory is `diverted` from its physical one or not (see storeDiverted); throws Nix's refusal.
 */
function sandboxed(view: DrvView, mode: SandboxMode, diverted: boolean): boolean {
  return useSandbox({ mode, noChroot: view.attrs.noChroot, impure: view.isFixedOutput, diverted, drvPath: view.drvPath });
}

/** A chroot store: its logical directory is not where its files are (such a store always builds sandboxed). */
function storeDiverted(store: Store): boolean {
  return path.resolve(store.storeDir) !== path.resolve(store.realStoreDir);
}

export class BuildEngine extends EventEmitter<BuildEngineEvents> {
  readonly options: ResolvedOptions;
  private readonly storePromise: Promise<Store>;
  private readonly buildQueue: PQueue;
  private readonly substSlots: SubstitutionSlots;
  private readonly progressTracker: ProgressTracker;
  /**
   * Parsed derivations, most recently used last, bounded (DRV_CACHE_SIZE) so a huge graph does not keep
   * every parsed .drv alive; an evicted one is read again if needed. Derivations handed in by the caller
   * (buildDerivation) are not in the store and live in `providedDrvs` instead.
   */
  private readonly drvCache = new Map<StorePath, Promise<DrvView>>();
  private readonly providedDrvs = new Map<StorePath, Promise<DrvView>>();
  private readonly infoCache = new Map<string, { at: number; info: SubstitutablePathInfo | undefined }>();
  private linuxSandbox: Promise<LinuxSandboxChoice> | undefined;
  private linuxChoice: LinuxSandboxChoice | undefined;
  private warnedNoSandbox = false;
  private readonly noSandbox: NoSandbox;
  /** Nix's built-in builders, run in the engine behind the Sandbox call. */
  private readonly builtins: BuiltinBuilders;
  private readonly ownsStore: boolean;
  /** Builders made from a `builders` string option: the engine's to close. */
  private readonly ownsBuilders: boolean;
  /** The options given that a daemon store gets as client settings. */
  private readonly daemonSettings: WorkerOptions;

  constructor(options: BuildEngineOptions = {}) {
    super();
    this.options = resolveOptions(options, true);
    this.daemonSettings = daemonSettingsOf(options);
    this.noSandbox = new NoSandbox({ filterSyscalls: this.options.filterSyscalls });
    this.ownsStore = !options.store;
    this.ownsBuilders = typeof options.builders === 'string';
    this.storePromise = options.store ? Promise.resolve(options.store) : LocalStore.openDefault();
    this.buildQueue = new PQueue({ concurrency: Math.max(1, this.options.maxJobs) });
    this.substSlots = new SubstitutionSlots(this.options.maxSubstitutionJobs);
    this.progressTracker = new ProgressTracker(
      (p) => this.emitSafely('progress', p),
      () => this.listenerCount('progress') > 0,
    );
    const o = this.options;
    this.builtins = new BuiltinBuilders({
      hashedMirrors: o.hashedMirrors,
      netrcFile: o.netrcFile,
      downloadAttempts: o.downloadAttempts,
      onDownloadProgress: (done, expected) => {
        for (const d of [this.progressTracker.download, this.progressTracker.builtinDownload]) {
          d.done += done;
          d.expected += expected;
        }
        this.progressTracker.changed();
      },
      onWarning: (message) => this.emitSafely('warning', { message }),
    });
  }

  /**
   * A throw out of one of our listeners while a call runs. Events are emitted from deep inside the work
   * (socket and timer callbacks too), where a throw would crash the process or strand a goal: it is kept
   * here, the work goes on, and the call rejects with it once its goals are done.
   */
  private listenerError: { error: unknown } | undefined;

  private takeListenerError(): { error: unknown } | undefined {
    const l = this.listenerError;
    this.listenerError = undefined;
    return l;
  }

  private emitSafely: EngineContext['emit'] = (event, payload) => {
    // Nobody listens (an engine used for its results alone): no stamped copy of the payload to make.
    if (this.listenerCount(event) === 0) return;
    try {
      // The payload's keys, then time, as a spread would make it: Object.assign, because V8 makes new hidden
      // classes for a spread followed by a new key each time (about 1-2 µs an event in code not optimised).
      const stamped = Object.assign({}, payload, { time: performance.now() });
      (this.emit as (e: string, a: unknown) => boolean)(event, stamped);
    } catch (error) {
      this.listenerError ??= { error };
    }
  };

  /** The store this engine builds into (opens the embedded default store on first use). */
  store(): Promise<Store> {
    return this.storePromise;
  }

  /** Current progress counters. */
  progress(): Progress {
    return this.progressTracker.snapshot();
  }

  private async context(): Promise<EngineContext> {
    const store = await this.storePromise;
    const subs = sortByPriority(await this.initSubstituters());
    const diverted = storeDiverted(store);
    return {
      store,
      options: this.options,
      substituters: subs,
      progress: this.progressTracker,
      buildQueue: this.buildQueue,
      emit: this.emitSafely,
      substitutionSlot: (path, fn) => this.substSlots.run(path, fn),
      queryPathInfosCached: (sub, paths, signal) => this.queryInfos(sub, paths, signal),
      knownPathInfo: (sub, path) => this.knownInfo(sub, path, Date.now()),
      fetchPath: async (sub, info, signal, repair, as) => {
        const p = this.progressTracker;
        let last = 0;
        let checked: Derivation | undefined;
        await substitutePath(store, sub, info, {
          signal,
          repair,
          as,
          checkDerivation: async (drvPath, text) => {
            checked = await checkSubstitutedDerivation(store, drvPath, text);
          },
          onTransfer: this.transferListener(sub),
          onProgress: (done) => {
            p.download.done += done - last;
            last = done;
            p.changed();
          },
        });
        if (checked) {
          // The goal that wanted this .drv reads it next: the derivation just checked is that reading. And
          // the .drv files that have it as an input are checked next: they hash it from here, not from its file.
          this.primeDrvCache(as ?? info.path, checked);
          hasherFor(store).parsedFrom(as ?? info.path, checked);
        }
        p.nar.done += info.narSize;
        p.changed();
      },
      loadDrv: (drvPath, checked) => this.loadDrvCached(store, drvPath, checked),
      cachedDrv: (drvPath) => this.cachedDrv(drvPath),
      forgetDrv: (drvPath) => this.drvCache.delete(drvPath),
      isProvidedDrv: (drvPath) => this.providedDrvs.has(drvPath),
      pickSandbox: (view) => this.pickSandbox(store, view, diverted),
      knownSandbox: (view) => this.knownSandbox(view, diverted),
    };
  }

  private substInit: Promise<Substituter[]> | undefined;
  private initSubstituters(): Promise<Substituter[]> {
    this.substInit ??= (async () => {
      const ok: Substituter[] = [];
      for (const s of this.options.substituters) {
        try {
          await s.init(undefined, this.transferListener(s));
          ok.push(s);
        } catch (e) {
          // As Nix, which leaves out a substituter it cannot open and logs why, in the error's own words.
          this.emitSafely('warning', { message: shortMessageOf(e) });
        }
      }
      return ok;
    })();
    return this.substInit;
  }

  /** A substituter's queries and downloads as engine events. */
  private transferListener(sub: Substituter): TransferListener {
    return (e) => {
      if (e.kind === 'query-started') this.emitSafely('query-started', { path: e.path, substituter: sub.uri });
      else if (e.kind === 'query-finished') this.emitSafely('query-finished', { path: e.path, substituter: sub.uri, found: e.found });
      else if (e.kind === 'download-started') this.emitSafely('download-started', { url: e.url, substituter: sub.uri });
      else if (e.kind === 'download-progress') this.emitSafely('download-progress', { url: e.url, done: e.done, expected: e.expected });
      else this.emitSafely('download-finished', { url: e.url, ok: e.ok });
    };
  }

  /** A path's info on `sub` as the engine's cache has it at `now`: the info, null (none), or undefined (not known, or expired). */
  private knownInfo(sub: Substituter, p: StorePath, now: number): SubstitutablePathInfo | null | undefined {
    const c = this.infoCache.get(`${sub.uri}\0${p}`);
    return c && now - c.at < INFO_CACHE_TTL_MS ? (c.info ?? null) : undefined;
  }

  private async queryInfos(sub: Substituter, paths: StorePath[], signal: AbortSignal): Promise<Map<StorePath, SubstitutablePathInfo>> {
    const out = new Map<StorePath, SubstitutablePathInfo>();
    const now = Date.now();
    const need: StorePath[] = [];
    for (const p of paths) {
      const known = this.knownInfo(sub, p, now);
      if (known === undefined) need.push(p);
      else if (known) out.set(p, known);
    }
    if (need.length) {
      let got;
      try {
        got = await sub.queryPathInfos(need, { signal, onTransfer: this.transferListener(sub) });
      } catch (e) {
        // A cache disabled after a failure (with fallback) is passed over silently, as Nix: it has none of
        // them for now, which is not cached (it is asked again once its time out is over).
        if (e instanceof SubstituterError && e.code === 'disabled') return out;
        throw e;
      }
      for (const p of need) {
        const info = got.get(p);
        this.infoCache.set(`${sub.uri}\0${p}`, { at: now, info });
        if (info) out.set(p, info);
      }
    }
    return out;
  }

  private loadDrvCached(store: Store, drvPath: StorePath, validityChecked = false): Promise<DrvView> {
    let p = this.cachedDrv(drvPath);
    if (!p) {
      p = loadDrv(store, drvPath, validityChecked);
      p.catch(() => this.drvCache.delete(drvPath));
      if (this.drvCache.size >= DRV_CACHE_SIZE) this.drvCache.delete(this.drvCache.keys().next().value!);
      this.drvCache.set(drvPath, p);
    }
    return p;
  }

  /** A derivation handed to us or in the cache (moved to its most recently used end); undefined: it must be read. */
  private cachedDrv(drvPath: StorePath): Promise<DrvView> | undefined {
    const provided = this.providedDrvs.get(drvPath);
    if (provided) return provided;
    const p = this.drvCache.get(drvPath);
    if (p) {
      this.drvCache.delete(drvPath);
      this.drvCache.set(drvPath, p);
    }
    return p;
  }

  /** Remember `drv`, just parsed from the valid `.drv` at `drvPath`, as loadDrvCached would read it. */
  private primeDrvCache(drvPath: StorePath, drv: Derivation): void {
    if (this.drvCache.has(drvPath) || this.providedDrvs.has(drvPath)) return;
    let view: DrvView;
    try {
      view = viewOf(drvPath, drv, derivationNameFromPath(drvPath));
    } catch {
      return; // loadDrv reports what is wrong with it, when a goal reads it
    }
    if (this.drvCache.size >= DRV_CACHE_SIZE) this.drvCache.delete(this.drvCache.keys().next().value!);
    this.drvCache.set(drvPath, Promise.resolve(view));
  }

  /** What pickSandbox gives when the Linux sandbox was probed already and nothing is refused or warned about. */
  private knownSandbox(view: DrvView, diverted: boolean): Sandbox | undefined {
    const mode = this.options.sandbox;
    if (isBuiltinBuilder(view.builder)) return undefined;
    if (typeof mode === 'object') return mode;
    try {
      return sandboxed(view, mode, diverted) ? this.linuxChoice?.sandbox : this.noSandbox;
    } catch {
      return undefined; // refused: pickSandbox says so in the slot
    }
  }

  private async pickSandbox(store: Store, view: DrvView, diverted: boolean): Promise<Sandbox> {
    // Built-ins run in the engine whatever the sandbox setting (Nix's need no builder process either).
    const mode = this.options.sandbox;
    if (isBuiltinBuilder(view.builder)) {
      // What the built-in may see is what a builder in this build's sandbox would.
      return this.builtins.withSandbox(typeof mode === 'object' ? mode.isolated || store.storeDir !== store.realStoreDir : sandboxed(view, mode, diverted));
    }
    if (typeof mode === 'object') return mode;
    if (!sandboxed(view, mode, diverted)) return this.noSandbox;
    // The Linux sandbox is probed when the first build needs it: a call that builds nothing (every output
    // valid) or nothing sandboxed starts no probe. Once found, it gets ready for the builds to come (its
    // helper server, chroots) while this first one sets up.
    this.linuxSandbox ??= probeLinuxSandbox(this.options).then((choice) => {
      void choice.sandbox?.warmUp?.({
        drvPath: view.drvPath,
        storeDir: store.storeDir,
        realStoreDir: store.realStoreDir,
        sandboxBuildDir: this.options.sandboxBuildDir,
        kvm: this.options.systemFeatures.includes('kvm'),
      });
      return choice;
    });
    const choice = (this.linuxChoice = await this.linuxSandbox);
    if (choice?.sandbox) return choice.sandbox;
    const why = choice && !choice.sandbox ? choice.reason : 'the sandbox was not probed';
    const fix = choice && !choice.sandbox ? choice.hint : 'install bubblewrap or a C compiler';
    const chroot = store.storeDir !== store.realStoreDir;
    if (chroot || !this.options.sandboxFallback) {
      // Nix 2.8 would fall back even for a chroot store and then fail to start the builder (its inputs
      // are not at their logical paths on the host); refusing up front says why.
      const hint = chroot
        ? `${fix}; or use a store whose logical directory is its physical one ('local?store=...')`
        : `${fix}; or set sandbox: false or sandboxFallback: true`;
      throw new BuildSetupError(
        chroot
          ? `cannot build '${view.drvPath}': the store '${store.realStoreDir}' is a chroot store (logical '${store.storeDir}'), which needs the Linux sandbox, and the sandbox is not available: ${why}`
          : `cannot build '${view.drvPath}' in the sandbox: ${why}`,
        { hint, cause: new SandboxError('sandbox-unavailable', why, { hint }) },
      );
    }
    if (!this.warnedNoSandbox) {
      this.warnedNoSandbox = true;
      this.emitSafely('warning', { message: `the sandbox is not available (${why}); building without it` });
    }
    return this.noSandbox;
  }

  /**
   * Realise targets: derivation outputs (`{ drvPath, outputs }`) or opaque paths (`{ path }`).
   * Resolves with one result per target; throws BuildFailedError carrying every failure.
   */
  async buildPaths(targets: readonly (BuildTarget | string)[], opts: BuildPathsOptions = {}): Promise<TargetResult[]> {
    const { results, worker } = await this.runTargetsWith(targets, opts);
    if (opts.signal?.aborted) throw new BuildCancelledError(opts.signal.reason);
    const topFailed = results.some((r) => !isSuccess(r.result.status));
    if (topFailed) {
      // Every failure of the call (root causes and the goals that depended on them), each once.
      const seen = new Set<StorePath>();
      const all: TargetResult[] = [];
      for (const f of worker?.failures ?? []) {
        if (seen.has(f.path)) continue;
        seen.add(f.path);
        all.push({ target: { drvPath: f.path }, path: f.path, result: f.result });
      }
      for (const r of results) {
        if (!isSuccess(r.result.status) && !seen.has(r.path) && r.result.status !== 'stopped') {
          seen.add(r.path);
          all.push(r);
        }
      }
      throw new BuildFailedError(all.length ? all : results.filter((r) => !isSuccess(r.result.status)));
    }
    return results;
  }

  /** Like buildPaths, but never throws on build failures: every target's result is returned. */
  async buildPathsWithResults(targets: readonly (BuildTarget | string)[], opts: BuildPathsOptions = {}): Promise<TargetResult[]> {
    return this.runTargets(targets, opts);
  }

  private async runTargets(targets: readonly (BuildTarget | string)[], opts: BuildPathsOptions): Promise<TargetResult[]> {
    return (await this.runTargetsWith(targets, opts)).results;
  }

  /**
   * Nix's worker checks `store.autoGC()` on every turn of its loop; here the store checks the free space
   * when a call starts and every `minFreeCheckInterval` seconds while it runs (collections run in the
   * background; the call does not wait for one). Returns the function that stops the checks.
   */
  private startAutoGc(store: Store): () => void {
    const { minFree, maxFree, minFreeCheckInterval } = this.options;
    if (!(minFree > 0) || !store.autoGC) return () => {};
    const settings = {
      minFree,
      maxFree,
      checkInterval: minFreeCheckInterval,
      onEvent: (e: GcEvent) => {
        if (e.type === 'info') this.emitSafely('warning', { message: e.message, level: 'info' });
      },
    };
    // Not awaited: the collection runs in the background (its promise never rejects, see Store.autoGC).
    const check = (): void => void store.autoGC?.(settings);
    check();
    const timer = setInterval(check, Math.max(minFreeCheckInterval, 1) * 1000);
    timer.unref();
    return () => clearInterval(timer);
  }

  private async runTargetsWith(targets: readonly (BuildTarget | string)[], opts: BuildPathsOptions): Promise<{ results: TargetResult[]; worker?: Worker }> {
    const mode = opts.mode ?? 'normal';
    const store = await this.storePromise;
    // A store over the Nix daemon builds itself: the daemon realises the targets, its log becomes our events.
    if (store instanceof DaemonStore) {
      store.setWorkerOptions(this.daemonSettings);
      return {
        results: await buildThroughDaemon(store, targets.map(parseTarget), {
          mode,
          signal: opts.signal,
          emit: this.emitSafely,
          progress: this.progressTracker,
        }),
      };
    }
    const ctx = await this.context();
    if (this.expectedAdditions) ctx.store.expectAdditions?.(this.expectedAdditions);
    this.expectedAdditions = undefined;
    const w = new Worker(ctx, mode, opts.signal);
    const parsed = targets.map(parseTarget);
    // Bad input is a typed error before anything runs (InvalidStorePathError), as Nix refuses it.
    for (const t of parsed) parseStorePath('drvPath' in t ? t.drvPath : t.path, ctx.store.storeDir);
    // With auto-GC, the targets are temporary roots before a collection can start, so their closures (a
    // `.drv` with its input derivations and sources) are kept; a goal roots its `.drv` only once it runs.
    if (this.options.minFree > 0) await ctx.store.addTempRoots?.(parsed.map((t) => ('drvPath' in t ? t.drvPath : t.path)));
    const stopAutoGc = this.startAutoGc(ctx.store);
    // The goals start in Nix's goal order (its worker runs the awake goals ordered by key: substitutions, then
    // derivations, each by name, then path), so that what the first goal to get somewhere decides (the
    // error a --check of outputs that are not valid ends the call with) is what Nix decides.
    const started = new Array<Promise<TargetResult>>(parsed.length);
    for (const i of nixGoalOrder(parsed)) {
      const t = parsed[i]!;
      if ('drvPath' in t) {
        // (No async frame per target: a call of 100,000 targets keeps them all waiting at once.)
        const outs = t.outputs === undefined || t.outputs === '*' ? undefined : t.outputs;
        w.targets.add(t.drvPath);
        started[i] = w.derivationGoal(t.drvPath, outs, mode).then((result) => ({ target: t, path: t.drvPath, result }));
      } else started[i] = this.pathTarget(w, t, mode);
    }
    const results = await Promise.all(started).finally(stopAutoGc);
    if (w.stoppedBy) await w.settle();
    // Sandboxed builds' chroots are deleted in the background; when the call returns they are gone, as
    // Nix leaves no `<drv>.chroot` behind.
    if (this.linuxChoice?.sandbox) await flushRemovals();
    const listener = this.takeListenerError();
    if (w.fatal) throw w.fatal;
    if (w.escaped !== undefined) throw w.escaped;
    if (listener) throw listener.error;
    return { results, worker: w };
  }

  /** An opaque path as a target: substitute it unless it is valid. */
  private async pathTarget(w: Worker, t: { readonly path: StorePath }, mode: BuildMode): Promise<TargetResult> {
    const o = await w.substitutionGoal(t.path, mode === 'repair');
    const ok = o.kind === 'valid' || o.kind === 'substituted';
    if (!ok) {
      w.failures.push({ path: t.path, result: failure('misc-failure', o.message) });
      // As Nix's worker, only a failure (ecFailed) stops the other targets without keepGoing: a path no
      // substituter has (ecNoSubstituters) or whose references could not be had (ecIncompleteClosure) does not.
      if (o.kind === 'failed') w.noteFailure();
    }
    return {
      target: t,
      path: t.path,
      result: ok
        ? {
            status: o.kind === 'valid' ? 'already-valid' : 'substituted',
            timesBuilt: 0,
            isNonDeterministic: false,
            startTime: 0,
            stopTime: 0,
            builtOutputs: {},
          }
        : failure('misc-failure', o.message),
    };
  }

  /** Build one derivation given its parsed form. Never throws on a build failure: returns the result. */
  async buildDerivation(drvPath: StorePath, drv?: Derivation, opts: BuildPathsOptions = {}): Promise<BuildResult> {
    if (drv) {
      // A copy, made before anything is awaited: the view shares the derivation's maps and lists, which the
      // caller keeps and may change.
      const given = cloneDerivation(drv);
      const store = await this.storePromise;
      const name = drvPath.slice(drvPath.lastIndexOf('/') + 34).replace(/\.drv$/, '');
      if (!(await store.isValidPath(drvPath))) {
        this.providedDrvs.set(drvPath, Promise.resolve(viewOf(drvPath, given, name)));
      }
    }
    const [r] = await this.runTargets([{ drvPath, outputs: '*' }], opts);
    return r!.result;
  }

  /** Make a store path valid (substituting it), as `nix-store --realise` of an opaque path. */
  async ensurePath(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.buildPaths([{ path }], opts);
  }

  /** Repair a path: substitute it again; if that fails, rebuild its deriver in repair mode. */
  async repairPath(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<void> {
    if ((await this.storePromise) instanceof DaemonStore) {
      await this.buildPaths([{ path }], { mode: 'repair', signal: opts.signal });
      return;
    }
    const ctx = await this.context();
    const w = new Worker(ctx, 'repair', opts.signal);
    const o = await w.substitutionGoal(path, true);
    const listener = this.takeListenerError();
    if (listener) throw listener.error;
    if (o.kind === 'substituted' || o.kind === 'valid') return;
    const info = await ctx.store.queryPathInfo(path);
    if (info?.deriver && (await ctx.store.isValidPath(info.deriver))) {
      const outs = await ctx.store.queryDerivationOutputs(info.deriver);
      const names = [...outs].filter(([, p]) => p === path).map(([n]) => n);
      await this.buildPaths([{ drvPath: info.deriver, outputs: names.length ? names : '*' }], { mode: 'repair', signal: opts.signal });
      return;
    }
    throw new BuildFailedError([
      {
        target: { path },
        path,
        result: failure('misc-failure', `cannot repair path '${path}': ${'message' in o ? o.message : 'no substitute and no known deriver'}`),
      },
    ]);
  }

  /** What would be built, substituted or is unknown, with download and NAR sizes, before anything runs. */
  async queryMissing(targets: readonly (BuildTarget | string)[]): Promise<MissingInfo> {
    const store = await this.storePromise;
    if (store instanceof DaemonStore) {
      store.setWorkerOptions(this.daemonSettings);
      return queryMissingThroughDaemon(store, targets.map(parseTarget));
    }
    const ctx = await this.context();
    return queryMissing(ctx, targets.map(parseTarget), (narSizes) => (this.expectedAdditions = narSizes));
  }

  /**
   * The NAR sizes of the substitutes the last queryMissing found, which a build that follows it will
   * restore: its first call hands them to the store (Store.expectAdditions), which may get ready for them
   * (a LocalStore starts its restore thread) while the goals start. Not at queryMissing itself: a caller
   * that only asks (a dry run, path-info) restores nothing.
   */
  private expectedAdditions: readonly number[] | undefined;

  /**
   * Stop the sandbox's helper processes and drop its prepared chroots; remove the build directories kept
   * for reuse in its build dir; close the substituters, the remote builders the engine made (from a
   * `builders` string) and the store if the engine opened it.
   */
  async close(): Promise<void> {
    // The pooled build directories are removed on the thread pool while the rest closes.
    const drained = buildDirPool(this.options.buildDir).drain();
    if (this.ownsBuilders) await Promise.all(this.options.builders.map((b) => b.close()));
    if (this.linuxChoice?.sandbox) {
      await this.linuxChoice.sandbox.close?.();
      await flushRemovals();
    }
    await this.builtins.close();
    for (const s of this.options.substituters) await s.close?.();
    if (this.ownsStore) await (await this.storePromise).close();
    await drained;
  }
}

/** Parse `DRV^out,dev`, `DRV^*`, `DRV!out` or a plain path into a BuildTarget. */
export function parseTarget(t: BuildTarget | string): BuildTarget {
  if (typeof t !== 'string') return t;
  const m = /^(.*?\.drv)(?:[!^](.*))?$/.exec(t);
  if (m) {
    const outs = m[2];
    if (outs === undefined || outs === '*' || outs === '') return { drvPath: m[1]!, outputs: '*' };
    return { drvPath: m[1]!, outputs: outs.split(',') };
  }
  return { path: t };
}

/** A substituted `.drv` must name the output paths its contents give (Nix's checkDerivationOutputs), or it is refused. */
async function checkSubstitutedDerivation(store: Store, drvPath: StorePath, text: string): Promise<Derivation> {
  const drv = parseDerivation(text, derivationNameFromPath(drvPath), { storeDir: store.storeDir });
  // The store's one hasher: its memo of input derivations' hashes serves every .drv of a closure (with a hasher
  // per .drv, each check hashed the whole closure below it again).
  await checkDerivationOutputs(hasherFor(store), drvPath, drv);
  return drv;
}

/** The indexes of `targets` in Nix's goal order (`goalKey`: opaque paths, substitutions, first). */
function nixGoalOrder(targets: readonly BuildTarget[]): number[] {
  const keys = targets.map((t) => ('drvPath' in t ? goalKey('derivation', t.drvPath) : goalKey('substitution', t.path)));
  return keys.map((_, i) => i).sort((a, b) => (keys[a]! < keys[b]! ? -1 : keys[a]! > keys[b]! ? 1 : a - b));
}
