/**
 * Nix 2.8's structured log (`--log-format internal-json`) from engine events: `@nix {…}` lines with
 * activities (start/stop, keyed by id), results attributed to them (build log lines, progress, expected
 * counts) and messages, in the shapes Nix's JSONLogger writes (keys in its order, the same types, fields
 * and texts). Tools that read Nix's stream (nix-output-monitor, CI dashboards) read this one.
 */
import type { BuildEngine } from '../scheduler/build-engine.js';
import type { BuildEngineEvents, Progress } from '../scheduler/events.js';
import { colouredErrorMessageOf } from '../scheduler/results.js';
import { ANSI_NORMAL, ANSI_WARNING, colouredValue, ERROR_PREFIX } from '../store/nix-message.js';

/** Listen to an engine's event (and stop listening on close). */
type On = <E extends keyof BuildEngineEvents>(event: E, fn: BuildEngineEvents[E]) => void;

/** An event of an engine, as its listeners get it. */
type EventOf<E extends keyof BuildEngineEvents> = Parameters<BuildEngineEvents[E]>[0];

/** Nix's ActivityType values. */
export const ActivityType = {
  Unknown: 0,
  CopyPath: 100,
  FileTransfer: 101,
  Realise: 102,
  CopyPaths: 103,
  Builds: 104,
  Build: 105,
  OptimiseStore: 106,
  VerifyPaths: 107,
  Substitute: 108,
  QueryPathInfo: 109,
  PostBuildHook: 110,
  BuildWaiting: 111,
} as const;

/** Nix's ResultType values. */
export const ResultType = {
  FileLinked: 100,
  BuildLogLine: 101,
  UntrustedPath: 102,
  CorruptedPath: 103,
  SetPhase: 104,
  Progress: 105,
  SetExpected: 106,
  PostBuildLogLine: 107,
} as const;

/** Nix's verbosity levels, as the stream carries them. */
export const LogLevel = { Error: 0, Warn: 1, Notice: 2, Info: 3, Talkative: 4, Chatty: 5, Debug: 6, Vomit: 7 } as const;

/**
 * Nix's words for one path copied between this store (`local`) and a remote build's machine, whose store is
 * named `store` (`ssh://host`, or `local`/`daemon` for a store of this machine): a copy from a `local` or
 * `daemon` store names only where it goes, as Nix's makeCopyPathMessage does.
 */
export function copyPathMessage(path: string, direction: 'to' | 'from', store: string): string {
  if (direction === 'to') return `copying path '${path}' to '${store}'`;
  return store === 'local' || store === 'daemon' ? `copying path '${path}' to 'local'` : `copying path '${path}' from '${store}'`;
}

/** Nix's words for a build activity ("building '…'", "checking outputs of '…'", "… on 'MACHINE'"). */
export function buildActivityText(e: { drvPath: string; round: number; rounds: number; machine?: string; mode: string }): string {
  let msg =
    e.mode === 'repair'
      ? `repairing outputs of '${e.drvPath}'`
      : e.mode === 'check'
        ? `checking outputs of '${e.drvPath}'`
        : e.rounds > 1
          ? `building '${e.drvPath}' (round ${e.round}/${e.rounds})`
          : `building '${e.drvPath}'`;
  if (e.machine) msg += ` on '${e.machine}'`;
  return msg;
}

const WARNING_PREFIX = `${ANSI_WARNING}warning:${ANSI_NORMAL} `;
const INDENT = ' '.repeat('error: '.length);

export interface NixJsonLogOptions {
  /** Emit a message for every warning event of the engine. @default true */
  readonly warnings?: boolean;
  /**
   * Emit an error message for every failed derivation goal (as Nix logs each failing goal). A caller that
   * prints its own errors through `text()` (the CLI) turns this off. @default true
   */
  readonly errors?: boolean;
  /** The destination store's URI in copy activities' fields (Nix's LocalStore says `local`). @default 'local' */
  readonly storeUri?: string;
}

