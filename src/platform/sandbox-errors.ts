import { RealiseError } from '../store/errors.js';

/**
 * Codes of {@link SandboxError}:
 * - `sandbox-unavailable`: namespaces (or bwrap / the helper) are missing and fallback is off.
 * - `sandbox-setup-failed`: the sandbox could not be set up for one build (mount, chroot dir, ...).
 * - `sandbox-path-not-allowed`: `__impureHostDeps` names a path outside `allowedImpureHostPrefixes`.
 * - `sandbox-bad-config`: malformed `sandbox-paths` or pre-build hook output.
 * - `sandbox-no-chroot-forbidden`: `__noChroot` with `sandbox = true`.
 */
export type SandboxErrorCode =
  'sandbox-unavailable' | 'sandbox-setup-failed' | 'sandbox-path-not-allowed' | 'sandbox-bad-config' | 'sandbox-no-chroot-forbidden';

export class SandboxError extends RealiseError {
  declare readonly code: SandboxErrorCode;
  constructor(code: SandboxErrorCode, message: string, options: { cause?: unknown; hint?: string } = {}) {
    super(code, message, options);
  }
}
