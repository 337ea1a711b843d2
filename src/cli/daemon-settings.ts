/**
 * The client settings a command line sends the Nix daemon (SetOptions), as Nix 2.8's client sends them: the
 * fixed fields (keep-failed, keep-going, fallback, verbosity, max-jobs, max-silent-time, cores, substitute)
 * with Nix's defaults for those not set, and as `overrides` every other setting the user set (on the command
 * line, in the user's nix.conf files or `$NIX_CONFIG`; not the system's nix.conf) under its Nix name, its
 * value written as Nix writes it: Booleans `true`/`false`, integers in decimal, lists joined by spaces, sets
 * sorted, `extra-NAME` added to NAME's value (or Nix's default).
 */
import { cpus } from 'node:os';
import { defaultSystemFeatures, type WorkerOptions } from '../index.js';
import { isKnownSetting, parseSetting, type CliArgs, type SettingValue } from './args.js';

/** The settings SetOptions carries in fixed fields, and those Nix's client never sends. */
const NOT_OVERRIDES = new Set([
  'keep-failed',
  'keep-going',
  'fallback',
  'max-jobs',
  'max-silent-time',
  'cores',
  'substitute',
  'show-trace',
  'experimental-features',
  'plugin-files',
]);
/** Nix 2.8's names of settings we keep under another one. */
const NIX_NAMES: Readonly<Record<string, string>> = {
  'build-repeat': 'repeat',
  'trusted-binary-caches': 'trusted-substituters',
  'env-keep-derivations': 'keep-env-derivations',
  'gc-keep-outputs': 'keep-outputs',
  'gc-keep-derivations': 'keep-derivations',
};
/** Our own settings (not Nix 2.8's): never sent. */
const OURS = new Set(['max-substitution-jobs', 'secret-key', 'compression', 'json-log-path']);
/** Word lists kept sorted and without repeats (Nix's StringSet settings). */
const SETS = new Set(['allowed-impure-host-deps', 'extra-platforms', 'ignored-acls', 'sandbox-paths', 'system-features', 'trusted-substituters']);
/** Word lists, and the defaults `extra-NAME` adds to (those not here default to none). */
const LISTS: Readonly<Record<string, () => string[]>> = {
  'allowed-impure-host-deps': () => [],
  'allowed-uris': () => [],
  'allowed-users': () => ['*'],
  'extra-platforms': () => (process.arch === 'x64' ? ['i686-linux'] : []),
  'hashed-mirrors': () => [],
  'ignored-acls': () => ['security.selinux', 'system.nfs4_acl'],
  'nix-path': () => [],
  'sandbox-paths': () => [],
  'secret-key-files': () => [],
  substituters: () => ['https://cache.nixos.org/'],
  'system-features': () => defaultSystemFeatures(),
  'trusted-public-keys': () => ['cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='],
  'trusted-substituters': () => [],
  'trusted-users': () => ['root'],
};

const words = (v: string | undefined): string[] => (v ?? '').split(/\s+/).filter(Boolean);

/** A value as Nix parses it, or undefined when Nix would refuse it (it warns and keeps its default). */
function attempt<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch {
    return undefined;
  }
}

/** The words of a list setting: our `--substituter` / `--trusted-public-key` flags first, then NAME (or Nix's default), then `extra-NAME`. */
function listValue(args: CliArgs, name: string, key: string): string[] {
  const flags = name === 'substituters' ? args.substituters : name === 'trusted-public-keys' ? args.trustedPublicKeys : [];
  const own = args.options.get(key);
  const base = own !== undefined ? words(own) : flags.length ? [] : LISTS[name]!();
  const all = [...flags, ...base, ...words(args.options.get(`extra-${key}`))];
  return SETS.has(name) ? [...new Set(all)].sort() : all;
}

/** A setting's value as Nix's client writes it into SetOptions, or undefined when it is not sent. */
function wireValue(args: CliArgs, name: string, key: string): string | undefined {
  if (Object.hasOwn(LISTS, name)) return listValue(args, name, key).join(' ');
  const v = args.options.get(key);
  if (v === undefined) return undefined;
  // By the setting's Nix type (args.ts's parser): a Boolean, `sandbox`'s three words, an integer of its signedness and width, or text.
  const value = attempt(() => parseSetting(name, v));
  return value === undefined ? undefined : String(value);
}

/** The settings the user set that Nix's client sends as overrides, by Nix name. */
function overridesOf(args: CliArgs): Record<string, string> {
  const keys = new Set<string>();
  for (const k of args.overridden) keys.add(k.startsWith('extra-') ? k.slice('extra-'.length) : k);
  if (args.substituters.length) keys.add('substituters');
  if (args.trustedPublicKeys.length) keys.add('trusted-public-keys');
  const out: Record<string, string> = {};
  for (const key of keys) {
    const name = NIX_NAMES[key] ?? key;
    if (NOT_OVERRIDES.has(name) || OURS.has(name) || !isKnownSetting(name)) continue;
    const value = wireValue(args, name, key);
    if (value !== undefined) out[name] = value;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** What Nix 2.8's client sends the daemon for this command line (the DaemonStore's `workerOptions`). */
export function daemonClientSettings(args: CliArgs): WorkerOptions {
  const o = args.options;
  const setting = (name: string): SettingValue | undefined => (o.has(name) ? attempt(() => parseSetting(name, o.get(name)!)) : undefined);
  const bool = (name: string) => setting(name) as boolean | undefined;
  const int = (name: string) => setting(name) as number | undefined;
  return {
    keepFailed: bool('keep-failed') ?? false,
    keepGoing: bool('keep-going') ?? false,
    tryFallback: bool('fallback') ?? false,
    verbosity: args.verbosity,
    maxBuildJobs: int('max-jobs') ?? 1,
    maxSilentTime: int('max-silent-time') ?? 0,
    buildCores: int('cores') ?? cpus().length,
    useSubstitutes: bool('substitute') ?? true,
    overrides: overridesOf(args),
  };
}