/**
 * Writes Nix's JSON log stream for an engine's events through `write` (one `@nix {…}` line per call,
 * newline included). Call `startRealise()` before a build call and `stopRealise()` after it for Nix's
 * Realise/Builds/CopyPaths activities (they start on the first event otherwise); `close()` stops what is
 * still open and detaches from the engine.
 */
/** Nix's ids: the process id in the high bits, a counter below (kept within a double's exact range); one counter per process. */
let nextId = (process.pid % 0x100000) * 2 ** 32;

export class NixJsonLog {
  private readonly builds = new Map<string, number>();
  /** Per path being substituted: its Substitute and CopyPath activities. */
  private readonly substitutions = new Map<string, number[]>();
  /** The machine's own activities (ssh-ng://) as ours, by derivation and the machine's id; their log lines go there. */
  private readonly forwarded = new Map<string, Map<bigint, number>>();
  /** A local builder's own activities (from its `@nix` lines), by derivation: the builder's id → ours. */
  private readonly builderActs = new Map<string, Map<number, number>>();
  private lineForwarded = false;
  /**
   * The current call is ending with an error (a builder's `@nix` line Nix's logger throws on, a setup
   * error): Nix's exception leaves its worker, which sends no more results (no progress, no log lines);
   * only its activities' stops follow. Cleared by `stopRealise()`, so the engine's next call reports again.
   */
  private thrown = false;
  /** The open activities of remote builds' steps, by derivation and step. */
  private readonly remoteSteps = new Map<string, Map<string, number>>();
  /** QueryPathInfo activities, by substituter and path. */
  private readonly queries = new Map<string, number>();
  /** FileTransfer activities, by URL (the same URL may be downloaded twice at once), with their last progress. */
  private readonly downloads = new Map<string, { id: number; last: string }[]>();
  private readonly waits = new Map<string, number>();
  private readonly hooks = new Map<string, number>();
  /** "resolved derivation" activities (BuildWaiting), by the derivation resolved, open until its goal ends. */
  private readonly resolved = new Map<string, number>();
  private top: { realise: number; builds: number; copyPaths: number } | undefined;
  /** Nix's count of expected builds: derivation goals created and not yet done (or stopped), by path. */
  private readonly openGoals = new Map<string, number>();
  /** The sum of `openGoals`' counts. */
  private openCount = 0;
  private sawGoals = false;
  /**
   * Nix's doneBuilds, failedBuilds and runningBuilds, counted at its points (the goal done; its build
   * started, until the goal is done), so that each update says what Nix's says at the same point.
   */
  private buildsDone = 0;
  private buildsFailed = 0;
  private readonly buildsRunning = new Set<string>();
  private lastProgress: Progress | undefined;
  /** The engine's counters now (its `progress()`), else the last `progress` event's. */
  private readonly current: () => Progress | undefined;
  /** The substitutions' part of the last update sent (Nix's updateProgress), to send one when it changes. */
  private lastSubst = '';
  private readonly last = new Map<string, string>();
  private readonly detach: (() => void)[] = [];
  private readonly storeUri: string;

