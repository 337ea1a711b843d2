/**
 * Collects a builder's output: the whole log (for the store's log dir), complete lines as events, and the
 * last N lines for error messages. `\r` returns to the start of the current line, as in Nix.
 */
export class LogCollector {
  private readonly chunks: Buffer[] = [];
  size = 0;
  private line = '';
  private pos = 0;
  private readonly tailLines: string[] = [];
  private readonly decoder = new TextDecoder('utf-8', { fatal: false });

  constructor(private readonly opts: { logLines: number; onLine: (line: string) => void }) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const s = this.decoder.decode(chunk, { stream: true });
    this.consume(s);
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
    this.line = this.line.slice(0, this.pos) + part + this.line.slice(this.pos + part.length);
    this.pos += part.length;
  }

  private flush(): void {
    const l = this.line;
    this.line = '';
    this.pos = 0;
    this.opts.onLine(l);
    if (this.opts.logLines > 0) {
      this.tailLines.push(l);
      if (this.tailLines.length > this.opts.logLines) this.tailLines.shift();
    }
  }

  end(): void {
    this.consume(this.decoder.decode());
    if (this.line) this.flush();
  }

  tail(): string[] {
    return [...this.tailLines];
  }

  text(): Buffer {
    return Buffer.concat(this.chunks);
  }
}
