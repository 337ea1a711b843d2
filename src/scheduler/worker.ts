/**
 * One Worker per API call: a map path → goal, so every path gets exactly one goal per call (Nix's
 * derivationGoals/substitutionGoals). A derivation goal is a record moved along by its steps (async code
 * in derivation-goal.ts); while it waits for its inputs it is only that record, as Nix's goals wait as
 * objects. A throw is turned into a failure once, here. Without keepGoing, the first failure stops the
 * call (builders are killed).
 */
import { setMaxListeners } from 'node:events';
import PQueue from 'p-queue';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import { afterInputs, untilInputs, type WaitingForInputs } from './derivation-goal.js';
import { failure, isSuccess, stoppedResult, type BuildResult } from './results.js';
import { substitutionGoal, type SubstitutionOutcome } from './substitution-goal.js';
import { RealiseError } from '../store/errors.js';
import { BuildSetupError, GoalStopped } from './errors.js';
import { pathContentsGood } from './verify.js';
import { slotGate, type GoalActivity } from './slot-gate.js';
import { goalKey } from './paths.js';

export type BuildMode = 'normal' | 'repair' | 'check';

/**
 * The one derivation goal of a path in a call: a record the goal's steps move along, as Nix's goal objects,
 * not a suspended async function (a call of 100,000 goals has nearly all of them waiting for inputs at once).
 */
export interface DrvGoalEntry {
  readonly drvPath: StorePath;
  readonly mode: BuildMode;
  /** Wanted outputs; undefined = all. */
  wanted: Set<string> | undefined;
  /** Set when the goal is done. */
  result?: BuildResult;
  /** Holds one of the call's turns to start (see MAX_STARTING_GOALS). */
  starting?: boolean;
  /** Distance from the call's targets when the path was first asked for (the order of build slots). */
  readonly depth: number;
  /** Whether the goal is preparing or waiting, for the order of build slots (one build slot only). */
  activity?: GoalActivity | undefined;
  /** Goals waiting for this one (Nix's waiters), told when it is done. */
  waiters?: InputWait[];
  /** The result as a promise, made when someone awaits it (`Worker.promiseOf`). */
  promise?: Promise<BuildResult>;
  resolve?: (result: BuildResult) => void;
}

/**
 * A goal waiting for its inputs (Nix's waitees): counts those that are done. Without keepGoing the first
 * failure is enough (Nix wakes the waiter at once and drops its other waitees); with it, every input is
 * waited for.
 */
class InputWait {
  failed = 0;
  /** Inputs that were stopped (not failed): the waiter is then stopped too, not a dependency failure. */
  stopped = 0;
  constructor(
    private readonly worker: Worker,
    readonly goal: DrvGoalEntry,
    readonly wanted: Set<string> | undefined,
    readonly waiting: WaitingForInputs,
    private left: number,
  ) {}

  inputDone(how: 'ok' | 'failed' | 'stopped'): void {
    if (this.left === 0) return;
    if (how !== 'ok') {
      if (how === 'failed') this.failed++;
      else this.stopped++;
      // A failure ends the wait (without keepGoing), as Nix wakes the waiter at once. A stopped input
      // does not: the call is stopping, so the others end too, and a failure among them (which may be
      // what stopped the call, reported after the stop began) makes this a dependency failure, as in Nix.
      if (how === 'failed' && !this.worker.ctx.options.keepGoing) this.left = 1;
    }
    // The waiter goes on in a microtask, not inside the finishing input's stack (chains can be long).
    if (--this.left === 0) queueMicrotask(() => this.worker.inputsDone(this));
  }
}

function inputOutcome(r: BuildResult): 'ok' | 'failed' | 'stopped' {
  return isSuccess(r.status) ? 'ok' : r.status === 'stopped' ? 'stopped' : 'failed';
}

function covers(have: Set<string> | undefined, want: Set<string> | undefined): boolean {
  if (have === undefined) return true;
  if (want === undefined) return false;
  for (const o of want) if (!have.has(o)) return false;
  return true;
}

/**
 * At most this many derivation goals of a call are in their first stretch (reading the .drv, checking
 * outputs, asking for inputs) at once; the others wait to start as bare records, in the order they were
 * created. A goal gives its turn back when that stretch ends or when it first waits for other goals. A call
 * of 100,000 goals would otherwise start them all at once, each suspended on its .drv read (measured in
 * bench/scheduler-overhead.ts: peak memory, and EMFILE before .drv loads were bounded).
 */
const MAX_STARTING_GOALS = 128;

