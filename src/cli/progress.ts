/**
 * Live progress on a terminal (a status line: builds and substitutions done/running, current log line);
 * on a non-terminal (or with `-L`), build log lines are passed through as nix-store prints them.
 * Activity lines use Nix 2.8's words: "building '…'...", "checking outputs of '…'...", "repairing outputs
 * of '…'...", "building '…' (round 1/2)...", "… on 'MACHINE'...", "copying path '…' from '…'...",
 * "resolved derivation: '…' -> '…'...", "running post-build-hook '…'...".
 */
import {
  buildActivityText,
  copyPathMessage,
  LogLevel,
  type BuildEngine,
  type BuildEngineEventName,
  type BuildEngineEvents,
  type NixJsonLog,
  type RemoteLogEvent,
  type RemoteStep,
} from '../index.js';
import { filterLogMessage, formatError, formatWarning, NEEDS_FILTER } from './report.js';

const NEWLINE = Buffer.from('\n');

export interface ProgressDisplayOptions {
  /** `--quiet`: no activity lines. */
  readonly quiet?: boolean;
  /**
   * Nix's verbosity (3, info, by default): from 4 (`-v`, talkative) the substituters' queries and downloads
   * ("querying info about '…' on '…'...", "downloading '…'..."), from 5 (`-vv`, chatty) "substitution of
   * path '…' succeeded", as nix-store prints them.
   */
  readonly verbosity?: number;
  /** `-Q`: no build output at all. */
  readonly noBuildOutput?: boolean;
  /** `-L`: build output as lines even on a terminal. */
  readonly printBuildLogs?: boolean;
  /** `--log-format raw`: no status line, even on a terminal. */
  readonly plain?: boolean;
  /**
   * `--log-format raw` or `bar`: builders' output is not shown off a terminal either (Nix's loggers of
   * those formats print no build logs), unless `printBuildLogs`.
   */
  readonly withoutLogs?: boolean;
  /**
   * `--log-format bar-with-logs`: each line of builders' output (and the post-build hook's) as Nix's
   * progress bar prints it, after the derivation's name (`hello> …`, `hello (post)> …`), without its
   * trailing blanks, and not at all when it is blank.
   */
  readonly namePrefix?: boolean;
}

/** Nix's DrvName(…).name of a .drv path: its name up to the first `-` that a letter does not follow. */
function drvBaseName(drvPath: string): string {
  const name = drvPath.slice(drvPath.lastIndexOf('/') + 1 + 33).replace(/\.drv$/, '');
  const version = /-[^a-zA-Z]/.exec(name);
  return version ? name.slice(0, version.index) : name;
}

/** A log line's bytes without the blanks Nix's chomp takes from its end (space, tab, CR, LF). */
function chomp(b: Buffer): Buffer {
  let end = b.length;
  while (end > 0 && (b[end - 1] === 0x20 || b[end - 1] === 0x09 || b[end - 1] === 0x0d || b[end - 1] === 0x0a)) end--;
  return b.subarray(0, end);
}

/** Nix's DerivationGoal::started message. */
export function buildStartedMessage(e: { drvPath: string; round: number; rounds: number; machine?: string; mode: string }): string {
  return buildActivityText(e) + '...';
}

/**
 * The names Nix's progress bar puts before a derivation's lines (`hello> …`, its post-build hook's
 * `hello (post)> …`; faint on a terminal), each made on the derivation's first line and dropped when it
 * has no more lines to come (`drop`), so a long run holds the prefixes of the derivations logging now only.
 */
export class LinePrefixes {
  private readonly made = { '> ': new Map<string, Buffer>(), ' (post)> ': new Map<string, Buffer>() };

  constructor(private readonly faint: boolean) {}

  /** The line after its derivation's prefix, without its trailing blanks; undefined for a blank line. */
  prefixed(drvPath: string, suffix: LinePrefixSuffix, line: Buffer): Buffer | undefined {
    const text = chomp(line);
    if (text.length === 0) return undefined;
    const made = this.made[suffix];
    let prefix = made.get(drvPath);
    if (!prefix) {
      const name = `${drvBaseName(drvPath)}${suffix}`;
      prefix = Buffer.from(this.faint ? `\x1b[2m${name}\x1b[0m` : name);
      made.set(drvPath, prefix);
    }
    return Buffer.concat([prefix, text]);
  }

  drop(drvPath: string, suffix: LinePrefixSuffix): void {
    this.made[suffix].delete(drvPath);
  }

