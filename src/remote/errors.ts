/**
 * Errors of the remote layer. All are `RealiseError`s with a stable `code`; the ones about a machine carry
 * its name (the store URI from the machines file) in `machine`.
 */
import { RealiseError } from '../store/errors.js';
import type { NixMessage } from '../store/nix-message.js';

type Opts = { cause?: unknown; hint?: string };

/** The peer spoke something other than the protocol we expected (bad magic, unknown message, bad version). */
export class RemoteProtocolError extends RealiseError {
  constructor(message: string, options: Opts = {}) {
    super('remote-protocol', message, options);
  }
}

/** The byte stream to the remote closed or failed (the process died, ssh dropped, the connection was closed). */
export class RemoteConnectionError extends RealiseError {
  /**
   * What the remote's process (ssh) wrote to stderr before an `ssh-ng://` connection failed, where the
   * message does not say it: Nix lets that ssh write to its own stderr, before its error. Empty otherwise.
   */
  readonly remoteStderr: string;
  constructor(message: string | NixMessage, options: Opts & { remoteStderr?: string } = {}) {
    super('remote-connection-lost', message, options);
    this.remoteStderr = options.remoteStderr ?? '';
  }
}

/** An error the remote Nix reported for one operation (STDERR_ERROR in the worker protocol). */
export class RemoteDaemonError extends RealiseError {
  /** Nix's verbosity level of the error (0 = error). */
  readonly level: number;
  /** Trace lines Nix attached, outermost first. */
  readonly traces: readonly string[];
  constructor(message: string, options: Opts & { level?: number; traces?: readonly string[] } = {}) {
    super('remote-daemon-error', message, options);
    this.level = options.level ?? 0;
    this.traces = options.traces ?? [];
  }
}

/** A malformed machines file or `builders` string, or a bad store URI. */
export class MachineSpecError extends RealiseError {
  constructor(message: string, options: Opts = {}) {
    super('bad-machine-spec', message, options);
  }
}

export type RemoteBuildErrorKind =
  /** Could not connect or the connection dropped. */
  | 'connection'
  /** The remote refused an operation (e.g. not trusted, bad input). */
  | 'refused'
  /** Copying inputs to or outputs from the remote failed, or an output's NAR hash did not verify. */
  | 'copy'
  /** Cancelled through the AbortSignal. */
  | 'aborted';

/** A remote build that could not be carried out on `machine`. With fallback the caller may retry elsewhere. */
export class RemoteBuildError extends RealiseError {
  readonly machine: string;
  readonly kind: RemoteBuildErrorKind;
  constructor(machine: string, kind: RemoteBuildErrorKind, message: string, options: Opts = {}) {
    super(kind === 'aborted' ? 'remote-build-aborted' : `remote-build-${kind}`, message, options);
    this.machine = machine;
    this.kind = kind;
  }
}

/** No configured machine can take a derivation; `message` lists each machine and why it was rejected. */
export class NoMachineError extends RealiseError {
  readonly rejections: readonly { readonly machine: string; readonly reasons: readonly string[] }[];
  constructor(message: string, rejections: readonly { machine: string; reasons: string[] }[], options: Opts = {}) {
    super('no-remote-machine', message, options);
    this.rejections = rejections;
  }
}