  /** Without an engine, a log for messages and activities of the caller's own. */
  constructor(
    engine: (Pick<BuildEngine, 'on' | 'off'> & Partial<Pick<BuildEngine, 'progress'>>) | undefined,
    private readonly write: (line: string) => void,
    opts: NixJsonLogOptions = {},
  ) {
    this.storeUri = opts.storeUri ?? 'local';
    const progressOf = engine?.progress?.bind(engine);
    this.current = () => progressOf?.() ?? this.lastProgress;
    if (!engine) return;
    const on: On = <E extends keyof BuildEngineEvents>(event: E, fn: BuildEngineEvents[E]) => {
      (engine.on as (e: E, f: BuildEngineEvents[E]) => void)(event, fn);
      this.detach.push(() => (engine.off as (e: E, f: BuildEngineEvents[E]) => void)(event, fn));
    };
    on('build-started', (e) => {
      this.ensureTop();
      this.builds.set(e.drvPath, this.start(ActivityType.Build, LogLevel.Info, buildActivityText(e), [e.drvPath, e.machine ?? '', e.round, e.rounds]));
      // Nix's DerivationGoal::started: the activity, then the progress with the build running.
      this.buildsRunning.add(e.drvPath);
      if (this.sawGoals) this.updateProgress();
    });
    on('build-log', (e) => {
      // A machine that sends its activities (ssh-ng://) has its log lines on its own build activity: this
      // line was just passed on there (the `remote-log` event of a line comes right before its `build-log`).
      if (this.lineForwarded) {
        this.lineForwarded = false;
        return;
      }
      const id = this.builds.get(e.drvPath);
      if (id !== undefined) this.result(id, ResultType.BuildLogLine, [e.line]);
    });
    on('builder-activity', (e) => this.builderActivity(e.drvPath, e.event));
    on('build-finished', (e) => {
      this.stopRemoteSteps(e.drvPath);
      this.stopBuilderActivities(e.drvPath);
      this.stopKeyed(this.builds, e.drvPath);
    });
    on('remote-step', (e) => this.remoteStep(e));
    on('remote-log', (e) => this.remoteLog(e.drvPath, e.event));
    on('post-build-hook-started', (e) => {
      this.stopKeyed(this.hooks, e.drvPath);
      this.hooks.set(e.drvPath, this.start(ActivityType.PostBuildHook, LogLevel.Info, `running post-build-hook '${e.hook}'`, [e.drvPath]));
    });
    on('post-build-hook-log', (e) => {
      const id = this.hooks.get(e.drvPath);
      if (id !== undefined) this.result(id, ResultType.PostBuildLogLine, [e.line]);
    });
    on('build-waiting', (e) => {
      this.ensureTop();
      if (this.waits.has(e.drvPath)) return;
      const paths = e.lockedPaths.map((p) => `'${p}'`).join(', ');
      this.waits.set(e.drvPath, this.start(ActivityType.BuildWaiting, LogLevel.Warn, `waiting for lock on ${colouredValue(paths)}`, undefined));
    });
    on('build-lock-acquired', (e) => this.stopKeyed(this.waits, e.drvPath));
    this.onSubstitutions(on);
    on('derivation-resolved', (e) => {
      this.ensureTop();
      this.stopKeyed(this.resolved, e.drvPath);
      const text = `resolved derivation: '${e.drvPath}' -> '${e.resolvedPath}'`;
      this.resolved.set(e.drvPath, this.start(ActivityType.BuildWaiting, LogLevel.Info, text, [e.drvPath, e.resolvedPath]));
    });
    this.onGoals(on, opts);
    on('progress', (p) => this.progress(p));
    on('call-ending', () => {
      this.thrown = true;
    });
    if (opts.warnings !== false) {
      on('warning', (e) => {
        if (e.verbosity !== undefined) this.message(e.verbosity, e.colouredMessage ?? e.message);
        // The build hook's own error line, as Nix's worker passes it on (a plain message).
        else if (e.hookLine !== undefined) this.message(LogLevel.Error, ERROR_PREFIX + e.hookLine.replace(/\n(?!\n|$)/g, '\n' + INDENT));
        else if (e.level === 'error') this.error(e.message);
        else if (e.level === 'info') this.message(LogLevel.Info, e.message);
        // Another program's own stderr (an ssh-ng:// machine's ssh) is no part of Nix's stream: Nix's ssh
        // writes it to stderr itself, raw (the CLI's JsonDisplay does so).
        else if (e.level === 'raw') return;
        else if (e.level === 'plain') this.message(LogLevel.Error, e.colouredMessage ?? e.message);
        else this.warn(e.message);
      });
    }
  }

