/**
 * A BuildEngine over a DaemonStore: the Nix daemon builds and substitutes, with its own settings and trust
 * rules; the engine hands it the targets (BuildPathsWithResults, QueryMissing) and turns the daemon's log
 * stream into the engine's events (build-started / build-log / build-finished for every build it runs,
 * substitution-started / -finished, the daemon's messages as `warning` events at level 'plain', as Nix's
 * client prints them) and its progress counters into the engine's.
 */
import type { DaemonStore } from '../remote/daemon-store.js';
import { ActivityType, buildLogLine, ResultType, type RemoteLogEvent, type WorkerOptions } from '../remote/worker-protocol.js';
import { stripAnsi, type WireBuildResult } from '../remote/protocol-common.js';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import type { ProgressTracker } from './events.js';
import type { BuildEngineOptions } from './options.js';
import type { MissingInfo } from './query-missing.js';
import { failure, isSuccess, type BuildResult, type BuildStatus, type BuildTarget, type TargetResult } from './results.js';
import type { BuildMode } from './worker.js';

/** Engine options Nix's client sends as overrides, by Nix 2.8's setting name. */
const OVERRIDES: Readonly<Record<string, keyof BuildEngineOptions>> = {
  'allowed-impure-host-deps': 'allowedImpureHostDeps',
  builders: 'builders',
  'download-attempts': 'downloadAttempts',
  'enforce-determinism': 'enforceDeterminism',
  'extra-platforms': 'extraPlatforms',
  'filter-syscalls': 'filterSyscalls',
  'hashed-mirrors': 'hashedMirrors',
  'log-lines': 'logLines',
  'max-build-log-size': 'maxLogSize',
  'max-free': 'maxFree',
  'min-free': 'minFree',
  'min-free-check-interval': 'minFreeCheckInterval',
  'netrc-file': 'netrcFile',
  'post-build-hook': 'postBuildHook',
  'pre-build-hook': 'preBuildHook',
  repeat: 'buildRepeat',
  sandbox: 'sandbox',
  'sandbox-build-dir': 'sandboxBuildDir',
  'sandbox-dev-shm-size': 'sandboxShmSize',
  'sandbox-fallback': 'sandboxFallback',
  'sandbox-paths': 'sandboxPaths',
  system: 'system',
  'system-features': 'systemFeatures',
  timeout: 'buildTimeout',
};
/** Nix's StringSet settings: sent sorted, without repeats. */
const SETS = new Set(['allowed-impure-host-deps', 'extra-platforms', 'sandbox-paths', 'system-features']);

/** An option's value as Nix's client writes it (Booleans true/false, integers in decimal, lists joined), or undefined when it is not a setting's value. */
function wireValue(name: string, v: unknown): string | undefined {
  if (typeof v === 'boolean' || typeof v === 'string') return String(v);
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? String(v) : undefined;
  if (!Array.isArray(v) || !v.every((w) => typeof w === 'string')) return undefined;
  return (SETS.has(name) ? [...new Set(v)].sort() : v).join(' ');
}

/**
 * What Nix 2.8's client sends the daemon (SetOptions) for the options a BuildEngine was given, as the CLI
 * sends it for the same settings on its command line: keep-going, keep-failed, fallback, max-jobs,
 * max-silent-time and cores in the fixed fields, and every other option that is a Nix setting as an override
 * under its Nix name. Options not given stay the store's; the engine's own (maxSubstitutionJobs,
 * experimentalFeatures, environment, buildDir) and objects (a Sandbox, RemoteBuilders, substituters) are not sent.
 */
export function daemonSettingsOf(o: BuildEngineOptions): WorkerOptions {
  const settings: Record<string, number | boolean | undefined> = {
    keepGoing: o.keepGoing,
    keepFailed: o.keepFailed,
    tryFallback: o.fallback,
    maxBuildJobs: o.maxJobs,
    maxSilentTime: o.maxSilentTime,
    buildCores: o.cores,
  };
  const overrides: Record<string, string> = {};
  for (const [name, key] of Object.entries(OVERRIDES)) {
    const value = o[key] === undefined ? undefined : wireValue(name, o[key]);
    if (value !== undefined) overrides[name] = value;
  }
  const fixed = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
  return Object.keys(overrides).length ? { ...fixed, overrides } : fixed;
}

