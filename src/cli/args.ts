import { cpus } from 'node:os';

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
   * Names in `options` set on the command line, in the user's nix.conf files or `$NIX_CONFIG` (not the system
   * nix.conf): Nix's "overridden" settings, those its client sends the daemon.
   */
  overridden: Set<string>;
  /** Nix's verbosity: 0 (error) … 7 (vomit), 3 (info) unless `--quiet`, `-v` or `--debug` moved it. */
  verbosity: number;
  /**
   * `--option` names Nix 2.8 does not know, given before the first target: nix-store warns about those
   * ("unknown setting 'NAME'"), sorted; it accepts them (and later ones) silently otherwise.
   */
  unknownSettings: string[];
  /** Those of `unknownSettings` that the configuration files or `$NIX_CONFIG` set. */
  unknownConfSettings: string[];
  /**
   * The warnings Nix prints as it sets the configuration and the command line's settings, in order: an
   * unknown experimental feature, a value `--option` gives that Nix cannot parse (that setting then keeps
   * what it had).
   */
  settingWarnings: string[];
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
   * `gc`: nix-store --gc, or with `--delete` nix-store --delete (the positional paths). `flags` are the
   * operation's flags in order, as nix-store hands them to it (`--max-freed` followed by its value, flags
   * no command knows included): src/cli/gc.ts reads them as that operation does.
   */
  gc: { delete: boolean; flags: string[] };
  /**
   * `build`, `ensure`, `repair`, `store optimise`: the flags nix-store's option parser does not know, which
   * it hands to the operation (`--realise` names the first as an "unknown flag", `--repair-path` says "no
   * flags expected", `--optimise` "no arguments expected"), after the store is opened.
   */
  opFlags: string[];
  /** `--log-format FORMAT`: raw, raw-with-logs, internal-json, bar, bar-with-logs (checked by the command). */
  logFormat?: string;
  /** `--trace-file FILE`: write the run's timeline in the Chrome Trace Event format. */
  traceFile?: string;
  /** `--report FILE`: write the HTML report of the run. */
  report?: string;
}

