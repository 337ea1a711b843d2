/**
 * `realise`: a thin shell over the public API. Commands: build, ensure, repair, path-info, copy, gc, store,
 * report. Flags and `--option` names are nix-store's and nix.conf's; output, messages and exit status as
 * Nix 2.8's. `main(argv)` runs one command in this process (bin/realise.js goes through src/cli/main.ts).
 * A command's code is loaded when it runs (build.ts, engine-build.ts, commands.ts, gc.ts), so that a
 * command starts with only what it uses.
 */
import {
  BuildFailedError,
  BuildSetupError,
  BuilderLogMessageError,
  LocalStore,
  RealiseError,
  SandboxError,
  daemonSocketOfUri,
  keptBuildDirNote,
  openStore,
  type Store,
} from '../index.js';
import { LOG_FORMATS, NIX_COMMAND_CLI, parseArgs, parseBool, UsageError, type CliArgs } from './args.js';
import { daemonClientSettings } from './daemon-settings.js';
import { messageLogs, warnStderr, writeFailure, writeStderr, writeStderrException } from './messages.js';
import { applyNixConf, readNixConf } from './nix-conf.js';
import { CliError } from './paths.js';
import { formatError, systemErrorMessage } from './report.js';
import { answerHelpOrVersion, USAGE } from './usage.js';

/**
 * The store `--store` names (the Nix daemon's, sent the settings Nix's client sends for this command line,
 * or a local one), else the default one: the embedded store, or, when `$NIX_STORE_DIR` or `$NIX_STATE_DIR`
 * names Nix's directories, the local store there (as Nix's `auto` opens it).
 */
async function openStoreArg(args: CliArgs): Promise<Store> {
  const spec = args.store || (process.env.NIX_STORE_DIR || process.env.NIX_STATE_DIR ? 'local' : undefined);
  if (!spec) return LocalStore.openDefault();
  return openStore(spec, { warn: warnStderr, ...(daemonSocketOfUri(spec) !== undefined ? { workerOptions: daemonClientSettings(args) } : {}) });
}

/** Nix's show-trace setting of the command being run (how `main` prints an error's trace). */
let showTrace = false;

async function run(argv: string[]): Promise<number> {
  // nix-store reads nix.conf and $NIX_CONFIG before its command line; a malformed one (a bad line, a
  // missing include, a value it cannot parse) ends it as a usage error, whatever the command line says.
  const conf = readNixConf(process.env);
  let args: CliArgs;
  try {
    args = parseArgs(argv);
  } catch (e) {
    // Nix warns as it sets each setting: what came before a bad flag is printed before its error.
    if (e instanceof UsageError) for (const w of [...conf.flatMap((s) => s.warnings ?? []), ...e.warnings]) warnStderr(w);
    throw e;
  }
  applyNixConf(args, conf);
  showTrace = args.options.get('show-trace') === 'true';
  if (args.logFormat === 'internal-json') {
    const { messagesAsJson } = await import('./log-format.js');
    messageLogs.stderrJson = messagesAsJson((l) => process.stderr.write(l));
  }
  // What Nix warned as it set the settings, before anything else (--version included); then the settings
  // it does not know, sorted: nix-store names those of the configuration and the command line, the nix
  // command (path-info, copy) the configuration's only.
  for (const w of args.settingWarnings) warnStderr(w);
  const unknown = NIX_COMMAND_CLI.has(args.command ?? '') ? args.unknownConfSettings : args.unknownSettings;
  for (const name of [...unknown].sort()) warnStderr(`unknown setting '${name}'`);
  const answered = answerHelpOrVersion(args);
  if (answered !== undefined) return answered;
  if (!args.command) {
    process.stderr.write(USAGE);
    return 1;
  }
  if (!['build', 'ensure', 'repair', 'path-info', 'copy', 'report', 'gc', 'store'].includes(args.command))
    throw new UsageError(`unknown command '${args.command}'`);
  if (args.logFormat !== undefined && !(LOG_FORMATS as readonly string[]).includes(args.logFormat)) {
    throw new CliError(`option 'log-format' has an invalid value '${args.logFormat}'`);
  }
  if (args.command === 'report') return (await import('./commands.js')).report(args);
  const store = await openStoreArg(args);
  // Nix's compress-build-log (default true): .bz2 build logs, or plain ones.
  const compressLog = args.options.get('compress-build-log');
  if (compressLog !== undefined && store instanceof LocalStore) store.compressBuildLog = parseBool('compress-build-log', compressLog);
  // Nix's ignored-acls: extended attributes canonicalisation leaves on store files.
  const ignoredAcls = args.options.get('ignored-acls');
  if (ignoredAcls !== undefined && store instanceof LocalStore) store.ignoredAcls = ignoredAcls.split(/\s+/).filter(Boolean);
  // Nix's auto-optimise-store (default false): new paths are hard-linked through <store>/.links.
  const autoOptimise = args.options.get('auto-optimise-store');
  if (autoOptimise !== undefined && store instanceof LocalStore) store.autoOptimiseStore = parseBool('auto-optimise-store', autoOptimise);
  try {
    switch (args.command) {
      case 'build':
      case 'ensure':
        return await (await import('./build.js')).buildCommand(args, store);
      case 'repair':
        return await (await import('./engine-build.js')).repair(args, store);
      case 'path-info':
        return await (await import('./commands.js')).pathInfo(args, store);
      case 'gc':
        return await (await import('./gc.js')).gcCommand(args, store);
      case 'store':
        return await (await import('./gc.js')).storeCommand(args, store);
      default:
        return await (await import('./commands.js')).copy(args, store);
    }
  } finally {
    await store.close();
  }
}

