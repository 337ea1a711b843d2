import { jsonSyntaxError } from './json-syntax.js';

/**
 * Collects a builder's output: the whole log (for the store's log dir), complete lines as events, and the
 * last N lines for error messages. As in Nix, lines are made of bytes: `\r` returns to the start of the
 * current line and what follows overwrites it byte by byte (so it may cut a UTF-8 character in two, as Nix
 * does); a line is decoded as UTF-8 only when it is complete. Lines starting with `@nix ` are Nix's
 * structured log messages: kept in the log, not reported as lines (unless they are not JSON).
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
      /**
       * A `@nix` line that is not JSON (with `onStructured`): Nix's error message for it, in its JSON
       * library's words. The line is then a log line, as Nix keeps it.
       */
      onBadStructured?: (message: string) => void;
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
    // Checked on the bytes, as Nix's JSON library reads them (its positions count bytes).
    const bad = structured && this.opts.onStructured ? jsonSyntaxError(this.line.slice('@nix '.length)) : undefined;
    this.line = '';
    this.pos = 0;
    // As Nix's handleJSONLogMessage: `@nix {…}` lines (activities, progress, messages of built-ins) stay in
    // the log file but are not log lines (no event, not in the tail); one that is not JSON is reported
    // (parseJSONMessage's error) and is a log line.
    // The message quotes the line's bytes: decoded as the line is.
    if (bad !== undefined) this.opts.onBadStructured?.(`bad JSON log message from builder: ${Buffer.from(bad, 'latin1').toString('utf8')}`);
    else if (structured) {
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
 * What a builder's `@nix {…}` line asks of Nix's logger, as Nix's handleJSONLogMessage for a local
 * (untrusted) builder reads it: a message at its level (`msg`: shown at Nix's default verbosity from 0
 * to 3, without a prefix), a phase of the build (`setPhase`: Nix's SetPhase result on the build's
 * activity), or an activity of the builder's own: `start` of a FileTransfer (Nix ignores other activity
 * types from a builder), `result` and `stop` naming the builder's id for it. Undefined for what Nix does
 * nothing with (another action, another activity type, bad JSON) and for a line missing a field.
 */
export type BuilderLogMessage =
  { readonly action: 'msg'; readonly message: string; readonly level: 'plain' | 'info'; readonly verbosity: number } | BuilderActivityEvent;

/** A builder's `@nix` line that touches activities (the `builder-activity` event). */
export type BuilderActivityEvent =
  | { readonly action: 'setPhase'; readonly phase: string }
  | {
      readonly action: 'start';
      /** The builder's id for the activity (its own numbering; a log gives it an id of its own). */
      readonly id: number;
      readonly activityType: number;
      readonly level: number;
      readonly text: string;
      readonly fields: readonly (string | number)[];
    }
  | { readonly action: 'stop'; readonly id: number }
  | { readonly action: 'result'; readonly id: number; readonly resultType: number; readonly fields: readonly (string | number)[] };

/** Nix's ActivityType FileTransfer: the one activity a local builder may start. */
const FILE_TRANSFER = 101;

/** A builder's `@nix` line (the JSON text after the prefix) as Nix's logger takes it (see BuilderLogMessage). */
export function builderLogMessage(json: string): BuilderLogMessage | undefined {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return undefined;
  const m = o as Record<string, unknown>;
  const num = (k: string) => (typeof m[k] === 'number' ? (m[k] as number) : undefined);
  const str = (k: string) => (typeof m[k] === 'string' ? (m[k] as string) : undefined);
  const level = num('level');
  switch (m.action) {
    case 'msg': {
      const msg = str('msg');
      if (msg === undefined || level === undefined) return undefined;
      return { action: 'msg', message: msg, level: level >= 3 ? 'info' : 'plain', verbosity: level };
    }
    case 'setPhase': {
      const phase = str('phase');
      return phase === undefined ? undefined : { action: 'setPhase', phase };
    }
    case 'start': {
      const [id, activityType, text, fields] = [num('id'), num('type'), str('text'), logFields(m.fields)];
      if (id === undefined || activityType !== FILE_TRANSFER || level === undefined || text === undefined || !fields) return undefined;
      return { action: 'start', id, activityType, level, text, fields };
    }
    case 'stop': {
      const id = num('id');
      return id === undefined ? undefined : { action: 'stop', id };
    }
    case 'result': {
      const [id, resultType, fields] = [num('id'), num('type'), logFields(m.fields)];
      if (id === undefined || resultType === undefined || !fields) return undefined;
      return { action: 'result', id, resultType, fields };
    }
    default:
      return undefined;
  }
}

/** Nix's getFields: a list of strings and integers. */
function logFields(v: unknown): (string | number)[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.every((f) => typeof f === 'string' || Number.isInteger(f)) ? (v as (string | number)[]) : undefined;
}
