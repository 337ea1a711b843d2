/**
 * The Sandbox interface: run one builder process over a neutral request. The scheduler prepares the
 * environment, the build directory and the output locations; a Sandbox decides how the process sees them.
 */
import type { StorePath } from '../store/store-path.js';

export interface SandboxRequest {
  /** Derivation being built (for messages and log names). */
  readonly drvPath: StorePath;
  /** Absolute path of the builder executable as the builder sees it (logical store path, or `builtin:...`). */
  readonly builder: string;
  readonly args: readonly string[];
  /** The complete environment (the scheduler built it exactly as Nix's initEnv). */
  readonly env: Readonly<Record<string, string>>;
  /** Host directory to use as the build directory (its contents are prepared: passAsFile, .attrs.*, ...). */
  readonly buildDir: string;
  /** Path of the build directory as the builder sees it (`/build` in a sandbox, else `buildDir`). */
  readonly sandboxBuildDir: string;
  /** Logical store dir and its physical location. */
  readonly storeDir: string;
  readonly realStoreDir: string;
  /** Store paths the builder may see (the input closure), logical paths. */
  readonly inputPaths: readonly StorePath[];
  /**
   * Logical output paths the builder writes (they must be writable; they do not exist yet).
   * For an `isolated` sandbox, when `run()` returns (whatever the exit) every output the builder created
   * is at its physical location `realStoreDir/<base>` (= `store.toRealPath(output)`); anything that was
   * there before is replaced (outputs being built are invalid paths).
   */
  readonly outputPaths: readonly StorePath[];
  /** Extra host paths to expose, `target -> { source, optional }` (Nix's sandbox-paths). */
  readonly extraPaths?: ReadonlyMap<string, { source: string; optional: boolean }>;
  /** Fixed-output derivations get the host's network. */
  readonly network: boolean;
  /**
   * Bind the host's /dev/kvm into the sandbox's /dev when it exists (Nix does when `kvm` is among the
   * machine's system features). @default false
   */
  readonly kvm?: boolean;
  /** uid/gid the builder sees. */
  readonly uid?: number;
  readonly gid?: number;
}

export interface SandboxRunOptions {
  readonly signal?: AbortSignal;
  /** Raw output of the builder (stdout and stderr merged), as it arrives. */
  readonly onOutput?: (chunk: Buffer) => void;
  /**
   * Called once the build's environment is set up and its builder starts (before any output). A build
   * whose sandbox cannot be set up never gets it, as Nix announces such a build ("building '…'") only
   * once its sandbox is set up. Sandboxes that cannot tell may call it at the start of `run()`.
   */
  readonly onSetUp?: () => void;
  /**
   * A failure of the sandbox's own clean-up that does not fail the build (a chroot it could not delete,
   * as Nix's `error (ignored): …`), in Nix's words.
   */
  readonly onIgnoredError?: (message: string) => void;
}

export type SandboxExit =
  | { readonly kind: 'exited'; readonly code: number }
  | { readonly kind: 'signalled'; readonly signal: string }
  /**
   * The process could not be started (e.g. builder missing); `message` says why. `execError` is set when
   * only the builder's own `execve` failed, after its environment was set up (a missing or non-executable
   * builder), worded as Nix words it (`executing '<builder>': <reason>`): Nix reports such a build as exit
   * code 1 with `error: <execError>` in its log. `reason` is set by a sandbox that could not be set up: the
   * cause alone, without the "setting up the sandbox … failed" prefix or a hint (the scheduler words the
   * build's failure from it).
   */
  | { readonly kind: 'spawn-failed'; readonly message: string; readonly execError?: string; readonly reason?: string }
  | { readonly kind: 'aborted' };

/** A `spawn-failed` exit; `execError` when only the builder's `execve` failed (see SandboxExit). */
export function spawnFailed(message: string, execError?: string, reason?: string): SandboxExit {
  return { kind: 'spawn-failed', message, ...(execError ? { execError } : {}), ...(reason !== undefined ? { reason } : {}) };
}

/** A helper's report of a failed `execve` of the builder ("executing '<path>': <reason>"), else undefined. */
export function execErrorOf(helperMessage: string): string | undefined {
  return helperMessage.startsWith("executing '") ? helperMessage : undefined;
}

export interface Sandbox {
  /** Short name for messages and events: 'none', 'linux-namespaces', 'fake', ... */
  readonly name: string;
  /**
   * Whether output paths are written at their real logical path (true for a real sandbox). When true,
   * outputs end up at `store.toRealPath(output)` after `run()`; when false the builder writes where
   * `request.env` says (the scheduler rewrites hashes).
   */
  readonly isolated: boolean;
  run(request: SandboxRequest, opts?: SandboxRunOptions): Promise<SandboxExit>;
  /** Release what the sandbox keeps between builds (helper processes, prepared chroots). Optional. */
  close?(): void | Promise<void>;
  /**
   * Get ready, in the background, for builds like `like` (its store dirs, build dir and kvm), before the
   * first one runs: helper processes started, chroots prepared. Optional; never fails (builds report errors);
   * a promise it returns resolves when it is done (callers need not wait for it).
   */
  warmUp?(like: SandboxWarmUp): void | Promise<void>;
}

/** What Sandbox.warmUp needs to know of the builds to come. */
export type SandboxWarmUp = Pick<SandboxRequest, 'drvPath' | 'storeDir' | 'realStoreDir' | 'sandboxBuildDir' | 'kvm'>;
