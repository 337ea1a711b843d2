/**
 * A BuildEngine over a DaemonStore: the Nix daemon builds and substitutes, with its own settings and trust
 * rules; the engine hands it the targets (BuildPathsWithResults, QueryMissing) and turns the daemon's log
 * stream into the engine's events (build-started / build-log / build-finished, substitution-started /
 * -finished, the daemon's messages as `warning` events at level 'plain', as Nix's client prints them).
 */
import type { DaemonStore } from '../remote/daemon-store.js';
import { ActivityType, buildLogLine, type RemoteLogEvent } from '../remote/worker-protocol.js';
import type { WireBuildResult } from '../remote/protocol-common.js';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import type { MissingInfo } from './query-missing.js';
import { failure, isSuccess, type BuildResult, type BuildStatus, type BuildTarget, type TargetResult } from './results.js';
import type { BuildMode } from './worker.js';

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

/** Turns the daemon's activities into engine events while one call runs. */
interface BuildActivity {
  kind: 'build';
  drvPath: StorePath;
  round: number;
  rounds: number;
  machine?: string;
}

function logToEvents(emit: EngineContext['emit'], mode: BuildMode, builds: Map<StorePath, BuildActivity>): (e: RemoteLogEvent) => void {
  const activities = new Map<bigint, BuildActivity | { kind: 'subst'; path: StorePath; substituter: string }>();
  return (e) => {
    switch (e.type) {
      case 'message':
        emit('warning', { message: e.text, level: 'plain' });
        return;
      case 'start-activity': {
        const [a, b, round, rounds] = e.fields;
        if (e.activityType === ActivityType.Build && typeof a === 'string') {
          const act: BuildActivity = {
            kind: 'build',
            drvPath: a,
            round: typeof round === 'number' ? round : 1,
            rounds: typeof rounds === 'number' ? rounds : 1,
            ...(typeof b === 'string' && b ? { machine: b } : {}),
          };
          activities.set(e.id, act);
          builds.set(a, act);
          emit('build-started', { drvPath: a, round: act.round, rounds: act.rounds, mode, ...(act.machine ? { machine: act.machine } : {}) });
        } else if (e.activityType === ActivityType.Substitute && typeof a === 'string') {
          activities.set(e.id, { kind: 'subst', path: a, substituter: typeof b === 'string' ? b : '' });
          emit('substitution-started', { path: a, substituter: typeof b === 'string' ? b : '' });
        }
        return;
      }
      case 'stop-activity': {
        const act = activities.get(e.id);
        activities.delete(e.id);
        if (act?.kind === 'subst') emit('substitution-finished', { path: act.path, substituter: act.substituter, ok: true });
        return;
      }
      case 'result': {
        const act = activities.get(e.id);
        const line = buildLogLine(e);
        if (act?.kind === 'build' && line !== undefined) emit('build-log', { drvPath: act.drvPath, line });
        return;
      }
    }
  };
}

/** Realise `targets` in the daemon: one result per target, in order. */
export async function buildThroughDaemon(
  store: DaemonStore,
  targets: readonly BuildTarget[],
  opts: { mode: BuildMode; signal?: AbortSignal | undefined; emit: EngineContext['emit'] },
): Promise<TargetResult[]> {
  const wire = await Promise.all(targets.map((t) => wireTarget(store, t)));
  // The builds the daemon started, by derivation: a target's build-finished carries its result.
  const builds = new Map<StorePath, BuildActivity>();
  const onLog = logToEvents(opts.emit, opts.mode, builds);
  let results: (TargetResult | undefined)[];
  try {
    const got = await store.buildPathsWithResults(wire, { mode: opts.mode, signal: opts.signal, onLog });
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
      return targets.map((t) => ({ target: t, path: 'drvPath' in t ? t.drvPath : t.path, result: failure('stopped', 'the build was cancelled') }));
    // A daemon before protocol 1.34 (BuildPaths) reports a failure as one error for the call.
    if ((e as { code?: string }).code !== 'remote-daemon-error') throw e;
    const message = (e as Error).message.replace(/^'[^']*': /, '');
    results = targets.map((t) => ({ target: t, path: 'drvPath' in t ? t.drvPath : t.path, result: failure('misc-failure', message) }));
  }
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
