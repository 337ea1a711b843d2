/**
 * The one error base class of realise. Every error the SDK throws on purpose is a `RealiseError`
 * with a stable `code`; layers subclass it. `shortMessage` is the message without hints.
 */
export class RealiseError extends Error {
  /** Stable machine-readable code, e.g. `'invalid-store-path'`. */
  readonly code: string;
  /** The message without the appended hint. */
  readonly shortMessage: string;
  /** What the user can do next, when we know. */
  readonly hint: string | undefined;

  constructor(code: string, message: string, options: { cause?: unknown; hint?: string } = {}) {
    super(options.hint ? `${message}\n  hint: ${options.hint}` : message, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.shortMessage = message;
    this.hint = options.hint;
  }
}

/** An error's text as Nix would print it: a RealiseError's message without our hint, else the message. */
export function shortMessageOf(e: unknown): string {
  return e instanceof RealiseError ? e.shortMessage : String((e as Error)?.message ?? e);
}

/** A malformed hash string, unknown algorithm, or bad nix-base32 text. */
export class BadHashError extends RealiseError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('bad-hash', message, options);
  }
}

/** A string that is not a valid store path, or a bad store path name. */
export class InvalidStorePathError extends RealiseError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('invalid-store-path', message, options);
  }
}

/** A malformed or hostile NAR stream. */
export class BadNarError extends RealiseError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('bad-nar', message, options);
  }
}

/** A store-level failure: missing path, closure invariant violated, database problems, locks. */
export class StoreError extends RealiseError {
  constructor(code: string, message: string, options: { cause?: unknown; hint?: string } = {}) {
    super(code, message, options);
  }
}

/** A file that may not be in the store (a FIFO, socket or device): `file` is its path on disk. */
export class UnsupportedFileTypeError extends StoreError {
  constructor(readonly file: string) {
    super('unsupported-file-type', `file '${file}' has an unsupported type (only regular files, directories and symlinks may be in the store)`, {
      hint: 'remove sockets, FIFOs and device nodes from the output',
    });
  }
}

/** Exhaustiveness helper for disjoint unions. */
export function unreachable(x: never): never {
  throw new Error(`unreachable: ${JSON.stringify(x)}`);
}
