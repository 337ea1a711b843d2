/**
 * The settings nix-store reads before its command line, as Nix 2.8's loadConfFile: `$NIX_CONF_DIR/nix.conf`
 * (default /etc/nix/nix.conf), the user's files (`$NIX_USER_CONF_FILES`, colon-separated, the first one
 * winning; else `nix/nix.conf` under `$XDG_CONFIG_HOME` and `$XDG_CONFIG_DIRS`), then `$NIX_CONFIG`; the
 * store also from `$NIX_REMOTE`. Lines are `NAME = VALUE` (`#` starts a comment), `include FILE` and
 * `!include FILE` (relative to the including file; `!` tolerates a missing one).
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { checkSettingValue, isKnownSetting, OPTION_ALIASES, UsageError, type CliArgs } from './args.js';
import { CliError } from './paths.js';

export interface ConfSetting {
  readonly name: string;
  readonly value: string;
  /** From the system's nix.conf (or a file it includes): not "overridden", so not sent to the daemon. */
  readonly system?: boolean;
  /** What Nix warns as it sets it (unknown experimental features). */
  readonly warnings?: readonly string[];
}

function applyConfig(contents: string, origin: string, out: ConfSetting[], system = false): void {
  for (const raw of contents.split('\n')) {
    const hash = raw.indexOf('#');
    const line = hash >= 0 ? raw.slice(0, hash) : raw;
    const tokens = line.split(/[ \t\n\r]+/).filter(Boolean);
    if (tokens.length === 0) continue;
    if (tokens.length < 2) throw new UsageError(`illegal configuration line '${line}' in '${origin}'`);
    const [first, second] = tokens as [string, string];
    if (first === 'include' || first === '!include') {
      if (tokens.length !== 2) throw new UsageError(`illegal configuration line '${line}' in '${origin}'`);
      const file = path.resolve(path.dirname(origin), second);
      if (existsSync(file)) applyConfigFile(file, out, system);
      else if (first === 'include') throw new CliError(`file '${file}' included from '${origin}' not found`);
      continue;
    }
    if (second !== '=') throw new UsageError(`illegal configuration line '${line}' in '${origin}'`);
    const value = tokens.slice(2).join(' ');
    // As Nix sets each line as it reads it: a bad value is an error before the lines and files after it.
    const warnings = checkSettingValue(first, value);
    out.push({ name: first, value, ...(system ? { system } : {}), ...(warnings.length ? { warnings } : {}) });
  }
}

function applyConfigFile(file: string, out: ConfSetting[], system = false): void {
  let contents: string;
  try {
    contents = readFileSync(file, 'utf8');
  } catch {
    return; // Nix skips a configuration file it cannot read
  }
  applyConfig(contents, file, out, system);
}

/** Nix's nixUserConfFiles. */
function userConfFiles(env: NodeJS.ProcessEnv): string[] {
  if (env.NIX_USER_CONF_FILES !== undefined) return env.NIX_USER_CONF_FILES.split(':').filter(Boolean);
  const home = env.XDG_CONFIG_HOME || path.join(env.HOME || homedir(), '.config');
  const dirs = [home, ...(env.XDG_CONFIG_DIRS ?? '/etc/xdg').split(':').filter(Boolean)];
  return dirs.map((d) => path.join(d, 'nix', 'nix.conf'));
}

/** The settings of the configuration files and `$NIX_CONFIG`, in the order Nix applies them (later ones win). */
export function readNixConf(env: NodeJS.ProcessEnv = process.env): ConfSetting[] {
  const out: ConfSetting[] = [];
  applyConfigFile(path.join(env.NIX_CONF_DIR || '/etc/nix', 'nix.conf'), out, true);
  for (const file of userConfFiles(env).reverse()) applyConfigFile(file, out);
  if (env.NIX_CONFIG !== undefined) applyConfig(env.NIX_CONFIG, 'NIX_CONFIG', out);
  return out;
}

/**
 * Fold the configuration into a parsed command line: the command line wins, `extra-NAME` values add up
 * (the configuration's first); what the user's files and `$NIX_CONFIG` set is `overridden`, as in Nix. The store is `--store`, else the `store` setting, else `$NIX_REMOTE`
 * (`daemon` and `unix://…` are the Nix daemon; `auto` is left out: the embedded default store).
 */
export function applyNixConf(args: CliArgs, settings: readonly ConfSetting[], env: NodeJS.ProcessEnv = process.env): void {
  const conf = new Map<string, string>();
  // The configuration's warnings come before the command line's.
  args.settingWarnings.unshift(...settings.flatMap((setting) => setting.warnings ?? []));
  for (const setting of settings) {
    const { name, value } = setting;
    const key = OPTION_ALIASES[name] ?? name;
    if (!key.startsWith('extra-')) conf.delete(`extra-${key}`); // a plain NAME replaces what extra-NAME added
    conf.set(key, key.startsWith('extra-') && conf.has(key) ? `${conf.get(key)} ${value}` : value);
    if (!setting.system) args.overridden.add(key);
    if (!isKnownSetting(name) && !args.unknownConfSettings.includes(name)) {
      args.unknownConfSettings.push(name);
      if (!args.unknownSettings.includes(name)) args.unknownSettings.push(name);
    }
  }
  const onCommandLine = new Set(args.options.keys());
  for (const [key, value] of conf) {
    // The command line comes after the configuration: its plain NAME replaces the configuration's
    // extra-NAME too.
    if (key.startsWith('extra-') && onCommandLine.has(key.slice('extra-'.length))) continue;
    if (!args.options.has(key)) args.options.set(key, value);
    else if (key.startsWith('extra-')) args.options.set(key, `${value} ${args.options.get(key)}`);
  }
  if (args.store === undefined) {
    const store = args.options.get('store') ?? env.NIX_REMOTE;
    if (store && store !== 'auto') args.store = store;
  }
}
