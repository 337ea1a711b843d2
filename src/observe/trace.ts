/**
 * A timeline of a run in the Chrome Trace Event format (opens in Perfetto and chrome://tracing), recorded
 * from engine events: every build as a complete event on the track of the build slot it held (or of the
 * remote machine it ran on), every substitution on a substitution track, goals and lock waits as async
 * spans, download and build counters as counter tracks. The derivation graph (each goal's input
 * derivations, from `goal-waiting`) rides along in the goals' arguments, so the report can find the
 * critical path offline.
 */
import { writeFileSync } from 'node:fs';
import type { BuildEngine } from '../scheduler/build-engine.js';
import type { BuildEngineEvents } from '../scheduler/events.js';

/** One Chrome trace event (the fields this recorder writes). */
export interface TraceEvent {
  name: string;
  ph: 'X' | 'b' | 'e' | 'M' | 'C' | 'i';
  ts: number;
  pid: number;
  tid: number;
  cat?: string;
  dur?: number;
  id?: string;
  s?: 'g' | 'p' | 't';
  args?: Record<string, unknown>;
}

/** A trace file: Chrome's JSON object format, with realise's own data under `otherData`. */
export interface TraceFile {
  traceEvents: TraceEvent[];
  displayTimeUnit: 'ms';
  otherData: { tool: 'realise'; version: 1; startedAt: string; [key: string]: unknown };
}

export interface TraceRecorderOptions {
  /** How many of a failed build's last log lines to keep. @default 25 */
  readonly logTailLines?: number;
  /** Extra values for `otherData` (e.g. maxJobs, the command line). */
  readonly meta?: Record<string, unknown>;
}

const PID = 1;
const MAX_ERROR_CHARS = 8192;

/** Build logs get (at most) this name's characters: the store path's name part. */
function nameOf(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return (/^[0-9a-z]{32}-/.test(base) ? base.slice(33) : base).replace(/\.drv$/, '');
}

/** Listen to one engine event (until the recorder is closed). */
type Subscribe = <E extends keyof BuildEngineEvents>(event: E, fn: BuildEngineEvents[E]) => void;

interface OpenSpan {
  start: number;
  tid: number;
  slot: number;
  track: string;
  tail: string[];
  args: Record<string, unknown>;
}

/**
 * Records engine events into a trace. `finish()` returns the trace file (and fills in the graph);
 * `close()` only stops listening.
 */
export class TraceRecorder {
  private readonly t0: number;
  private readonly events: TraceEvent[] = [];
  private readonly tracks = new Map<string, number>();
  /** Per track family (local build slots, one per machine, substitution slots): which slots are taken. */
  private readonly slotsInUse = new Map<string, boolean[]>();
  private readonly builds = new Map<string, OpenSpan>();
  private readonly substs = new Map<string, OpenSpan>();
  private readonly goals = new Map<string, { id: string; begin: TraceEvent }>();
  private readonly detach: (() => void)[] = [];
  private nextAsync = 1;
  private readonly tailLines: number;
  private lastCounters = '';

  constructor(
    engine: Pick<BuildEngine, 'on' | 'off'>,
    private readonly opts: TraceRecorderOptions = {},
  ) {
    this.t0 = performance.now();
    this.tailLines = opts.logTailLines ?? 25;
    this.events.push({ name: 'process_name', ph: 'M', ts: 0, pid: PID, tid: 0, args: { name: 'realise' } });
    const on: Subscribe = (event, fn) => {
      (engine.on as (e: typeof event, f: typeof fn) => void)(event, fn);
      this.detach.push(() => (engine.off as (e: typeof event, f: typeof fn) => void)(event, fn));
    };
    this.recordGoals(on);
    this.recordBuilds(on);
    this.recordSubstitutions(on);
    this.recordLockWaitsAndCounters(on);
  }

