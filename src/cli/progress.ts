/**
 * Live progress on a terminal (a status line: builds and substitutions done/running, current log line);
 * on a non-terminal, build log lines are passed through as Nix does.
 */
import type { BuildEngine } from '../index.js';

export class ProgressDisplay {
  private status = '';
  private lastLine = '';
  private readonly tty: boolean;
  private stopped = false;
  private readonly unsubscribe: (() => void)[] = [];

  constructor(engine: BuildEngine, private readonly out: NodeJS.WriteStream) {
    this.tty = !!out.isTTY;
    const onStart = (e: { drvPath: string }) => this.line(`building '${e.drvPath}'...`);
    const onLog = (e: { line: string }) => { if (this.tty) { this.lastLine = e.line; this.render(); } else this.out.write(e.line + '\n'); };
    const onWarn = (e: { message: string }) => this.line(`warning: ${e.message}`);
    const onSubst = (e: { path: string; substituter: string }) => this.line(`copying path '${e.path}' from '${e.substituter}'...`);
    const onProgress = () => this.render();
    engine.on('build-started', onStart);
    engine.on('build-log', onLog);
    engine.on('warning', onWarn);
    engine.on('substitution-started', onSubst);
    engine.on('progress', onProgress);
    this.unsubscribe.push(
      () => engine.off('build-started', onStart), () => engine.off('build-log', onLog), () => engine.off('warning', onWarn),
      () => engine.off('substitution-started', onSubst), () => engine.off('progress', onProgress),
    );
    this.engine = engine;
  }
  private readonly engine: BuildEngine;

  private line(s: string): void {
    if (this.stopped) return;
    this.clear();
    this.out.write(s + '\n');
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
