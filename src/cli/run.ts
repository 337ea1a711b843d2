/**
 * `realise`: a thin shell over the public API. Commands: build, ensure, repair, path-info, copy.
 * Flags and `--option` names are nix-store's and nix.conf's; output, messages and exit status as Nix 2.8's.
 * `main(argv)` runs one command in this process (bin/realise.js goes through src/cli/main.ts).
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readlinkSync, renameSync, symlinkSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import * as path from 'node:path';
import {
  BinaryCacheSubstituter,
  SubstituterError,
  SandboxError,
  BuildEngine,
  BuildFailedError,
  BuildSetupError,
  RealiseError,
  copyToBinaryCache,
  openStore,
  LocalStore,
  defaultSystemFeatures,
  derivationOutputsAndPaths,
  isCompression,
  isSuccess,
  keptBuildDirNote,
  readDerivationFromStore,
  toNixBase32,
  NixJsonLog,
  ActivityType,
  LogLevel,
  recordTrace,
  renderReport,
  type BuildEngineOptions,
  type TraceFile,
  type BuildResult,
  type BuildTarget,
  type PathInfo,
  type Store,
  type TargetResult,
} from '../index.js';
import { DaemonStore } from '../index.js';
import { parseArgs, parseBool, parseIntOption, UsageError, type CliArgs } from './args.js';
import { CliError, followLinksToStorePath, parseTargetArg } from './paths.js';
import { asActivity, LOG_FORMATS, makeDisplay, openJsonSink, type Display, type LogFormat } from './log-format.js';
import { applyNixConf, readNixConf } from './nix-conf.js';
import { answerHelpOrVersion, USAGE } from './usage.js';
import { gcCommand, storeCommand } from './gc.js';
import {
  dependenciesFirst,
  failureLines,
  filterLogMessage,
  formatError,
  formatWarning,
  missingLines,
  summariseFailures,
  systemErrorMessage,
} from './report.js';

async function openStoreArg(spec: string | undefined): Promise<Store> {
  if (!spec) return LocalStore.openDefault();
  return openStore(spec, { warn: warnStderr });
}

function engineOptions(args: CliArgs, store: Store, warn: (message: string) => void): BuildEngineOptions {
  const o = args.options;
  const opts: BuildEngineOptions & Record<string, unknown> = { store };
  const words = (name: string) => (o.get(name) ?? '').split(/\s+/).filter(Boolean);
  /** A value parsed from `--option NAME VALUE` that Nix would refuse: Nix warns and keeps the default. */
  const parsed = <T>(name: string, parse: () => T, apply: (v: T) => void) => {
    let v: T;
    try {
      v = parse();
    } catch (e) {
      if (e instanceof UsageError && args.fromOption.has(name)) {
        warn(`error: ${e.message}`);
        return;
      }
      throw e;
    }
    apply(v);
  };
  const bool = (name: string, apply: (v: boolean) => void) => parsed(name, () => parseBool(name, o.get(name)!), apply);
  const int = (name: string, apply: (v: number) => void) => parsed(name, () => parseIntOption(name, o.get(name)!), apply);
  let substitute = true;
  if (o.has('substitute'))
    bool('substitute', (v) => {
      substitute = v;
    });
  let requireSigs = true;
  if (o.has('require-sigs'))
    bool('require-sigs', (v) => {
      requireSigs = v;
    });
  const subs = [...args.substituters, ...words('substituters'), ...words('extra-substituters')];
  const keys = [...args.trustedPublicKeys, ...words('trusted-public-keys'), ...words('extra-trusted-public-keys')];
  if (subs.length && substitute)
    opts.substituters = subs.map(
      (u) =>
        new BinaryCacheSubstituter(u, {
          trustedPublicKeys: keys,
          requireSigs,
          onWarning: warn,
          // Nix's download-attempts (5) and its warning before each retry.
          retries: 4,
          retryBaseMs: 250,
          onRetry: (m, ms) => warn(`error: ${m}; retrying in ${ms} ms`),
        }),
    );
  const sandboxPaths: string[] = [];
  const allowedImpure: string[] = [];
  const experimental: string[] = [];
  for (const [name, value] of o) {
    switch (name) {
      case 'max-jobs':
        parsed(
          name,
          () => (value === 'auto' ? cpus().length : parseIntOption(name, value)),
          (v) => {
            opts.maxJobs = v;
          },
        );
        break;
      case 'cores':
        int(name, (v) => {
          opts.cores = v;
        });
        break;
      case 'keep-going':
        bool(name, (v) => {
          opts.keepGoing = v;
        });
        break;
      case 'fallback':
        bool(name, (v) => {
          opts.fallback = v;
        });
        break;
      case 'keep-failed':
        bool(name, (v) => {
          opts.keepFailed = v;
        });
        break;
      case 'sandbox':
        parsed(
          name,
          () => {
            if (value === 'relaxed') return 'relaxed' as const;
            try {
              return parseBool(name, value);
            } catch {
              throw new UsageError(`option '${name}' has invalid value '${value}'`);
            }
          },
          (v) => {
            opts.sandbox = v;
          },
        );
        break;
      case 'sandbox-fallback':
        bool(name, (v) => {
          opts.sandboxFallback = v;
        });
        break;
      case 'sandbox-paths':
      case 'extra-sandbox-paths':
        sandboxPaths.push(...value.split(/\s+/).filter(Boolean));
        break;
      case 'allowed-impure-host-deps':
      case 'extra-allowed-impure-host-deps':
        allowedImpure.push(...value.split(/\s+/).filter(Boolean));
        break;
      case 'pre-build-hook':
        opts.preBuildHook = value;
        break;
      case 'sandbox-build-dir':
        opts.sandboxBuildDir = value;
        break;
      case 'sandbox-dev-shm-size':
        opts.sandboxShmSize = value;
        break;
      case 'filter-syscalls':
        bool(name, (v) => {
          opts.filterSyscalls = v;
        });
        break;
      case 'experimental-features':
      case 'extra-experimental-features':
        experimental.push(...value.split(/\s+/).filter(Boolean));
        break;
      case 'build-repeat':
        int(name, (v) => {
          opts.buildRepeat = v;
        });
        break;
      case 'enforce-determinism':
        bool(name, (v) => {
          opts.enforceDeterminism = v;
        });
        break;
      case 'max-silent-time':
        int(name, (v) => {
          opts.maxSilentTime = v;
        });
        break;
      case 'timeout':
        int(name, (v) => {
          opts.buildTimeout = v;
        });
        break;
      case 'max-build-log-size':
        int(name, (v) => {
          opts.maxLogSize = v;
        });
        break;
      case 'log-lines':
        int(name, (v) => {
          opts.logLines = v;
        });
        break;
      case 'post-build-hook':
        opts.postBuildHook = value;
        break;
      case 'system':
        opts.system = value;
        break;
      case 'system-features':
        opts.systemFeatures = value.split(/\s+/).filter(Boolean);
        break;
      case 'extra-system-features':
        opts.systemFeatures = [...(opts.systemFeatures ?? defaultSystemFeatures()), ...value.split(/\s+/).filter(Boolean)];
        break;
      case 'extra-platforms':
        opts.extraPlatforms = value.split(/\s+/).filter(Boolean);
        break;
      case 'max-substitution-jobs':
        int(name, (v) => {
          opts.maxSubstitutionJobs = v;
        });
        break;
      case 'min-free':
        int(name, (v) => {
          opts.minFree = v;
        });
        break;
      case 'max-free':
        int(name, (v) => {
          opts.maxFree = v;
        });
        break;
      case 'min-free-check-interval':
        int(name, (v) => {
          opts.minFreeCheckInterval = v;
        });
        break;
      case 'hashed-mirrors':
        opts.hashedMirrors = value.split(/\s+/).filter(Boolean);
        break;
      case 'netrc-file':
        opts.netrcFile = value;
        break;
      case 'download-attempts':
        int(name, (v) => {
          opts.downloadAttempts = Math.max(1, v);
        });
        break;
      default:
        // Nix 2.8 silently accepts settings it does not know, and the ones read above or by other commands.
        break;
    }
  }
  if (sandboxPaths.length) opts.sandboxPaths = sandboxPaths;
  if (allowedImpure.length) opts.allowedImpureHostDeps = allowedImpure;
  if (experimental.length) opts.experimentalFeatures = experimental;
  return opts;
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Where messages go besides stderr: with `--log-format internal-json` they go to `stderrJson` instead; while a
 * build's display runs, to its JSON logs (internal-json on stderr, `--json-log-path`) too.
 */
