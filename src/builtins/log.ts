/**
 * What a built-in builder writes into its build log, byte for byte as Nix 2.8's do: Nix runs built-ins
 * with its JSON logger, so activities (a download) and warnings are `@nix {…}` lines, and an error ends
 * the log as Nix prints errors (`error:` in red, the message's further lines indented, values quoted
 * in Nix's colours).
 */

import { strerror, systemErrorMessage } from '../store/system-error.js';

import { ANSI_NORMAL, ANSI_RED, ANSI_WARNING, hintfmt, plainMessage, type NixMessage } from '../store/nix-message.js';

export { hintfmt, plainMessage, type NixMessage };

/**
 * Nix's `SysError(format, args…)` for a failed system call `e`: the message, then glibc's wording of the
 * errno as a value (`creating directory '/nix/store/…': No such file or directory`).
 */
export function sysErrorMessage(e: unknown, format: string, ...args: readonly (string | number)[]): NixMessage {
  return sysErrorAfter(e, hintfmt(format, ...args));
}

/** A failed system call `e` as the built-in's failure, worded as Nix's SysError (paths are the logical ones). */
export function sysFailure(e: unknown, format: string, ...args: readonly (string | number)[]): BuiltinFailure {
  return new BuiltinFailure(sysErrorMessage(e, format, ...args), { cause: e });
}

/** `op`, with its failure worded as Nix's SysError (see sysFailure). */
export async function sys<T>(op: Promise<T>, format: string, ...args: readonly (string | number)[]): Promise<T> {
  try {
    return await op;
  } catch (e) {
    throw sysFailure(e, format, ...args);
  }
}

/** The same after a message `what` that is already formatted. */
export function sysErrorAfter(e: unknown, what: NixMessage): NixMessage {
  const reason = strerror(e) ?? (e instanceof Error ? e.message : String(e));
  return { plain: `${what.plain}: ${reason}`, coloured: `${what.coloured}: ${ANSI_WARNING}${reason}${ANSI_NORMAL}` };
}

/**
 * An unexpected error (a file system call that failed, …) in Nix's wording of system errors where we can
 * (`writing to file: No space left on device`, the reason coloured as Nix's SysError colours it).
 */
export function nixErrorWords(e: unknown): NixMessage {
  const words = systemErrorMessage(e);
  const reason = strerror(e);
  if (words !== undefined && reason !== undefined && words.endsWith(`: ${reason}`)) {
    return sysErrorAfter(e, plainMessage(words.slice(0, -(reason.length + 2))));
  }
  return plainMessage(words ?? (e instanceof Error ? e.message : String(e)));
}

/**
 * An error raised inside a built-in builder: it fails the build, its message ends the build log. `bare`:
 * a C++ exception that is not one of Nix's errors (`stoi`), whose text Nix writes without `error:`.
 */
export class BuiltinFailure extends Error {
  readonly bare: boolean;
  constructor(
    readonly nixMessage: NixMessage,
    options: { cause?: unknown; bare?: boolean } = {},
  ) {
    super(nixMessage.plain, options);
    this.name = 'BuiltinFailure';
    this.bare = options.bare ?? false;
  }
}

/** Nix's `chomp`: without trailing whitespace. */
function chomp(s: string): string {
  return s.replace(/[ \n\r\t]+$/, '');
}

/** Nix's showErrorInfo for an error without position: the `error:` prefix, further lines indented under it. */
export function errorLogText(message: NixMessage): string {
  return errorShown(message).coloured + '\n';
}

/**
 * An error as Nix shows it (its `what()`: `error:` in red, further lines indented, no final newline), in
 * both forms: Nix's warnings about an error (`warning: error: …; retrying in 250 ms`) quote it so.
 */
export function errorShown(message: NixMessage): NixMessage {
  const rest = ' '.repeat('error: '.length);
  const show = (text: string, prefix: string) =>
    chomp(text)
      .split('\n')
      .map((line, i) => chomp((i === 0 ? prefix : rest) + line))
      .join('\n');
  return { plain: show(message.plain, 'error: '), coloured: show(message.coloured, `${ANSI_RED}error:${ANSI_NORMAL} `) };
}

/** Nix's warn() through the JSON logger. */
export function warningLogLine(message: NixMessage): string {
  return '@nix ' + JSON.stringify({ action: 'msg', level: 1, msg: `${ANSI_WARNING}warning:${ANSI_NORMAL} ${message.coloured}` }) + '\n';
}

let activityCounter = 0;

/** Nix's activity ids: the process id in the high bits, a counter below. */
function nextActivityId(): number {
  return process.pid * 2 ** 32 + ++activityCounter;
}

/**
 * The `@nix` lines of one download (Nix's actFileTransfer activity): its start, progress results
 * (`[done, expected, 0, 0]`, at most one per `interval` ms besides the first and the last, and two a
 * second while nothing arrives, as curl calls Nix's progress callback at least once a second: so a
 * download that stalls is not "silent" for maxSilentTime, as in Nix) and its stop.
 */
export class DownloadActivity {
  readonly id = nextActivityId();
  #last = 0;
  #lastDone = -1;
  #expected = 0;
  readonly #heartbeat: NodeJS.Timeout;

  constructor(
    private readonly write: (line: string) => void,
    url: string,
    private readonly interval = 100,
  ) {
    write('@nix ' + JSON.stringify({ action: 'start', fields: [url], id: this.id, level: 4, text: `downloading '${url}'`, type: 101 }) + '\n');
    this.#result(0, 0);
    this.#heartbeat = setInterval(() => {
      if (Date.now() - this.#last >= 400) this.progress(Math.max(0, this.#lastDone), this.#expected, true);
    }, 500);
    this.#heartbeat.unref();
  }

  progress(done: number, expected: number, force = false): void {
    const now = Date.now();
    this.#expected = expected;
    if (!force && (now - this.#last < this.interval || done === this.#lastDone)) return;
    this.#last = now;
    this.#result(done, expected);
  }

  #result(done: number, expected: number): void {
    this.#lastDone = done;
    this.write('@nix ' + JSON.stringify({ action: 'result', fields: [done, expected, 0, 0], id: this.id, type: 105 }) + '\n');
  }

  stop(): void {
    clearInterval(this.#heartbeat);
    this.write('@nix ' + JSON.stringify({ action: 'stop', id: this.id }) + '\n');
  }
}