  /** How many prefixes are held. */
  get size(): number {
    return this.made['> '].size + this.made[' (post)> '].size;
  }
}
export type LinePrefixSuffix = '> ' | ' (post)> ';

/** Where a display writes: stderr (src/cli/stdio.ts's, or a stream). */
export interface DisplayOut {
  write(data: string | Uint8Array): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number | undefined;
}

export class ProgressDisplay {
  private status = '';
  /** The derivations' names before their lines, with `namePrefix`. */
  private readonly prefixes: LinePrefixes;
  private lastLine = '';
  private readonly tty: boolean;
  private stopped = false;
  private readonly unsubscribe: (() => void)[] = [];

  /** Whether builders' output is shown as it comes (then failures need not repeat the log's tail). */
  readonly showsLogs: boolean;
  readonly jsonLogs: readonly NixJsonLog[] = [];

  constructor(
    engine: BuildEngine,
    private readonly out: DisplayOut,
    opts: ProgressDisplayOptions = {},
  ) {
    this.tty = !!out.isTTY && !opts.plain;
    this.prefixes = new LinePrefixes(this.tty);
    this.showsLogs = !opts.noBuildOutput && (!!opts.printBuildLogs || (!this.tty && !opts.withoutLogs));
    const info = (s: string) => {
      if (!opts.quiet) this.line(s);
    };
    const onStart = (e: Parameters<typeof buildStartedMessage>[0]) => info(buildStartedMessage(e));
    // Nix's progress bar names the derivation before each line (faint on a terminal).
    const prefixes = this.prefixes;
    const prefixed = prefixes.prefixed.bind(prefixes);
    const onLog = (e: { drvPath: string; line: string; bytes?: Buffer }) => {
      if (this.showsLogs && opts.namePrefix) {
        const l = prefixed(e.drvPath, '> ', e.bytes ?? Buffer.from(e.line));
        if (l) this.line(l);
      } else if (this.showsLogs) this.line(e.bytes ?? e.line);
      else if (this.tty && !opts.noBuildOutput) {
        this.lastLine = e.line;
        this.render();
      }
    };
    const onWarn = (e: Parameters<BuildEngineEvents['warning']>[0]) => {
      // As Nix's logger: a builder's message is shown when its level is at most the display's verbosity.
      if (e.verbosity !== undefined && e.verbosity > (opts.verbosity ?? 3)) return;
      // In Nix's colours where the message has them (a display off a terminal filters them, as Nix's).
      const message = e.colouredMessage ?? e.message;
      if (e.level === 'info') info(message);
      else if (e.level === 'raw') this.rawLine(message);
      else this.line(e.level === 'plain' ? message : (e.level === 'error' ? formatError(message) : formatWarning(message)).trimEnd());
    };
    const onSubst = (e: { path: string; substituter: string; from?: string }) => info(`copying path '${e.from ?? e.path}' from '${e.substituter}'...`);
    // Shown even with --quiet, as Nix logs it at warning level.
    const onWaiting = (e: { lockedPaths: readonly string[] }) => this.line(`waiting for lock on ${e.lockedPaths.map((p) => `'${p}'`).join(', ')}...`);
    const onResolved = (e: { drvPath: string; resolvedPath: string }) => info(`resolved derivation: '${e.drvPath}' -> '${e.resolvedPath}'...`);
    const onHook = (e: { hook: string }) => info(`running post-build-hook '${e.hook}'...`);
    // As Nix's logger: the hook's output goes where builders' output goes, each line prefixed.
    const onHookLog = (e: { drvPath: string; line: string }) => {
      if (this.showsLogs && opts.namePrefix) {
        const l = prefixed(e.drvPath, ' (post)> ', Buffer.from(e.line));
        if (l) this.line(l);
      } else if (this.showsLogs) this.line(`post-build-hook: ${e.line}`);
    };
    // A remote build's copies, as Nix's hook prints them (its CopyPaths and CopyPath activities).
    const onRemoteStep = (e: { store: string; step: RemoteStep; phase: 'start' | 'end' }) => {
      if (e.phase !== 'start') return;
      if (e.step.kind === 'copy-paths') info(`copying ${e.step.paths.length} paths...`);
      else if (e.step.kind === 'copy-path') info(`${copyPathMessage(e.step.path, e.step.direction, e.store)}...`);
    };
    // The machine's own activities that Nix's hook prints (at the default verbosity): its `building '…'`.
    const onRemoteLog = (e: { event: RemoteLogEvent }) => {
      if (e.event.type === 'start-activity' && e.event.level <= LogLevel.Info && e.event.text) info(`${e.event.text}...`);
    };
    // Only the events this display shows are listened to: the engine makes no event nobody listens to (a
    // build's log lines, progress snapshots).
    const on = <E extends BuildEngineEventName>(event: E, fn: BuildEngineEvents[E]) => this.listen(engine, event, fn);
    if (!opts.quiet) {
      on('build-started', onStart);
      on('substitution-started', onSubst);
      on('remote-step', onRemoteStep);
      on('remote-log', onRemoteLog);
      on('derivation-resolved', onResolved);
      on('post-build-hook-started', onHook);
    }
    // A builder's own activity (its FileTransfer), as Nix's logger prints an activity's start.
    on('builder-activity', (e) => {
      if (e.event.action === 'start' && e.event.level <= (opts.verbosity ?? 3) && e.event.text) this.line(`${e.event.text}...`);
    });
    if (this.showsLogs || (this.tty && !opts.noBuildOutput)) on('build-log', onLog);
    on('warning', onWarn);
    on('build-waiting', onWaiting);
    if (this.tty) on('progress', () => this.render());
    this.showVerbose(engine, opts.verbosity ?? 3);
    if (this.showsLogs) on('post-build-hook-log', onHookLog);
    if (this.showsLogs && opts.namePrefix) {
      // A builder's lines end with its build (a round's: the next round makes its prefix again); the
      // post-build hook runs after that, within the derivation's goal.
      on('build-finished', (e) => prefixes.drop(e.drvPath, '> '));
      on('goal-finished', (e) => void (e.kind === 'derivation' && prefixes.drop(e.path, ' (post)> ')));
    }
    this.engine = engine;
  }
  private readonly engine: BuildEngine;

