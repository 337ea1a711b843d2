/**
 * Live progress on a terminal (a status line: builds and substitutions done/running, current log line);
 * on a non-terminal (or with `-L`), build log lines are passed through as nix-store prints them.
 * Activity lines use Nix 2.8's words: "building '…'...", "checking outputs of '…'...", "repairing outputs
 * of '…'...", "building '…' (round 1/2)...", "… on 'MACHINE'...", "copying path '…' from '…'...",
 * "resolved derivation: '…' -> '…'...", "running post-build-hook '…'...".
 */
import { buildActivityText, copyPathMessage, LogLevel, type BuildEngine, type NixJsonLog, type RemoteLogEvent, type RemoteStep } from '../index.js';
import { filterLogMessage, formatError, formatWarning } from './report.js';

const NEWLINE = Buffer.from('\n');

export interface ProgressDisplayOptions {
  /** `--quiet`: no activity lines. */
  readonly quiet?: boolean;
  /** `-Q`: no build output at all. */
  readonly noBuildOutput?: boolean;
  /** `-L`: build output as lines even on a terminal. */
  readonly printBuildLogs?: boolean;
  /** `--log-format raw`: no status line, even on a terminal. */
  readonly plain?: boolean;
}

/** Nix's DerivationGoal::started message. */
export function buildStartedMessage(e: { drvPath: string; round: number; rounds: number; machine?: string; mode: string }): string {
  return buildActivityText(e) + '...';
}

export class ProgressDisplay {
  private status = '';
  private lastLine = '';
  private readonly tty: boolean;
  private stopped = false;
  private readonly unsubscribe: (() => void)[] = [];

  /** Whether builders' output is shown as it comes (then failures need not repeat the log's tail). */
  readonly showsLogs: boolean;
  readonly jsonLogs: readonly NixJsonLog[] = [];

  constructor(
    engine: BuildEngine,
    private readonly out: NodeJS.WriteStream,
    opts: ProgressDisplayOptions = {},
  ) {
    this.tty = !!out.isTTY && !opts.plain;
    this.showsLogs = !opts.noBuildOutput && (!this.tty || !!opts.printBuildLogs);
    const info = (s: string) => {
      if (!opts.quiet) this.line(s);
    };
    const onStart = (e: Parameters<typeof buildStartedMessage>[0]) => info(buildStartedMessage(e));
    const onLog = (e: { line: string; bytes?: Buffer }) => {
      if (this.showsLogs) this.line(e.bytes ?? e.line);
      else if (this.tty && !opts.noBuildOutput) {
        this.lastLine = e.line;
        this.render();
      }
    };
    const onWarn = (e: { message: string; level?: 'warning' | 'error' | 'plain' | 'info' }) => {
      if (e.level === 'info') info(e.message);
      else this.line(e.level === 'plain' ? e.message : (e.level === 'error' ? formatError(e.message) : formatWarning(e.message)).trimEnd());
    };
    const onSubst = (e: { path: string; substituter: string; from?: string }) => info(`copying path '${e.from ?? e.path}' from '${e.substituter}'...`);
    // Shown even with --quiet, as Nix logs it at warning level.
    const onWaiting = (e: { lockedPaths: readonly string[] }) => this.line(`waiting for lock on ${e.lockedPaths.map((p) => `'${p}'`).join(', ')}...`);
    const onResolved = (e: { drvPath: string; resolvedPath: string }) => info(`resolved derivation: '${e.drvPath}' -> '${e.resolvedPath}'...`);
    const onHook = (e: { hook: string }) => info(`running post-build-hook '${e.hook}'...`);
    // As Nix's logger: the hook's output goes where builders' output goes, each line prefixed.
    const onHookLog = (e: { line: string }) => {
      if (this.showsLogs) this.line(`post-build-hook: ${e.line}`);
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
    const onProgress = () => this.render();
    engine.on('build-started', onStart);
    engine.on('build-log', onLog);
    engine.on('warning', onWarn);
    engine.on('substitution-started', onSubst);
    engine.on('build-waiting', onWaiting);
    engine.on('progress', onProgress);
    engine.on('remote-step', onRemoteStep);
    engine.on('remote-log', onRemoteLog);
    engine.on('derivation-resolved', onResolved);
    engine.on('post-build-hook-started', onHook);
    engine.on('post-build-hook-log', onHookLog);
    this.unsubscribe.push(
      () => engine.off('derivation-resolved', onResolved),
      () => engine.off('post-build-hook-started', onHook),
      () => engine.off('post-build-hook-log', onHookLog),
      () => engine.off('build-started', onStart),
      () => engine.off('build-log', onLog),
      () => engine.off('warning', onWarn),
      () => engine.off('substitution-started', onSubst),
      () => engine.off('build-waiting', onWaiting),
      () => engine.off('progress', onProgress),
      () => engine.off('remote-step', onRemoteStep),
      () => engine.off('remote-log', onRemoteLog),
    );
    this.engine = engine;
  }
  private readonly engine: BuildEngine;

  /** Print a whole line to stderr (above the status line on a terminal), filtered as Nix's logger does. */
  line(s: string | Buffer): void {
    if (this.stopped) return;
    this.clear();
    this.out.write(Buffer.concat([filterLogMessage(s, this.tty), NEWLINE]));
    this.render();
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
