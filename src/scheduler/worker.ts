/**
 * One Worker per API call: a map path → goal promise, so every path gets exactly one goal per call
 * (Nix's derivationGoals/substitutionGoals). Goals are async functions; a throw is turned into a failure
 * once, at the memo boundary. Without keepGoing, the first failure stops the call (builders are killed).
 */
import PQueue from 'p-queue';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import { derivationGoal } from './derivation-goal.js';
import { failure, isSuccess, type BuildResult } from './results.js';
import { substitutionGoal, type SubstitutionOutcome } from './substitution-goal.js';
import { RealiseError } from '../store/errors.js';
import { pathContentsGood } from './verify.js';
import { slotGate, type GoalActivity } from './slot-gate.js';

export type BuildMode = 'normal' | 'repair' | 'check';

/** Thrown inside goals when the call is stopped; never escapes the worker. */
export class GoalStopped extends Error {
  constructor() { super('stopped'); }
}

interface DrvGoalEntry {
  /** Wanted outputs; undefined = all. */
  wanted: Set<string> | undefined;
  promise: Promise<BuildResult>;
  done: boolean;
}

function covers(have: Set<string> | undefined, want: Set<string> | undefined): boolean {
  if (have === undefined) return true;
  if (want === undefined) return false;
  for (const o of want) if (!have.has(o)) return false;
  return true;
}

/**
 * At most this many `.drv` loads of one call are in flight at once. Every goal of a call starts at once
 * and reads its `.drv` first; unbounded, a call of 100,000 goals opened more files than the process may
 * (EMFILE, measured in bench/scheduler-overhead.ts). Cached loads pass through the same gate and return
 * at once when their turn comes.
 */
const MAX_CONCURRENT_DRV_LOADS = 128;

export class Worker {
  readonly ctx: EngineContext;
  readonly mode: BuildMode;
  private readonly controller = new AbortController();
  private readonly drvGoals = new Map<StorePath, DrvGoalEntry>();
  private readonly substGoals = new Map<string, Promise<SubstitutionOutcome>>();
  /** Set when the call was stopped by a failure (no keepGoing) or by the caller's signal. */
  stoppedBy: 'failure' | 'signal' | undefined;
  /** Every failed goal of this call (not counting goals that were merely stopped), in order of failure. */
  readonly failures: { path: StorePath; result: BuildResult }[] = [];
  /** A setup error that aborts the whole call (as Nix throws out of Worker::run). */
  fatal: RealiseError | undefined;

