/**
 * Build results as values, mirroring Nix's BuildResult. Statuses are a disjoint string union.
 */
import type { StorePath } from '../store/store-path.js';
import type { WireBuildStatus } from '../remote/protocol-common.js';
import type { NixMessage } from '../store/nix-message.js';

/**
 * A build's status: Nix's BuildResult::Status as strings (one definition, shared with the remote protocols),
 * without the two wire-only values a local build never produces, plus `stopped`: a goal the call stopped
 * before it could finish (another goal failed without keepGoing, or the caller's signal). A stopped goal
 * is not a failure of its own: it is in no `failures` list and not counted as a failed build.
 */
export type BuildStatus = Exclude<WireBuildStatus, 'resolves-to-already-valid' | 'no-substituters'> | 'stopped';

const SUCCESS: ReadonlySet<BuildStatus> = new Set(['built', 'substituted', 'already-valid']);

export function isSuccess(status: BuildStatus): boolean {
  return SUCCESS.has(status);
}

/**
 * A failure's parts as data. Nix prints them apart (the kept build directory's note before the error, the
 * log tail under it, only when the log was not shown as it came); `errorMsg` is them put together.
 */
export interface FailureDetails {
  /** What went wrong, in Nix's words, alone (no log tail, note or hint). */
  readonly message: string;
  /**
   * `message` with the values formatted into it in Nix's colours, as Nix's JSON logger and a terminal show
   * the error (src/store/nix-message.ts); absent where nothing in it is coloured.
   */
  readonly colouredMessage?: string | undefined;
  /** The last `logLines` lines of the builder's log, and the derivation whose log they are. */
  readonly logTail?: { readonly drvPath: StorePath; readonly lines: readonly string[] } | undefined;
  /** The build directory kept for inspection (keepFailed). */
  readonly keptBuildDir?: string | undefined;
  /** What the user can do next (the API's hint; Nix has none, so the CLI leaves it out). */
  readonly hint?: string | undefined;
  /**
   * This failure ended the whole call, even with keepGoing, as Nix's plain Error thrown out of its worker
   * (a cycle between outputs, a system call failing on an output): the call's other goals were stopped.
   */
  readonly endedCall?: boolean | undefined;
}

export interface BuildResult {
  readonly status: BuildStatus;
  /**
   * For failures: what went wrong as one text (Nix's errorMsg): the message, the last `logLines` lines of
   * the log where there is one, the kept build directory's note, the hint. Its parts are in `failure`.
   */
  readonly errorMsg?: string;
  /** For failures this engine produced: the parts of `errorMsg` (results from remote machines have only `errorMsg`). */
  readonly failure?: FailureDetails;
  /** How many times the derivation was built (rounds), 0 when not built. */
  readonly timesBuilt: number;
  readonly isNonDeterministic: boolean;
  /** Unix seconds; 0 when nothing ran. */
  readonly startTime: number;
  readonly stopTime: number;
  /** Output name → store path of the outputs this result is about. */
  readonly builtOutputs: Readonly<Record<string, StorePath>>;
  /** Set on specific failures, used for the exit status: hash mismatch of a fixed output, check mismatch. */
  readonly hashMismatch?: boolean;
  readonly checkMismatch?: boolean;
}

/** What a caller asks to realise: a derivation (with outputs, `['*']` for all) or an opaque store path. */
export type BuildTarget = { readonly drvPath: StorePath; readonly outputs?: readonly string[] | '*' } | { readonly path: StorePath };

export interface TargetResult {
  readonly target: BuildTarget;
  /** The derivation or path the result is about. */
  readonly path: StorePath;
  readonly result: BuildResult;
}

/** The result of a goal the call stopped (see BuildStatus). */
export function stoppedResult(what: string): BuildResult {
  return failure('stopped', `${what} was stopped`);
}

/** A failed result; `why` is the message alone or its parts (FailureDetails), from which `errorMsg` is made. */
export function failure(status: BuildStatus, why: string | FailureDetails, extra: Partial<BuildResult> = {}): BuildResult {
  const details = typeof why === 'string' ? { message: why } : why;
  return {
    status,
    errorMsg: errorMessageOf(details),
    failure: details,
    timesBuilt: 0,
    isNonDeterministic: false,
    startTime: 0,
    stopTime: 0,
    builtOutputs: {},
    ...extra,
  };
}

/** Nix's log tail under a builder failure: `;`, the last lines, and where to find the rest. */
export function withLogTail(message: string, tail: FailureDetails['logTail']): string {
  if (!tail || tail.lines.length === 0) return message;
  return `${message};\nlast ${tail.lines.length} log lines:\n${tail.lines.map((l) => `> ${l}\n`).join('')}For full logs, run 'nix log ${tail.drvPath}'.`;
}

/** Nix's note on a failed build's kept build directory. */
export function keptBuildDirNote(dir: string): string {
  return `note: keeping build directory '${dir}'`;
}

/** The parts of a failure whose message is `m` (in both its forms). */
export function messageParts(m: NixMessage): { message: string; colouredMessage: string } {
  return { message: m.plain, colouredMessage: m.coloured };
}

/** errorMessageOf with the message's values in Nix's colours. */
export function colouredErrorMessageOf(d: FailureDetails): string {
  return errorMessageOf({ ...d, message: d.colouredMessage ?? d.message });
}

/** A failure's parts as one text (Nix's errorMsg, with the API's hint after it). */
export function errorMessageOf(d: FailureDetails): string {
  let s = withLogTail(d.message, d.logTail);
  if (d.keptBuildDir !== undefined) s += `\n${keptBuildDirNote(d.keptBuildDir)}`;
  if (d.hint) s += `\n  hint: ${d.hint}`;
  return s;
}

export function success(status: BuildStatus, builtOutputs: Record<string, StorePath> = {}, extra: Partial<BuildResult> = {}): BuildResult {
  return { status, timesBuilt: 0, isNonDeterministic: false, startTime: 0, stopTime: 0, builtOutputs, ...extra };
}

/**
 * Nix's exit status for a set of failed results: 100 + bits (4 build failure, 1 timeout,
 * 2 hash mismatch, 8 check mismatch: a `check` build that differs); 1 when none of those apply.
 */
export function exitStatusOf(results: Iterable<BuildResult>): number {
  let permanent = false,
    timedOut = false,
    hashMismatch = false,
    checkMismatch = false;
  for (const r of results) {
    if (r.status === 'permanent-failure' || r.status === 'input-rejected') permanent = true;
    if (r.status === 'timed-out') timedOut = true;
    if (r.hashMismatch) hashMismatch = true;
    // Only a check build that differs sets the bit (Nix's worker.checkMismatch); rounds that differ
    // (buildRepeat) are a plain failure, exit 1, as in Nix 2.8.
    if (r.checkMismatch) checkMismatch = true;
  }
  let mask = 0;
  if (permanent || timedOut || hashMismatch) mask |= 0x04;
  if (timedOut) mask |= 0x01;
  if (hashMismatch) mask |= 0x02;
  if (checkMismatch) mask |= 0x08;
  return mask ? 0x60 | mask : 1;
}
