/**
 * Errors of the derivation layer. Both are `RealiseError`s with a stable `code`.
 */
import { RealiseError } from '../store/errors.js';

/** A malformed `.drv` file (ATerm syntax, bad store paths, bad hashes, impossible output kinds). */
export class BadDerivationError extends RealiseError {
  /** The `.drv` path or derivation name the text came from, when known. */
  readonly drv: string | undefined;
  /** Character offset in the text where parsing failed, when known. */
  readonly offset: number | undefined;

  constructor(message: string, options: { cause?: unknown; hint?: string; drv?: string; offset?: number } = {}) {
    super('bad-derivation', message, options);
    this.drv = options.drv;
    this.offset = options.offset;
  }
}

/**
 * Attributes that Nix's `derivation` builtin rejects: missing `name`/`builder`/`system`, bad names,
 * duplicate or invalid outputs, bad hashes, a fixed output with several outputs, values that cannot
 * be coerced to strings.
 */
export class InvalidDerivationAttrsError extends RealiseError {
  /** The derivation name, when known. */
  readonly derivationName: string | undefined;
  /** The attribute that is wrong, when one is. */
  readonly attribute: string | undefined;

  constructor(message: string, options: { cause?: unknown; hint?: string; derivationName?: string; attribute?: string } = {}) {
    super('invalid-derivation-attrs', message, options);
    this.derivationName = options.derivationName;
    this.attribute = options.attribute;
  }
}
