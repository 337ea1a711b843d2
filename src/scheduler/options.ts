/**
 * BuildEngine options: typed, documented with their defaults, validated with messages of one formula.
 */
import { realpathSync } from 'node:fs';
import { cpus } from 'node:os';
import { defaultSystemFeatures } from '../derivation/parsed-attrs.js';
import type { Store } from '../store/store-api.js';
import type { Sandbox } from '../platform/sandbox.js';
import { createRemoteBuilders } from '../remote/remote-builder.js';
import { OptionsError } from './errors.js';

export type SandboxMode = boolean | 'relaxed';

export interface BuildEngineOptions {
  /** The store to build into. @default the embedded default store (LocalStore.openDefault()) */
  store?: Store;
  /** Substituters (binary caches), tried in priority order. @default [] */
  substituters?: readonly import('../substituter/substituter.js').Substituter[];
  /**
   * Sandboxing: `true` (always), `false` (never), `'relaxed'` (fixed-output and `__noChroot` derivations may
   * skip it), or a Sandbox implementation to use as is. A chroot store always builds sandboxed, as in Nix.
   * @default true when Linux namespaces are available, else false
   */
  sandbox?: SandboxMode | Sandbox;
  /** Fall back to an unsandboxed build when the sandbox can't be set up. @default true */
  sandboxFallback?: boolean;
  /** Extra paths exposed in the sandbox (Nix's `sandbox-paths`, `target=source`, `?` suffix = optional). @default [] */
  sandboxPaths?: readonly string[];
  /**
   * Host paths (or prefixes) a derivation's `__impureHostDeps` may name (Nix's `allowed-impure-host-deps`);
   * the allowed ones are bound into the sandbox, any other fails the build. @default []
   */
  allowedImpureHostDeps?: readonly string[];
  /**
   * Nix's `pre-build-hook`: run as `HOOK DRV CHROOTDIR` before each sandboxed build; it may print
   * `extra-sandbox-paths` blocks. @default undefined
   */
  preBuildHook?: string;
  /** Where the build directory is inside the sandbox (Nix's `sandbox-build-dir`). @default '/build' */
  sandboxBuildDir?: string;
  /** Size of the sandbox's private /dev/shm tmpfs (Nix's `sandbox-dev-shm-size`). @default '50%' */
  sandboxShmSize?: string;
  /** Nix's seccomp filter in the sandbox: no setuid/setgid bits, no extended attributes (`filter-syscalls`). @default true */
  filterSyscalls?: boolean;
  /**
   * Nix's `experimental-features` the engine checks: a derivation requiring the `recursive-nix` system
   * feature fails unless `'recursive-nix'` is listed (recursive Nix itself is not implemented). When the
   * list is given (the CLI always gives it), a `.drv` with floating content-addressed or deferred outputs
   * is refused unless `'ca-derivations'` is listed, as Nix 2.8 refuses to read one: the call ends with
   * `experimental Nix feature 'ca-derivations' is disabled; …` (a BuildSetupError). @default [] (and that
   * check not made)
   */
  experimentalFeatures?: readonly string[];
  /** Maximum concurrent local builds. 0 allows only remote builds. @default 1 */
  maxJobs?: number;
  /** Maximum concurrent substitutions. @default 16 */
  maxSubstitutionJobs?: number;
  /**
   * Nix's `min-free`: while a call runs, when fewer bytes than this are free on the store's file system,
   * the store collects garbage in the background (`store.autoGC`) up to `maxFree`; what in-flight builds
   * and substitutions use is kept (temporary roots). 0 disables it. @default 0
   */
  minFree?: number;
  /** Nix's `max-free`: how much free space an automatic collection aims for, in bytes. @default Infinity */
  maxFree?: number;
  /** Nix's `min-free-check-interval`: seconds between checks of the free space. @default 5 */
  minFreeCheckInterval?: number;
  /** NIX_BUILD_CORES given to builders (0 = all cores). @default number of CPUs */
  cores?: number;
  /** Keep building independent derivations after a failure. @default false */
  keepGoing?: boolean;
  /** Build from source when substitution fails. @default false */
  fallback?: boolean;
  /** Nix's `builders-use-substitutes`: a remote machine substitutes the inputs it lacks from its own binary caches where it can (the rest are copied there). @default false */
  buildersUseSubstitutes?: boolean;
  /** Extra rounds of each build to check determinism. @default 0 */
  buildRepeat?: number;
  /** Fail when rounds differ (else warn). @default true */
  enforceDeterminism?: boolean;
  /**
   * Kill a builder after this many seconds without output (0 = no limit; negative, as Nix 2.8 takes it: at
   * once). @default 0
   */
  maxSilentTime?: number;
  /** Kill a builder after this many seconds (0 = no limit; negative, as Nix 2.8 takes it: at once). @default 0 */
  buildTimeout?: number;
  /** Kill a builder after this many bytes of log (0 = no limit). @default 0 */
  maxLogSize?: number;
  /** Log lines kept in a failure's error message. @default 10 */
  logLines?: number;
  /** Keep build directories (and `.check` outputs) of failed builds. @default false */
  keepFailed?: boolean;
  /** Program run after each successful build with DRV_PATH and OUT_PATHS. @default undefined */
  postBuildHook?: string;
  /**
   * Secret keys (`name:base64`, as `nix-store --generate-binary-cache-key` writes them) that sign each output
   * built here, as Nix's `secret-key-files` does: the signatures go into the output's path info. @default []
   */
  secretKeys?: readonly string[];
  /**
   * Features this machine supports (Nix's system-features); with `kvm`, the sandbox binds /dev/kvm when it exists.
   * @default ['benchmark', 'big-parallel', 'nixos-test'], plus 'kvm' when /dev/kvm is readable and writable (defaultSystemFeatures())
   */
  systemFeatures?: readonly string[];
  /** The platform builds run on. @default 'x86_64-linux' (from the host) */
  system?: string;
  /** Extra platforms this machine can build for. @default ['i686-linux'] on x86_64-linux */
  extraPlatforms?: readonly string[];
  /** Environment variables given to fixed-output builders listed in `impureEnvVars` come from here. @default process.env */
  environment?: Readonly<Record<string, string | undefined>>;
  /** Directory in which build directories are created. @default `$TMPDIR` or /tmp with symlinks resolved, read when the engine is made (as Nix reads it once, at start) */
  buildDir?: string;
  /**
   * Remote builders (see src/remote): builders you made (you close them), or Nix's `builders` setting as a
   * string (machine lines, `;`-separated, or `@/etc/nix/machines`), from which the engine makes its own
   * builders and closes them in `close()`. @default []
   */
  builders?: string | readonly import('../remote/remote-builder.js').RemoteBuilder[];
  /** builtin:fetchurl tries these first for flat fixed outputs, as `<mirror>/<algo>/<base16 hash>` (Nix's `hashed-mirrors`). @default [] */
  hashedMirrors?: readonly string[];
  /** Credentials for builtin:fetchurl (Nix's `netrc-file`); a missing file means none. @default '/etc/nix/netrc' */
  netrcFile?: string;
  /** How often builtin:fetchurl tries a download that fails transiently (Nix's `download-attempts`). @default 5 */
  downloadAttempts?: number;
}

