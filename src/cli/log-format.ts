/**
 * `--log-format raw|raw-with-logs|internal-json|bar|bar-with-logs` (as nix-store 2.8 takes it), and the
 * JSON log that may also go to a file or a Unix socket while the normal display runs (`--json-log-path`,
 * newer Nix's `json-log-path`). The CLI prints through a Display: the terminal one (ProgressDisplay), Nix's
 * JSON stream on stderr (JsonDisplay), or one of those teeing into a JSON log.
 */
import { closeSync, openSync, statSync, writeSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { attachNixJsonLog, LogLevel, NixJsonLog, type BuildEngine } from '../index.js';
import type { LogFormat } from './args.js';
import { ProgressDisplay, type DisplayOut } from './progress.js';

export type { LogFormat } from './args.js';

/** Nix's JSON stream of the CLI's own messages, written through `write` (`--log-format internal-json`). */
export function messagesAsJson(write: (line: string) => void): NixJsonLog {
  return new NixJsonLog(undefined, write);
}

/** What the CLI prints its own lines through (errors, warnings, what will be built). */
export interface Display {
  /** One whole message as it would go to stderr (`error: …`, `warning: …`, or plain). */
  line(s: string | Buffer): void;
  /** Several, as one line() each would print them. */
  lines(ls: readonly string[]): void;
  stop(): void;
  /** Whether builders' output is shown as it comes (then failures need not repeat the log's tail). */
  readonly showsLogs: boolean;
  /** The JSON logs this display writes, for a call's activities (startRealise/stopRealise). */
  readonly jsonLogs: readonly NixJsonLog[];
}

/** Nix's internal-json on stderr: every line of the CLI and every engine event as `@nix {…}`. */
export class JsonDisplay implements Display {
  readonly showsLogs = true;
  readonly jsonLogs: readonly NixJsonLog[];
  private readonly log: NixJsonLog;
  private readonly detachRaw: () => void;
  constructor(engine: BuildEngine, write: (s: string) => void) {
    this.log = attachNixJsonLog(engine, write, { errors: false });
    this.jsonLogs = [this.log];
    // What another program wrote to stderr (an ssh-ng:// machine's ssh) goes there as it is, not as a JSON
    // message: Nix's ssh inherits its stderr.
    const raw = (e: { message: string; level?: string }): void => {
      if (e.level === 'raw') write(e.message + '\n');
    };
    engine.on('warning', raw);
    this.detachRaw = () => engine.off('warning', raw);
  }
  line(s: string | Buffer): void {
    this.log.text(s.toString());
  }
  lines(ls: readonly string[]): void {
    for (const s of ls) this.log.text(s);
  }
  stop(): void {
    this.detachRaw();
    this.log.close();
  }
}

/** A display that also writes the JSON log to a sink (file or socket). */
export class TeeDisplay implements Display {
  readonly jsonLogs: readonly NixJsonLog[];
  private readonly log: NixJsonLog;
  constructor(
    private readonly inner: Display,
    engine: BuildEngine,
    private readonly sink: JsonSink,
  ) {
    this.log = attachNixJsonLog(engine, (l) => sink.write(l), { errors: false });
    this.jsonLogs = [...inner.jsonLogs, this.log];
  }
  get showsLogs(): boolean {
    return this.inner.showsLogs;
  }
  line(s: string | Buffer): void {
    this.inner.line(s);
    this.log.text(s.toString());
  }
  lines(ls: readonly string[]): void {
    this.inner.lines(ls);
    for (const s of ls) this.log.text(s);
  }
  stop(): void {
    this.inner.stop();
    this.log.close();
  }
}

/** Where `--json-log-path` writes: a file (created or truncated), or a Unix socket that is listening. */
export interface JsonSink {
  write(line: string): void;
  close(): Promise<void>;
}

export function openJsonSink(path: string): JsonSink {
  let isSocket = false;
  try {
    isSocket = statSync(path).isSocket();
  } catch {
    /* a new file */
  }
  if (isSocket) {
    const sock: Socket = createConnection(path);
    let failed: Error | undefined;
    sock.on('error', (e) => {
      failed = e;
    });
    return {
      write: (l) => {
        if (!failed) sock.write(l);
      },
      close: () =>
        new Promise((resolve) => {
          if (failed || sock.destroyed) resolve();
          else sock.end(() => resolve());
        }),
    };
  }
  // Lines are gathered and written together (at most 64 KiB or one turn of the event loop late).
  const fd = openSync(path, 'w');
  let pending: string[] = [];
  let size = 0;
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (!pending.length) return;
    writeSync(fd, pending.join(''));
    pending = [];
    size = 0;
  };
  return {
    write: (l) => {
      pending.push(l);
      size += l.length;
      if (size >= 65536) flush();
      else if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    close: async () => {
      flush();
      closeSync(fd);
    },
  };
}

export interface DisplayOptions {
  readonly format: LogFormat | undefined;
  readonly quiet?: boolean;
  /** Nix's verbosity (3, info, by default). */
  readonly verbosity?: number;
  readonly noBuildOutput?: boolean;
  readonly printBuildLogs?: boolean;
  readonly jsonSink?: JsonSink;
}

/** The display for a command's log format, teeing into `jsonSink` when one is given. */
export function makeDisplay(engine: BuildEngine, out: DisplayOut, o: DisplayOptions): Display {
  const inner: Display =
    o.format === 'internal-json'
      ? new JsonDisplay(engine, (s) => out.write(s))
      : new ProgressDisplay(engine, out, {
          quiet: o.quiet,
          ...(o.verbosity !== undefined ? { verbosity: o.verbosity } : {}),
          noBuildOutput: o.noBuildOutput,
          printBuildLogs: o.printBuildLogs || o.format === 'bar-with-logs' || o.format === 'raw-with-logs',
          plain: o.format === 'raw' || o.format === 'raw-with-logs',
          withoutLogs: o.format === 'raw' || o.format === 'bar',
          namePrefix: o.format === 'bar-with-logs',
        });
  return o.jsonSink ? new TeeDisplay(inner, engine, o.jsonSink) : inner;
}

/** Run `fn` as one activity of every JSON log of the display (Nix's "querying info about missing paths"). */
export async function asActivity<T>(d: Display, text: string, fn: () => Promise<T>): Promise<T> {
  const ids = d.jsonLogs.map((l) => [l, l.start(0, LogLevel.Debug, text, undefined)] as const);
  try {
    return await fn();
  } finally {
    for (const [l, id] of ids) l.stop(id);
  }
}