const messageLogs: { stderrJson?: NixJsonLog; display?: Display } = {};

/** Write one message to stderr as Nix's logger does (escape sequences, `\r` and tabs filtered), or as JSON. */
function writeStderr(message: string): void {
  const logs = messageLogs.display?.jsonLogs ?? (messageLogs.stderrJson ? [messageLogs.stderrJson] : []);
  for (const l of logs) l.text(message);
  if (!messageLogs.stderrJson) process.stderr.write(filterLogMessage(message, !!process.stderr.isTTY));
}

/** A failed build on stderr as Nix prints it: the kept build directory's note, then the error. */
function writeFailure(f: TargetResult, showTail: boolean): void {
  const { message, note } = failureLines(f, showTail);
  if (note) writeStderr(note + '\n');
  writeStderr(formatError(message));
}

/** A warning on stderr in Nix's form (`warning: …`), filtered as every message. */
function warnStderr(message: string): void {
  writeStderr(formatWarning(message));
}

/** Output paths of a derivation target (all when none were named), in Nix's order: by path. */
async function targetOutputs(store: Store, r: TargetResult): Promise<[string, string][]> {
  if ('path' in r.target) return [];
  const wanted = r.target.outputs === undefined || r.target.outputs === '*' ? undefined : new Set(r.target.outputs);
  // nix-store prints the store's output map of the derivation (its DerivationOutputs rows): for a
  // fixed-output derivation whose output has references, Nix 2.8 registers the output under another path
  // than the .drv names, yet prints the .drv's. What the build reports fills outputs the store has no row for.
  const all = new Map<string, string>(await store.queryDerivationOutputs(r.path));
  for (const [n, p] of Object.entries(r.result.builtOutputs)) if (!all.has(n)) all.set(n, p);
  return [...all].filter(([name]) => !wanted || wanted.has(name)).sort(([, a], [, b]) => byString(a, b));
}