export interface ResolvedOptions {
  substituters: readonly import('../substituter/substituter.js').Substituter[];
  sandbox: SandboxMode | Sandbox;
  sandboxFallback: boolean;
  sandboxPaths: readonly string[];
  allowedImpureHostDeps: readonly string[];
  preBuildHook: string | undefined;
  experimentalFeatures: readonly string[];
  /** Whether `experimentalFeatures` was given (then ca-derivations is required of floating and deferred outputs). */
  experimentalFeaturesGiven: boolean;
  sandboxBuildDir: string;
  sandboxShmSize: string;
  filterSyscalls: boolean;
  maxJobs: number;
  maxSubstitutionJobs: number;
  minFree: number;
  maxFree: number;
  minFreeCheckInterval: number;
  cores: number;
  keepGoing: boolean;
  fallback: boolean;
  buildersUseSubstitutes: boolean;
  buildRepeat: number;
  enforceDeterminism: boolean;
  maxSilentTime: number;
  buildTimeout: number;
  maxLogSize: number;
  logLines: number;
  keepFailed: boolean;
  postBuildHook: string | undefined;
  secretKeys: readonly string[];
  systemFeatures: readonly string[];
  system: string;
  extraPlatforms: readonly string[];
  environment: Readonly<Record<string, string | undefined>>;
  buildDir: string;
  builders: readonly import('../remote/remote-builder.js').RemoteBuilder[];
  hashedMirrors: readonly string[];
  netrcFile: string;
  downloadAttempts: number;
}