  /** Goals as async spans (begin at goal-started, end at goal-finished with the status), with their inputs. */
  private recordGoals(on: Subscribe): void {
    on('goal-started', (e) => {
      const key = `${e.kind}:${e.path}`;
      if (this.goals.has(key)) return;
      const id = String(this.nextAsync++);
      const begin: TraceEvent = {
        name: nameOf(e.path),
        cat: `goal,${e.kind}`,
        ph: 'b',
        id,
        ts: this.ts(e.time),
        pid: PID,
        tid: this.track('goals'),
        args: { kind: e.kind, path: e.path },
      };
      this.events.push(begin);
      this.goals.set(key, { id, begin });
    });
    on('goal-waiting', (e) => {
      const g = this.goals.get(`derivation:${e.path}`);
      if (g) g.begin.args!.inputs = e.inputs;
    });
    on('goal-finished', (e) => {
      const key = `${e.kind}:${e.path}`;
      const g = this.goals.get(key);
      if (!g) return;
      this.goals.delete(key);
      const args: Record<string, unknown> = { status: e.result.status };
      if (e.result.errorMsg && e.result.status !== 'stopped') args.error = e.result.errorMsg.slice(0, MAX_ERROR_CHARS);
      this.events.push({ name: g.begin.name, cat: g.begin.cat, ph: 'e', id: g.id, ts: this.ts(e.time), pid: PID, tid: g.begin.tid, args });
    });
  }

  /** Builds as complete spans on their slot's track (a machine's for remote builds), a failure with its log tail. */
  private recordBuilds(on: Subscribe): void {
    on('build-started', (e) => {
      const family = e.machine ? `machine ${e.machine}` : 'build slot';
      const span = this.open(family, e.time, {
        drvPath: e.drvPath,
        round: e.round,
        rounds: e.rounds,
        mode: e.mode,
        ...(e.machine ? { machine: e.machine } : {}),
      });
      this.builds.set(e.drvPath, span);
    });
    on('build-log', (e) => {
      const span = this.builds.get(e.drvPath);
      if (!span) return;
      span.tail.push(e.line);
      if (span.tail.length > this.tailLines) span.tail.shift();
    });
    on('build-finished', (e) => {
      const span = this.builds.get(e.drvPath);
      if (!span) return;
      this.builds.delete(e.drvPath);
      span.args.outcome = e.outcome;
      if (e.outcome === 'failure') span.args.logTail = span.tail;
      this.closeSpan(span, nameOf(e.drvPath), 'build', e.time);
    });
  }

  /** Substitutions as complete spans on the substitution slots' tracks. */
  private recordSubstitutions(on: Subscribe): void {
    on('substitution-started', (e) => {
      this.substs.set(e.path, this.open('substitution slot', e.time, { path: e.path, substituter: e.substituter, ...(e.narUrl ? { narUrl: e.narUrl } : {}) }));
    });
    on('substitution-finished', (e) => {
      const span = this.substs.get(e.path);
      if (!span) return;
      this.substs.delete(e.path);
      span.args.ok = e.ok;
      if (e.error) span.args.error = e.error.slice(0, MAX_ERROR_CHARS);
      this.closeSpan(span, nameOf(e.path), 'substitution', e.time);
    });
  }

  /** Waits for output locks as async spans, and the download and running counters when they change. */
  private recordLockWaitsAndCounters(on: Subscribe): void {
    on('build-waiting', (e) => {
      const id = `lock:${e.drvPath}`;
      this.events.push({
        name: `lock ${nameOf(e.drvPath)}`,
        cat: 'lock',
        ph: 'b',
        id,
        ts: this.ts(e.time),
        pid: PID,
        tid: this.track('lock waits'),
        args: { drvPath: e.drvPath, lockedPaths: e.lockedPaths },
      });
    });
    on('build-lock-acquired', (e) => {
      this.events.push({
        name: `lock ${nameOf(e.drvPath)}`,
        cat: 'lock',
        ph: 'e',
        id: `lock:${e.drvPath}`,
        ts: this.ts(e.time),
        pid: PID,
        tid: this.track('lock waits'),
      });
    });
    on('progress', (p) => {
      const key = `${p.download.done}/${p.download.expected}/${p.builds.running}/${p.substitutions.running}`;
      if (key === this.lastCounters) return;
      this.lastCounters = key;
      const ts = this.ts(p.time);
      const tid = this.track('counters');
      this.events.push({ name: 'download bytes', ph: 'C', ts, pid: PID, tid, args: { done: p.download.done, expected: p.download.expected } });
      this.events.push({ name: 'running', ph: 'C', ts, pid: PID, tid, args: { builds: p.builds.running, substitutions: p.substitutions.running } });
    });
  }

