import { BuilderLogMessageError } from './errors.js';
import { jsonSyntaxError } from './json-syntax.js';
import { hintfmt } from '../store/nix-message.js';

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
  /** No more lines are reported (the call ended on one of them, as Nix stops reading the builder). */
  private stopped = false;

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
        if (this.stopped) return;
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
    if (this.line && !this.stopped) this.flush();
  }

  /** Report no more lines: the rest of the builder's output only goes to the log. */
  stop(): void {
    this.stopped = true;
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
 * nothing with (another action, another activity type, bad JSON); a line missing a field Nix reads (or
 * with one of another type) is a BuilderLogMessageError (builderLogMessage).
 */
export type BuilderLogMessage = { readonly action: 'msg'; readonly message: string; readonly verbosity: number } | BuilderActivityEvent;

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

/**
 * A builder's `@nix` line (the JSON text after the prefix) as Nix's logger takes it (see BuilderLogMessage),
 * or, for JSON without a field Nix reads (or with one of another type), the error Nix's handleJSONLogMessage
 * throws out of the build, which ends Nix's call: its JSON library's type error, in its words, for the
 * first field it reads (in the order Nix 2.8 reads them), or Nix's own for a log field of another type.
 * `activities`: the ids of the builder's activities Nix knows of (started, not stopped), kept up to date
 * here as Nix's map of them; a `result` is read only for one of them.
 */
export function builderLogMessage(json: string, activities: Set<number>): BuilderLogMessage | BuilderLogMessageError | undefined {
  let o: unknown;
  try {
    o = JSON.parse(markFloats(json));
  } catch {
    return undefined;
  }
  // Nix indexes the value by name: null becomes an empty object, another value that is no object is an error.
  if (o !== null && (typeof o !== 'object' || Array.isArray(o) || isFloat(o)))
    return typeError(305, `cannot use operator[] with a string argument with ${jsonTypeName(o)}`);
  const m = (o ?? {}) as Record<string, unknown>;
  try {
    const action = want(m.action, 'string');
    switch (action) {
      case 'msg': {
        const message = want(m.msg, 'string');
        const level = want(m.level, 'number');
        return { action: 'msg', message, verbosity: level };
      }
      case 'setPhase':
        return { action: 'setPhase', phase: want(m.phase, 'string') };
      case 'start': {
        const activityType = want(m.type, 'number');
        // Nix ignores other activity types from a builder, without reading their fields.
        if (activityType !== FILE_TRANSFER) return undefined;
        // The order Nix 2.8 reads them in: the fields, the level and the id, then the text.
        const fields = logFields(m.fields);
        const level = want(m.level, 'number');
        const id = want(m.id, 'number');
        const text = want(m.text, 'string');
        activities.add(id);
        return { action: 'start', id, activityType, level, text, fields };
      }
      case 'stop': {
        const id = want(m.id, 'number');
        activities.delete(id);
        return { action: 'stop', id };
      }
      case 'result': {
        // Nix reads the type and the fields of a result only for an activity of the builder's it knows of:
        // the fields first, then the type (the order Nix 2.8's compiler evaluates them in).
        const id = want(m.id, 'number');
        if (!activities.has(id)) return undefined;
        const fields = logFields(m.fields);
        return { action: 'result', id, resultType: want(m.type, 'number'), fields };
      }
      default:
        return undefined;
    }
  } catch (e) {
    if (e instanceof BuilderLogMessageError) return e;
    throw e;
  }
}

/**
 * The key of the object that stands for a float in the parsed line (markFloats). JSON.parse makes `1.0` and
 * `1` the same number; Nix's JSON library keeps a float (`1.0`, `1e2`) a float, which no log field may be.
 */
const FLOAT_KEY = '\u0000float';

/** `json` with every number written as a float (a `.`, an exponent) turned into `{"<FLOAT_KEY>": number}`. */
function markFloats(json: string): string {
  if (!/[0-9][.eE]/.test(json)) return json;
  let out = '';
  let from = 0;
  for (let i = 0; i < json.length;) {
    const c = json[i]!;
    if (c === '"') {
      for (i++; i < json.length && json[i] !== '"';) i += json[i] === '\\' ? 2 : 1;
      i++;
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      let j = i + 1;
      while (j < json.length && /[0-9.eE+-]/.test(json[j]!)) j++;
      if (/[.eE]/.test(json.slice(i, j))) {
        out += `${json.slice(from, i)}{"\\u0000float":${json.slice(i, j)}}`;
        from = j;
      }
      i = j;
    } else i++;
  }
  return out + json.slice(from);
}

function isFloat(v: unknown): v is Record<typeof FLOAT_KEY, number> {
  return typeof v === 'object' && v !== null && FLOAT_KEY in v;
}

/**
 * A field's value as the type Nix converts it to (a number to an integer, a float truncated as C++ does),
 * else the JSON library's type error (thrown, caught above).
 */
function want(v: unknown, type: 'string'): string;
function want(v: unknown, type: 'number'): number;
function want(v: unknown, type: 'string' | 'number'): string | number {
  if (type === 'number' && isFloat(v)) return Math.trunc(v[FLOAT_KEY]);
  if (typeof v === type) return type === 'number' ? Math.trunc(v as number) : (v as string);
  throw typeError(302, `type must be ${type}, but is ${jsonTypeName(v)}`);
}

function typeError(id: number, what: string): BuilderLogMessageError {
  return new BuilderLogMessageError(`[json.exception.type_error.${id}] ${what}`);
}

/** The JSON library's name of a value's type. */
function jsonTypeName(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return 'array';
  if (isFloat(v)) return 'number';
  return typeof v === 'object' ? 'object' : typeof v;
}

/**
 * Nix's getFields: each element of the value (an array's, an object's values, a single value itself; none
 * for null) must be a string or a non-negative integer; else Nix's error names the JSON type's number.
 */
function logFields(v: unknown): (string | number)[] {
  const items = v === null || v === undefined ? [] : Array.isArray(v) ? v : typeof v === 'object' && !isFloat(v) ? Object.values(v) : [v];
  for (const f of items) {
    if (typeof f === 'string' || (Number.isInteger(f) && (f as number) >= 0)) continue;
    // nlohmann/json's value_t: null 0, object 1, array 2, string 3, boolean 4, integer 5, unsigned 6, float 7.
    const t = f === null ? 0 : Array.isArray(f) ? 2 : isFloat(f) ? 7 : typeof f === 'object' ? 1 : typeof f === 'boolean' ? 4 : Number.isInteger(f) ? 5 : 7;
    throw new BuilderLogMessageError(hintfmt('unsupported JSON type %s', t));
  }
  return items as (string | number)[];
}
