/**
 * A build's inputs or outputs rejected (Nix's BuildError thrown in startBuilder and registerOutputs): the
 * round fails with `status`, as a value (local-build.ts turns it into the round's failure).
 */
import type { BuildStatus } from './results.js';

export class OutputRejected extends Error {
  constructor(
    readonly status: BuildStatus,
    message: string,
    readonly hashMismatch = false,
    readonly checkMismatch = false,
    /**
     * Ends the whole call, even with keepGoing: Nix 2.8 throws the output-cycle error as a plain Error,
     * which leaves its worker loop (the other builds stop; measured against nix-store --keep-going).
     */
    readonly endsCall = false,
    /**
     * The outputs are in the store already (Nix moved them there before checking them: allowedReferences,
     * maxSize, ...): they stay there, invalid, as Nix leaves them.
     */
    readonly outputsStay = false,
  ) {
    super(message);
  }
}
