/**
 * Collects a builder's output: the whole log (for the store's log dir), complete lines as events, and the
 * last N lines for error messages. As in Nix, lines are made of bytes: `\r` returns to the start of the
 * current line and what follows overwrites it byte by byte (so it may cut a UTF-8 character in two, as Nix
 * does); a line is decoded as UTF-8 only when it is complete. Lines starting with `@nix ` are Nix's
 * structured log messages: kept in the log, not reported as lines.
 */
export class LogCollector {
  private readonly chunks: Buffer[] = [];
  size = 0;
  /** The current line, one char per byte (latin1). */
  private line = '';
  private pos = 0;
  private readonly tailLines: string[] = [];

  constructor(
    private readonly opts: {
      logLines: number;
      onLine: (line: string, bytes: Buffer) => void;
      /** A `@nix {…}` line (its JSON text). */
      onStructured?: (json: string) => void;
    },
  ) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    this.consume(chunk.toString('latin1'));
  }

  private consume(s: string): void {
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c === 10 || c === 13) {
        this.write(s.slice(start, i));
        start = i + 1;
        if (c === 10) this.flush();
        else this.pos = 0;
      }
    }
    this.write(s.slice(start));
  }

  private write(part: string): void {
    if (!part) return;
    this.line = this.pos === this.line.length ? this.line + part : this.line.slice(0, this.pos) + part + this.line.slice(this.pos + part.length);
    this.pos += part.length;
  }

  private flush(): void {
    const bytes = Buffer.from(this.line, 'latin1');
    const l = bytes.toString('utf8');
    const structured = this.line.startsWith('@nix ');
    this.line = '';
    this.pos = 0;
    // As Nix's handleJSONLogMessage: `@nix {…}` lines (activities, progress, messages of built-ins) stay in
    // the log file but are not log lines (no event, not in the tail).
    if (structured) {
      this.opts.onStructured?.(l.slice('@nix '.length));
      return;
    }
    this.opts.onLine(l, bytes);
    if (this.opts.logLines > 0) {
      this.tailLines.push(l);
      if (this.tailLines.length > this.opts.logLines) this.tailLines.shift();
    }
  }

  end(): void {
    if (this.line) this.flush();
  }

  tail(): string[] {
    return [...this.tailLines];
  }

  text(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/**
 * What Nix's handleJSONLogMessage logs of a builder's `@nix {"action":"msg",…}` line: the message at its
 * level (`verbosity`; 0 error … 3 info are shown at Nix's default verbosity, without a prefix), or
 * undefined for anything else (activities, phases, bad JSON).
 */
export function builderMessage(json: string): { message: string; level: 'plain' | 'info'; verbosity: number } | undefined {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    return undefined;
  }
  const { action, level, msg } = (o ?? {}) as { action?: unknown; level?: unknown; msg?: unknown };
  if (action !== 'msg' || typeof msg !== 'string' || typeof level !== 'number') return undefined;
  return { message: msg, level: level >= 3 ? 'info' : 'plain', verbosity: level };
}