  constructor(ctx: EngineContext, mode: BuildMode, signal?: AbortSignal) {
    const loads = new PQueue({ concurrency: MAX_CONCURRENT_DRV_LOADS });
    this.ctx = { ...ctx, loadDrv: (drvPath) => loads.add(() => ctx.loadDrv(drvPath)) };
    this.mode = mode;
    if (signal) {
      if (signal.aborted) this.stop('signal');
      else signal.addEventListener('abort', () => this.stop('signal'), { once: true });
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Stop the call; `cause`: the derivation whose failure stops it (reported first). */
  stop(why: 'failure' | 'signal', cause?: StorePath): void {
    if (this.controller.signal.aborted) return;
    this.stoppedBy = why;
    this.stopCause = cause;
    this.controller.abort(new GoalStopped());
  }

  throwIfStopped(): void {
    if (this.controller.signal.aborted) throw new GoalStopped();
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
      const base = path.slice(path.lastIndexOf('/') + 1);
      this.readyBatch.push({ key: `${base.slice(33)}$${path}`, round: depth ?? Infinity, release: resolve });
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

  warn(message: string, level?: 'warning' | 'plain' | 'info'): void {
    this.ctx.emit('warning', level ? { message, level } : { message });
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
      const pending: Promise<unknown>[] = [...this.drvGoals.values()].filter((e) => !e.done).map((e) => e.promise);
      pending.push(...this.substGoals.values());
      const before = this.drvGoals.size + this.substGoals.size;
      await Promise.allSettled(pending);
      if (this.drvGoals.size + this.substGoals.size === before && [...this.drvGoals.values()].every((e) => e.done)) return;
    }
  }

  /** The one derivation goal of `drvPath` in this call, widened when more outputs are wanted. */
  derivationGoal(drvPath: StorePath, outputs: Iterable<string> | undefined, mode: BuildMode = this.mode, parent?: StorePath): Promise<BuildResult> {
    if (!this.depths.has(drvPath)) this.depths.set(drvPath, parent === undefined ? 0 : (this.depths.get(parent) ?? 0) + 1);
    const want = outputs === undefined ? undefined : new Set(outputs);
    if (want && (want.has('*') || want.size === 0)) return this.derivationGoal(drvPath, undefined, mode);
    const existing = this.drvGoals.get(drvPath);
    if (existing && covers(existing.wanted, want)) return existing.promise;
    if (existing && !existing.done) {
      // Widen the running goal: it re-checks its wanted outputs before finishing (Nix's addWantedOutputs).
      existing.wanted = want === undefined || existing.wanted === undefined ? undefined : new Set([...existing.wanted, ...want]);
      return existing.promise;
    }
    const wanted = existing ? (want === undefined || existing.wanted === undefined ? undefined : new Set([...existing.wanted, ...want])) : want;
    const entry: DrvGoalEntry = { wanted, promise: undefined as unknown as Promise<BuildResult>, done: false };
    const previous = existing?.promise;
    this.ctx.emit('goal-created', { kind: 'derivation', path: drvPath, ...(wanted ? { outputs: [...wanted] } : {}) });
    entry.promise = (async () => {
      if (previous) await previous;
      return this.runDrvGoal(drvPath, entry, mode);
    })();
    this.drvGoals.set(drvPath, entry);
    return entry.promise;
  }

  private readonly activities = new Map<StorePath, GoalActivity>();
  /** Each derivation goal's distance from the call's targets, when it was first asked for (`parent`). */
  private readonly depths = new Map<StorePath, number>();

  depthOf(drvPath: StorePath): number {
    return this.depths.get(drvPath) ?? 0;
  }

  /** Whether the derivation goal of `drvPath` is preparing or waiting, for the order of build slots. */
  activity(drvPath: StorePath): GoalActivity | undefined {
    return this.activities.get(drvPath);
  }

  private async runDrvGoal(drvPath: StorePath, entry: DrvGoalEntry, mode: BuildMode): Promise<BuildResult> {
    this.ctx.emit('goal-started', { kind: 'derivation', path: drvPath });
    let result: BuildResult;
    const activity = slotGate(this.ctx.buildQueue).goal();
    if (activity) this.activities.set(drvPath, activity);
    try {
      for (;;) {
        const snapshot = entry.wanted === undefined ? undefined : new Set(entry.wanted);
        result = await derivationGoal(this, drvPath, snapshot, mode);
        // Widened while running and not everything was built: go round again for the new outputs.
        if (!isSuccess(result.status) || covers(snapshot, entry.wanted) || result.status === 'built') break;
      }
    } catch (e) {
      result = this.failureOf(e, drvPath);
    } finally {
      if (activity) {
        activity.done();
        if (this.activities.get(drvPath) === activity) this.activities.delete(drvPath);
      }
    }
    entry.done = true;
    if (!isSuccess(result.status) && !(result as { stopped?: boolean }).stopped) {
      // The failure that stopped the call comes first, before the dependents it made fail meanwhile.
      if (drvPath === this.stopCause) this.failures.unshift({ path: drvPath, result });
      else this.failures.push({ path: drvPath, result });
      this.noteFailure();
    }
    this.ctx.emit('goal-finished', { kind: 'derivation', path: drvPath, result });
    return result;
  }

  /** Turn an unexpected throw into a failure value (once, here). */
  failureOf(e: unknown, path: StorePath): BuildResult {
    if (e instanceof GoalStopped || this.signal.aborted) {
      return { ...failure('misc-failure', `build of '${path}' was stopped`), stopped: true } as BuildResult;
    }
    if (e instanceof RealiseError && e.code === 'build-setup') {
      this.fatal ??= e;
      this.stop('failure');
    }
    return failure('misc-failure', e instanceof Error ? e.message : String(e));
  }

  /** `depth`: how many references away from what the caller asked for (Nix's rounds; see readyInNixOrder). */
  substitutionGoal(path: StorePath, repair = false, depth = 0): Promise<SubstitutionOutcome> {
    const key = repair ? `repair:${path}` : path;
    let p = this.substGoals.get(key);
    if (!p) {
      this.ctx.emit('goal-created', { kind: 'substitution', path });
      p = (async (): Promise<SubstitutionOutcome> => {
        this.ctx.emit('goal-started', { kind: 'substitution', path });
        let outcome: SubstitutionOutcome;
        try {
          outcome = await substitutionGoal(this, path, repair, depth);
        } catch (e) {
          outcome = e instanceof GoalStopped || this.signal.aborted
            ? { kind: 'failed', message: `substitution of '${path}' was stopped` }
            : { kind: 'failed', message: e instanceof Error ? e.message : String(e) };
        }
        const ok = outcome.kind === 'valid' || outcome.kind === 'substituted';
        // As Nix (a finished goal is freed): whoever asks after a failure gets a new goal, so a derivation
        // that built the missing references of its outputs' substitutes can try them again.
        if (!ok && this.substGoals.get(key) === p) this.substGoals.delete(key);
        this.ctx.emit('goal-finished', {
          kind: 'substitution', path,
          result: ok
            ? { status: outcome.kind === 'valid' ? 'already-valid' : 'substituted', timesBuilt: 0, isNonDeterministic: false, startTime: 0, stopTime: 0, builtOutputs: {} }
            : failure('misc-failure', 'message' in outcome ? outcome.message : 'failed'),
        });
        return outcome;
      })();
      this.substGoals.set(key, p);
    }
    return p;
  }
}