/**
 * Run one `realise` command line (without the program name): writes to process.stdout/stderr as the
 * command does and resolves with its exit status; never throws.
 */
export async function main(argv: string[]): Promise<number> {
  try {
    return await mainInner(argv);
  } finally {
    messageLogs.stderrJson = undefined;
    messageLogs.display = undefined;
  }
}

async function mainInner(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof BuildFailedError) {
      for (const f of e.failures) writeFailure(f, true);
      return e.exitStatus;
    }
    if (e instanceof UsageError) {
      writeStderr(`${formatError(e.message)}Try 'realise --help' for more information.\n`);
      return 1;
    }
    // Nix's words only: a RealiseError's hint stays in the API's message. A setup error with keepFailed
    // ends with Nix's "note: keeping build directory" line, which Nix prints before the error.
    if (e instanceof BuildSetupError) {
      if (e.keptBuildDir !== undefined) writeStderr(keptBuildDirNote(e.keptBuildDir) + '\n');
      // Nix has no words for a machine that cannot sandbox at all (it falls back, or fails to start the
      // builder): ours name the cause, and the fix is printed too.
      const noSandbox = e.cause instanceof SandboxError && e.cause.code === 'sandbox-unavailable' && e.hint;
      writeStderr(formatError(noSandbox ? `${e.reason}\nhint: ${e.hint}` : e.reason));
      // Nix's error trace: shown with --show-trace (after an empty line, as "… WHERE"), else pointed at.
      if (e.trace) writeStderr(showTrace ? `\n       \u2026 ${e.trace}\n` : "(use '--show-trace' to show detailed location information)\n");
    } else if (e instanceof BuilderLogMessageError && e.libraryError) writeStderrException(e.message);
    else if (e instanceof RealiseError) writeStderr(formatError(e.colouredMessage));
    else if (e instanceof CliError) writeStderr(formatError(e.message));
    else {
      // A failed system call is the user's to fix (a missing file, a permission): Nix's words, no trace.
      // Anything else is unexpected: its message, and the stack with --show-trace.
      const sys = systemErrorMessage(e);
      if (sys) writeStderr(formatError(sys));
      else if (showTrace) writeStderr(formatError((e as Error)?.stack ?? String(e)));
      else writeStderr(`${formatError((e as Error)?.message ?? String(e))}(use '--show-trace' to show detailed location information)\n`);
    }
    return 1;
  }
}
