/**
 * The commands that run a BuildEngine (`build` and `ensure` when something is missing, `repair`), loaded
 * only then: the engine, its substituters and displays are not part of a no-op's start-up.
 */
import { writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import * as path from 'node:path';
import {
  ActivityType,
  BinaryCacheSubstituter,
  BuildEngine,
  BuildFailedError,
  DaemonStore,
  LogLevel,
  RealiseError,
  SubstituterError,
  isSuccess,
  keptBuildDirNote,
  recordTrace,
  renderReport,
  type BuildEngineOptions,
  type BuildResult,
  type BuildTarget,
  type Store,
  type TargetResult,
  type TraceFile,
} from '../index.js';
import { UsageError, type CliArgs } from './args.js';
import { asActivity, makeDisplay, openJsonSink, type Display, type LogFormat } from './log-format.js';
import { messageLogs, warnStderr, writeFailure, writeStderr } from './messages.js';
import { CliError, followLinksToStorePath } from './paths.js';
import { printRealised } from './realised.js';
import { stderr } from './stdio.js';
import { failureLines, formatError, missingLines, summariseFailures } from './report.js';
import { engineSettings, type EngineSettings } from './settings.js';

/** Where the CLI keeps what lasts between runs (Nix's `~/.cache/nix`): `$XDG_CACHE_HOME/realise`, else `~/.cache/realise`. */
function cliCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'realise');
}

/**
 * Tell the `realise` process (bin/realise.js) what of the CLI this command runs: `engineRuns`, a
 * BuildEngine; `substitutersRun`, binary-cache substituters too. Its code cache is then one made by such a
 * run, which holds those functions (one made by a no-op, or by a build with no substituter, would not).
 * `buildsRun`: the engine's first build starts (V8's optimising compiler waits, see bin/realise.js).
 */
function tellLauncher(hook: 'engineRuns' | 'substitutersRun' | 'buildsRun'): void {
  (globalThis as Record<symbol, (() => void) | undefined>)[Symbol.for(`realise.cli.${hook}`)]?.();
}