  /** Goals: Nix's expected build count, the end of a goal's activities, a failed goal's error. */
  private onGoals(on: On, opts: NixJsonLogOptions): void {
    on('goal-created', (e) => {
      this.sawGoals = true;
      if (e.kind !== 'derivation') return;
      this.openGoals.set(e.path, (this.openGoals.get(e.path) ?? 0) + 1);
      this.openCount++;
      this.updateProgress();
    });
    on('goal-finished', (e) => {
      this.stopKeyed(this.hooks, e.path);
      this.stopKeyed(this.resolved, e.path);
      const open = this.openGoals.get(e.path);
      if (e.kind === 'derivation' && open !== undefined) {
        if (open > 1) this.openGoals.set(e.path, open - 1);
        else this.openGoals.delete(e.path);
        this.openCount--;
        // Nix's DerivationGoal::done: a build counts as done when it was built (a resolved derivation's goal
        // and its resolved form's each), as failed unless only an input failed or it was stopped.
        const status = e.result.status;
        this.buildsRunning.delete(e.path);
        if (status === 'built') this.buildsDone++;
        else if (!NOT_FAILED.has(status)) this.buildsFailed++;
        this.updateProgress();
      }
      if (opts.errors !== false && e.kind === 'derivation' && e.result.errorMsg && e.result.status !== 'stopped' && e.result.status !== 'built') {
        this.error(e.result.failure ? colouredErrorMessageOf(e.result.failure) : e.result.errorMsg);
      }
    });
  }

  /**
   * Nix's activities of substitutions (Substitute and CopyPath) and of a substituter's work: QueryPathInfo
   * and FileTransfer (with its Progress results).
   */
  private onSubstitutions(on: On): void {
    on('substitution-started', (e) => {
      this.ensureTop();
      const sub = this.start(ActivityType.Substitute, LogLevel.Error, '', [e.path, e.substituter]);
      const copy = this.start(ActivityType.CopyPath, LogLevel.Info, `copying path '${e.from ?? e.path}' from '${e.substituter}'`, [
        e.from ?? e.path,
        e.substituter,
        this.storeUri,
      ]);
      this.substitutions.set(e.path, [sub, copy]);
    });
    on('substitution-finished', (e) => {
      const ids = this.substitutions.get(e.path);
      if (!ids) return;
      this.substitutions.delete(e.path);
      for (const id of [...ids].reverse()) this.stop(id);
    });
    on('query-started', (e) => {
      const text = `querying info about '${e.path}' on '${e.substituter}'`;
      this.queries.set(`${e.substituter}\0${e.path}`, this.start(ActivityType.QueryPathInfo, LogLevel.Talkative, text, [e.path, e.substituter]));
    });
    on('query-finished', (e) => this.stopKeyed(this.queries, `${e.substituter}\0${e.path}`));
    on('download-started', (e) => {
      const id = this.start(ActivityType.FileTransfer, LogLevel.Talkative, `downloading '${e.url}'`, [e.url]);
      const list = this.downloads.get(e.url);
      if (list) list.push({ id, last: '' });
      else this.downloads.set(e.url, [{ id, last: '' }]);
    });
    on('download-progress', (e) => {
      const d = this.downloads.get(e.url)?.at(-1);
      const value = `${e.done},${e.expected}`;
      if (!d || d.last === value) return;
      d.last = value;
      this.result(d.id, ResultType.Progress, [e.done, e.expected, 0, 0]);
    });
    on('download-finished', (e) => {
      const list = this.downloads.get(e.url);
      const d = list?.pop();
      if (!d) return;
      if (!list!.length) this.downloads.delete(e.url);
      this.stop(d.id);
    });
  }

