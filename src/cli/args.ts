/**
 * Command-line parsing for `realise`: nix-store's flags and nix.conf's `--option NAME VALUE` names.
 */
/** The values of `--log-format` (checked by the command, as nix-store checks them). */
export const LOG_FORMATS = ['raw', 'raw-with-logs', 'internal-json', 'bar', 'bar-with-logs'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface CliArgs {
  command: string;
  positional: string[];
  store?: string;
  substituters: string[];
  trustedPublicKeys: string[];
  options: Map<string, string>;
  /** Names in `options` that came from `--option` (a bad value there is a warning, as in Nix, not an error). */
  fromOption: Set<string>;
  /**
   * `--option` names Nix 2.8 does not know, given before the first target: nix-store warns about those
   * ("unknown setting 'NAME'"), sorted; it accepts them (and later ones) silently otherwise.
   */
  unknownSettings: string[];
  json: boolean;
  check: boolean;
  repair: boolean;
  to?: string;
  help: boolean;
  version: boolean;
  recursive: boolean;
  /** `--dry-run`: print what would be built or fetched, build nothing (nix-store --realise --dry-run). */
  dryRun: boolean;
  /** `--quiet`: no informational lines (what will be built, "building ..."); errors and warnings stay. */
  quiet: boolean;
  /** `-Q` / `--no-build-output`: builders' output is not shown (failures then carry the log tail). */
  noBuildOutput: boolean;
  /** `-L` / `--print-build-logs`: show builders' output even on a terminal (instead of the status line). */
  printBuildLogs: boolean;
  /** `--add-root PATH` / `--out-link PATH` / `-o PATH`: make GC roots (symlinks) to the results and print them. */
  addRoot?: string;
  /** `--ignore-unknown`: skip targets that cannot be built or fetched (nix-store --realise). */
  ignoreUnknown: boolean;
  /** `path-info --derivation`: a .drv argument means the .drv itself, not its outputs. */
  derivation: boolean;
  /** path-info --all: every valid path. */
  all: boolean;
  /** `path-info -s` / `--size`, `-S` / `--closure-size`, `--sigs`, `-h` / `--human-readable` (as nix path-info). */
  size: boolean;
  closureSize: boolean;
  sigs: boolean;
  humanReadable: boolean;
  /**
   * `gc`: what nix-store --gc / --delete does: `--print-dead`, `--print-live`, `--print-roots`, `--delete`
   * (the positional paths), `--ignore-liveness`, `--max-freed N[KMGT]`.
   */
  gc: { action?: 'print-dead' | 'print-live' | 'print-roots' | 'delete-specific'; ignoreLiveness: boolean; maxFreed?: string };
  /** `--log-format FORMAT`: raw, raw-with-logs, internal-json, bar, bar-with-logs (checked by the command). */
  logFormat?: string;
  /** `--trace-file FILE`: write the run's timeline in the Chrome Trace Event format. */
  traceFile?: string;
  /** `--report FILE`: write the HTML report of the run. */
  report?: string;
}

export class UsageError extends Error {}

const FLAG_TO_OPTION: Record<string, string> = {
  '--max-jobs': 'max-jobs',
  '-j': 'max-jobs',
  '--cores': 'cores',
  '--timeout': 'timeout',
  '--max-silent-time': 'max-silent-time',
  '--builders': 'builders',
  '--secret-key': 'secret-key',
  '--compression': 'compression',
};
const BOOL_TO_OPTION: Record<string, [string, string]> = {
  '--keep-going': ['keep-going', 'true'],
  '-k': ['keep-going', 'true'],
  '--fallback': ['fallback', 'true'],
  '--keep-failed': ['keep-failed', 'true'],
  '-K': ['keep-failed', 'true'],
  '--no-sandbox': ['sandbox', 'false'],
  '--sandbox': ['sandbox', 'true'],
  '--show-trace': ['show-trace', 'true'],
};
/** Flags Nix takes that change nothing here (verbosity, GC-root style). */
const IGNORED_FLAGS = new Set(['-v', '--verbose', '--debug', '--indirect', '--no-out-link', '--no-link', '--readonly-mode', '--impure']);

/**
 * Old nix.conf names that Nix 2.8 still accepts as aliases of the current ones.
 */
export const OPTION_ALIASES: Readonly<Record<string, string>> = {
  'build-max-jobs': 'max-jobs',
  'build-cores': 'cores',
  'build-timeout': 'timeout',
  'build-max-silent-time': 'max-silent-time',
  'build-use-sandbox': 'sandbox',
  'build-use-chroot': 'sandbox',
  'build-sandbox-paths': 'sandbox-paths',
  'build-chroot-dirs': 'sandbox-paths',
  'build-extra-sandbox-paths': 'extra-sandbox-paths',
  'build-extra-chroot-dirs': 'extra-sandbox-paths',
  'build-max-log-size': 'max-build-log-size',
  'build-fallback': 'fallback',
  'build-keep-log': 'keep-build-log',
  'binary-caches': 'substituters',
  'extra-binary-caches': 'extra-substituters',
  'binary-cache-public-keys': 'trusted-public-keys',
  'build-extra-platforms': 'extra-platforms',
  'build-use-substitutes': 'substitute',
  repeat: 'build-repeat',
  'build-compress-log': 'compress-build-log',
};

/** The settings of Nix 2.8 (`nix show-config`), its aliases, and this CLI's own additions. */
const KNOWN_SETTINGS = new Set([
  'accept-flake-config',
  'access-tokens',
  'allow-dirty',
  'allow-import-from-derivation',
  'allow-new-privileges',
  'allow-symlinked-store',
  'allow-unsafe-native-code-during-evaluation',
  'allowed-impure-host-deps',
  'allowed-uris',
  'allowed-users',
  'auto-optimise-store',
  'bash-prompt',
  'bash-prompt-suffix',
  'build-hook',
  'build-poll-interval',
  'build-users-group',
  'builders',
  'builders-use-substitutes',
  'commit-lockfile-summary',
  'compress-build-log',
  'connect-timeout',
  'cores',
  'diff-hook',
  'download-attempts',
  'enforce-determinism',
  'eval-cache',
  'experimental-features',
  'extra-platforms',
  'fallback',
  'filter-syscalls',
  'flake-registry',
  'fsync-metadata',
  'gc-reserved-space',
  'hashed-mirrors',
  'http-connections',
  'http2',
  'ignored-acls',
  'impersonate-linux-26',
  'keep-build-log',
  'keep-derivations',
  'keep-env-derivations',
  'keep-failed',
  'keep-going',
  'keep-outputs',
  'log-lines',
  'max-build-log-size',
  'max-free',
  'max-jobs',
  'max-silent-time',
  'min-free',
  'min-free-check-interval',
  'nar-buffer-size',
  'narinfo-cache-negative-ttl',
  'narinfo-cache-positive-ttl',
  'netrc-file',
  'nix-path',
  'plugin-files',
  'post-build-hook',
  'pre-build-hook',
  'preallocate-contents',
  'print-missing',
  'pure-eval',
  'repeat',
  'require-sigs',
  'restrict-eval',
  'run-diff-hook',
  'sandbox',
  'sandbox-build-dir',
  'sandbox-dev-shm-size',
  'sandbox-fallback',
  'sandbox-paths',
  'secret-key-files',
  'show-trace',
  'stalled-download-timeout',
  'store',
  'substitute',
  'substituters',
  'sync-before-registering',
  'system',
  'system-features',
  'tarball-ttl',
  'timeout',
  'trace-function-calls',
  'trusted-public-keys',
  'trusted-substituters',
  'trusted-users',
  'use-case-hack',
  'use-registries',
  'use-sqlite-wal',
  'user-agent-suffix',
  'warn-dirty',
  'trusted-binary-caches',
  'env-keep-derivations',
  'gc-keep-outputs',
  'gc-keep-derivations',
  'build-compress-log',
  // realise's own settings
  'build-repeat',
  'max-substitution-jobs',
  'secret-key',
  'compression',
  // newer Nix's: the internal-json log also written to a file or Unix socket
  'json-log-path',
]);

/** Nix 2.8's Boolean settings (their flags take no value; `--no-NAME` sets false). */
const BOOL_SETTINGS = new Set([
  'accept-flake-config',
  'allow-dirty',
  'allow-import-from-derivation',
  'allow-new-privileges',
  'allow-symlinked-store',
  'allow-unsafe-native-code-during-evaluation',
  'auto-optimise-store',
  'builders-use-substitutes',
  'compress-build-log',
  'enforce-determinism',
  'eval-cache',
  'fallback',
  'filter-syscalls',
  'fsync-metadata',
  'http2',
  'impersonate-linux-26',
  'keep-build-log',
  'keep-derivations',
  'keep-env-derivations',
  'keep-failed',
  'keep-going',
  'keep-outputs',
  'preallocate-contents',
  'print-missing',
  'pure-eval',
  'require-sigs',
  'restrict-eval',
  'run-diff-hook',
  'sandbox',
  'sandbox-fallback',
  'show-trace',
  'substitute',
  'sync-before-registering',
  'trace-function-calls',
  'use-case-hack',
  'use-registries',
  'use-sqlite-wal',
  'warn-dirty',
]);

export function isKnownSetting(name: string): boolean {
  const base = name.startsWith('extra-') ? name.slice('extra-'.length) : name;
  return KNOWN_SETTINGS.has(name) || name in OPTION_ALIASES || KNOWN_SETTINGS.has(base) || base in OPTION_ALIASES;
}

const isAlpha = (c: string | undefined): boolean => !!c && /^[A-Za-z]$/.test(c);

/**
 * Nix's compound short flags: `-rsS` is `-r -s -S`, and at the first non-letter the rest is the last
 * flag's argument (`-j4` is `-j 4`, `-kj2` is `-k -j 2`). Not after `--`.
 */
function expandCompoundFlags(argv: readonly string[]): string[] {
  const out: string[] = [];
  let dashDash = false;
  for (const arg of argv) {
    if (arg === '--') dashDash = true;
    if (dashDash || arg.length <= 2 || arg[0] !== '-' || !isAlpha(arg[1])) {
      out.push(arg);
      continue;
    }
    out.push('-' + arg[1]);
    for (let j = 2; j < arg.length; j++) {
      if (isAlpha(arg[j])) out.push('-' + arg[j]);
      else {
        out.push(arg.slice(j));
        break;
      }
    }
  }
  return out;
}

export function parseArgs(rawArgv: readonly string[]): CliArgs {
  const argv = expandCompoundFlags(rawArgv);
  const a: CliArgs = {
    command: '',
    positional: [],
    substituters: [],
    trustedPublicKeys: [],
    options: new Map(),
    fromOption: new Set(),
    unknownSettings: [],
    json: false,
    check: false,
    repair: false,
    help: false,
    version: false,
    recursive: false,
    dryRun: false,
    quiet: false,
    noBuildOutput: false,
    printBuildLogs: false,
    ignoreUnknown: false,
    derivation: false,
    all: false,
    size: false,
    closureSize: false,
    sigs: false,
    humanReadable: false,
    gc: { ignoreLiveness: false },
  };
  /**
   * A setting's value; `extra-NAME` adds to what is there, and a plain `NAME` replaces it all, what
   * `extra-NAME` added before included (as Nix's Config::set).
   */
  const setSetting = (key: string, value: string): void => {
    if (!key.startsWith('extra-')) a.options.delete(`extra-${key}`);
    a.options.set(key, key.startsWith('extra-') && a.options.has(key) ? `${a.options.get(key)} ${value}` : value);
  };
  const next = (i: number, flag: string): string => {
    const v = argv[i + 1];
    if (v === undefined) throw new UsageError(`flag '${flag}' requires 1 argument(s)`);
    return v;
  };
  let onlyPositional = false;
  let verbosity = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (onlyPositional) {
      if (!a.command) a.command = arg;
      else a.positional.push(arg);
      continue;
    }
    if (arg === '--') {
      onlyPositional = true;
      continue;
    }
    if (a.command === 'path-info') {
      if (arg === '-s' || arg === '--size') {
        a.size = true;
        continue;
      }
      if (arg === '-S' || arg === '--closure-size') {
        a.closureSize = true;
        continue;
      }
      if (arg === '--sigs') {
        a.sigs = true;
        continue;
      }
      if (arg === '--all') {
        a.all = true;
        continue;
      }
      if (arg === '-h' || arg === '--human-readable') {
        a.humanReadable = true;
        continue;
      }
    }
    if (a.command === 'gc') {
      const action = ({ '--print-dead': 'print-dead', '--print-live': 'print-live', '--print-roots': 'print-roots', '--delete': 'delete-specific' } as const)[
        arg
      ];
      if (action) {
        a.gc.action = action;
        continue;
      }
      if (arg === '--ignore-liveness') {
        a.gc.ignoreLiveness = true;
        continue;
      }
      if (arg === '--max-freed') {
        a.gc.maxFreed = next(i, arg);
        i++;
        continue;
      }
    }
    if (arg === '--help' || arg === '-h') {
      a.help = true;
      continue;
    }
    if (arg === '--version') {
      a.version = true;
      continue;
    }
    if (arg === '--json') {
      a.json = true;
      continue;
    }
    // nix-store --realise: of --check and --repair, the last one given is the build mode.
    if (arg === '--check') {
      a.check = true;
      a.repair = false;
      continue;
    }
    if (arg === '--recursive' || arg === '-r') {
      a.recursive = true;
      continue;
    }
    if (arg === '--repair') {
      a.repair = true;
      a.check = false;
      continue;
    }
    if (arg === '--dry-run') {
      a.dryRun = true;
      continue;
    }
    // Nix's verbosity: each --quiet one level down, each -v one up; the informational lines need the default.
    if (arg === '--quiet') {
      verbosity--;
      continue;
    }
    if (arg === '-v' || arg === '--verbose') {
      verbosity++;
      continue;
    }
    if (arg === '-Q' || arg === '--no-build-output') {
      a.noBuildOutput = true;
      continue;
    }
    if (arg === '-L' || arg === '--print-build-logs') {
      a.printBuildLogs = true;
      continue;
    }
    if (arg === '--ignore-unknown') {
      a.ignoreUnknown = true;
      continue;
    }
    if (arg === '--derivation') {
      a.derivation = true;
      continue;
    }
    if (arg === '--add-root' || arg === '--out-link' || arg === '-o') {
      a.addRoot = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--store') {
      a.store = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--log-format') {
      a.logFormat = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--trace-file') {
      a.traceFile = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--report') {
      a.report = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--to') {
      a.to = next(i, arg);
      i++;
      continue;
    }
    if (arg === '--substituter' || arg === '--substituters') {
      a.substituters.push(...next(i, arg).split(/\s+/).filter(Boolean));
      i++;
      continue;
    }
    if (arg === '--trusted-public-key' || arg === '--trusted-public-keys') {
      a.trustedPublicKeys.push(...next(i, arg).split(/\s+/).filter(Boolean));
      i++;
      continue;
    }
    if (arg === '--option') {
      const name = argv[i + 1];
      const value = argv[i + 2];
      if (name === undefined || value === undefined) throw new UsageError(`flag '--option' requires 2 argument(s)`);
      const key = OPTION_ALIASES[name] ?? name;
      setSetting(key, value);
      a.fromOption.add(key);
      if (a.positional.length === 0 && !isKnownSetting(name) && !a.unknownSettings.includes(name)) a.unknownSettings.push(name);
      i += 2;
      continue;
    }
    if (FLAG_TO_OPTION[arg]) {
      a.options.set(FLAG_TO_OPTION[arg]!, next(i, arg));
      a.fromOption.delete(FLAG_TO_OPTION[arg]!);
      i++;
      continue;
    }
    if (BOOL_TO_OPTION[arg]) {
      const [k, v] = BOOL_TO_OPTION[arg]!;
      a.options.set(k, v);
      a.fromOption.delete(k);
      continue;
    }
    if (IGNORED_FLAGS.has(arg)) continue;
    // Every Nix setting is also a flag: `--NAME VALUE`, `--extra-NAME VALUE`, and `--NAME` / `--no-NAME` for Booleans.
    if (arg.startsWith('--') && !arg.includes('=')) {
      const flag = arg.slice(2);
      const negated = flag.startsWith('no-') && BOOL_SETTINGS.has(flag.slice(3));
      if (negated || BOOL_SETTINGS.has(flag)) {
        const bare = negated ? flag.slice(3) : flag;
        const name = OPTION_ALIASES[bare] ?? bare;
        a.options.set(name, negated ? 'false' : 'true');
        a.fromOption.delete(name);
        continue;
      }
      if (isKnownSetting(flag)) {
        const name = OPTION_ALIASES[flag] ?? flag;
        const value = next(i, arg);
        setSetting(name, value);
        a.fromOption.delete(name);
        i++;
        continue;
      }
    }
    if (arg.startsWith('--') && arg.includes('=')) {
      const [k, v] = [arg.slice(2, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
      return parseArgs([...argv.slice(0, i), `--${k}`, v, ...argv.slice(i + 1)]);
    }
    if (arg.startsWith('-') && arg !== '-') throw new UsageError(`unknown flag '${arg}'`);
    if (!a.command) a.command = arg;
    else a.positional.push(arg);
  }
  a.quiet = verbosity < 0;
  return a;
}

/** A setting's value as Nix 2.8 parses a Boolean setting (and its message when it cannot). */
export function parseBool(name: string, v: string): boolean {
  if (v === 'true' || v === '1' || v === 'yes') return true;
  if (v === 'false' || v === '0' || v === 'no') return false;
  throw new UsageError(`Boolean setting '${name}' has invalid value '${v}'`);
}

/** A setting's value as Nix 2.8 parses an unsigned integer setting (`max-jobs` also takes `auto`). */
export function parseIntOption(name: string, v: string): number {
  if (name === 'max-jobs' && v === 'auto') return 0;
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new UsageError(
      name === 'max-jobs' ? `configuration setting 'max-jobs' should be 'auto' or an integer` : `setting '${name}' has invalid value '${v}'`,
    );
  }
  return n;
}