/** At most this many `.drv` loads of one call are in flight at once (cached loads pass the same gate). */
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

  /**
   * Set when a failure ended the call as Nix's plain Error thrown out of its worker (an output cycle, a
   * system call failing on an output): no other goal finishes after it, its dependents are stopped, not
   * failed ("N dependencies … failed to build" is never said).
   */
  private endedByError = false;

  /**
   * Stop the call; `cause`: the derivation whose failure stops it (reported first); `endsCall`: that
   * failure is one Nix throws out of its worker (see endedByError).
   */
  stop(why: 'failure' | 'signal', cause?: StorePath, endsCall = false): void {
    if (this.controller.signal.aborted) return;
    this.endedByError = endsCall;
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
      const pending: Promise<unknown>[] = [...this.drvGoals.values()].filter((e) => !e.result).map((e) => this.promiseOf(e));
      pending.push(...this.substGoals.values());
      const before = this.drvGoals.size + this.substGoals.size;
      await Promise.allSettled(pending);
      if (this.drvGoals.size + this.substGoals.size === before && [...this.drvGoals.values()].every((e) => e.result)) return;
    }
  }

  /** The one derivation goal of `drvPath` in this call, widened when more outputs are wanted. */
  derivationGoal(drvPath: StorePath, outputs: Iterable<string> | undefined, mode: BuildMode = this.mode, parent?: StorePath): Promise<BuildResult> {
    return this.promiseOf(this.goalEntry(drvPath, outputs, mode, parent));
  }

  /** derivationGoal's record, for a goal that waits for it as an input (see `waitForInputs`). */
  goalEntry(drvPath: StorePath, outputs: Iterable<string> | undefined, mode: BuildMode = this.mode, parent?: StorePath): DrvGoalEntry {
    const want = outputs === undefined ? undefined : new Set(outputs);
    if (want && (want.has('*') || want.size === 0)) return this.goalEntry(drvPath, undefined, mode, parent);
    const existing = this.drvGoals.get(drvPath);
    if (existing && covers(existing.wanted, want)) return existing;
    if (existing && !existing.result) {
      // Widen the running goal: it re-checks its wanted outputs before finishing (Nix's addWantedOutputs).
      existing.wanted = want === undefined || existing.wanted === undefined ? undefined : new Set([...existing.wanted, ...want]);
      return existing;
    }
    // A finished goal asked for more outputs: a new goal for all of them.
    const wanted = existing ? (want === undefined || existing.wanted === undefined ? undefined : new Set([...existing.wanted, ...want])) : want;
    const depth = existing?.depth ?? (parent === undefined ? 0 : (this.drvGoals.get(parent)?.depth ?? 0) + 1);
    const entry: DrvGoalEntry = { drvPath, mode, wanted, depth, activity: slotGate(this.ctx.buildQueue).goal() };
    this.ctx.emit('goal-created', { kind: 'derivation', path: drvPath, ...(wanted ? { outputs: [...wanted] } : {}) });
    this.drvGoals.set(drvPath, entry);
    if (this.starting < MAX_STARTING_GOALS) this.start(entry);
    else this.toStart.push(entry);
    return entry;
  }

  /** Goals holding a turn to start, and those waiting for one (FIFO from `toStartHead`). */
  private starting = 0;
  private toStart: DrvGoalEntry[] = [];
  private toStartHead = 0;

  private start(e: DrvGoalEntry): void {
    this.starting++;
    e.starting = true;
    this.ctx.emit('goal-started', { kind: 'derivation', path: e.drvPath });
    this.attempt(e);
  }

  private startedFully(e: DrvGoalEntry): void {
    if (!e.starting) return;
    e.starting = false;
    this.starting--;
    while (this.starting < MAX_STARTING_GOALS && this.toStartHead < this.toStart.length) {
      const next = this.toStart[this.toStartHead++]!;
      if (this.toStartHead === this.toStart.length) {
        this.toStart = [];
        this.toStartHead = 0;
      }
      this.start(next);
    }
  }

  /**
   * Goal `drvPath` waits for `p` (other goals' work): it gives back its turn to start and, for the order
   * of build slots, is not preparing meanwhile.
   */
  blocked<T>(drvPath: StorePath, p: Promise<T>): Promise<T> {
    const e = this.drvGoals.get(drvPath);
    if (e) this.startedFully(e);
    return e?.activity ? e.activity.blocked(p) : p;
  }

  /** A goal's result as a promise (made on demand: goals that only other goals wait for need none). */
  promiseOf(e: DrvGoalEntry): Promise<BuildResult> {
    e.promise ??= e.result
      ? Promise.resolve(e.result)
      : new Promise<BuildResult>((resolve) => {
          e.resolve = resolve;
        });
    return e.promise;
  }

  /** One pass of a goal over its wanted outputs (again when they were widened meanwhile). */
  private attempt(e: DrvGoalEntry): void {
    const wanted = e.wanted === undefined ? undefined : new Set(e.wanted);
    this.step(e, wanted, untilInputs(this, e.drvPath, wanted, e.mode));
  }

  private step(e: DrvGoalEntry, wanted: Set<string> | undefined, next: Promise<BuildResult | WaitingForInputs>): void {
    next
      .then(
        (r) => {
          this.startedFully(e);
          if ('deps' in r) this.waitForInputs(e, wanted, r);
          // Widened while running and not everything was built: go round again for the new outputs.
          else if (!isSuccess(r.status) || covers(wanted, e.wanted) || r.status === 'built') this.finish(e, r);
          else this.attempt(e);
        },
        (x: unknown) => {
          this.startedFully(e);
          this.finish(e, this.failureOf(x, e.drvPath));
        },
      )
      .catch((x: unknown) => {
        // A bug in the worker's own bookkeeping: fail the goal rather than leave it (and its waiters) hanging.
        this.escaped ??= x;
        if (!e.result) this.finish(e, this.failureOf(x, e.drvPath));
      });
  }

  /** Park goal `e` until its input goals and input-source substitutions are done. */
  private waitForInputs(e: DrvGoalEntry, wanted: Set<string> | undefined, waiting: WaitingForInputs): void {
    const inputs = waiting.deps.length + waiting.others.length;
    if (waiting.deps.length) this.ctx.emit('goal-waiting', { path: e.drvPath, inputs: waiting.deps.map((d) => d.drvPath) });
    const iw = new InputWait(this, e, wanted, waiting, inputs);
    if (inputs === 0) {
      this.inputsDone(iw);
      return;
    }
    // Waiting for other goals, it is not preparing (the order of build slots depends on it).
    e.activity?.pause();
    for (const d of waiting.deps) {
      if (d.result) iw.inputDone(inputOutcome(d.result));
      else (d.waiters ??= []).push(iw);
    }
    // A substitution that fails once the call is stopped was stopped with it.
    for (const p of waiting.others) void p.then((ok) => iw.inputDone(ok ? 'ok' : this.signal.aborted ? 'stopped' : 'failed'));
  }

  /** @internal Every input of a waiting goal is done (or one failed, without keepGoing). */
  inputsDone(iw: InputWait): void {
    const e = iw.goal;
    e.activity?.resume();
    if (iw.failed > 0 && !this.endedByError)
      this.finish(e, failure('dependency-failed', `${iw.failed} dependencies of derivation '${e.drvPath}' failed to build`));
    else if (iw.stopped > 0 || iw.failed > 0) this.finish(e, stoppedResult(`build of '${e.drvPath}'`));
    else this.step(e, iw.wanted, afterInputs(this, e.drvPath, iw.wanted, e.mode, iw.waiting));
  }

  /** The derivation goal of `drvPath` in this call (its depth and activity steer the order of build slots). */
  goalOf(drvPath: StorePath): DrvGoalEntry | undefined {
    return this.drvGoals.get(drvPath);
  }

  /** A bug in the worker's own bookkeeping, rethrown by the call once its goals are done. */
  escaped: unknown;

  private finish(e: DrvGoalEntry, result: BuildResult): void {
    const { drvPath } = e;
    e.activity?.done();
    e.activity = undefined;
    e.result = result;
    const waiters = e.waiters;
    e.waiters = undefined;
    if (!isSuccess(result.status) && result.status !== 'stopped') {
      // The failure that stopped the call comes first, before the dependents it made fail meanwhile.
      if (drvPath === this.stopCause) this.failures.unshift({ path: drvPath, result });
      else this.failures.push({ path: drvPath, result });
      this.noteFailure();
    }
    this.ctx.emit('goal-finished', { kind: 'derivation', path: drvPath, result });
    e.resolve?.(result);
    e.resolve = undefined;
    if (waiters) for (const iw of waiters) iw.inputDone(inputOutcome(result));
  }

  /** Turn an unexpected throw into a failure value (once, here). */
  failureOf(e: unknown, path: StorePath): BuildResult {
    if (e instanceof GoalStopped || this.signal.aborted) {
      return stoppedResult(`build of '${path}'`);
    }
    if (e instanceof RealiseError && e.code === 'build-setup') {
      this.fatal ??= e;
      this.stop('failure');
    }
    if (e instanceof BuildSetupError) return failure('misc-failure', { message: e.reason, keptBuildDir: e.keptBuildDir, hint: e.hint });
    if (e instanceof RealiseError) return failure('misc-failure', { message: e.shortMessage, hint: e.hint });
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
        let stopped = false;
        try {
          outcome = await substitutionGoal(this, path, repair, depth);
        } catch (e) {
          stopped = e instanceof GoalStopped || this.signal.aborted;
          outcome = stopped
            ? { kind: 'failed', message: `substitution of '${path}' was stopped` }
            : { kind: 'failed', message: e instanceof Error ? e.message : String(e) };
        }
        const ok = outcome.kind === 'valid' || outcome.kind === 'substituted';
        // As Nix (a finished goal is freed): whoever asks after a failure gets a new goal, so a derivation
        // that built the missing references of its outputs' substitutes can try them again.
        if (!ok && this.substGoals.get(key) === p) this.substGoals.delete(key);
        this.ctx.emit('goal-finished', {
          kind: 'substitution',
          path,
          result: ok
            ? {
                status: outcome.kind === 'valid' ? 'already-valid' : 'substituted',
                timesBuilt: 0,
                isNonDeterministic: false,
                startTime: 0,
                stopTime: 0,
                builtOutputs: {},
              }
            : stopped
              ? stoppedResult(`substitution of '${path}'`)
              : failure('misc-failure', 'message' in outcome ? outcome.message : 'failed'),
        });
        return outcome;
      })();
      this.substGoals.set(key, p);
    }
    return p;
  }
}
