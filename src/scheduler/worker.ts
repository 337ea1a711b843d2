/**
 * One Worker per API call (Nix's Worker): the goals of the call, one per path (derivation goals in
 * derivation-goal.ts, objects that own their state; substitution goals in substitution-goal.ts), the
 * turns to start, the failures and the stop. A throw out of a goal's work is turned into a failure once,
 * here. Without keepGoing, the first failure stops the call (builders are killed).
 */
import { setMaxListeners } from 'node:events';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import { covers, DerivationGoal } from './derivation-goal.js';
import { type BuildResult, isSuccess, failure, stoppedResult } from './results.js';
import { SubstitutionGoal, substituteRealisation, substitutionSucceeded, type FixedContent, type SubstitutionOutcome } from './substitution-goal.js';
import { systemErrorMessage } from '../store/system-error.js';
import { RealiseError, shortMessageOf } from '../store/errors.js';
import type { NixMessage } from '../store/nix-message.js';
import { BuildSetupError, GoalStopped } from './errors.js';
import { pathContentsGood } from './verify.js';
import { slotGate } from './slot-gate.js';
import { goalKey } from './paths.js';
import { TurnWave } from '../store/turn-wave.js';
import { BuildHookLife } from './build-hook.js';

export type BuildMode = 'normal' | 'repair' | 'check';

/**
 * At most this many derivation goals of a call are in their first stretch (reading the .drv, checking
 * outputs, asking for inputs) at once; the others wait to start as bare objects, in the order they were
 * created. A goal gives its turn back when that stretch ends or when it first waits for other goals. A call
 * of 100,000 goals would otherwise start them all at once, each suspended on its .drv read (measured in
 * bench/scheduler-overhead.ts: peak memory, and EMFILE before .drv loads were bounded).
 */
const MAX_STARTING_GOALS = 128;

/**
 * At most this many goals start in one turn of the event loop. A goal's first stretch seldom waits for
 * I/O, so the stretches of goals started together run as one long chain of promise callbacks; a build
 * that got its slot meanwhile waits for the end of that chain at each of its own I/O steps (its lock
 * files, its build directory, the builder's start). In smaller batches, the first builds start while
 * the other goals are still being started (measured: the first build of a fresh 200-node DAG started
 * 60-110 ms into the call, after every goal's first stretch).
 */
const STARTS_PER_TURN = 8;

/** At most this many `.drv` loads of one call are in flight at once (cached ones do not wait). */
const MAX_CONCURRENT_DRV_LOADS = 128;

export class Worker {
  readonly ctx: EngineContext;
  readonly mode: BuildMode;
  /** Every running build listens on its signal (maxJobs of them): no listener limit, so no leak warning. */
  private readonly controller = (() => {
    const c = new AbortController();
    setMaxListeners(0, c.signal);
    return c;
  })();
  private readonly drvGoals = new Map<StorePath, DerivationGoal>();
  private readonly substGoals = new Map<string, SubstitutionGoal>();
  /** Set when the call was stopped by a failure (no keepGoing) or by the caller's signal. */
  stoppedBy: 'failure' | 'signal' | undefined;
  /** Every failed goal of this call (not counting goals that were merely stopped), in order of failure. */
  readonly failures: { path: StorePath; result: BuildResult }[] = [];
  /** A setup error that aborts the whole call (as Nix throws out of Worker::run). */
  fatal: RealiseError | undefined;
  /**
   * The validity of paths that goals starting together ask for at once (a `.drv` and its outputs), in one
   * query: a set shared by the askers, which only look their own paths up in it.
   */
  readonly validTogether = new TurnWave<StorePath, ReadonlySet<StorePath>>((paths) => this.ctx.store.queryValidPaths(paths), queueMicrotask);
  /** The build-hook processes Nix 2.8's worker would start for this call (`hook-started`). */
  readonly hook = new BuildHookLife(() => this.ctx.emit('hook-started', {}));

