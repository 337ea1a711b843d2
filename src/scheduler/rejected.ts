/**
 * A build's inputs or outputs rejected (Nix's BuildError thrown in startBuilder and registerOutputs), as a
 * value: the step that finds it returns it (never throws it), and the round turns it into its failed
 * result in one place (local-build.ts, `LocalRound.fail`).
 */
import type { BuildStatus } from './results.js';
import type { NixMessage } from '../store/nix-message.js';

export interface Rejected {
  readonly kind: 'rejected';
  readonly status: BuildStatus;
  readonly message: string;
  /** `message` with its values in Nix's colours (FailureDetails.colouredMessage), where Nix colours some. */
  readonly colouredMessage?: string;
  /** A fixed output whose content does not have the declared hash (exit status bit 2). */
  readonly hashMismatch?: boolean;
  /** A check build whose outputs differ from the registered ones (exit status bit 8). */
  readonly checkMismatch?: boolean;
  /**
   * Ends the whole call, even with keepGoing: Nix 2.8 throws the output-cycle error as a plain Error,
   * which leaves its worker loop (the other builds stop; measured against nix-store --keep-going).
   */
  readonly endsCall?: boolean;
  /**
   * The outputs are in the store already (Nix moved them there before checking them: allowedReferences,
   * maxSize, ...): they stay there, invalid, as Nix leaves them.
   */
  readonly outputsStay?: boolean;
}

export function rejected(
  status: BuildStatus,
  message: string | NixMessage,
  flags: Pick<Rejected, 'hashMismatch' | 'checkMismatch' | 'endsCall' | 'outputsStay'> = {},
): Rejected {
  if (typeof message === 'string') return { kind: 'rejected', status, message, ...flags };
  return { kind: 'rejected', status, message: message.plain, colouredMessage: message.coloured, ...flags };
}

export function isRejected(x: unknown): x is Rejected {
  return typeof x === 'object' && x !== null && (x as { kind?: unknown }).kind === 'rejected';
}