/** `DRV!out1,out2` (all outputs: every name the daemon knows for the derivation), or the path itself. */
async function wireTarget(store: DaemonStore, t: BuildTarget): Promise<string> {
  if ('path' in t) return t.path;
  let outs = t.outputs === undefined || t.outputs === '*' ? undefined : [...t.outputs];
  // Nix 2.8 reads `DRV!` as "all outputs"; later daemons want the names or `*`: names suit both.
  if (!outs) outs = [...(await store.queryDerivationOutputs(t.drvPath).catch(() => new Map())).keys()];
  return `${t.drvPath}!${outs.sort().join(',')}`;
}

function toBuildResult(r: WireBuildResult): BuildResult {
  const status = (['resolves-to-already-valid', 'no-substituters'].includes(r.status) ? 'misc-failure' : r.status) as BuildStatus;
  return {
    status,
    errorMsg: r.errorMsg || undefined,
    timesBuilt: r.timesBuilt,
    isNonDeterministic: r.isNonDeterministic,
    startTime: r.startTime,
    stopTime: r.stopTime,
    builtOutputs: Object.fromEntries([...r.builtOutputs].map(([name, real]) => [name, real.outPath])),
  };
}

/** A build the daemon runs (Nix's actBuild: one activity per round). */
interface BuildActivity {
  kind: 'build';
  drvPath: StorePath;
  round: number;
  rounds: number;
  machine?: string;
}

type Counters = ProgressTracker['builds'];

/** The daemon's activities this call follows, by id. */
type Activity =
  | BuildActivity
  | { kind: 'subst'; path: StorePath; substituter: string }
  /** Its Builds or CopyPaths activity: progress as [done, expected, running, failed], absolute. */
  | { kind: 'counters'; counters: Counters; builds: boolean; last: number[] }
  /** A CopyPath (NAR bytes) or FileTransfer (download bytes) activity: bytes done so far. */
  | { kind: 'bytes'; total: { done: number }; last: number }
  /** Its Realise activity: the bytes it expects to download and to unpack, by activity type. */
  | { kind: 'realise'; expected: Map<number, number> };

const num = (f: unknown): number => (typeof f === 'number' ? f : 0);
/** The store paths of derivations a message names ('…/x.drv'). */
const namedDrvs = (text: string): string[] => [...text.matchAll(/'(\/[^'\s]+\.drv)'/g)].map((m) => m[1]!);

/**
 * Turns the daemon's log stream of one call into engine events: every build it runs (targets and the
 * derivations they need) as build-started / build-finished, its substitutions, its messages, and its
 * progress counters (Nix's Builds, CopyPaths and Realise activities) added into the engine's own.
 *
 * Nix's worker logs the failure of a build another one waits for as an error naming its derivation, and
 * counts a build done or failed (a progress result) before its activity stops, while a build it stops (a
 * failure elsewhere without keep-going, the call interrupted) ends uncounted, possibly before the failure
 * that stopped it is counted. So an input's activity that ends is a failure when an error named it, else a
 * success when a count no named failure is waiting for is left and no failure has ended the call (without
 * keep-going nothing builds on after one), else stopped. A target's activity stops when the call ends: its
 * build-finished comes with its result.
 */
class DaemonLog {
  private readonly activities = new Map<bigint, Activity>();
  /** The builds the daemon started, by derivation (the latest round). */
  readonly builds = new Map<StorePath, BuildActivity>();
  /** Builds the daemon counted as done or failed, and how many of those a stopped activity was matched with. */
  private finished = 0;
  private matched = 0;
  /** Inputs an error message named, whose activity has not ended yet. */
  private readonly failed = new Set<StorePath>();
  /** A build failed (counted, or named in an error). */
  private failureSeen = false;

  constructor(
    private readonly emit: EngineContext['emit'],
    private readonly progress: ProgressTracker,
    private readonly mode: BuildMode,
    private readonly targets: ReadonlySet<string>,
    private readonly keepGoing: boolean,
  ) {}

  readonly onLog = (e: RemoteLogEvent): void => {
    if (e.type === 'message') {
      this.emit('warning', { message: e.text, level: 'plain' });
      const text = stripAnsi(e.text);
      if (/error\b/.test(text)) for (const drv of namedDrvs(text)) if (this.builds.has(drv) && !this.targets.has(drv)) this.namedFailure(drv);
    } else if (e.type === 'start-activity') this.started(e);
    else if (e.type === 'stop-activity') this.stopped(e.id);
    else this.result(e);
  };

