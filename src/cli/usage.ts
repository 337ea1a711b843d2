/**
 * The `realise` command's --help and --version: answered by src/cli/main.ts before the rest of the CLI
 * (and the SDK behind it) is loaded, so that they cost little more than starting Node.
 */
import { readFileSync } from 'node:fs';
import { parseArgs, type CliArgs } from './args.js';
import { applyNixConf, readNixConf } from './nix-conf.js';
import { stdout } from './stdio.js';

export const USAGE = `usage: realise COMMAND [FLAGS] ARGS

commands:
  build DRV[!OUTPUTS]|PATH...  nix-store --realise: build derivations (DRV!out,dev, DRV^out,dev or DRV^*) or
                              fetch paths, and print the output paths
  ensure PATH...              make store paths valid, substituting them
  repair PATH...              nix-store --repair-path: substitute again, or rebuild the deriver in repair mode
  path-info [-r] PATH...      nix path-info: a .drv means its outputs (--derivation: the .drv itself);
                              -s size, -S closure size, --sigs, -h human-readable, --json
  copy --to URL PATH...       write the closure of PATHs to a binary cache (file:// URL)
  gc [--print-dead|--print-live|--print-roots] [--max-freed N[KMGT]]
                              nix-store --gc: delete unreachable paths (keep-outputs, keep-derivations apply)
  gc --delete [--ignore-liveness] PATH...   nix-store --delete: delete paths nothing live needs
  store optimise              nix-store --optimise: hard-link identical files through <store>/.links
  report TRACE [-o OUT]       the HTML report (timeline, critical path, slowest builds, failures) of a trace file

flags:
  --store ROOT|local?root=..&store=..&state=..&log=..   the store (default: the embedded default store)
  --store daemon|unix://SOCKET   a system Nix installation's store, through its nix-daemon
  --substituter URL  --trusted-public-key KEY  --max-jobs N  --cores N  --keep-going  --fallback
  --check  --repair  --timeout S  --max-silent-time S  --builders SPEC  --keep-failed  --json
  --dry-run  --add-root PATH  --ignore-unknown  --quiet  -Q (no build output)  -L (build logs on a terminal)
  --log-format raw|raw-with-logs|internal-json|bar|bar-with-logs   --json-log-path FILE|SOCKET (internal-json there too)
  --trace-file FILE (Chrome trace of the run)  --report FILE (its HTML report)
  --version  --help
  --option NAME VALUE   any of: sandbox, sandbox-fallback, sandbox-paths, extra-sandbox-paths, build-repeat,
                        enforce-determinism, max-build-log-size, log-lines, post-build-hook, system,
                        system-features, extra-platforms, require-sigs, substituters, trusted-public-keys,
                        max-substitution-jobs, secret-key, compression, hashed-mirrors, netrc-file,
                        download-attempts
`;

function version(): string {
  try {
    // ../../package.json from src/cli/, dist/cli/ and dist/bundle/ alike.
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Prints the usage (--help) or the version (--version) and returns 0, or returns undefined for any other command line. */
export function answerHelpOrVersion(args: CliArgs): number | undefined {
  if (args.help) {
    stdout.write(USAGE);
    return 0;
  }
  if (args.version) {
    stdout.write(`realise (realise) ${version()}, mirroring nix-store (Nix) 2.8.0\n`);
    return 0;
  }
  return undefined;
}

/**
 * The answer to a command line asking for --help or --version, without loading the rest of the CLI;
 * undefined for anything else, and for a command line or nix.conf with an error (run.ts's main reports it).
 */
export function quickAnswer(argv: readonly string[]): number | undefined {
  if (!argv.some((a) => a === '--help' || a === '-h' || a === '--version')) return undefined;
  try {
    const args = parseArgs([...argv]);
    applyNixConf(args, readNixConf(process.env));
    // (Warnings to print first: run.ts's main prints them.)
    return args.settingWarnings.length || args.unknownSettings.length ? undefined : answerHelpOrVersion(args);
  } catch {
    return undefined;
  }
}
