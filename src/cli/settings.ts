/**
 * The build settings of a command line (`--option NAME VALUE`, nix.conf, flags) as BuildEngineOptions, read
 * as nix-store reads them, each value by args.ts's parseSetting. Settings Nix 2.8
 * knows but the engine does not use, and those other commands read, are accepted silently, as Nix does.
 */
import { readFileSync } from 'node:fs';
import { defaultSystemFeatures, type BuildEngineOptions, type Store } from '../index.js';
import { parseSetting, type CliArgs } from './args.js';

/** The engine's options, and the binary caches to make substituters of (none with `substitute = false`). */
export interface EngineSettings {
  readonly options: BuildEngineOptions & Record<string, unknown>;
  readonly substituters: readonly string[];
  readonly trustedPublicKeys: readonly string[];
  readonly requireSigs: boolean;
  /** Nix's `substitute` setting (a daemon store is told it: the daemon substitutes from its own caches). */
  readonly substitute: boolean;
  /** Seconds an HTTP cache's narinfo lookups are remembered across runs (Nix's `narinfo-cache-positive-ttl` / `-negative-ttl`). */
  readonly narInfoTtl: { positive?: number; negative?: number };
}

type Options = BuildEngineOptions & Record<string, unknown>;

/** Boolean settings → engine option. */
const BOOLS: Readonly<Record<string, keyof BuildEngineOptions>> = {
  'keep-going': 'keepGoing',
  fallback: 'fallback',
  'builders-use-substitutes': 'buildersUseSubstitutes',
  'keep-failed': 'keepFailed',
  'sandbox-fallback': 'sandboxFallback',
  'filter-syscalls': 'filterSyscalls',
  'enforce-determinism': 'enforceDeterminism',
};
/** Integer settings → engine option. */
const INTS: Readonly<Record<string, keyof BuildEngineOptions>> = {
  cores: 'cores',
  'build-repeat': 'buildRepeat',
  'max-silent-time': 'maxSilentTime',
  timeout: 'buildTimeout',
  'max-build-log-size': 'maxLogSize',
  'log-lines': 'logLines',
  'max-substitution-jobs': 'maxSubstitutionJobs',
  'min-free': 'minFree',
  'max-free': 'maxFree',
  'min-free-check-interval': 'minFreeCheckInterval',
};
/** Settings taken as they are → engine option. */
const STRINGS: Readonly<Record<string, keyof BuildEngineOptions>> = {
  'pre-build-hook': 'preBuildHook',
  'sandbox-build-dir': 'sandboxBuildDir',
  'sandbox-dev-shm-size': 'sandboxShmSize',
  'post-build-hook': 'postBuildHook',
  system: 'system',
  'netrc-file': 'netrcFile',
};
/** Word lists that replace the engine option (the last one given wins). */
const LISTS: Readonly<Record<string, keyof BuildEngineOptions>> = {
  'system-features': 'systemFeatures',
  'extra-platforms': 'extraPlatforms',
  'hashed-mirrors': 'hashedMirrors',
};
/** Word lists that add up, with their `extra-` forms, into the engine option. */
const APPENDED: Readonly<Record<string, keyof BuildEngineOptions>> = {
  'sandbox-paths': 'sandboxPaths',
  'extra-sandbox-paths': 'sandboxPaths',
  'allowed-impure-host-deps': 'allowedImpureHostDeps',
  'extra-allowed-impure-host-deps': 'allowedImpureHostDeps',
  'experimental-features': 'experimentalFeatures',
  'extra-experimental-features': 'experimentalFeatures',
};

const words = (value: string | undefined): string[] => (value ?? '').split(/\s+/).filter(Boolean);
/** Set an engine option named by a table. */
const put = (opts: Options, key: keyof BuildEngineOptions, v: unknown): void => {
  (opts as Record<string, unknown>)[key] = v;
};
/** The engine option a table gives a setting (own keys only: a setting named `constructor` is no table's). */
const lookup = (table: Readonly<Record<string, keyof BuildEngineOptions>>, name: string) => (Object.hasOwn(table, name) ? table[name] : undefined);

/**
 * Apply a setting whose value is parsed (Booleans, integers, `max-jobs`, `sandbox`); false for the others.
 * The configuration's and `--option`'s values passed the same parser as they were set (a bad `--option`
 * value is dropped there with Nix's warning); a flag's (`-j`, `--log-lines`) that Nix refuses is the
 * usage error here that Nix's flag gives.
 */
function applyParsed(name: string, value: string, opts: Options): boolean {
  const key = lookup(BOOLS, name) ?? lookup(INTS, name);
  if (key) put(opts, key, parseSetting(name, value));
  else if (name === 'max-jobs') opts.maxJobs = parseSetting(name, value) as number;
  else if (name === 'sandbox') opts.sandbox = parseSetting(name, value) as boolean | 'relaxed';
  else if (name === 'download-attempts') opts.downloadAttempts = Math.max(1, parseSetting(name, value) as number);
  else return false;
  return true;
}

/** Apply one setting whose value is taken as it is (strings, word lists). */
function applyPlain(name: string, value: string, opts: Options, appended: Map<keyof BuildEngineOptions, string[]>): void {
  const [str, list, added] = [lookup(STRINGS, name), lookup(LISTS, name), lookup(APPENDED, name)];
  if (str) put(opts, str, value);
  else if (list) put(opts, list, words(value));
  else if (added) appended.set(added, [...(appended.get(added) ?? []), ...words(value)]);
  // Nix's secret-key-files: the keys that sign what is built here (read as Nix reads them, the file's text).
  else if (name === 'secret-key-files') opts.secretKeys = words(value).map((f) => readFileSync(f, 'utf8').trim());
  else if (name === 'extra-system-features') opts.systemFeatures = [...(opts.systemFeatures ?? defaultSystemFeatures()), ...words(value)];
}

/**
 * Read the settings. The substituters are only named here: the
 * engine's command makes them, so a command that fetches nothing never opens a binary cache, as Nix.
 */
export function engineSettings(args: CliArgs, store: Store): EngineSettings {
  const o = args.options;
  const opts: Options = { store };
  /** A Boolean setting, true unless set. */
  const flag = (name: string): boolean => (o.has(name) ? (parseSetting(name, o.get(name)!) as boolean) : true);
  const substitute = flag('substitute');
  const requireSigs = flag('require-sigs');
  const appended = new Map<keyof BuildEngineOptions, string[]>();
  for (const [name, value] of o) if (!applyParsed(name, value, opts)) applyPlain(name, value, opts, appended);
  for (const [key, list] of appended) if (list.length) put(opts, key, list);
  // Given even when empty: the engine then checks derivations against it as Nix does (ca-derivations).
  opts.experimentalFeatures ??= [];
  const narInfoTtl: EngineSettings['narInfoTtl'] = {};
  for (const which of ['positive', 'negative'] as const) {
    const name = `narinfo-cache-${which}-ttl`;
    if (o.has(name)) narInfoTtl[which] = parseSetting(name, o.get(name)!) as number;
  }
  return {
    narInfoTtl,
    options: opts,
    substitute,
    substituters: substitute ? [...args.substituters, ...words(o.get('substituters')), ...words(o.get('extra-substituters'))] : [],
    trustedPublicKeys: [...args.trustedPublicKeys, ...words(o.get('trusted-public-keys')), ...words(o.get('extra-trusted-public-keys'))],
    requireSigs,
  };
}