  private started(e: Extract<RemoteLogEvent, { type: 'start-activity' }>): void {
    const [a, b, round, rounds] = e.fields;
    const p = this.progress;
    if (e.activityType === ActivityType.Build && typeof a === 'string') {
      const act: BuildActivity = { kind: 'build', drvPath: a, round: typeof round === 'number' ? round : 1, rounds: typeof rounds === 'number' ? rounds : 1 };
      if (typeof b === 'string' && b) act.machine = b;
      this.activities.set(e.id, act);
      this.builds.set(a, act);
      this.emit('build-started', { drvPath: a, round: act.round, rounds: act.rounds, mode: this.mode, ...(act.machine ? { machine: act.machine } : {}) });
    } else if (e.activityType === ActivityType.Substitute && typeof a === 'string') {
      const substituter = typeof b === 'string' ? b : '';
      this.activities.set(e.id, { kind: 'subst', path: a, substituter });
      this.emit('substitution-started', { path: a, substituter });
    } else if (e.activityType === ActivityType.Builds || e.activityType === ActivityType.CopyPaths) {
      const builds = e.activityType === ActivityType.Builds;
      this.activities.set(e.id, { kind: 'counters', counters: builds ? p.builds : p.substitutions, builds, last: [0, 0, 0, 0] });
    } else if (e.activityType === ActivityType.CopyPath || e.activityType === ActivityType.FileTransfer) {
      this.activities.set(e.id, { kind: 'bytes', total: e.activityType === ActivityType.CopyPath ? p.nar : p.download, last: 0 });
    } else if (e.activityType === ActivityType.Realise) this.activities.set(e.id, { kind: 'realise', expected: new Map() });
  }

  private result(e: Extract<RemoteLogEvent, { type: 'result' }>): void {
    const act = this.activities.get(e.id);
    if (act?.kind === 'build') {
      const line = buildLogLine(e);
      if (line !== undefined) this.emit('build-log', { drvPath: act.drvPath, line });
    } else if (act?.kind === 'counters' && e.resultType === ResultType.Progress) {
      const next = [0, 1, 2, 3].map((i) => num(e.fields[i]));
      if (act.builds) {
        this.finished += next[0]! - act.last[0]! + (next[3]! - act.last[3]!);
        if (next[3]! > act.last[3]!) this.failureSeen = true;
      }
      this.addCounters(act, next);
    } else if (act?.kind === 'bytes' && e.resultType === ResultType.Progress) {
      act.total.done += num(e.fields[0]) - act.last;
      act.last = num(e.fields[0]);
      this.progress.changed();
    } else if (act?.kind === 'realise' && e.resultType === ResultType.SetExpected) {
      const [type, value] = [num(e.fields[0]), num(e.fields[1])];
      const total = type === ActivityType.CopyPath ? this.progress.nar : type === ActivityType.FileTransfer ? this.progress.download : undefined;
      if (!total) return;
      total.expected += value - (act.expected.get(type) ?? 0);
      act.expected.set(type, value);
      this.progress.changed();
    }
  }

  /** Move the engine's counters by what changed in the daemon's (done, expected, running, failed). */
  private addCounters(act: Extract<Activity, { kind: 'counters' }>, next: number[]): void {
    const c = act.counters;
    c.done += next[0]! - act.last[0]!;
    c.expected += next[1]! - act.last[1]!;
    c.running += next[2]! - act.last[2]!;
    c.failed += next[3]! - act.last[3]!;
    act.last = next;
    this.progress.changed();
  }

  private stopped(id: bigint): void {
    const act = this.activities.get(id);
    this.activities.delete(id);
    if (act?.kind === 'subst') this.emit('substitution-finished', { path: act.path, substituter: act.substituter, ok: true });
    // Nothing runs in the daemon's worker once its activity ends.
    else if (act?.kind === 'counters') this.addCounters(act, [act.last[0]!, act.last[1]!, 0, act.last[3]!]);
    else if (act?.kind === 'build' && !this.targets.has(act.drvPath)) this.buildStopped(act);
  }