  private listen<E extends BuildEngineEventName>(engine: BuildEngine, event: E, fn: BuildEngineEvents[E]): void {
    // (eventemitter3's types cannot relate a generic event's name to its listener: checked by this signature.)
    engine.on(event, fn as never);
    this.unsubscribe.push(() => engine.off(event, fn as never));
  }

  /** What nix-store adds at -v (talkative) and -vv (chatty) about substitutions. */
  private showVerbose(engine: BuildEngine, verbosity: number): void {
    if (verbosity >= 4) {
      this.listen(engine, 'query-started', (e) => this.line(`querying info about '${e.path}' on '${e.substituter}'...`));
      this.listen(engine, 'download-started', (e) => this.line(`downloading '${e.url}'...`));
    }
    if (verbosity >= 5) this.listen(engine, 'substitution-finished', (e) => void (e.ok && this.line(`substitution of path '${e.path}' succeeded`)));
  }

  /** Print a whole line to stderr (above the status line on a terminal), filtered as Nix's logger does. */
  line(s: string | Buffer): void {
    if (this.stopped) return;
    this.clear();
    // A message with nothing to filter (as every `building '…'...` line) is written as it is.
    if (typeof s === 'string' && !NEEDS_FILTER.test(s)) this.out.write(s + '\n');
    else this.out.write(Buffer.concat([filterLogMessage(s, this.tty), NEWLINE]));
    this.render();
  }

  /** A line another program wrote, as it wrote it (no filtering). */
  private rawLine(s: string): void {
    if (this.stopped) return;
    this.clear();
    this.out.write(s + '\n');
    this.render();
  }

  /**
   * Several whole messages, as many line() calls write them; off a terminal in one write when none needs
   * filtering (a pipe gets one system call: the 200 paths of "these 200 derivations will be built:").
   */
  lines(ls: readonly string[]): void {
    if (this.stopped || ls.length === 0) return;
    if (this.tty || ls.some((s) => NEEDS_FILTER.test(s))) for (const s of ls) this.line(s);
    else this.out.write(ls.join('\n') + '\n');
  }

  private clear(): void {
    if (this.tty && this.status) this.out.write('\r\x1b[K');
  }

  private render(): void {
    if (!this.tty || this.stopped) return;
    const p = this.engine.progress();
    const cols = this.out.columns || 80;
    let s = `[${p.builds.done}/${p.builds.running} built, ${p.substitutions.done}/${p.substitutions.running} copied]`;
    if (this.lastLine) s += ' ' + this.lastLine.replace(/\s+/g, ' ');
    s = s.slice(0, cols - 1);
    this.clear();
    this.out.write(s);
    this.status = s;
  }

  stop(): void {
    if (this.stopped) return;
    this.clear();
    this.stopped = true;
    for (const u of this.unsubscribe) u();
  }
}