  /** Nix's build hook activities for a step of a remote build (started and stopped by key). */
  private remoteStep(e: EventOf<'remote-step'>): void {
    const { step } = e;
    const key = step.kind === 'copy-path' ? `copy-path\0${step.path}` : step.kind;
    let open = this.remoteSteps.get(e.drvPath);
    if (e.phase === 'end') {
      if (open) this.stopKeyed(open, key);
      return;
    }
    if (!open) this.remoteSteps.set(e.drvPath, (open = new Map()));
    this.stopKeyed(open, key);
    const remote = e.store;
    const texts = {
      connect: `connecting to '${e.machine}'`,
      'upload-lock': `waiting for the upload lock to '${e.machine}'`,
      'copy-inputs': `copying dependencies to '${e.machine}'`,
      'copy-outputs': `copying outputs from '${e.machine}'`,
    } as const;
    let id: number;
    if (step.kind === 'copy-paths') id = this.start(ActivityType.CopyPaths, LogLevel.Info, `copying ${step.paths.length} paths`, undefined);
    else if (step.kind === 'copy-path')
      id = this.start(ActivityType.CopyPath, LogLevel.Info, copyPathMessage(step.path, step.direction, remote), [
        step.path,
        ...(step.direction === 'to' ? [this.storeUri, remote] : [remote, this.storeUri]),
      ]);
    else id = this.start(ActivityType.Unknown, LogLevel.Talkative, texts[step.kind], undefined);
    open.set(key, id);
  }

  /** Stop what is open of a remote build's steps and the machine's own activities, innermost first. */
  private stopRemoteSteps(drvPath: string): void {
    for (const map of [this.forwarded, this.remoteSteps]) {
      const open = map.get(drvPath);
      if (!open) continue;
      map.delete(drvPath);
      for (const id of [...open.values()].reverse()) this.stop(id);
    }
  }

  /** The machine's activities and their results, as Nix's hook passes its daemon's on (with ids of ours). */
  private remoteLog(drvPath: string, e: EventOf<'remote-log'>['event']): void {
    if (e.type === 'message') return;
    let acts = this.forwarded.get(drvPath);
    if (e.type === 'start-activity') {
      if (!acts) this.forwarded.set(drvPath, (acts = new Map()));
      acts.set(e.id, this.start(e.activityType, e.level, e.text, e.fields.length ? e.fields : undefined));
      return;
    }
    const id = acts?.get(e.id);
    if (id === undefined) return;
    if (e.type === 'stop-activity') {
      acts!.delete(e.id);
      this.stop(id);
    } else {
      this.result(id, e.resultType, e.fields);
      if (e.resultType === ResultType.BuildLogLine || e.resultType === ResultType.PostBuildLogLine) this.lineForwarded = true;
    }
  }

  /**
   * A local builder's `@nix` line about activities, as Nix's handleJSONLogMessage passes it on: a phase is
   * a SetPhase result on the build's activity; the builder's activities are started under the build's
   * with ids of ours, and its results and stops naming an id it started go to that activity.
   */
  private builderActivity(drvPath: string, e: EventOf<'builder-activity'>['event']): void {
    const build = this.builds.get(drvPath);
    if (build === undefined) return;
    if (e.action === 'setPhase') return this.result(build, ResultType.SetPhase, [e.phase]);
    let acts = this.builderActs.get(drvPath);
    if (e.action === 'start') {
      if (!acts) this.builderActs.set(drvPath, (acts = new Map()));
      if (!acts.has(e.id)) acts.set(e.id, this.start(e.activityType, e.level, e.text, e.fields.length ? e.fields : undefined));
      return;
    }
    const id = acts?.get(e.id);
    if (id === undefined) return;
    if (e.action === 'result') return this.result(id, e.resultType, e.fields);
    acts!.delete(e.id);
    this.stop(id);
  }

  /** Stop the activities a builder left open when its build ends. */
  private stopBuilderActivities(drvPath: string): void {
    const open = this.builderActs.get(drvPath);
    if (!open) return;
    this.builderActs.delete(drvPath);
    for (const id of [...open.values()].reverse()) this.stop(id);
  }

  /** Start Nix's activities of a build call (Realise, Builds, CopyPaths), as its Worker does. */
  startRealise(): void {
    if (this.top) return;
    const realise = this.start(ActivityType.Realise, LogLevel.Error, '', undefined);
    const builds = this.start(ActivityType.Builds, LogLevel.Error, '', undefined);
    const copyPaths = this.start(ActivityType.CopyPaths, LogLevel.Error, '', undefined);
    this.top = { realise, builds, copyPaths };
  }