  private namedFailure(drv: StorePath): void {
    this.failed.add(drv);
    this.failureSeen = true;
  }

  private buildStopped(act: BuildActivity): void {
    let outcome: 'success' | 'failure' | 'stopped';
    // A later round started: this one succeeded (Nix starts the next round's activity, then ends this one's).
    if (this.builds.get(act.drvPath) !== act) outcome = 'success';
    else if (this.failed.delete(act.drvPath)) {
      this.matched++;
      outcome = 'failure';
    } else if (this.finished - this.matched > this.failed.size && !(this.failureSeen && !this.keepGoing)) {
      this.matched++;
      outcome = 'success';
    } else outcome = 'stopped';
    this.emit('build-finished', {
      drvPath: act.drvPath,
      round: act.round,
      rounds: act.rounds,
      ...(act.machine ? { machine: act.machine } : {}),
      outcome,
    });
  }

  /** The call is over: what the daemon did not end (the connection closed, or it broke) ended with it. */
  end(): void {
    for (const id of [...this.activities.keys()]) this.stopped(id);
  }
}

/** Realise `targets` in the daemon: one result per target, in order. */
export async function buildThroughDaemon(
  store: DaemonStore,
  targets: readonly BuildTarget[],
  opts: { mode: BuildMode; signal?: AbortSignal | undefined; emit: EngineContext['emit']; progress: ProgressTracker },
): Promise<TargetResult[]> {
  const wire = await Promise.all(targets.map((t) => wireTarget(store, t)));
  const log = new DaemonLog(opts.emit, opts.progress, opts.mode, new Set(targets.map((t) => ('drvPath' in t ? t.drvPath : t.path))), store.keepGoing);
  const builds = log.builds;
  let results: (TargetResult | undefined)[];
  try {
    const got = await store.buildPathsWithResults(wire, { mode: opts.mode, signal: opts.signal, onLog: log.onLog });
    results = targets.map((t, i) => {
      const r = got?.[i]?.result;
      const result: BuildResult = r
        ? toBuildResult(r)
        : { status: 'path' in t ? 'already-valid' : 'built', timesBuilt: 0, isNonDeterministic: false, startTime: 0, stopTime: 0, builtOutputs: {} };
      return { target: t, path: 'drvPath' in t ? t.drvPath : t.path, result };
    });
  } catch (e) {
    // Interrupted: closing the connection stopped the daemon's work; the targets are stopped, as the
    // engine's own goals are when their call is cancelled (nothing was registered on our side).
    if (opts.signal?.aborted)
      results = targets.map((t) => ({ target: t, path: 'drvPath' in t ? t.drvPath : t.path, result: failure('stopped', 'the build was cancelled') }));
    // A daemon before protocol 1.34 (BuildPaths) reports a failure as one error for the call.
    else if ((e as { code?: string }).code === 'remote-daemon-error') {
      const message = (e as Error).message.replace(/^'[^']*': /, '');
      results = targets.map((t) => ({ target: t, path: 'drvPath' in t ? t.drvPath : t.path, result: failure('misc-failure', message) }));
    } else {
      log.end();
      throw e;
    }
  }
  log.end();
  for (const r of results) {
    if (!r) continue;
    const b = builds.get(r.path);
    if (b) {
      const outcome = r.result.status === 'stopped' ? 'stopped' : isSuccess(r.result.status) ? 'success' : 'failure';
      opts.emit('build-finished', {
        drvPath: r.path,
        round: b.round,
        rounds: b.rounds,
        ...(b.machine ? { machine: b.machine } : {}),
        outcome,
        result: r.result,
      });
    }
    opts.emit('goal-finished', { kind: 'drvPath' in r.target ? 'derivation' : 'substitution', path: r.path, result: r.result });
  }
  return results as TargetResult[];
}

/** What the daemon would build or substitute for `targets`, and what it cannot make. */
export async function queryMissingThroughDaemon(store: DaemonStore, targets: readonly BuildTarget[]): Promise<MissingInfo> {
  const m = await store.queryMissing(await Promise.all(targets.map((t) => wireTarget(store, t))));
  return {
    willBuild: m.willBuild.sort(),
    willSubstitute: m.willSubstitute.sort(),
    unknown: m.unknown.sort(),
    downloadSize: m.downloadSize,
    narSize: m.narSize,
  };
}
