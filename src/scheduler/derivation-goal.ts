/**
 * One derivation goal of a call (Nix's DerivationGoal): an object that owns its state — what it wants,
 * where it is, who waits for it (waiters) and what it waits for (waitees, counted) — and moves itself
 * from state to state. Its work runs in two stretches of async code (derivation-steps.ts):
 * `haveDerivation` ends by naming the inputs to wait for; the goal then parks as this object alone (a
 * call of 100,000 goals has nearly all of them waiting at once) until the last input is done, and goes
 * on with `inputsRealised`. The Worker keeps the goals of a call and the turns to start.
 *
 *   queued ──start──▶ working ──haveDerivation──▶ waiting ──last input done──▶ working ──inputsRealised──▶ done
 *                         └───────────────── a result (valid, substituted, failed) ──────────────────────▶ done
 */
import type { StorePath } from '../store/store-path.js';
import { haveDerivation, inputsRealised, type Waitees } from './derivation-steps.js';
import { failure, isSuccess, messageParts, stoppedResult, type BuildResult } from './results.js';
import { hintfmt } from '../store/nix-message.js';
import type { GoalActivity } from './slot-gate.js';
import type { BuildMode, Worker } from './worker.js';

type InputOutcome = 'ok' | 'failed' | 'stopped';

function outcomeOf(r: BuildResult): InputOutcome {
  return isSuccess(r.status) ? 'ok' : r.status === 'stopped' ? 'stopped' : 'failed';
}

/** Whether outputs `have` (undefined = all) include every one of `want` (undefined = all). */
export function covers(have: ReadonlySet<string> | undefined, want: ReadonlySet<string> | undefined): boolean {
  if (have === undefined) return true;
  if (want === undefined) return false;
  for (const o of want) if (!have.has(o)) return false;
  return true;
}

export class DerivationGoal {
  /** Wanted outputs (undefined = all); widened while the goal runs (Nix's addWantedOutputs). */
  wanted: Set<string> | undefined;
  /** Set when the goal is done. */
  result: BuildResult | undefined;
  /** Whether the goal is preparing or waiting, for the order of build slots (one build slot only). */
  activity: GoalActivity | undefined;
  /** Whether it holds one of the call's turns to start (Worker.MAX_STARTING_GOALS). */
  holdsStartTurn = false;
  private state: 'queued' | 'working' | 'waiting' | 'done' = 'queued';
  /** Goals waiting for this one (Nix's waiters), told when it is done. */
  private waiters: DerivationGoal[] | undefined;
  /** While waiting: what for, the wanted outputs of this pass, inputs not done yet, failed and stopped ones. */
  private waitees: Waitees | undefined;
  private waitingWanted: Set<string> | undefined;
  private inputsLeft = 0;
  private inputsFailed = 0;
  /** Inputs that were stopped (not failed): the goal is then stopped too, not a dependency failure. */
  private inputsStopped = 0;
  /** The result as a promise, made when someone awaits it (`outcome()`): goals only other goals wait for need none. */
  private promise: Promise<BuildResult> | undefined;
  private resolve: ((result: BuildResult) => void) | undefined;

  constructor(
    readonly worker: Worker,
    readonly drvPath: StorePath,
    readonly mode: BuildMode,
    wanted: Set<string> | undefined,
    /** Distance from the call's targets when the path was first asked for (the order of build slots). */
    readonly depth: number,
    activity: GoalActivity | undefined,
  ) {
    this.wanted = wanted;
    this.activity = activity;
  }

  get done(): boolean {
    return this.state === 'done';
  }

  /** The goal's result once it is done. */
  outcome(): Promise<BuildResult> {
    this.promise ??= this.result
      ? Promise.resolve(this.result)
      : new Promise<BuildResult>((resolve) => {
          this.resolve = resolve;
        });
    return this.promise;
  }

  /** Ask for more outputs: a running goal re-checks its wanted outputs before it finishes. */
  widen(want: Set<string> | undefined): void {
    this.wanted = want === undefined || this.wanted === undefined ? undefined : new Set([...this.wanted, ...want]);
  }

  /** The goal's turn to start came (the Worker hands out turns). */
  start(): void {
    this.worker.ctx.emit('goal-started', { kind: 'derivation', path: this.drvPath });
    this.attempt();
  }

  /**
   * The goal waits for `p` (other goals' work, a lock, a remote machine): it gives back its turn to start
   * and, for the order of build slots, is not preparing meanwhile.
   */
  blocked<T>(p: Promise<T>): Promise<T> {
    this.worker.releaseStartTurn(this);
    return this.activity ? this.activity.blocked(p) : p;
  }

  /** One pass over the wanted outputs (again when they were widened meanwhile). */
  private attempt(): void {
    const wanted = this.wanted === undefined ? undefined : new Set(this.wanted);
    this.run(wanted, haveDerivation(this, wanted));
  }