/** The engine's options with the substituters the settings name (Nix's download-attempts, 5 unless set, and its warning before each retry). */
export function engineOptions(settings: EngineSettings, warn: (message: string) => void): BuildEngineOptions {
  const opts: BuildEngineOptions & Record<string, unknown> = { ...settings.options };
  // A daemon store was opened with what Nix's client sends for this command line (daemonClientSettings); the
  // engine's options, read from every nix.conf (the system's too, which Nix does not send), would add to it.
  // It substitutes from the daemon's own caches, unless told not to (Nix's client sends `substitute`).
  if (opts.store instanceof DaemonStore) {
    opts.store.setWorkerOptions({ useSubstitutes: settings.substitute });
    return { store: opts.store };
  }
  if (settings.substituters.length) {
    tellLauncher('substitutersRun');
    const { positive, negative } = settings.narInfoTtl;
    // As Nix's disk cache (for HTTP caches only: a file:// one is read afresh each run), one file for the runs.
    const onDisk = {
      cacheDir: cliCacheDir(),
      ...(positive !== undefined ? { positiveTtl: positive } : {}),
      ...(negative !== undefined ? { negativeTtl: negative } : {}),
    };
    opts.substituters = settings.substituters.map(
      (u) =>
        new BinaryCacheSubstituter(u, {
          ...(/^https?:\/\//.test(u) ? { narInfoCache: onDisk } : {}),
          trustedPublicKeys: [...settings.trustedPublicKeys],
          requireSigs: settings.requireSigs,
          onWarning: warn,
          // Nix's download-attempts counts every transfer's tries, a binary cache's too.
          retries: (settings.options.downloadAttempts ?? 5) - 1,
          retryBaseMs: 250,
          onRetry: (m, ms) => warn(`error: ${m}; retrying in ${ms} ms`),
          // As Nix with --fallback: a failing HTTP cache is disabled for 60 s, said without prefix.
          fallback: settings.options.fallback ?? false,
          onDisabled: (m) => writeStderr(`${m}\n`),
        }),
    );
  }
  return opts;
}

/**
 * Failures of goals that are not targets are printed when they happen (Nix logs a goal's error then when
 * another goal waits for it); the targets' own errors come at the end. A failed build's error is printed
 * with its build-finished, before its slot goes to the next build (as Nix's buildDone). A failure that
 * ends the call (Nix's Error thrown out of its worker) is kept for the end instead (`ended`), after the
 * stopped builds' notes. Returns every failed result and the messages printed.
 */
function printFailuresOfInputs(
  engine: BuildEngine,
  display: Display,
  topDrvs: ReadonlySet<string>,
): { failed: BuildResult[]; printed: Set<string>; keptOfStopped: string[]; ended: { message?: string } } {
  const failed: BuildResult[] = [];
  // The build directories of stopped builds kept with --keep-failed: Nix notes them as its worker goes,
  // after the errors it logged and before the one that ends the command.
  const keptOfStopped: string[] = [];
  const printed = new Set<string>();
  const printedBuilds = new Set<string>();
  const ended: { message?: string } = {};
  const printFailure = (path: string, result: BuildResult): void => {
    if (topDrvs.has(path) || !result.errorMsg) return;
    const { message, note } = failureLines({ path, result }, !display.showsLogs);
    if (note) display.line(note);
    if (result.failure?.endedCall) ended.message ??= message;
    else {
      printed.add(result.errorMsg);
      display.line(formatError(message).trimEnd());
    }
  };
  engine.on('build-finished', (e) => {
    if (e.keptBuildDir !== undefined) keptOfStopped.push(e.keptBuildDir);
    if (e.outcome !== 'failure' || !e.result) return;
    printedBuilds.add(e.drvPath);
    printFailure(e.drvPath, e.result);
  });
  engine.on('goal-finished', (e) => {
    if (isSuccess(e.result.status) || e.result.status === 'stopped') return;
    failed.push(e.result);
    // (The goal of a build whose failure was printed with its build-finished is not printed again.)
    if (e.kind === 'derivation' && !printedBuilds.delete(e.path)) printFailure(e.path, e.result);
  });
  return { failed, printed, keptOfStopped, ended };
}

/**
 * `build` / `ensure` through a BuildEngine (settings and targets as `buildCommand` read them): what is
 * missing is printed, then built or fetched, then the results are printed as nix-store prints them.
 */
export async function build(args: CliArgs, store: Store, settings: EngineSettings, targetsIn: BuildTarget[]): Promise<number> {
  tellLauncher('engineRuns');
  const warn = warnStderr;
  const opts = engineOptions(settings, warn);
  const builders = args.options.get('builders');
  // The engine makes the builders from the setting, and closes them (their ssh sessions) when it is closed.
  if (builders) opts.builders = builders;
  let targets = targetsIn;
  const engine = new BuildEngine(opts);
  engine.once('build-started', () => tellLauncher('buildsRun'));
  const mode = args.check ? 'check' : args.repair ? 'repair' : 'normal';
  const { display, closeSink } = openDisplay(args, engine);
  // (Through a daemon, its own worker starts the hook, with its own configuration: no hook-started here.)
  repeatHookWarnings(args, engine);
  const trace =
    args.traceFile || args.report
      ? recordTrace(engine, {
          meta: { command: ['realise', ...process.argv.slice(2)].join(' '), maxJobs: opts.maxJobs ?? 1 },
        })
      : undefined;
  const topDrvs = new Set(targets.map((t) => ('drvPath' in t ? t.drvPath : t.path)));
  const { failed, printed, keptOfStopped, ended } = printFailuresOfInputs(engine, display, topDrvs);
  const ac = new AbortController();
  const stopCancelling = cancelOnInterrupt(() => ac.abort());
  try {
    if (!args.quiet || args.dryRun || args.ignoreUnknown) {
      // A substituter that fails to answer ends the command, as Nix's queryMissing throws (without --fallback).
      const missing = await asActivity(display, 'querying info about missing paths', () => engine.queryMissing(targets)).catch((e: unknown) => {
        if (e instanceof SubstituterError) throw e;
        return undefined;
      });
      if (missing && args.ignoreUnknown) {
        const unknown = new Set<string>(missing.unknown);
        targets = targets.filter((t) => !unknown.has('drvPath' in t ? t.drvPath : t.path));
        missing.unknown.length = 0;
      }
      const printMissing = !args.options.has('print-missing') || args.options.get('print-missing') !== 'false';
      if (missing && !args.quiet && printMissing) display.lines(await missingLines(store, missing));
    }
    if (args.dryRun) return 0;
    // Nix's worker asks the substituters once more before its goals run (primeCache); with --fallback a
    // substituter that fails to answer is logged again then, as here.
    if (opts.fallback && opts.substituters?.length) await engine.queryMissing(targets).catch(() => undefined);
    let results: TargetResult[];
    for (const l of display.jsonLogs) {
      l.startRealise();
      // Nix's worker asks which paths are missing once more as it starts (its primeCache), as an activity.
      l.stop(l.start(ActivityType.Unknown, LogLevel.Debug, 'querying info about missing paths', undefined));
    }
    try {
      results = await engine.buildPathsWithResults(targets, { mode, signal: ac.signal });
      for (const l of display.jsonLogs) l.stopRealise();
    } catch (e) {
      for (const l of display.jsonLogs) l.stopRealise();
      // A setup error (platform, features, no build slots) ends the call, as Nix throws out of Worker::run;
      // when a dependency's goal already printed it, it is not printed twice.
      if (e instanceof RealiseError && (printed.has(e.message) || printed.has(e.shortMessage))) return 1;
      throw e;
    }
    display.stop();
    const stoppedNotes = () => {
      for (const d of keptOfStopped) writeStderr(keptBuildDirNote(d) + '\n');
    };
    if (ac.signal.aborted) {
      stoppedNotes();
      throw new RealiseError('cancelled', 'interrupted by the user');
    }
    const summary = summariseFailures(results, failed, !display.showsLogs);
    if (summary) {
      for (const n of summary.notes) writeStderr(n + '\n');
      // As Nix: the stopped builds' notes come as their goals go, before the last error (the one thrown out
      // of buildPaths: a target's, or the dependency's failure that ended the call).
      const last = summary.messages.length ? summary.messages.at(-1) : ended.message;
      for (const m of summary.messages.slice(0, -1)) writeStderr(formatError(m));
      stoppedNotes();
      if (last !== undefined) writeStderr(formatError(last));
      return summary.exitStatus;
    }
    await printRealised(args, store, results, store instanceof DaemonStore ? (l) => store.addIndirectRoot(l) : undefined, warn);
    return 0;
  } finally {
    display.stop();
    stopCancelling();
    await engine.close();
    await closeSink();
    if (trace) await writeTrace(args, await trace.finish());
  }
}

/**
 * The display of a command's engine for its log format (and `json-log-path`), through which the command's
 * messages go until `closeSink()`.
 */
function openDisplay(args: CliArgs, engine: BuildEngine): { display: Display; closeSink: () => Promise<void> } {
  const jsonLogPath = args.options.get('json-log-path');
  const sink = jsonLogPath ? openJsonSink(jsonLogPath) : undefined;
  const display = makeDisplay(engine, stderr, {
    format: args.logFormat as LogFormat | undefined,
    quiet: args.quiet,
    verbosity: args.verbosity,
    noBuildOutput: args.noBuildOutput,
    printBuildLogs: args.printBuildLogs,
    jsonSink: sink,
  });
  messageLogs.display = display;
  return {
    display,
    closeSink: async () => {
      messageLogs.display = undefined;
      await sink?.close();
    },
  };
}

/**
 * Nix's build hook reads the configuration again as it starts and warns once more about the settings it does
 * not know (those of the configuration files and `$NIX_CONFIG`, sorted): the engine tells when one starts.
 */
function repeatHookWarnings(args: CliArgs, engine: BuildEngine): void {
  if (args.unknownConfSettings.length === 0) return;
  const names = [...args.unknownConfSettings].sort();
  engine.on('hook-started', () => {
    for (const name of names) warnStderr(`unknown setting '${name}'`);
  });
}

/** `--trace-file` and `--report` of a run; a file that cannot be written is a warning (the build's status stands). */
async function writeTrace(args: CliArgs, t: TraceFile): Promise<void> {
  try {
    if (args.traceFile) writeFileSync(args.traceFile, JSON.stringify(t));
    if (args.report) writeFileSync(args.report, renderReport(t));
  } catch (e) {
    warnStderr(`cannot write the trace or report: ${(e as Error).message}`);
  }
}

export async function repair(args: CliArgs, store: Store): Promise<number> {
  const settings = engineSettings(args, store);
  // nix-store --repair-path takes no flag of its own (checked after the settings, which its option parser read).
  if (args.opFlags.length) throw new UsageError('no flags expected');
  tellLauncher('engineRuns');
  const engine = new BuildEngine(engineOptions(settings, warnStderr));
  const { display, closeSink } = openDisplay(args, engine);
  try {
    for (const a of args.positional) {
      const p = followLinksToStorePath(store.storeDir, a);
      try {
        await engine.repairPath(p);
      } catch (e) {
        display.stop();
        // Nix's Store::repairPath: an invalid path that could not be fetched is "not valid"; a valid one
        // with no substitute and no valid deriver "cannot be repaired".
        if (!(await store.isValidPath(p))) throw new CliError(`path '${p}' is not valid`);
        if (e instanceof BuildFailedError && e.failures.length === 1 && e.failures[0]!.result.errorMsg?.startsWith(`cannot repair path '${p}'`)) {
          throw new CliError(`cannot repair path '${p}'`);
        }
        if (e instanceof BuildFailedError) {
          for (const f of e.failures) writeFailure(f, !display.showsLogs);
          return e.exitStatus;
        }
        throw e;
      }
    }
    return 0;
  } finally {
    display.stop();
    await engine.close();
    await closeSink();
  }
}

/** The signals that interrupt a build (Nix's signal handler thread waits for the same three). */
const INTERRUPTS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Until the returned function is called, an interrupt calls `cancel` instead of ending the process (a second
 * one during the clean-up changes nothing). The `realise` process (bin/realise.js) owns the signal handlers
 * and asks this hook; when main() runs inside another program, the handlers are installed for the window.
 */
function cancelOnInterrupt(cancel: () => void): () => void {
  const owner = (globalThis as Record<symbol, { cancel?: () => void } | undefined>)[Symbol.for('realise.cli.interrupts')];
  if (owner) {
    owner.cancel = cancel;
    return () => {
      owner.cancel = undefined;
    };
  }
  for (const sig of INTERRUPTS) process.on(sig, cancel);
  return () => {
    for (const sig of INTERRUPTS) process.off(sig, cancel);
  };
}
