/**
 * Typed events of a BuildEngine (eventemitter3). Everything a UI may show is an event: goals, log lines,
 * and progress counters shaped like Nix's activities.
 */
import type { StorePath } from '../store/store-path.js';
import type { BuildResult } from './results.js';

export type GoalKind = 'derivation' | 'substitution';

export interface ProgressCounters {
  readonly expected: number;
  readonly done: number;
  readonly running: number;
  readonly failed: number;
}

export interface Progress {
  readonly builds: ProgressCounters;
  readonly substitutions: ProgressCounters;
  /** Compressed bytes to download / downloaded. */
  readonly download: { readonly expected: number; readonly done: number };
  /** Uncompressed NAR bytes expected / done. */
  readonly nar: { readonly expected: number; readonly done: number };
}

export interface BuildEngineEvents {
  'goal-created': (e: { kind: GoalKind; path: StorePath; outputs?: readonly string[] }) => void;
  'goal-started': (e: { kind: GoalKind; path: StorePath }) => void;
  'goal-finished': (e: { kind: GoalKind; path: StorePath; result: BuildResult }) => void;
  'build-started': (e: { drvPath: StorePath; round: number; rounds: number; machine?: string; mode: 'normal' | 'repair' | 'check' }) => void;
  /**
   * One line of a builder's output (`\r` handled as Nix does). `line` is decoded as UTF-8 (invalid
   * sequences become U+FFFD); `bytes`, when given, are the line's bytes as the builder wrote them.
   */
  'build-log': (e: { drvPath: StorePath; line: string; bytes?: Buffer }) => void;
  /**
   * A derivation's outputs are locked by someone else (another process, or another call of this one,
   * building them): the build waits for that lock, then uses the outputs if they became valid. Nix's
   * "waiting for lock on …". `lockedPaths` are the outputs' physical paths.
   */
  'build-waiting': (e: { drvPath: StorePath; lockedPaths: readonly string[] }) => void;
  'build-finished': (e: { drvPath: StorePath; result: BuildResult }) => void;
  'substitution-started': (e: { path: StorePath; substituter: string }) => void;
  'substitution-finished': (e: { path: StorePath; substituter?: string; ok: boolean; error?: string }) => void;
  'post-build-hook-log': (e: { drvPath: StorePath; line: string }) => void;
  progress: (p: Progress) => void;
  /**
   * Something the user should know that does not fail the call by itself. `level: 'error'` for errors
   * Nix prints and then carries on from (e.g. a substitute that is gone: the path is built instead);
   * `level: 'plain'` for what Nix prints without a prefix (an output that differs between rounds when
   * determinism is not enforced).
   * `level: 'info'` for what Nix prints without a prefix at its info level (hidden by `--quiet`, e.g. repair's
   * "checking path '…'...").
   */
  warning: (e: { message: string; level?: 'warning' | 'error' | 'plain' | 'info' }) => void;
}

type Counters = { expected: number; done: number; running: number; failed: number };

/** Which counters a unit of work is counted in. */
export type CountedKind = 'builds' | 'substitutions';

/**
 * One unit of work counted as expected (as Nix's expectedBuilds), until it is withdrawn: the work turned
 * out not to be needed here. Withdrawing twice changes nothing.
 */
export class ExpectedCount {
  private withdrawn = false;
  constructor(private readonly tracker: ProgressTracker, private readonly counters: Counters) {
    counters.expected++;
    tracker.changed();
  }

  withdraw(): void {
    if (this.withdrawn) return;
    this.withdrawn = true;
    this.counters.expected--;
    this.tracker.changed();
  }
}

/**
 * One unit of work counted as running (Nix's MaintainCount): it ends exactly once, as done or failed,
 * or is dropped (counted as neither). The owner ends it in a `finally`, so no path can leave it running;
 * ending an ended count changes nothing.
 */
export class RunningCount {
  private ended = false;
  constructor(private readonly tracker: ProgressTracker, private readonly counters: Counters) {
    counters.running++;
    tracker.changed();
  }

  get isRunning(): boolean {
    return !this.ended;
  }

  /** No longer running; counted as done (`ok`) or failed, or, with `'dropped'`, as neither. */
  end(outcome: boolean | 'dropped'): void {
    if (this.ended) return;
    this.ended = true;
    this.counters.running--;
    if (outcome === true) this.counters.done++;
    else if (outcome === false) this.counters.failed++;
    this.tracker.changed();
  }
}

/** Mutable progress counters owned by one engine; emits snapshots. */
export class ProgressTracker {
  readonly builds: Counters = { expected: 0, done: 0, running: 0, failed: 0 };
  readonly substitutions: Counters = { expected: 0, done: 0, running: 0, failed: 0 };
  readonly download = { expected: 0, done: 0 };
  readonly nar = { expected: 0, done: 0 };
  private scheduled = false;

  constructor(private readonly emit: (p: Progress) => void) {}

  /** Count one unit of work as expected; the handle withdraws it. */
  expect(kind: CountedKind): ExpectedCount {
    return new ExpectedCount(this, this[kind]);
  }

  /** Count one unit of work as running; the handle ends it (once) as done or failed. */
  running(kind: CountedKind): RunningCount {
    return new RunningCount(this, this[kind]);
  }

  snapshot(): Progress {
    return {
      builds: { ...this.builds },
      substitutions: { ...this.substitutions },
      download: { ...this.download },
      nar: { ...this.nar },
    };
  }

  /** Coalesce bursts of updates into one event per tick. */
  changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.emit(this.snapshot());
    });
  }
}
