/**
 * Command-line parsing for `realise`: nix-store's flags and nix.conf's `--option NAME VALUE` names.
 */
export interface CliArgs {
  command: string;
  positional: string[];
  store?: string;
  substituters: string[];
  trustedPublicKeys: string[];
  options: Map<string, string>;
  json: boolean;
  check: boolean;
  repair: boolean;
  to?: string;
  help: boolean;
  recursive: boolean;
}

export class UsageError extends Error {}

const FLAG_TO_OPTION: Record<string, string> = {
  '--max-jobs': 'max-jobs', '-j': 'max-jobs', '--cores': 'cores', '--timeout': 'timeout', '--max-silent-time': 'max-silent-time',
  '--builders': 'builders', '--secret-key': 'secret-key', '--compression': 'compression',
};
const BOOL_TO_OPTION: Record<string, [string, string]> = {
  '--keep-going': ['keep-going', 'true'], '-k': ['keep-going', 'true'], '--fallback': ['fallback', 'true'],
  '--keep-failed': ['keep-failed', 'true'], '-K': ['keep-failed', 'true'], '--no-sandbox': ['sandbox', 'false'], '--sandbox': ['sandbox', 'true'],
};

export function parseArgs(argv: readonly string[]): CliArgs {
  const a: CliArgs = { command: '', positional: [], substituters: [], trustedPublicKeys: [], options: new Map(), json: false, check: false, repair: false, help: false, recursive: false };
  const next = (i: number, flag: string): string => {
    const v = argv[i + 1];
    if (v === undefined) throw new UsageError(`flag '${flag}' requires an argument`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') { a.help = true; continue; }
    if (arg === '--json') { a.json = true; continue; }
    if (arg === '--check') { a.check = true; continue; }
    if (arg === '--recursive' || arg === '-r') { a.recursive = true; continue; }
    if (arg === '--repair') { a.repair = true; continue; }
    if (arg === '--store') { a.store = next(i, arg); i++; continue; }
    if (arg === '--to') { a.to = next(i, arg); i++; continue; }
    if (arg === '--substituter' || arg === '--substituters') { a.substituters.push(...next(i, arg).split(/\s+/).filter(Boolean)); i++; continue; }
    if (arg === '--trusted-public-key' || arg === '--trusted-public-keys') { a.trustedPublicKeys.push(...next(i, arg).split(/\s+/).filter(Boolean)); i++; continue; }
    if (arg === '--option') {
      const name = next(i, arg);
      const value = argv[i + 2];
      if (value === undefined) throw new UsageError(`flag '--option' requires two arguments (NAME VALUE)`);
      a.options.set(name, value);
      i += 2;
      continue;
    }
    if (FLAG_TO_OPTION[arg]) { a.options.set(FLAG_TO_OPTION[arg]!, next(i, arg)); i++; continue; }
    if (BOOL_TO_OPTION[arg]) { const [k, v] = BOOL_TO_OPTION[arg]!; a.options.set(k, v); continue; }
    if (arg.startsWith('--') && arg.includes('=')) {
      const [k, v] = [arg.slice(2, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
      return parseArgs([...argv.slice(0, i), `--${k}`, v, ...argv.slice(i + 1)]);
    }
    if (arg.startsWith('-') && arg !== '-') throw new UsageError(`unrecognised flag '${arg}'`);
    if (!a.command) a.command = arg;
    else a.positional.push(arg);
  }
  return a;
}

export function parseBool(name: string, v: string): boolean {
  if (v === 'true' || v === '1' || v === 'yes') return true;
  if (v === 'false' || v === '0' || v === 'no' || v === '') return false;
  throw new UsageError(`option '${name}' has invalid value '${v}' (expected true or false)`);
}

export function parseIntOption(name: string, v: string): number {
  if (name === 'max-jobs' && v === 'auto') return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`option '${name}' has invalid value '${v}' (expected a non-negative integer)`);
  return n;
}