  /** Stop what a build call left open, then the call's activities (in Nix's order). */
  stopRealise(): void {
    for (const drvPath of [...this.remoteSteps.keys()]) this.stopRemoteSteps(drvPath);
    for (const id of this.builds.values()) this.stop(id);
    for (const ids of this.substitutions.values()) for (const id of [...ids].reverse()) this.stop(id);
    for (const id of [...this.waits.values(), ...this.hooks.values(), ...this.resolved.values(), ...this.queries.values()]) this.stop(id);
    for (const list of this.downloads.values()) for (const d of list) this.stop(d.id);
    this.builds.clear();
    this.queries.clear();
    this.resolved.clear();
    this.downloads.clear();
    this.substitutions.clear();
    this.waits.clear();
    this.hooks.clear();
    this.thrown = false;
    if (!this.top) return;
    this.stop(this.top.copyPaths);
    this.stop(this.top.builds);
    this.stop(this.top.realise);
    this.top = undefined;
    this.last.clear();
    this.openGoals.clear();
    this.openCount = 0;
    this.sawGoals = false;
    this.lastProgress = undefined;
    this.lastSubst = '';
    this.buildsDone = 0;
    this.buildsFailed = 0;
    this.buildsRunning.clear();
  }

  /** Stop everything open and stop listening to the engine. */
  close(): void {
    this.stopRealise();
    for (const d of this.detach.splice(0)) d();
  }

  /** Start an activity of your own (e.g. Nix's "querying info about missing paths"); returns its id. */
  start(type: number, level: number, text: string, fields: readonly (string | number)[] | undefined): number {
    const id = nextId++;
    this.emit(fields ? { action: 'start', fields, id, level, text, type } : { action: 'start', id, level, text, type });
    return id;
  }

  stop(id: number): void {
    this.emit({ action: 'stop', id });
  }

  result(id: number, type: number, fields: readonly (string | number)[]): void {
    if (this.thrown) return;
    // As Nix's JSONLogger, no `fields` when there are none.
    this.emit(fields.length ? { action: 'result', fields, id, type } : { action: 'result', id, type });
  }

  /** A plain message at `level` (Nix's printMsg). */
  message(level: number, msg: string): void {
    this.emit({ action: 'msg', level, msg });
  }

  /**
   * An error as Nix's logError writes it: `msg` with the coloured prefix, `raw_msg` the message alone (its
   * values in Nix's colours where the message has them: RealiseError.colouredMessage, FailureDetails').
   */
  error(message: string): void {
    const raw = message.replace(/\s+$/, '');
    this.emit({
      action: 'msg',
      column: null,
      file: null,
      level: LogLevel.Error,
      line: null,
      msg: ERROR_PREFIX + raw.replace(/\n(?!\n|$)/g, '\n' + INDENT),
      raw_msg: raw,
    });
  }

  /**
   * An exception that is no error of Nix's own (its JSON library's) as Nix's CLI writes it: a plain
   * message at level 0 with the coloured prefix, without `raw_msg` and the position fields.
   */
  exceptionError(message: string): void {
    this.message(LogLevel.Error, ERROR_PREFIX + message);
  }

  warn(message: string): void {
    this.message(LogLevel.Warn, WARNING_PREFIX + message.replace(/\s+$/, ''));
  }

  /**
   * A line as the CLI prints it on stderr: `error: …` (continuation lines indented) becomes an error,
   * `warning: …` a warning, anything else an informational message.
   */
  text(line: string): void {
    const s = line.replace(/\n$/, '');
    if (s.startsWith('error: ')) this.error(s.slice('error: '.length).replace(new RegExp(`\n${INDENT}`, 'g'), '\n'));
    else if (s.startsWith('warning: ')) this.warn(s.slice('warning: '.length).replace(new RegExp(`\n${INDENT}`, 'g'), '\n'));
    else this.message(LogLevel.Info, s);
  }

  /** Stop the activity kept under `key` in `map`, if there is one. */
  private stopKeyed(map: Map<string, number>, key: string): void {
    const id = map.get(key);
    if (id === undefined) return;
    map.delete(key);
    this.stop(id);
  }