export class UsageError extends Error {
  /** What the command line warned about before this error (its settings' values), which Nix prints as it reads them. */
  warnings: readonly string[] = [];
}

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
/** Flags Nix takes that change nothing here (GC-root style, evaluation). */
const IGNORED_FLAGS = new Set(['--indirect', '--no-out-link', '--no-link', '--readonly-mode', '--impure']);

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
export const BOOL_SETTINGS: ReadonlySet<string> = new Set([
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

/**
 * Nix 2.8's settings that take `extra-NAME` (its appendable ones: lists, sets, maps), with the aliases of
 * those. `extra-NAME` of any other setting is a setting Nix does not know.
 */
const APPENDABLE_SETTINGS: ReadonlySet<string> = new Set([
  'access-tokens',
  'allowed-impure-host-deps',
  'allowed-uris',
  'allowed-users',
  'experimental-features',
  'extra-platforms',
  'hashed-mirrors',
  'ignored-acls',
  'nix-path',
  'plugin-files',
  'sandbox-paths',
  'secret-key-files',
  'substituters',
  'system-features',
  'trusted-public-keys',
  'trusted-substituters',
  'trusted-users',
  'binary-caches',
  'binary-cache-public-keys',
  'build-sandbox-paths',
  'build-chroot-dirs',
  'trusted-binary-caches',
]);

export function isKnownSetting(name: string): boolean {
  if (KNOWN_SETTINGS.has(name) || Object.hasOwn(OPTION_ALIASES, name)) return true;
  return name.startsWith('extra-') && APPENDABLE_SETTINGS.has(name.slice('extra-'.length));
}

/** A C++ integer type of Nix 2.8's settings: signed or not, and its width in bits. */
interface IntType {
  readonly signed: boolean;
  readonly bits: 32 | 64;
}
const U32: IntType = { signed: false, bits: 32 };
const U64: IntType = { signed: false, bits: 64 };
const S64: IntType = { signed: true, bits: 64 };

/**
 * Nix 2.8's integer settings and the type of each one's Setting<T> (unsigned int: 32 bits; size_t,
 * unsigned long, uint64_t: unsigned 64; time_t, off_t: signed 64). `max-substitution-jobs` is this CLI's
 * (newer Nix's unsigned int).
 */
const INT_SETTINGS: ReadonlyMap<string, IntType> = new Map([
  ['build-poll-interval', U32],
  ['connect-timeout', U64],
  ['cores', U32],
  ['download-attempts', U32],
  ['gc-reserved-space', S64],
  ['http-connections', U64],
  ['log-lines', U64],
  ['max-build-log-size', U64],
  ['max-free', U64],
  ['max-silent-time', S64],
  ['max-substitution-jobs', U32],
  ['min-free', U64],
  ['min-free-check-interval', U64],
  ['nar-buffer-size', U64],
  ['narinfo-cache-negative-ttl', U32],
  ['narinfo-cache-positive-ttl', U32],
  ['repeat', U64],
  ['stalled-download-timeout', U64],
  ['tarball-ttl', U32],
  ['timeout', S64],
]);

/** An integer as Nix's string2Int<T> reads it: digits with an optional `+` (and `-` for a signed type), in T's range; else undefined. */
function intOfType(value: string, type: IntType): number | undefined {
  if (!(type.signed ? /^[+-]?[0-9]+$/ : /^\+?[0-9]+$/).test(value)) return undefined;
  const n = BigInt(value);
  const bits = BigInt(type.bits - (type.signed ? 1 : 0));
  return n >= (type.signed ? -(2n ** bits) : 0n) && n < 2n ** bits ? Number(n) : undefined;
}

/** Nix 2.8's experimental features (another name in `experimental-features` is warned about). */
const EXPERIMENTAL_FEATURES: ReadonlySet<string> = new Set([
  'ca-derivations',
  'impure-derivations',
  'flakes',
  'nix-command',
  'recursive-nix',
  'no-url-literals',
  'fetch-closure',
]);

/** A setting's value as Nix 2.8 parses it: a Boolean, an integer, `sandbox`'s Boolean or `relaxed`, or the text as it is. */
export type SettingValue = string | number | boolean;

/**
 * Parse a setting as Nix 2.8 sets it (from a configuration file, `--option` or a flag), by the type of its
 * Setting<T>: a Boolean, integer, `sandbox` or `max-jobs` value it cannot parse is a UsageError with Nix's
 * words, naming the setting by its own name, not an alias's. The one parser of setting values: what is
 * refused at the command line is what the engine's settings would refuse.
 */
export function parseSetting(name: string, value: string): SettingValue {
  const key = OPTION_ALIASES[name] ?? name;
  const nixName = key === 'build-repeat' ? 'repeat' : key;
  if (nixName === 'sandbox') {
    // Nix's SandboxMode takes these three words only (not a Boolean's `1`, `yes`, `0`, `no`).
    if (value === 'true' || value === 'false') return value === 'true';
    if (value === 'relaxed') return 'relaxed';
    throw new UsageError(`option 'sandbox' has invalid value '${value}'`);
  }
  if (BOOL_SETTINGS.has(nixName)) return parseBool(nixName, value);
  if (nixName === 'max-jobs') {
    if (value === 'auto') return Math.max(1, cpus().length);
    const n = intOfType(value, U32);
    if (n === undefined) throw new UsageError(`configuration setting 'max-jobs' should be 'auto' or an integer`);
    return n;
  }
  const type = INT_SETTINGS.get(nixName);
  if (!type) return value;
  const n = intOfType(value, type);
  if (n === undefined) throw new UsageError(`setting '${nixName}' has invalid value '${value}'`);
  return n;
}

/**
 * Check a setting as Nix 2.8 sets it (parseSetting's errors); the warnings it prints (unknown
 * experimental features) are returned.
 */
export function checkSettingValue(name: string, value: string): string[] {
  const key = OPTION_ALIASES[name] ?? name;
  if (key === 'experimental-features' || key === 'extra-experimental-features') {
    return value
      .split(/[ \t\n\r]+/)
      .filter((f) => f && !EXPERIMENTAL_FEATURES.has(f))
      .map((f) => `unknown experimental feature '${f}'`);
  }
  parseSetting(name, value);
  return [];
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

function emptyArgs(): CliArgs {
  return {
    command: '',
    positional: [],
    substituters: [],
    trustedPublicKeys: [],
    options: new Map(),
    fromOption: new Set(),
    overridden: new Set(),
    verbosity: 3,
    unknownSettings: [],
    unknownConfSettings: [],
    settingWarnings: [],
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
    gc: { delete: false, flags: [] },
    opFlags: [],
  };
}

/** Flags of `path-info` (before the common ones: its `-h` is --human-readable, not --help). */
const PATH_INFO_SWITCHES: Readonly<Record<string, (a: CliArgs) => void>> = {
  '-s': (a) => (a.size = true),
  '--size': (a) => (a.size = true),
  '-S': (a) => (a.closureSize = true),
  '--closure-size': (a) => (a.closureSize = true),
  '--sigs': (a) => (a.sigs = true),
  '--all': (a) => (a.all = true),
  '-h': (a) => (a.humanReadable = true),
  '--human-readable': (a) => (a.humanReadable = true),
};

/** nix-store operations whose flags are all the operation's: every flag nix-store itself does not know goes to them. */
const NIX_STORE_OPERATIONS: ReadonlySet<string> = new Set(['build', 'ensure', 'repair', 'store']);

/**
 * Switches of ours that nix-store's option parser does not know: `repair` and `store optimise`
 * (`--repair-path`, `--optimise`, which take no flags) hand them to the operation as nix-store does;
 * `--derivation` (path-info's and copy's) likewise for `build` and `ensure`.
 */
const OPERATION_SWITCHES: Readonly<Record<string, ReadonlySet<string>>> = {
  repair: new Set([
    '--json',
    '--check',
    '--repair',
    '--recursive',
    '--dry-run',
    '-L',
    '--print-build-logs',
    '--ignore-unknown',
    '--derivation',
    '--no-out-link',
    '--no-link',
  ]),
  build: new Set(['--derivation']),
};

/** Flags of ours that `nix path-info` and `nix copy` 2.8 do not have ("unrecognised flag"). */
const NIX_COMMAND_REFUSES: ReadonlySet<string> = new Set([
  '--check',
  '--repair',
  '--dry-run',
  '-Q',
  '--no-build-output',
  '--ignore-unknown',
  '--no-out-link',
  '--no-link',
  '--indirect',
  '--add-root',
  '--out-link',
  '-o',
]);
/** Those `nix copy` 2.8 does not have either (path-info's `-r` and `--json`). */
const COPY_REFUSES: ReadonlySet<string> = new Set(['-r', '--recursive', '--json']);
/** `nix copy`'s flags that change nothing when the destination is a binary cache. */
const COPY_NO_OPS: ReadonlySet<string> = new Set(['--no-check-sigs', '--substitute-on-destination', '-s']);

/**
 * Flags without an argument. Verbosity is Nix's: each --quiet one level down (to 0), each -v one up (to 7),
 * --debug sets 6; the informational lines need the default (3).
 */
const SWITCHES: Readonly<Record<string, (a: CliArgs, verbosity: { level: number }) => void>> = {
  '--help': (a) => (a.help = true),
  '-h': (a) => (a.help = true),
  '--version': (a) => (a.version = true),
  '--json': (a) => (a.json = true),
  // nix-store --realise: of --check and --repair, the last one given is the build mode.
  '--check': (a) => {
    a.check = true;
    a.repair = false;
  },
  '--repair': (a) => {
    a.repair = true;
    a.check = false;
  },
  '--recursive': (a) => (a.recursive = true),
  '-r': (a) => (a.recursive = true),
  '--dry-run': (a) => (a.dryRun = true),
  '--quiet': (_a, v) => (v.level = Math.max(0, v.level - 1)),
  '-v': (_a, v) => (v.level = Math.min(7, v.level + 1)),
  '--verbose': (_a, v) => (v.level = Math.min(7, v.level + 1)),
  '--debug': (_a, v) => (v.level = 6),
  '-Q': (a) => (a.noBuildOutput = true),
  '--no-build-output': (a) => (a.noBuildOutput = true),
  '-L': (a) => (a.printBuildLogs = true),
  '--print-build-logs': (a) => (a.printBuildLogs = true),
  '--ignore-unknown': (a) => (a.ignoreUnknown = true),
  '--derivation': (a) => (a.derivation = true),
};

const words = (v: string) => v.split(/\s+/).filter(Boolean);

/** Flags with one argument. */
const VALUE_FLAGS: Readonly<Record<string, (a: CliArgs, value: string) => void>> = {
  '--add-root': (a, v) => (a.addRoot = v),
  '--out-link': (a, v) => (a.addRoot = v),
  '-o': (a, v) => (a.addRoot = v),
  '--store': (a, v) => (a.store = v),
  '--log-format': (a, v) => (a.logFormat = v),
  '--trace-file': (a, v) => (a.traceFile = v),
  '--report': (a, v) => (a.report = v),
  '--to': (a, v) => (a.to = v),
  '--substituter': (a, v) => a.substituters.push(...words(v)),
  '--substituters': (a, v) => a.substituters.push(...words(v)),
  '--trusted-public-key': (a, v) => a.trustedPublicKeys.push(...words(v)),
  '--trusted-public-keys': (a, v) => a.trustedPublicKeys.push(...words(v)),
};

/** One pass over the arguments; `flag` reads the argument at the cursor, and returns how many it took. */
class ArgParser {
  readonly a = emptyArgs();
  readonly verbosity = { level: 3 };

  constructor(readonly argv: readonly string[]) {}

  /** The argument after the one at `i`, which a flag requires. */
  private next(i: number, flag: string): string {
    const v = this.argv[i + 1];
    // nix-store reads --add-root itself (its getArg's words); the other flags are its option parser's.
    if (v === undefined) throw new UsageError(flag === '--add-root' ? `'${flag}' requires an argument` : `flag '${flag}' requires 1 argument(s)`);
    return v;
  }

  /**
   * A setting's value; `extra-NAME` adds to what is there, and a plain `NAME` replaces it all, what
   * `extra-NAME` added before included (as Nix's Config::set).
   */
  private setSetting(key: string, value: string): void {
    const o = this.a.options;
    if (!key.startsWith('extra-')) o.delete(`extra-${key}`);
    o.set(key, key.startsWith('extra-') && o.has(key) ? `${o.get(key)} ${value}` : value);
    this.a.overridden.add(key);
  }

  /** A setting given by a flag of its own (not `--option`): a bad value there is an error. */
  private setFlagSetting(key: string, value: string): void {
    // As Nix's flags set their settings while the command line is read, a value they cannot take ends it
    // there, whatever the command (gc and store optimise use no engine that would read it later).
    this.a.settingWarnings.push(...checkSettingValue(key, value));
    this.a.options.set(key, value);
    this.a.fromOption.delete(key);
    this.a.overridden.add(key);
  }

  /** The flags only one command has: how many arguments it took (0: not one of them). */
  commandFlag(i: number, arg: string): number {
    const a = this.a;
    // Flags of ours (nix-store's) that the nix command does not have: refused as it refuses them.
    if (NIX_COMMAND_CLI.has(a.command ?? '') && (NIX_COMMAND_REFUSES.has(arg) || (a.command === 'copy' && COPY_REFUSES.has(arg)))) {
      throw new UsageError(`unrecognised flag '${arg}'`);
    }
    // nix copy's checks of the destination, which a binary cache written here does not make: nothing to change.
    if (a.command === 'copy' && COPY_NO_OPS.has(arg)) return 1;
    const operationSwitches = OPERATION_SWITCHES[a.command === 'store' ? 'repair' : a.command === 'ensure' ? 'build' : (a.command ?? '')];
    if (operationSwitches?.has(arg)) {
      a.opFlags.push(arg);
      return 1;
    }
    if (a.command === 'path-info' && Object.hasOwn(PATH_INFO_SWITCHES, arg)) {
      PATH_INFO_SWITCHES[arg]!(a);
      return 1;
    }
    if (a.command !== 'gc') return 0;
    // (Its other flags, --print-dead and the like, reach the operation as every flag nix-store does not know: parseArgs.)
    if (arg === '--delete') a.gc.delete = true;
    else if (arg === '--max-freed') {
      // nix-store takes the value with the flag, whatever the operation (getArg's words when it is missing).
      const value = this.argv[i + 1];
      if (value === undefined) throw new UsageError(`'${arg}' requires an argument`);
      a.gc.flags.push(arg, value);
      return 2;
    } else return 0;
    return 1;
  }

  /** The flags every command has: how many arguments it took (0: not one of them). */
  commonFlag(i: number, arg: string): number {
    const a = this.a;
    if (Object.hasOwn(SWITCHES, arg)) {
      SWITCHES[arg]!(a, this.verbosity);
      return 1;
    }
    if (Object.hasOwn(VALUE_FLAGS, arg)) {
      VALUE_FLAGS[arg]!(a, this.next(i, arg));
      return 2;
    }
    if (arg === '--option') return this.option(i);
    if (FLAG_TO_OPTION[arg]) {
      const value = this.next(i, arg);
      // nix-store reads these three with a unit; the nix command (path-info, copy) as the settings they set.
      const unit = UNIT_PREFIXED_FLAGS.has(arg) && !NIX_COMMAND_CLI.has(a.command ?? '');
      this.setFlagSetting(FLAG_TO_OPTION[arg]!, unit ? String(parseUnitPrefixed(value)) : value);
      return 2;
    }
    if (BOOL_TO_OPTION[arg]) {
      this.setFlagSetting(...BOOL_TO_OPTION[arg]!);
      return 1;
    }
    if (IGNORED_FLAGS.has(arg)) return 1;
    return this.settingFlag(i, arg);
  }

  /** `--option NAME VALUE`: a bad value is a warning, and an unknown name is reported (before any path). */
  private option(i: number): number {
    const a = this.a;
    const name = this.argv[i + 1];
    const value = this.argv[i + 2];
    if (name === undefined || value === undefined) throw new UsageError(`flag '--option' requires 2 argument(s)`);
    const key = OPTION_ALIASES[name] ?? name;
    // As Nix's --option: a value it cannot parse is a warning and changes nothing.
    try {
      a.settingWarnings.push(...checkSettingValue(name, value));
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      a.settingWarnings.push(`error: ${e.message}`);
      return 3;
    }
    this.setSetting(key, value);
    a.fromOption.add(key);
    // (Before the first target: `store`'s operation word is none.)
    const targets = a.positional.length - (a.command === 'store' ? 1 : 0);
    if (targets <= 0 && !isKnownSetting(name) && !a.unknownSettings.includes(name)) a.unknownSettings.push(name);
    return 3;
  }

  /** Every Nix setting is also a flag: `--NAME VALUE`, `--extra-NAME VALUE`, and `--NAME` / `--no-NAME` for Booleans. */
  private settingFlag(i: number, arg: string): number {
    if (!arg.startsWith('--') || arg.includes('=')) return 0;
    const flag = arg.slice(2);
    const negated = flag.startsWith('no-') && BOOL_SETTINGS.has(flag.slice(3));
    if (negated || BOOL_SETTINGS.has(flag)) {
      const bare = negated ? flag.slice(3) : flag;
      this.setFlagSetting(OPTION_ALIASES[bare] ?? bare, negated ? 'false' : 'true');
      return 1;
    }
    if (!isKnownSetting(flag)) return 0;
    const name = OPTION_ALIASES[flag] ?? flag;
    const value = this.next(i, arg);
    this.a.settingWarnings.push(...checkSettingValue(flag, value));
    this.setSetting(name, value);
    this.a.fromOption.delete(name);
    return 2;
  }

  /** The command's name, then its arguments. */
  positional(arg: string): void {
    if (!this.a.command) this.a.command = arg;
    else this.a.positional.push(arg);
  }
}

/** Subcommands that mirror a command of the `nix` CLI (not nix-store): `nix path-info`, `nix copy`. */
export const NIX_COMMAND_CLI: ReadonlySet<string> = new Set(['path-info', 'copy']);

export function parseArgs(rawArgv: readonly string[]): CliArgs {
  const argv = expandCompoundFlags(rawArgv);
  const p = new ArgParser(argv);
  try {
    return parseWith(p, argv);
  } catch (e) {
    if (e instanceof UsageError && !e.warnings.length) e.warnings = p.a.settingWarnings;
    throw e;
  }
}

function parseWith(p: ArgParser, argv: readonly string[]): CliArgs {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      for (const rest of argv.slice(i + 1)) p.positional(rest);
      break;
    }
    const took = p.commandFlag(i, arg) || p.commonFlag(i, arg);
    if (took) {
      i += took - 1;
      continue;
    }
    if (arg.startsWith('--') && arg.includes('=')) {
      const [k, v] = [arg.slice(2, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
      return parseArgs([...argv.slice(0, i), `--${k}`, v, ...argv.slice(i + 1)]);
    }
    // nix-store hands a flag it does not know to the operation, which words the error (src/cli/gc.ts).
    if (p.a.command === 'gc' && arg.startsWith('-') && arg !== '-') {
      p.a.gc.flags.push(arg);
      continue;
    }
    if (NIX_STORE_OPERATIONS.has(p.a.command ?? '') && arg.startsWith('-') && arg !== '-') {
      p.a.opFlags.push(arg);
      continue;
    }
    // Worded as the Nix command the subcommand mirrors: nix-store's "unknown", the nix command's "unrecognised".
    if (arg.startsWith('-') && arg !== '-') throw new UsageError(`${NIX_COMMAND_CLI.has(p.a.command ?? '') ? 'unrecognised' : 'unknown'} flag '${arg}'`);
    p.positional(arg);
  }
  p.a.verbosity = p.verbosity.level;
  p.a.quiet = p.verbosity.level < 3;
  return p.a;
}

/** A setting's value as Nix 2.8 parses a Boolean setting (and its message when it cannot). */
export function parseBool(name: string, v: string): boolean {
  if (v === 'true' || v === '1' || v === 'yes') return true;
  if (v === 'false' || v === '0' || v === 'no') return false;
  throw new UsageError(`Boolean setting '${name}' has invalid value '${v}'`);
}

/** nix-store's integer flags, whose value may end in a unit (K, M, G, T: powers of 1024). */
const UNIT_PREFIXED_FLAGS = new Set(['--cores', '--timeout', '--max-silent-time']);

/**
 * An integer flag's value as nix-store 2.8 parses `--cores`, `--timeout` and `--max-silent-time`
 * (`signed`: `--max-freed`): a last letter is a unit (`2K` is 2048; another letter is "invalid unit
 * specifier"), and the rest an unsigned integer, or with `signed` one with an optional sign (else "'…' is
 * not an integer", naming the rest).
 */
export function parseUnitPrefixed(value: string, signed = false): number {
  let digits = value;
  let multiplier = 1;
  const unit = value.slice(-1).toUpperCase();
  if (/^[A-Z]$/.test(unit)) {
    const power = 'KMGT'.indexOf(unit) + 1;
    if (power === 0) throw new UsageError(`invalid unit specifier '${unit}'`);
    multiplier = 1024 ** power;
    digits = value.slice(0, -1);
  }
  const n = (signed ? /^[+-]?[0-9]+$/ : /^[0-9]+$/).test(digits) ? Number(digits) * multiplier : NaN;
  if (!Number.isSafeInteger(n)) throw new UsageError(`'${digits}' is not an integer`);
  return n;
}