  constructor(ctx: EngineContext, mode: BuildMode, signal?: AbortSignal) {
    const loads = new LoadGate(MAX_CONCURRENT_DRV_LOADS);
    // A derivation read already (each goal asks for its own and its inputs' several times) skips the gate.
    this.ctx = { ...ctx, loadDrv: (drvPath, checked) => ctx.cachedDrv?.(drvPath) ?? loads.run(() => ctx.loadDrv(drvPath, checked)) };
    this.mode = mode;
    if (signal) {
      if (signal.aborted) this.stop('signal');
      else signal.addEventListener('abort', () => this.stop('signal'), { once: true });
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /**
   * Set when a failure ended the call as Nix's plain Error thrown out of its worker (an output cycle, a
   * system call failing on an output): no other goal finishes after it, its dependents are stopped, not
   * failed ("N dependencies … failed to build" is never said).
   */
  endedByError = false;

  /**
   * The derivations the caller asked for (Nix's top-level goals). Without keepGoing, Nix's worker stops
   * as soon as one of them fails: a dependent it woke (itself a target, or a goal on the way to one) never
   * runs, so it is stopped, not dependency-failed. A failed dependency that is no target wakes its
   * dependents, which fail ("N dependencies … failed to build") before the call stops.
   */
  readonly targets = new Set<StorePath>();
  /** Set when the failure that stopped the call was a target's (see `targets`). */
  stoppedByTarget = false;

  /**
   * Stop the call; `cause`: the derivation whose failure stops it (reported first); `endsCall`: that
   * failure is one Nix throws out of its worker (see endedByError).
   */
  stop(why: 'failure' | 'signal', cause?: StorePath, endsCall = false): void {
    if (this.controller.signal.aborted) return;
    this.endedByError = endsCall;
    this.stoppedByTarget = cause !== undefined && this.targets.has(cause);
    this.stoppedBy = why;
    this.stopCause = cause;
    this.controller.abort(new GoalStopped());
  }

  /** Substitution goals that start in this turn of the event loop (see substitutionStart). */
  private readonly startWave = new TurnWave<StorePath, ReadonlySet<StorePath>>((paths) => rootAndQuery(this.ctx.store, paths), setImmediate);
  /** Substitutions that get their slot in this turn (see validNow). */
  private readonly slotWave = new TurnWave<StorePath, ReadonlySet<StorePath>>((paths) => this.ctx.store.queryValidPaths(paths), setImmediate);

  /**
   * Make `path` a temporary root, then tell whether it is valid (Nix's PathSubstitutionGoal::init): the
   * substitution goals that start in the same turn of the event loop do it as one wave, their roots
   * recorded in one write and their validity asked in one query, rather than each on its own.
   */
  async substitutionStart(path: StorePath): Promise<boolean> {
    return (await this.startWave.add(path)).has(path);
  }

  /** Whether `path` is valid now, asked in one query with the other substitutions that get a slot in this turn. */
  async validNow(path: StorePath): Promise<boolean> {
    return (await this.slotWave.add(path)).has(path);
  }

  private readyBatch: { key: string; round: number; release: () => void }[] = [];

  /**
   * Resolves on the next turn of the event loop, in Nix's goal order among the substitutions that got
   * ready in this turn. Nix's worker runs its awake goals round by round, ordered by key (for a
   * substitution: the path's name, then the path), so paths whose references became valid together start
   * (and print "copying path …") in that order; without this they would start in the order their waits
   * happened to resolve. A path with no references (`depth` given) is ready as soon as it is looked up,
   * which in Nix happens a round later for each reference between it and the caller's path: those go
   * first by depth. Paths woken by a finished reference (`depth` undefined) go in one round after them.
   */
  readyInNixOrder(path: StorePath, depth: number | undefined): Promise<void> {
    return new Promise((resolve) => {
      if (this.readyBatch.length === 0) {
        setImmediate(() => {
          const batch = this.readyBatch;
          this.readyBatch = [];
          batch.sort((x, y) => x.round - y.round || (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
          for (const b of batch) b.release();
        });
      }
      this.readyBatch.push({ key: goalKey('substitution', path), round: depth ?? Infinity, release: resolve });
    });
  }

  private readonly contentsGood = new Map<StorePath, boolean>();

  /**
   * Nix's Worker::pathContentsGood (repair mode): hash a valid path once per call and compare with its
   * registered NAR hash, saying so as Nix does ("checking path '…'...", "path '…' is corrupted or missing!").
   */
  async pathContentsGood(path: StorePath): Promise<boolean> {
    const known = this.contentsGood.get(path);
    if (known !== undefined) return known;
    this.warn(`checking path '${path}'...`, 'info');
    const ok = await pathContentsGood(this.ctx.store, path);
    this.contentsGood.set(path, ok);
    if (!ok) this.warn(`path '${path}' is corrupted or missing!`, 'plain');
    return ok;
  }

  /** A path just substituted or built is good (Nix's markContentsGood). */
  markContentsGood(path: StorePath): void {
    this.contentsGood.set(path, true);
  }

  /** A warning event; a NixMessage's plain text is its `message`, its coloured text its `colouredMessage`. */
  warn(message: string | NixMessage, level?: 'warning' | 'error' | 'plain' | 'info' | 'raw'): void {
    const m = typeof message === 'string' ? { message } : { message: message.plain, colouredMessage: message.coloured };
    this.ctx.emit('warning', level ? { ...m, level } : m);
  }

  /** The derivation whose failure stopped the call (its failure is reported first). */
  private stopCause: StorePath | undefined;

  /**
   * Called when a top-level or sub-goal fails: without keepGoing, stop everything. A build calls it as
   * soon as its builder fails (before its slot is handed on), naming itself.
   */
  noteFailure(cause?: StorePath): void {
    if (!this.ctx.options.keepGoing) this.stop('failure', cause); // stop() ignores a second stop
  }

  /**
   * Wait until every goal of this call has finished. After a stop, goals that were not awaited by a
   * target (the failed build that caused the stop, builds being killed) may still be closing logs and
   * removing their outputs; the call returns only once they are done, so nothing runs on behind it and
   * every failure is in `failures`.
   */
  async settle(): Promise<void> {
    for (;;) {
      const pending: Promise<unknown>[] = [...this.drvGoals.values()].filter((g) => !g.done).map((g) => g.outcome());
      for (const g of this.substGoals.values()) pending.push(g.outcome);
      const before = this.drvGoals.size + this.substGoals.size;
      await Promise.allSettled(pending);
      if (this.drvGoals.size + this.substGoals.size === before && [...this.drvGoals.values()].every((g) => g.done)) return;
    }
  }

  /** The result of the one derivation goal of `drvPath` in this call (see `goalFor`). */
  derivationGoal(drvPath: StorePath, outputs: Iterable<string> | undefined, mode: BuildMode = this.mode, parent?: DerivationGoal): Promise<BuildResult> {
    return this.goalFor(drvPath, outputs, mode, parent).outcome();
  }

  /**
   * The one derivation goal of `drvPath` in this call, made (and started, or queued for a turn to start)
   * when the path is first asked for, widened when more outputs are wanted. `parent`: the goal that
   * waits for it (its depth orders build slots).
   */
  goalFor(drvPath: StorePath, outputs: Iterable<string> | undefined, mode: BuildMode = this.mode, parent?: DerivationGoal): DerivationGoal {
    const want = outputs === undefined ? undefined : new Set(outputs);
    if (want && (want.has('*') || want.size === 0)) return this.goalFor(drvPath, undefined, mode, parent);
    const existing = this.drvGoals.get(drvPath);
    if (existing && covers(existing.wanted, want)) return existing;
    if (existing && !existing.done) {
      existing.widen(want);
      return existing;
    }
    // A finished goal asked for more outputs: a new goal for all of them.
    const wanted = existing ? (want === undefined || existing.wanted === undefined ? undefined : new Set([...existing.wanted, ...want])) : want;
    const depth = existing?.depth ?? (parent === undefined ? 0 : parent.depth + 1);
    const goal = new DerivationGoal(this, drvPath, mode, wanted, depth, slotGate(this.ctx.buildQueue).goal());
    this.ctx.emit('goal-created', { kind: 'derivation', path: drvPath, ...(wanted ? { outputs: [...wanted] } : {}) });
    this.drvGoals.set(drvPath, goal);
    if (this.mayStart() && this.toStartHead === this.toStart.length) this.start(goal);
    else this.toStart.push(goal);
    return goal;
  }

  /** Goals holding a turn to start, and those waiting for one (FIFO from `toStartHead`). */
  private starting = 0;
  private toStart: DerivationGoal[] = [];
  private toStartHead = 0;
  /** Goals started in this turn of the event loop (see STARTS_PER_TURN). */
  private startedThisTurn = 0;

  private mayStart(): boolean {
    return this.starting < MAX_STARTING_GOALS && this.startedThisTurn < STARTS_PER_TURN;
  }

  private start(goal: DerivationGoal): void {
    this.starting++;
    if (this.startedThisTurn++ === 0) {
      // The turn's budget comes back in the next turn, after the I/O callbacks that came in meanwhile.
      setImmediate(() => {
        this.startedThisTurn = 0;
        this.startWaiting();
      });
    }
    goal.holdsStartTurn = true;
    goal.start();
  }

  /** A goal's first stretch ended, or it waits for other goals: its turn to start goes to the next one. */
  releaseStartTurn(goal: DerivationGoal): void {
    if (!goal.holdsStartTurn) return;
    goal.holdsStartTurn = false;
    this.starting--;
    this.startWaiting();
  }

  private startWaiting(): void {
    while (this.mayStart() && this.toStartHead < this.toStart.length) {
      const next = this.toStart[this.toStartHead++]!;
      if (this.toStartHead === this.toStart.length) {
        this.toStart = [];
        this.toStartHead = 0;
      }
      this.start(next);
    }
  }

  /** A bug in the worker's own bookkeeping, rethrown by the call once its goals are done. */
  escaped: unknown;

  /** @internal A derivation goal is done: a failure is recorded (and stops the call without keepGoing). */
  goalFinished(goal: DerivationGoal, result: BuildResult): void {
    const { drvPath } = goal;
    if (!isSuccess(result.status) && result.status !== 'stopped') {
      // The failure that stopped the call comes first, before the dependents it made fail meanwhile.
      if (drvPath === this.stopCause) this.failures.unshift({ path: drvPath, result });
      else this.failures.push({ path: drvPath, result });
      this.noteFailure(drvPath);
    }
    this.hook.settled(drvPath);
    this.ctx.emit('goal-finished', { kind: 'derivation', path: drvPath, result });
  }

  /**
   * A setup error ends the whole call, as Nix throws it out of Worker::run: it becomes the call's `fatal`
   * (the call rejects with it once its goals are done), the call is stopped, and the goal's result is
   * its failure (in a call already stopped, the goal was merely stopped).
   */
  endCall(error: BuildSetupError, drvPath: StorePath): BuildResult {
    if (this.signal.aborted) return stoppedResult(`build of '${drvPath}'`);
    this.endCallWith(error);
    return failure('misc-failure', { message: error.reason, keptBuildDir: error.keptBuildDir, hint: error.hint, endedCall: true });
  }

  /** End the call with `error` (its `fatal`, unless one came first), stopping its goals. */
  endCallWith(error: RealiseError): void {
    if (this.fatal === undefined) this.ctx.emit('call-ending', { error });
    this.fatal ??= error;
    this.stop('failure');
  }

  /**
   * A throw out of a goal's work as a failure value (once, here): the stop of the call unwinding it (the
   * signal's abort), or an unexpected error of the store or the platform. Failures the goal's steps know
   * of are values already and never thrown.
   */
  failureOf(e: unknown, path: StorePath): BuildResult {
    if (this.signal.aborted) return stoppedResult(`build of '${path}'`);
    if (e instanceof RealiseError) return failure('misc-failure', { message: e.shortMessage, hint: e.hint });
    // A failed system call (the store became unwritable, the disk is full) in Nix's words, as its SysError,
    // which is no BuildError: it ends the call (keepGoing or not), the other goals stopped, not failed.
    const sys = systemErrorMessage(e);
    if (sys === undefined) return failure('misc-failure', e instanceof Error ? e.message : String(e));
    this.stop('failure', path, true);
    return failure('misc-failure', { message: sys, endedCall: true });
  }

  /**
   * The outcome of the one substitution goal of `path` in this call. `depth`: how many references away
   * from what the caller asked for (Nix's rounds; see readyInNixOrder). `ca`: the content of a fixed
   * output (Nix's getDerivationCA), by which a cache of another store directory can serve it.
   */
  substitutionGoal(path: StorePath, repair = false, depth = 0, ca?: FixedContent): Promise<SubstitutionOutcome> {
    const key = substitutionKey(path, repair);
    let goal = this.substGoals.get(key);
    if (!goal) {
      goal = new SubstitutionGoal(this, path, repair, depth, ca);
      this.substGoals.set(key, goal);
    }
    return goal.outcome;
  }

  private readonly realisationGoals = new Map<string, Promise<SubstitutionOutcome>>();

  /**
   * The outcome of the one substitution of the realisation `id` in this call (Nix's
   * DrvOutputSubstitutionGoal); a failed one is forgotten, as a failed path substitution.
   */
  drvOutputSubstitutionGoal(id: string): Promise<SubstitutionOutcome> {
    let goal = this.realisationGoals.get(id);
    if (!goal) {
      goal = substituteRealisation(this, id)
        .catch((e: unknown): SubstitutionOutcome => ({ kind: 'failed', message: shortMessageOf(e) }))
        .then((o) => {
          if (!substitutionSucceeded(o)) this.realisationGoals.delete(id);
          return o;
        });
      this.realisationGoals.set(id, goal);
    }
    return goal;
  }

  /**
   * @internal A substitution goal is done. As Nix (a finished goal is freed), a failed one is forgotten:
   * whoever asks after it gets a new goal, so a derivation that built the missing references of its
   * outputs' substitutes can try them again.
   */
  substitutionFinished(goal: SubstitutionGoal, ok: boolean): void {
    const key = substitutionKey(goal.path, goal.repair);
    if (!ok && this.substGoals.get(key) === goal) this.substGoals.delete(key);
  }
}

const substitutionKey = (path: StorePath, repair: boolean): string => (repair ? `repair:${path}` : path);

/** The paths made temporary roots (in one write where the store can), then those of them that are valid. */
async function rootAndQuery(store: EngineContext['store'], paths: readonly StorePath[]): Promise<ReadonlySet<StorePath>> {
  if (store.addTempRoots) await store.addTempRoots(paths);
  else if (store.addTempRoot) for (const p of paths) await store.addTempRoot(p);
  return store.queryValidPaths(paths);
}

/**
 * At most `limit` loads at once; the others start in the order they were asked for, each in the place of
 * one that ended (a late caller does not overtake them). Leaner than a general queue: a call makes one
 * load per derivation.
 */
class LoadGate {
  private running = 0;
  private waiting: (() => void)[] = [];
  private head = 0;

  constructor(private readonly limit: number) {}

  run<T>(load: () => Promise<T>): Promise<T> {
    if (this.running < this.limit) {
      this.running++;
      return this.start(load);
    }
    return new Promise<void>((resolve) => this.waiting.push(resolve)).then(() => this.start(load));
  }

  private start<T>(load: () => Promise<T>): Promise<T> {
    let p: Promise<T>;
    try {
      p = load();
    } catch (e) {
      p = Promise.reject(e as Error);
    }
    p.then(this.ended, this.ended);
    return p;
  }

  /** A load ended: its place goes to the first waiting one, if any. */
  private readonly ended = (): void => {
    if (this.head === this.waiting.length) {
      this.running--;
      return;
    }
    const next = this.waiting[this.head++]!;
    if (this.head === this.waiting.length) {
      this.waiting = [];
      this.head = 0;
    }
    next();
  };
}