  /** Stop listening to the engine (what was recorded stays). */
  close(): void {
    for (const d of this.detach.splice(0)) d();
  }

  private closeSpan(span: OpenSpan, name: string, cat: string, time: number): void {
    const ts = this.ts(time);
    this.events.push({ name, cat, ph: 'X', ts: span.start, dur: Math.max(0, ts - span.start), pid: PID, tid: span.tid, args: span.args });
    this.slotsInUse.get(span.track)![span.slot] = false;
  }

  /** The trace so far (spans still open end now). */
  async finish(): Promise<TraceFile> {
    const now = performance.now();
    for (const [drv, span] of this.builds) {
      span.args.outcome = 'unfinished';
      this.closeSpan(span, nameOf(drv), 'build', now);
    }
    for (const [p, span] of this.substs) {
      span.args.ok = false;
      this.closeSpan(span, nameOf(p), 'substitution', now);
    }
    this.builds.clear();
    this.substs.clear();
    for (const [, g] of this.goals) {
      this.events.push({
        name: g.begin.name,
        cat: g.begin.cat,
        ph: 'e',
        id: g.id,
        ts: this.ts(now),
        pid: PID,
        tid: g.begin.tid,
        args: { status: 'unfinished' },
      });
    }
    this.goals.clear();
    return {
      traceEvents: [...this.events].sort((a, b) => a.ts - b.ts),
      displayTimeUnit: 'ms',
      otherData: { tool: 'realise', version: 1, startedAt: new Date(performance.timeOrigin + this.t0).toISOString(), ...this.opts.meta },
    };
  }

  /** finish() and write the trace to `file` as JSON. */
  async writeFile(file: string): Promise<TraceFile> {
    const trace = await this.finish();
    writeFileSync(file, JSON.stringify(trace));
    return trace;
  }

  private ts(time: number): number {
    return Math.max(0, Math.round((time - this.t0) * 1000));
  }

  /** A track (thread) by name, announced with Chrome's thread_name metadata and sorted by first use. */
  private track(name: string): number {
    let tid = this.tracks.get(name);
    if (tid === undefined) {
      tid = this.tracks.size + 1;
      this.tracks.set(name, tid);
      this.events.push({ name: 'thread_name', ph: 'M', ts: 0, pid: PID, tid, args: { name } });
      this.events.push({ name: 'thread_sort_index', ph: 'M', ts: 0, pid: PID, tid, args: { sort_index: tid } });
    }
    return tid;
  }

  /** Take the lowest free slot of a track family (its track is `FAMILY N`). */
  private open(family: string, time: number, args: Record<string, unknown>): OpenSpan {
    let used = this.slotsInUse.get(family);
    if (!used) this.slotsInUse.set(family, (used = []));
    let slot = used.indexOf(false);
    if (slot < 0) slot = used.length;
    used[slot] = true;
    return { start: this.ts(time), tid: this.track(`${family} ${slot + 1}`), slot, track: family, tail: [], args };
  }
}

/** Record a trace of an engine's events (see TraceRecorder). */
export function recordTrace(engine: Pick<BuildEngine, 'on' | 'off'>, opts: TraceRecorderOptions = {}): TraceRecorder {
  return new TraceRecorder(engine, opts);
}
