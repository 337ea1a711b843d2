import type { NixMessage } from './nix-message.js';

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
  /**
   * `shortMessage` with the values formatted into it in Nix's colours, as Nix's JSON logger and a terminal
   * show its error (src/store/nix-message.ts); the same text where nothing in it is coloured.
   */
  readonly colouredMessage: string;

  constructor(code: string, message: string | NixMessage, options: { cause?: unknown; hint?: string } = {}) {
    const plain = typeof message === 'string' ? message : message.plain;
    super(options.hint ? `${plain}\n  hint: ${options.hint}` : plain, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.shortMessage = plain;
    this.colouredMessage = typeof message === 'string' ? message : message.coloured;
    this.hint = options.hint;
  }
}

/** An error's text as Nix would print it: a RealiseError's message without our hint, else the message. */
export function shortMessageOf(e: unknown): string {
  return e instanceof RealiseError ? e.shortMessage : String((e as Error)?.message ?? e);
}

/** shortMessageOf, with the values in Nix's colours where the error knows them. */
export function colouredMessageOf(e: unknown): string {
  return e instanceof RealiseError ? e.colouredMessage : shortMessageOf(e);
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

/** Why a store write failed, from its errno (or SQLite's code): the StoreError code and what to do. */
const WRITE_FAILURES: Record<string, { code: string; hint: (file: string) => string }> = {
  ENOSPC: { code: 'store-disk-full', hint: (f) => `the file system holding '${f}' is full: free space on it (see df) and retry; nothing was registered` },
  EDQUOT: { code: 'store-disk-full', hint: (f) => `the disk quota for '${f}' is exhausted: free space or raise the quota and retry; nothing was registered` },
  SQLITE_FULL: {
    code: 'store-disk-full',
    hint: (f) => `the file system holding the database '${f}' is full: free space on it (see df) and retry; nothing was registered`,
  },
  EROFS: { code: 'store-read-only', hint: (f) => `'${f}' is on a read-only file system: open a store you can write to; nothing was registered` },
  EACCES: {
    code: 'store-permission-denied',
    hint: (f) => `you may not write to '${f}': check its owner and mode, or use a store of your own; nothing was registered`,
  },
  EPERM: {
    code: 'store-permission-denied',
    hint: (f) => `you may not write to '${f}': check its owner and mode, or use a store of your own; nothing was registered`,
  },
  EIO: { code: 'store-io-error', hint: (f) => `the device holding '${f}' reported an I/O error: check it (dmesg) before retrying; nothing was registered` },
};

/**
 * A failed write to the store (contents, database, temporary roots, logs) as a StoreError that names the
 * file and says what to do; RealiseErrors pass through unchanged.
 */
export function storeWriteError(e: unknown, what: string, file: string): RealiseError {
  if (e instanceof RealiseError) return e;
  const errno = (e as NodeJS.ErrnoException)?.code;
  const known = errno ? WRITE_FAILURES[errno] : undefined;
  const reason = (e as Error)?.message ?? String(e);
  return new StoreError(known?.code ?? 'store-write-failed', `${what} '${file}' failed: ${reason}`, {
    cause: e,
    hint: known ? known.hint(file) : 'nothing was registered; fix the cause and retry',
  });
}

/** storeWriteError for a system call's or SQLite's error; anything else (an abort, a bug) is returned as it is. */
export function asStoreWriteError(e: unknown, what: string, file: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (e instanceof RealiseError || typeof code !== 'string' || !/^(E[A-Z0-9]+|SQLITE_[A-Z_]+)$/.test(code)) return e;
  return storeWriteError(e, what, file);
}

/** Exhaustiveness helper for disjoint unions. */
export function unreachable(x: never): never {
  throw new Error(`unreachable: ${JSON.stringify(x)}`);
}