  private ensureTop(): void {
    if (!this.top) this.startRealise();
  }

  /**
   * Nix's Worker.updateProgress, sent where Nix calls it: a derivation goal created, its build started, the
   * goal done (with goal events), and a change of the substitutions' counts or the expected download and NAR
   * sizes. Each time all four results, as Nix sends them: builds as [done, done + goals not yet done,
   * running, failed] (a failed or stopped build is no longer expected), substitutions as the engine counts
   * them, and the expected download and NAR sizes.
   */
  private updateProgress(): void {
    const p = this.current();
    if (!this.top || !p) return;
    const { substitutions: s, download, nar } = p;
    const done = this.buildsDone;
    this.lastSubst = substKey(p);
    this.result(this.top.builds, ResultType.Progress, [done, done + this.openCount, this.buildsRunning.size, this.buildsFailed]);
    this.result(this.top.copyPaths, ResultType.Progress, [s.done, s.expected, s.running, s.failed]);
    this.result(this.top.realise, ResultType.SetExpected, [ActivityType.FileTransfer, expectedDownload(download)]);
    this.result(this.top.realise, ResultType.SetExpected, [ActivityType.CopyPath, nar.expected]);
  }

  /** The engine's counters changed: with goal events, an update when the substitutions' part did. */
  private progress(p: Progress): void {
    this.lastProgress = p;
    if (!this.top) return;
    if (this.sawGoals) {
      if (substKey(p) !== this.lastSubst) this.updateProgress();
      return;
    }
    // Without goal events (a build through a daemon): the engine's own counts, each result when it changes.
    const { builds, substitutions: s, download, nar } = p;
    this.changed(this.top.builds, ResultType.Progress, [builds.done, builds.expected, builds.running, builds.failed]);
    this.changed(this.top.copyPaths, ResultType.Progress, [s.done, s.expected, s.running, s.failed]);
    this.changed(this.top.realise, ResultType.SetExpected, [ActivityType.FileTransfer, expectedDownload(download)]);
    this.changed(this.top.realise, ResultType.SetExpected, [ActivityType.CopyPath, nar.expected]);
  }

  /** A result, unless it says what the last one of its kind on that activity said. */
  private changed(id: number, type: number, fields: number[]): void {
    const key = `${id}:${type}:${type === ResultType.SetExpected ? fields[0] : ''}`;
    const value = fields.join(',');
    if (this.last.get(key) === value) return;
    this.last.set(key, value);
    this.result(id, type, fields);
  }

  private emit(o: object): void {
    this.write(`@nix ${JSON.stringify(o)}\n`);
  }
}

/** A derivation goal's statuses that Nix does not count as a failed build: successes, an input's failure, a stop. */
const NOT_FAILED: ReadonlySet<string> = new Set(['built', 'substituted', 'already-valid', 'dependency-failed', 'stopped']);

/** What of the engine's counters Nix's substitution goals report: their counts, the expected sizes. */
const substKey = ({ substitutions: s, download, nar }: Progress): string =>
  `${s.done},${s.expected},${s.running},${s.failed},${expectedDownload(download)},${nar.expected}`;

/**
 * Nix's expected download size: its substitutions' (a built-in builder's download is an activity of that
 * builder, passed on from its log, not counted there).
 */
const expectedDownload = (download: Progress['download']): number => download.expected - (download.builtin?.expected ?? 0);

/**
 * Turn an engine's events into Nix's internal-json stream: each `@nix {…}` line (newline included) goes to
 * `write`. Returns the log, to start/stop a call's activities, add messages, and `close()` it.
 */
export function attachNixJsonLog(
  engine: Pick<BuildEngine, 'on' | 'off'> & Partial<Pick<BuildEngine, 'progress'>>,
  write: (line: string) => void,
  opts: NixJsonLogOptions = {},
): NixJsonLog {
  return new NixJsonLog(engine, write, opts);
}
