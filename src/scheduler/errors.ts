import { RealiseError } from '../store/errors.js';
import type { NixMessage } from '../store/nix-message.js';
import type { BuildResult, TargetResult } from './results.js';
import { exitStatusOf, keptBuildDirNote } from './results.js';

/** Invalid BuildEngine options. */
export class OptionsError extends RealiseError {
  constructor(message: string) {
    super('invalid-options', message);
  }
}

/** One or more requested builds failed. Carries every failure and Nix's exit status. */
export class BuildFailedError extends RealiseError {
  readonly failures: readonly TargetResult[];
  /** Nix's exit status: 100 + 4 build failure | 1 timeout | 2 hash mismatch | 8 not deterministic, else 1. */
  readonly exitStatus: number;

  constructor(failures: readonly TargetResult[]) {
    const lines = failures.map((f) => f.result.errorMsg ?? `build of '${f.path}' failed (${f.result.status})`);
    const head = failures.length === 1 ? lines[0]! : `${failures.length} builds failed:\n${lines.map((l) => '- ' + l).join('\n')}`;
    super('build-failed', head);
    this.failures = failures;
    this.exitStatus = exitStatusOf(failures.map((f) => f.result));
  }

  get results(): BuildResult[] {
    return this.failures.map((f) => f.result);
  }
}

/** The engine could not start a build at all (e.g. wrong platform and no remote builders, maxJobs 0). */
export class BuildSetupError extends RealiseError {
  /**
   * Where it happened, as Nix's error trace: `'while setting up the build environment'` when the sandbox
   * could not be set up (Nix adds that trace to errors raised in the sandboxed child before the builder
   * runs, and its CLI then prints "(use '--show-trace' …)" or, with --show-trace, the trace).
   */
  readonly trace: string | undefined;
  /** The error alone: `shortMessage` without the kept build directory's note. */
  readonly reason: string;
  /** The build directory kept for inspection (keepFailed); Nix prints its note before the error. */
  readonly keptBuildDir: string | undefined;

  constructor(message: string, options: { hint?: string | undefined; cause?: unknown; trace?: string; keptBuildDir?: string | undefined } = {}) {
    super('build-setup', options.keptBuildDir === undefined ? message : `${message}\n${keptBuildDirNote(options.keptBuildDir)}`, options);
    this.trace = options.trace;
    this.reason = message;
    this.keptBuildDir = options.keptBuildDir;
  }
}

/**
 * The reason of a call's abort signal once the call is stopped: what an aborted wait, or
 * `signal.throwIfAborted()`, throws inside a goal's work, unwinding it (internal: never escapes the
 * worker, which turns any throw in a stopped call into a `stopped` result). Failures are never thrown.
 */
export class GoalStopped extends Error {
  constructor() {
    super('stopped');
  }
}

/** The call was cancelled with its AbortSignal. */
export class BuildCancelledError extends RealiseError {
  constructor(reason?: unknown) {
    super('cancelled', 'the build was cancelled', { cause: reason });
  }
}

/**
 * A builder's `@nix` line that is JSON but lacks a field Nix reads, or has one of another type (e.g.
 * `@nix {"action":"msg"}`, `@nix [1,2]`): Nix 2.8 throws its JSON library's type error out of the build
 * (`[json.exception.type_error.302] type must be string, but is null`), which ends the whole call (with
 * keepGoing too), the other builds stopped, exit status 1. The message is Nix's.
 */
export class BuilderLogMessageError extends RealiseError {
  /**
   * Whether it is the JSON library's exception (`[json.exception.type_error.…] …`), which Nix's CLI prints
   * as a plain message, rather than Nix's own error (`unsupported JSON type N` for a log field).
   */
  readonly libraryError: boolean;

  constructor(message: string | NixMessage) {
    super('builder-log-message', message);
    this.libraryError = this.shortMessage.startsWith('[json.exception.');
  }
}
