/**
 * Typed events of a BuildEngine (eventemitter3). Everything a UI may show is an event: goals, log lines,
 * and progress counters shaped like Nix's activities.
 */
import type { StorePath } from '../store/store-path.js';
import type { BuildResult } from './results.js';
import type { RemoteStep } from '../remote/remote-builder.js';
import type { RemoteLogEvent } from '../remote/worker-protocol.js';
import type { BuilderActivityEvent } from './log-collector.js';
import type { RealiseError } from '../store/errors.js';

export type { BuilderActivityEvent };

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
  /**
   * Compressed bytes to download / downloaded: substitutions' and built-in builders' (builtin:fetchurl).
   * `builtin` is the built-ins' part, which Nix's own expected download size leaves out (its built-in
   * runs as a builder that reports its download as an activity of its own).
   */
  readonly download: { readonly expected: number; readonly done: number; readonly builtin?: { readonly expected: number; readonly done: number } };
  /** Uncompressed NAR bytes expected / done. */
  readonly nar: { readonly expected: number; readonly done: number };
}

/**
 * What each event says (the engine adds `time`, see BuildEngineEvents). Emitted through the engine's
 * context with these payloads.
 */
export interface EventPayloads {
  'goal-created': { kind: GoalKind; path: StorePath; outputs?: readonly string[] };
  'goal-started': { kind: GoalKind; path: StorePath };
  /** A derivation goal waits for the goals of its input derivations (Nix's waitees): the graph of the call. */
  'goal-waiting': { path: StorePath; inputs: readonly StorePath[] };
  /** `result.status` is `'stopped'` for a goal the call stopped (a failure elsewhere without keepGoing, or the signal). */
  'goal-finished': { kind: GoalKind; path: StorePath; result: BuildResult };
  /**
   * A builder starts, locally in a build slot or on a remote `machine`: Nix's "building '…'". Each is
   * followed by exactly one `build-finished` of the same drvPath and round, and the two bracket the time
   * the build holds its slot: started builds not yet finished never outnumber `maxJobs` (plus the remote
   * machines' slots).
   */
  'build-started': { drvPath: StorePath; round: number; rounds: number; machine?: string; mode: 'normal' | 'repair' | 'check' };
  /**
   * A build is about to start (here or on a remote machine) that Nix 2.8 offers to its build hook first: a
   * build in normal mode, unless it prefers a local build and can have one here (maxJobs 1 or more, this
   * system). Told whether or not builders are configured, before its `build-started`: Nix starts its hook
   * for the first such build, and the hook reads the configuration again.
   */
  'hook-asked': { drvPath: StorePath };
  /**
   * A build-hook process of Nix 2.8 would start now (the hook reads the configuration again, and warns as
   * Nix does as it starts): at the call's first `hook-asked`, and when a remote machine takes a build
   * (right after its `build-started`, the machine taking the hook with it) while other builds offered to the
   * hook wait for its answer, else at the next `hook-asked`. Not told through a daemon, whose worker starts
   * its own hooks.
   */
  'hook-started': Record<string, never>;
  /**
   * One line of a builder's output (`\r` handled as Nix does). `line` is decoded as UTF-8 (invalid
   * sequences become U+FFFD); `bytes`, when given, are the line's bytes as the builder wrote them.
   */
  'build-log': { drvPath: StorePath; line: string; bytes?: Buffer };
  /**
   * A derivation's outputs are locked by someone else (another process, or another call of this one,
   * building them): the build waits for that lock, then uses the outputs if they became valid. Nix's
   * "waiting for lock on …". `lockedPaths` are the outputs' physical paths. `build-lock-acquired` follows
   * once the wait is over.
   */
  'build-waiting': { drvPath: StorePath; lockedPaths: readonly string[] };
  /** The outputs' locks a `build-waiting` waited for were taken (or the wait ended with the call). */
  'build-lock-acquired': { drvPath: StorePath };
  /**
   * The builder of a `build-started` is done and its slot is about to be freed. `outcome`: the builder
   * succeeded (its outputs are then registered: the derivation's result, with outputs or a rejection, is
   * its `goal-finished`), failed (exit status, timeout, log limit, setup), or was stopped. A failed build
   * carries its failure in `result`, made before the slot is handed on (as Nix reports a failed build
   * before it starts another). A stopped build's directory kept with `keepFailed` is `keptBuildDir` (Nix
   * keeps it too, and notes it as the call ends).
   */
  'build-finished': {
    drvPath: StorePath;
    round: number;
    rounds: number;
    machine?: string;
    outcome: 'success' | 'failure' | 'stopped';
    result?: BuildResult;
    keptBuildDir?: string;
  };
  /**
   * A path's info is asked of a substituter itself (not answered from a narinfo cache): Nix's "querying
   * info about 'PATH' on 'SUBSTITUTER'". `query-finished` follows, also when the query fails.
   */
  'query-started': { path: StorePath; substituter: string };
  'query-finished': { path: StorePath; substituter: string; found: boolean };
  /**
   * A file is downloaded from an HTTP(S) substituter (its nix-cache-info, a narinfo, a NAR file): Nix's
   * "downloading 'URL'". `download-progress` counts the bytes (`expected` 0 while unknown);
   * `download-finished` follows, also when the download fails.
   */
  'download-started': { url: string; substituter: string };
  'download-progress': { url: string; done: number; expected: number };
  'download-finished': { url: string; ok: boolean };
  /**
   * A step of a remote build on this side, between its `build-started` and `build-finished`: getting a
   * connection, waiting for the machine's upload lock, copying inputs to the machine and outputs back
   * (each copy's paths, each path). Told at its start and its end (also when it fails): Nix's build hook
   * activities. `store`: the machine's store as Nix names it in its copies (`ssh://host`, `local`).
   */
  'remote-step': { drvPath: StorePath; machine: string; store: string; step: RemoteStep; phase: 'start' | 'end' };
  /**
   * What the machine's Nix tells while it builds, as its daemon sends it (ssh-ng:// machines): its own
   * activities (its build, its call's Realise/Builds/CopyPaths), their results and messages. The build's
   * log lines also come as `build-log`.
   */
  'remote-log': { drvPath: StorePath; machine: string; event: RemoteLogEvent };
  /**
   * A local builder's `@nix` line about activities, between its `build-started` and `build-finished`
   * (a built-in's too: builtin:fetchurl's download): the phase it enters (Nix's SetPhase result on the
   * build's activity), or a FileTransfer activity of its own (`start`, then `result`s and `stop` with the
   * builder's id for it), which Nix shows under the build's activity. A `msg` line is a `warning` event
   * with `verbosity` (a built-in's messages are `warning` events of their own).
   */
  'builder-activity': { drvPath: StorePath; event: BuilderActivityEvent };
  /** `narUrl`: where the NAR is fetched from (the substituter's URI and the narinfo's URL). */
  /**
   * `from`: the path as the substituter has it, when that is another one (a fixed output served by its
   * content address from a cache of another store directory); Nix's "copying path" names that one.
   */
  'substitution-started': { path: StorePath; substituter: string; narUrl?: string; from?: StorePath };
  'substitution-finished': { path: StorePath; substituter?: string; ok: boolean; error?: string };
  /**
   * A derivation whose inputs include floating content-addressed outputs (or, with `ca-derivations`, any
   * content-addressed derivation with input derivations) is built as its resolved form, the inputs'
   * outputs written in: Nix's "resolved derivation: 'A' -> 'B'".
   */
  'derivation-resolved': { drvPath: StorePath; resolvedPath: StorePath };
  /** The post-build hook is about to run for a derivation: Nix's "running post-build-hook '…'". */
  'post-build-hook-started': { drvPath: StorePath; hook: string };
  'post-build-hook-log': { drvPath: StorePath; line: string };
  progress: Progress;
  /**
   * Something the user should know that does not fail the call by itself. `level: 'error'` for errors
   * Nix prints and then carries on from (e.g. a substitute that is gone: the path is built instead);
   * `level: 'plain'` for what Nix prints without a prefix (an output that differs between rounds when
   * determinism is not enforced).
   * `level: 'info'` for what Nix prints without a prefix at its info level (hidden by `--quiet`, e.g. repair's
   * "checking path '…'...").
   * `level: 'raw'` for what another program wrote to stderr and Nix lets through untouched (the ssh of an
   * `ssh-ng://` machine that cannot be used, before "cannot build on '…'"): written as it is, unfiltered.
   * `verbosity`: Nix's level (0 error … 7 vomit) of a message a builder sent in a `@nix` line (level
   * `plain`), which a display shows when it is at most the display's verbosity (Nix's default 3, info; 2
   * with `--quiet`) and Nix's internal-json stream passes on with that level.
   * `hookLine`: an error Nix's build hook prints itself (a build that failed on its machine: `level:
   * 'error'`), in Nix's colours without its `error:` prefix: Nix's worker passes the hook's line on as it is,
   * so Nix's internal-json stream has it as a plain message (no `raw_msg`).
   * `colouredMessage`: `message` with its values in Nix's colours, where Nix colours some (the hook's
   * "Failed to find a machine for remote build!" report, its "cannot build on '…'" line): what the CLI and
   * the internal-json stream print. `message` itself is plain text, without escape codes.
   */
  warning: {
    message: string;
    level?: 'warning' | 'error' | 'plain' | 'info' | 'raw';
    verbosity?: number;
    hookLine?: string;
    colouredMessage?: string;
  };
  /**
   * The call ends with `error` (the error it rejects with), as Nix throws it out of its worker: its goals
   * are being stopped. Once per call, before the stops; a BuilderLogMessageError, a setup error, a bad key.
   */
  'call-ending': { error: RealiseError };
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
  constructor(
    private readonly tracker: ProgressTracker,
    private readonly counters: Counters,
  ) {
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
  constructor(
    private readonly tracker: ProgressTracker,
    private readonly counters: Counters,
  ) {
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

/**
 * An event as listeners get it: its payload and `time`, a monotonic timestamp in milliseconds
 * (`performance.now()`: since `performance.timeOrigin`, never going backwards).
 */
export type Stamped<T> = T & { readonly time: number };

/** Typed events of a BuildEngine: `engine.on(name, (e) => …)`, every payload stamped with its `time`. */
export type BuildEngineEvents = { [K in keyof EventPayloads]: (e: Stamped<EventPayloads[K]>) => void };

/** The names of the engine's events. */
export type BuildEngineEventName = keyof EventPayloads;

/** Mutable progress counters owned by one engine; emits snapshots. */
export class ProgressTracker {
  readonly builds: Counters = { expected: 0, done: 0, running: 0, failed: 0 };
  readonly substitutions: Counters = { expected: 0, done: 0, running: 0, failed: 0 };
  readonly download = { expected: 0, done: 0 };
  /** Of `download`, the built-in builders' bytes. */
  readonly builtinDownload = { expected: 0, done: 0 };
  readonly nar = { expected: 0, done: 0 };
  private scheduled = false;

  constructor(
    private readonly emit: (p: Progress) => void,
    /** Whether anyone wants the snapshots now (none made while nobody does; the counters are kept all the same). */
    private readonly wanted: () => boolean = () => true,
  ) {}

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
      download: { ...this.download, builtin: { ...this.builtinDownload } },
      nar: { ...this.nar },
    };
  }

  /** Coalesce bursts of updates into one event per tick. */
  changed(): void {
    if (this.scheduled || !this.wanted()) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.emit(this.snapshot());
    });
  }
}