function describe(v: unknown): string {
  return `\`${typeof v === 'string' ? v : JSON.stringify(v)}\` (${typeof v})`;
}

function int(name: string, v: unknown, def: number, min: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new OptionsError(`Expected \`${name}\` to be an integer${min === -Infinity ? '' : ` from ${min} and up`}, got ${describe(v)}`);
  }
  return v;
}

function bool(name: string, v: unknown, def: boolean): boolean {
  if (v === undefined) return def;
  if (typeof v !== 'boolean') throw new OptionsError(`Expected \`${name}\` to be a boolean, got ${describe(v)}`);
  return v;
}

function strings(name: string, v: unknown, def: readonly string[]): readonly string[] {
  if (v === undefined) return def;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new OptionsError(`Expected \`${name}\` to be an array of strings, got ${describe(v)}`);
  return [...v];
}

/** Nix 2.8's root for build directories: `$TMPDIR`, else /tmp, canonical (symlinks resolved). */
export function defaultBuildDir(): string {
  const dir = process.env.TMPDIR || '/tmp';
  // (A relative one stays as it is, for the build to refuse as Nix does: see createBuildDir.)
  if (!dir.startsWith('/')) return dir;
  try {
    return realpathSync(dir);
  } catch {
    return dir.replace(/(.)\/+$/, '$1');
  }
}

export function hostSystem(): string {
  const arch = process.arch === 'x64' ? 'x86_64' : process.arch === 'arm64' ? 'aarch64' : process.arch === 'ia32' ? 'i686' : process.arch;
  return `${arch}-${process.platform}`;
}

const KNOWN = new Set([
  'store',
  'substituters',
  'sandbox',
  'sandboxFallback',
  'sandboxPaths',
  'allowedImpureHostDeps',
  'preBuildHook',
  'experimentalFeatures',
  'sandboxBuildDir',
  'sandboxShmSize',
  'filterSyscalls',
  'maxJobs',
  'maxSubstitutionJobs',
  'minFree',
  'maxFree',
  'minFreeCheckInterval',
  'cores',
  'keepGoing',
  'fallback',
  'buildersUseSubstitutes',
  'buildRepeat',
  'enforceDeterminism',
  'maxSilentTime',
  'buildTimeout',
  'maxLogSize',
  'logLines',
  'keepFailed',
  'postBuildHook',
  'secretKeys',
  'systemFeatures',
  'system',
  'extraPlatforms',
  'environment',
  'buildDir',
  'builders',
  'hashedMirrors',
  'netrcFile',
  'downloadAttempts',
]);