  /** Follow a stretch of work to its end: the goal waits for inputs, finishes, or goes round again. */
  private run(wanted: Set<string> | undefined, work: Promise<BuildResult | Waitees>): void {
    this.state = 'working';
    // (One reaction for both outcomes, with the bookkeeping's own failure caught inside it: no promise chained.)
    void work.then(
      (r) => this.stretchEnded(wanted, r, undefined),
      (x: unknown) => this.stretchEnded(wanted, undefined, x),
    );
  }

  /** A stretch of work ended with `r`, or threw `x`. */
  private stretchEnded(wanted: Set<string> | undefined, r: BuildResult | Waitees | undefined, x: unknown): void {
    try {
      this.worker.releaseStartTurn(this);
      if (r === undefined) this.finish(this.worker.failureOf(x, this.drvPath));
      else if ('deps' in r) this.waitFor(wanted, r);
      // Widened while running and not everything was built: go round again for the new outputs.
      else if (!isSuccess(r.status) || covers(wanted, this.wanted) || r.status === 'built') this.finish(r);
      else this.attempt();
    } catch (bug) {
      // A bug in the goal's own bookkeeping: fail it rather than leave it (and its waiters) hanging.
      this.worker.escaped ??= bug;
      if (!this.done) this.finish(this.worker.failureOf(bug, this.drvPath));
    }
  }

  /** Park until the input goals and input-source substitutions are done (Nix's waitees). */
  private waitFor(wanted: Set<string> | undefined, waitees: Waitees): void {
    this.state = 'waiting';
    this.waitees = waitees;
    this.waitingWanted = wanted;
    this.inputsLeft = waitees.deps.length + waitees.others.length;
    this.inputsFailed = this.inputsStopped = 0;
    if (waitees.deps.length) this.worker.ctx.emit('goal-waiting', { path: this.drvPath, inputs: waitees.deps.map((d) => d.drvPath) });
    if (this.inputsLeft === 0) {
      this.inputsDone();
      return;
    }
    // Waiting for other goals, it is not preparing (the order of build slots depends on it).
    this.activity?.pause();
    for (const d of waitees.deps) {
      if (d.result) this.inputDone(outcomeOf(d.result));
      else (d.waiters ??= []).push(this);
    }
    // A substitution that fails once the call is stopped was stopped with it.
    const { signal } = this.worker;
    for (const p of waitees.others) void p.then((ok) => this.inputDone(ok ? 'ok' : signal.aborted ? 'stopped' : 'failed'));
  }

  /**
   * One input is done. Without keepGoing the first failure is enough (Nix wakes the waiter at once and
   * drops its other waitees); with it, every input is waited for. A stopped input wakes nobody early:
   * the failure that stopped the call may be another input's, still on its way (a failed build stops
   * the call before its goal is done), and makes this goal dependency-failed, as in Nix, where goals
   * are stopped only after the failure reached the top-level goals.
   */
  private inputDone(how: InputOutcome): void {
    if (this.state !== 'waiting' || this.inputsLeft === 0) return;
    if (how === 'failed') {
      this.inputsFailed++;
      if (!this.worker.ctx.options.keepGoing) this.inputsLeft = 1;
    } else if (how === 'stopped') this.inputsStopped++;
    // The goal goes on in a microtask, not inside the finishing input's stack (chains can be long).
    if (--this.inputsLeft === 0) queueMicrotask(() => this.inputsDone());
  }

  /** Every input is done (or one failed, without keepGoing): fail, stop, or go on with `inputsRealised`. */
  private inputsDone(): void {
    const waitees = this.waitees!;
    const wanted = this.waitingWanted;
    this.waitees = this.waitingWanted = undefined;
    this.activity?.resume();
    // A failure that ended the call (as Nix's Error thrown out of its worker), or a target's failure
    // (Nix's worker stops before the dependents it woke run), leaves its dependents stopped.
    if (this.inputsFailed > 0 && !this.worker.endedByError && !this.worker.stoppedByTarget)
      this.finish(failure('dependency-failed', messageParts(hintfmt("%s dependencies of derivation '%s' failed to build", this.inputsFailed, this.drvPath))));
    else if (this.inputsStopped > 0 || this.inputsFailed > 0) this.finish(stoppedResult(`build of '${this.drvPath}'`));
    else this.run(wanted, inputsRealised(this, wanted, waitees));
  }

  /** The goal is done: the Worker records it, its awaiters and waiters are told. */
  private finish(result: BuildResult): void {
    this.state = 'done';
    this.activity?.done();
    this.activity = undefined;
    this.result = result;
    const waiters = this.waiters;
    this.waiters = undefined;
    this.worker.goalFinished(this, result);
    this.resolve?.(result);
    this.resolve = undefined;
    if (waiters) for (const g of waiters) g.inputDone(outcomeOf(result));
  }
}