/** The store's state directory, when it has one on disk (GC roots live under it). */
function stateDirOf(store: Store): string | undefined {
  return store instanceof LocalStore ? store.layout.stateDir : undefined;
}

/** Replace `link` with a symlink to `target` atomically, creating its directory (Nix's makeSymlink). */
function makeSymlink(link: string, target: string): void {
  mkdirSync(path.dirname(link), { recursive: true });
  const tmp = `${link}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  symlinkSync(target, tmp);
  renameSync(tmp, link);
}

/** Nix's LocalFSStore::addPermRoot: a symlink to the store path, registered as an indirect GC root. */
async function addPermRoot(store: Store, storePath: string, root: string): Promise<string> {
  const gcRoot = path.resolve(root);
  if (gcRoot.startsWith(store.storeDir + '/')) {
    throw new CliError(`creating a garbage collector root (${gcRoot}) in the Nix store is forbidden (are you running nix-build inside the store?)`);
  }
  if (existsSync(gcRoot) || isSymlink(gcRoot)) {
    if (!isSymlink(gcRoot) || !readlinkSync(gcRoot).startsWith(store.storeDir + '/')) throw new CliError(`cannot create symlink '${gcRoot}'; already exists`);
  }
  makeSymlink(gcRoot, storePath);
  const stateDir = stateDirOf(store);
  if (stateDir) {
    const auto = path.join(stateDir, 'gcroots', 'auto');
    makeSymlink(path.join(auto, toNixBase32(createHash('sha1').update(gcRoot).digest())), gcRoot);
  }
  // The daemon keeps the indirect root in its own state directory.
  if (store instanceof DaemonStore) await store.addIndirectRoot(gcRoot);
  return gcRoot;
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

const GC_WARNING = "you did not specify '--add-root'; the result might be removed by the garbage collector";

/** What nix-store --realise prints per argument after the build: output paths, or the GC roots made for them. */
async function realisedPaths(args: CliArgs, store: Store, results: readonly TargetResult[], warnGc: () => void): Promise<string[]> {
  const lines: string[] = [];
  let rootNr = 0;
  for (const r of results) {
    rootNr++;
    const pairs: [string, string][] = 'path' in r.target ? [['', r.path]] : await targetOutputs(store, r);
    const printed = new Set<string>();
    for (const [name, p] of pairs) {
      let ret = p;
      if (!args.addRoot) warnGc();
      else {
        let rootName = args.addRoot;
        if (rootNr > 1) rootName += `-${rootNr}`;
        if (name && name !== 'out') rootName += `-${name}`;
        ret = await addPermRoot(store, p, rootName);
      }
      printed.add(ret);
    }
    lines.push(...[...printed].sort(byString));
  }
  return lines;
}

function printJson(value: unknown, newline = true): void {
  process.stdout.write(JSON.stringify(value) + (newline ? '\n' : ''));
}

async function build(args: CliArgs, store: Store): Promise<number> {
  const warn = warnStderr;
  const opts = engineOptions(args, store, warn);
  for (const name of [...args.unknownSettings].sort(byString)) warn(`unknown setting '${name}'`);
  const builders = args.options.get('builders');
  // The engine makes the builders from the setting, and closes them (their ssh sessions) when it is closed.
  if (builders) opts.builders = builders;
  let targets: BuildTarget[] = args.positional.map((a) =>
    args.command === 'ensure' ? { path: followLinksToStorePath(store.storeDir, a) } : parseTargetArg(store.storeDir, a),
  );
  // nix-store --realise with nothing to do succeeds quietly.
  if (targets.length === 0) return 0;
  const engine = new BuildEngine(opts);
  const mode = args.check ? 'check' : args.repair ? 'repair' : 'normal';
  const { display, closeSink } = openDisplay(args, engine);
  const trace =
    args.traceFile || args.report
      ? recordTrace(engine, {
          meta: { command: ['realise', ...process.argv.slice(2)].join(' '), maxJobs: opts.maxJobs ?? 1 },
        })
      : undefined;
  const topDrvs = new Set(targets.map((t) => ('drvPath' in t ? t.drvPath : t.path)));
  const failed: BuildResult[] = [];
  const printed = new Set<string>();
  // Failures of goals that are not targets are printed when they happen (Nix logs a goal's error then
  // when another goal waits for it); the targets' own errors come at the end. A failed build's error is
  // printed with its build-finished, before its slot goes to the next build (as Nix's buildDone).
  const printedBuilds = new Set<string>();
  const printFailure = (path: string, result: BuildResult): void => {
    if (topDrvs.has(path) || !result.errorMsg) return;
    printed.add(result.errorMsg);
    const { message, note } = failureLines({ path, result }, !display.showsLogs);
    if (note) display.line(note);
    display.line(formatError(message).trimEnd());
  };
  engine.on('build-finished', (e) => {
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
      if (missing && !args.quiet && printMissing) for (const l of await missingLines(store, missing)) display.line(l);
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
    if (ac.signal.aborted) throw new RealiseError('cancelled', 'interrupted by the user');
    const summary = summariseFailures(results, failed, !display.showsLogs);
    if (summary) {
      for (const n of summary.notes) writeStderr(n + '\n');
      for (const m of summary.messages) writeStderr(formatError(m));
      return summary.exitStatus;
    }
    if (args.json) {
      // The shape of `nix build --json`: one object per target.
      const out = [];
      for (const r of results) {
        out.push(
          'path' in r.target
            ? { path: r.path }
            : { drvPath: r.path, outputs: Object.fromEntries((await targetOutputs(store, r)).sort(([a], [b]) => byString(a, b))) },
        );
      }
      printJson(out);
      return 0;
    }
    // nix-store --realise --ignore-unknown builds what it can and prints nothing.
    if (args.ignoreUnknown) return 0;
    let warned = false;
    const lines = await realisedPaths(args, store, results, () => {
      if (!warned && (store instanceof LocalStore || store instanceof DaemonStore)) {
        warned = true;
        warn(GC_WARNING);
      }
    });
    for (const l of lines) process.stdout.write(l + '\n');
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
  const display = makeDisplay(engine, process.stderr, {
    format: args.logFormat as LogFormat | undefined,
    quiet: args.quiet,
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

/** `--trace-file` and `--report` of a run; a file that cannot be written is a warning (the build's status stands). */
async function writeTrace(args: CliArgs, t: TraceFile): Promise<void> {
  try {
    if (args.traceFile) writeFileSync(args.traceFile, JSON.stringify(t));
    if (args.report) writeFileSync(args.report, renderReport(t));
  } catch (e) {
    warnStderr(`cannot write the trace or report: ${(e as Error).message}`);
  }
}

/** `realise report TRACE [-o OUT]`: the HTML report of a trace file written by `--trace-file`. */
function report(args: CliArgs): number {
  if (args.positional.length !== 1) throw new UsageError("'report' needs one trace file");
  let t: TraceFile;
  try {
    t = JSON.parse(readFileSync(args.positional[0]!, 'utf8')) as TraceFile;
  } catch (e) {
    throw new CliError(`cannot read the trace file '${args.positional[0]}': ${(e as Error).message}`);
  }
  if (!Array.isArray(t?.traceEvents)) throw new CliError(`'${args.positional[0]}' is not a trace file written by realise (no traceEvents)`);
  t.otherData ??= { tool: 'realise', version: 1, startedAt: '' };
  const html = renderReport(t);
  if (args.addRoot) writeFileSync(args.addRoot, html);
  else process.stdout.write(html);
  return 0;
}

async function repair(args: CliArgs, store: Store): Promise<number> {
  const engine = new BuildEngine(engineOptions(args, store, warnStderr));
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

function pathInfoJson(i: PathInfo, closureSize?: number): Record<string, unknown> {
  // Same fields and order as `nix path-info --json` of Nix 2.8.
  return {
    path: i.path,
    narHash: i.narHash.toString('sri'),
    narSize: i.narSize,
    references: [...i.references].sort(byString),
    ...(i.ca ? { ca: i.ca } : {}),
    ...(closureSize !== undefined ? { closureSize } : {}),
    ...(i.deriver ? { deriver: i.deriver } : {}),
    ...(i.registrationTime ? { registrationTime: i.registrationTime } : {}),
    ...(i.ultimate ? { ultimate: true } : {}),
    ...(i.sigs?.length ? { signatures: [...i.sigs] } : {}),
  };
}

/** Sum of the NAR sizes of a path's closure (Nix's getClosureSize). */
async function closureSizeOf(store: Store, p: string): Promise<number> {
  let total = 0;
  for (const q of await store.computeClosure([p])) total += (await store.queryPathInfo(q))?.narSize ?? 0;
  return total;
}

/** nix path-info's size column: a tab and the byte count right-aligned in 11, or with -h one decimal and a unit. */
function formatSize(value: number, human: boolean): string {
  if (!human) return `\t${String(value).padStart(11)}`;
  const units = [' ', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
  let power = 0;
  let res = value;
  while (res > 1024 && power < units.length - 1) {
    power++;
    res /= 1024;
  }
  return `\t${res.toFixed(1).padStart(6)}${units[power]}`;
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

async function pathInfo(args: CliArgs, store: Store): Promise<number> {
  // --all: every valid path as it is (a .drv among them stands for itself).
  let all: Set<string> | undefined;
  if (args.all) {
    if (args.positional.length > 0) throw new UsageError("'--all' does not expect arguments");
    if (!store.queryAllValidPaths) throw new CliError('this store cannot list its valid paths');
    all = await store.queryAllValidPaths();
  }
  if (args.positional.length === 0 && !all) throw new CliError("'path-info' needs at least one store path");
  // As Nix 2.8's `nix path-info`: a .drv stands for its outputs (unless --derivation), the result is a
  // sorted set, and nothing is built.
  const roots = new Set<string>(all);
  for (const a of args.positional) {
    const p = followLinksToStorePath(store.storeDir, a);
    if (p.endsWith('.drv')) {
      // Nix reads every .drv argument first (its outputs are what the argument means).
      if (!(await store.isValidPath(p))) throw new CliError(`path '${p}' is not a valid store path`);
      let drv;
      try {
        drv = await readDerivationFromStore(store)(p);
      } catch (e) {
        throw new CliError(`error parsing derivation '${p}': ${e instanceof RealiseError ? e.shortMessage : (e as Error).message}`);
      }
      if (args.derivation) {
        roots.add(p);
        continue;
      }
      const registered = await store.queryDerivationOutputs(p).catch(() => new Map<string, string>());
      for (const [name, o] of derivationOutputsAndPaths(drv)) {
        const out = o.path ?? registered.get(name);
        if (out) roots.add(out);
      }
    } else if (args.derivation) {
      // As Nix's toDerivations: a store path stands for the (first) valid derivation that has it as an output.
      const [deriver] = (await store.queryValidDerivers?.(p)) ?? [];
      if (!deriver) throw new CliError(`'${p}' does not have a known deriver`);
      roots.add(deriver);
    } else {
      roots.add(p);
    }
  }
  // What Nix's printMissing says before the info (nothing is built: Realise::Nothing).
  const targets: BuildTarget[] = args.positional.map((a) => {
    const t = parseTargetArg(store.storeDir, a);
    return args.derivation ? { path: 'drvPath' in t ? t.drvPath : t.path } : t;
  });
  // With the command line's substituters, as Nix's printMissing asks them what would be fetched.
  const engine = new BuildEngine({ ...engineOptions(args, store, warnStderr), store });
  try {
    const missing = await engine.queryMissing(targets).catch(() => undefined);
    if (missing) for (const l of await missingLines(store, missing)) process.stderr.write(l + '\n');
  } finally {
    await engine.close();
  }
  let paths = [...roots].sort(byString);
  const valid = await store.queryValidPaths(paths);
  if (args.recursive) {
    // Nix computes the closure first, which fails on the first path that is not valid.
    const bad = paths.find((p) => !valid.has(p));
    if (bad) throw new CliError(`path '${bad}' is not valid`);
    const closure = await store.computeClosure(paths.filter((p) => valid.has(p)));

    paths = [...new Set([...closure, ...paths])].sort(byString);
  }
  if (args.json) {
    const out: Record<string, unknown>[] = [];
    for (const p of paths) {
      const info = await store.queryPathInfo(p);
      out.push(info ? pathInfoJson(info, args.closureSize ? await closureSizeOf(store, p) : undefined) : { path: p, valid: false });
    }
    // Nix 2.8 ends its JSON without a newline.
    printJson(out, false);
    return 0;
  }
  const width = Math.max(0, ...paths.map((p) => p.length));
  // The text listing is in Nix's topological order (dependencies first); the JSON one is sorted.
  for (const p of await dependenciesFirst(store, paths)) {
    const info = await store.queryPathInfo(p);
    if (!info) throw new CliError(`path '${p}' is not valid`);
    let line = p;
    if (args.size || args.closureSize || args.sigs) line += ' '.repeat(width - p.length);
    if (args.size) line += formatSize(info.narSize, args.humanReadable);
    if (args.closureSize) line += formatSize(await closureSizeOf(store, p), args.humanReadable);
    if (args.sigs) line += '\t' + [...(info.ultimate ? ['ultimate'] : []), ...(info.ca ? [`ca:${info.ca}`] : []), ...(info.sigs ?? [])].join(' ');
    process.stdout.write(line + '\n');
  }
  return 0;
}

async function copy(args: CliArgs, store: Store): Promise<number> {
  if (!args.to) throw new UsageError("'copy' needs '--to URL'");
  const secretKeyFile = args.options.get('secret-key');
  // Read before anything is copied, as Nix reads the key when it opens the cache.
  const secretKey = secretKeyFile ? readFileSync(secretKeyFile, 'utf8').trim() : undefined;
  const compression = args.options.get('compression');
  if (compression !== undefined && !isCompression(compression)) throw new CliError(`unknown compression method '${compression}'`);
  const paths = args.positional.map((a) => followLinksToStorePath(store.storeDir, a));
  // As nix copy: the paths are realised first (here: they must be valid, nothing is substituted).
  for (const p of paths) {
    if (!(await store.isValidPath(p))) throw new CliError(`path '${p}' is required, but there is no substituter that can build it`);
  }
  // nix copy's progress lines: how many paths of the closure the cache lacks, then each one copied.
  // Nix names the cache without its settings (`file:///c?compression=zstd` is 'file:///c').
  const shownUrl = args.to.replace(/\?.*$/, '');
  const dir = shownUrl.startsWith('file://') ? shownUrl.slice('file://'.length) : shownUrl.startsWith('/') ? shownUrl : undefined;
  if (dir !== undefined && !args.quiet) {
    const closure = await store.computeClosure(paths);
    const missing = [...closure].filter((p) => !existsSync(path.join(dir, `${path.basename(p).slice(0, 32)}.narinfo`)));
    process.stderr.write(`copying ${missing.length} paths...\n`);
  }
  const written = await copyToBinaryCache(store, paths, args.to, {
    ...(secretKey ? { secretKey } : {}),
    ...(compression ? { compression } : {}),
    onPath: (p: string, wrote: boolean) => {
      if (wrote && !args.quiet) process.stderr.write(`copying path '${p}' to '${shownUrl}'...\n`);
    },
  });
  if (args.json) printJson(written);
  return 0;
}

/** Nix's show-trace setting of the command being run (how `main` prints an error's trace). */
let showTrace = false;

async function run(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  // nix-store reads nix.conf and $NIX_CONFIG first; a malformed one ends it as a usage error.
  applyNixConf(args, readNixConf(process.env));
  showTrace = args.options.get('show-trace') === 'true';
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
  if (args.logFormat === 'internal-json') messageLogs.stderrJson = new NixJsonLog(undefined, (l) => process.stderr.write(l));
  if (args.command === 'report') return report(args);
  const store = await openStoreArg(args.store);
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
        return await build(args, store);
      case 'repair':
        return await repair(args, store);
      case 'path-info':
        return await pathInfo(args, store);
      case 'gc':
        return await gcCommand(args, store);
      case 'store':
        return await storeCommand(args, store);
      default:
        return await copy(args, store);
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
    } else if (e instanceof RealiseError) writeStderr(formatError(e.shortMessage));
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