export function resolveOptions(o: BuildEngineOptions, defaultSandbox: SandboxMode): ResolvedOptions {
  if (o === null || typeof o !== 'object') throw new OptionsError(`Expected options to be an object, got ${describe(o)}`);
  for (const k of Object.keys(o)) if (!KNOWN.has(k)) throw new OptionsError(`Unknown option \`${k}\``);
  const sandbox = o.sandbox ?? defaultSandbox;
  if (!(
    typeof sandbox === 'boolean' ||
    sandbox === 'relaxed' ||
    (typeof sandbox === 'object' && sandbox !== null && typeof (sandbox as Sandbox).run === 'function')
  )) {
    throw new OptionsError(`Expected \`sandbox\` to be true, false, 'relaxed' or a Sandbox, got ${describe(sandbox)}`);
  }
  const system = o.system ?? hostSystem();
  if (typeof system !== 'string' || !system) throw new OptionsError(`Expected \`system\` to be a non-empty string, got ${describe(system)}`);
  if (o.postBuildHook !== undefined && typeof o.postBuildHook !== 'string')
    throw new OptionsError(`Expected \`postBuildHook\` to be a string, got ${describe(o.postBuildHook)}`);
  if (o.sandboxBuildDir !== undefined && (typeof o.sandboxBuildDir !== 'string' || !o.sandboxBuildDir.startsWith('/')))
    throw new OptionsError(`Expected \`sandboxBuildDir\` to be an absolute path, got ${describe(o.sandboxBuildDir)}`);
  if (o.sandboxShmSize !== undefined && (typeof o.sandboxShmSize !== 'string' || !o.sandboxShmSize))
    throw new OptionsError(`Expected \`sandboxShmSize\` to be a tmpfs size such as '50%' or '64m', got ${describe(o.sandboxShmSize)}`);
  if (o.netrcFile !== undefined && (typeof o.netrcFile !== 'string' || !o.netrcFile))
    throw new OptionsError(`Expected \`netrcFile\` to be a file path, got ${describe(o.netrcFile)}`);
  if (o.preBuildHook !== undefined && typeof o.preBuildHook !== 'string')
    throw new OptionsError(`Expected \`preBuildHook\` to be a string, got ${describe(o.preBuildHook)}`);
  return {
    substituters: o.substituters ?? [],
    sandbox,
    sandboxFallback: bool('sandboxFallback', o.sandboxFallback, true),
    sandboxPaths: strings('sandboxPaths', o.sandboxPaths, []),
    allowedImpureHostDeps: strings('allowedImpureHostDeps', o.allowedImpureHostDeps, []),
    preBuildHook: o.preBuildHook || undefined,
    experimentalFeatures: strings('experimentalFeatures', o.experimentalFeatures, []),
    experimentalFeaturesGiven: o.experimentalFeatures !== undefined,
    sandboxBuildDir: o.sandboxBuildDir ?? '/build',
    sandboxShmSize: o.sandboxShmSize ?? '50%',
    filterSyscalls: bool('filterSyscalls', o.filterSyscalls, true),
    maxJobs: int('maxJobs', o.maxJobs, 1, 0),
    maxSubstitutionJobs: int('maxSubstitutionJobs', o.maxSubstitutionJobs, 16, 1),
    minFree: int('minFree', o.minFree, 0, 0),
    maxFree: o.maxFree === Infinity ? Infinity : int('maxFree', o.maxFree, Infinity, 0),
    minFreeCheckInterval: int('minFreeCheckInterval', o.minFreeCheckInterval, 5, 0),
    cores: int('cores', o.cores, cpus().length || 1, 0),
    keepGoing: bool('keepGoing', o.keepGoing, false),
    fallback: bool('fallback', o.fallback, false),
    buildersUseSubstitutes: bool('buildersUseSubstitutes', o.buildersUseSubstitutes, false),
    buildRepeat: int('buildRepeat', o.buildRepeat, 0, 0),
    enforceDeterminism: bool('enforceDeterminism', o.enforceDeterminism, true),
    maxSilentTime: int('maxSilentTime', o.maxSilentTime, 0, -Infinity),
    buildTimeout: int('buildTimeout', o.buildTimeout, 0, -Infinity),
    maxLogSize: int('maxLogSize', o.maxLogSize, 0, 0),
    logLines: int('logLines', o.logLines, 10, 0),
    keepFailed: bool('keepFailed', o.keepFailed, false),
    postBuildHook: o.postBuildHook || undefined,
    secretKeys: strings('secretKeys', o.secretKeys, []),
    systemFeatures: strings('systemFeatures', o.systemFeatures, defaultSystemFeatures()),
    system,
    extraPlatforms: strings('extraPlatforms', o.extraPlatforms, system === 'x86_64-linux' ? ['i686-linux'] : []),
    environment: o.environment ?? process.env,
    buildDir: o.buildDir ?? defaultBuildDir(),
    builders: typeof o.builders === 'string' ? createRemoteBuilders(o.builders, { thisSystem: system }) : (o.builders ?? []),
    hashedMirrors: strings('hashedMirrors', o.hashedMirrors, []),
    netrcFile: o.netrcFile ?? '/etc/nix/netrc',
    downloadAttempts: int('downloadAttempts', o.downloadAttempts, 5, 1),
  };
}
