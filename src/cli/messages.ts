/**
 * Where the CLI's own messages go: stderr as Nix's logger writes it, or Nix's JSON stream (`--log-format
 * internal-json`), and while a build's display runs, its JSON logs (`--json-log-path`) too.
 */
import type { NixJsonLog, TargetResult } from '../index.js';
import type { Display } from './log-format.js';
import { failureLines, filterLogMessage, formatError, formatWarning, NEEDS_FILTER } from './report.js';
import { stderr } from './stdio.js';

/**
 * With `--log-format internal-json` messages go to `stderrJson` instead of stderr; while a build's display
 * runs, to its JSON logs too. `main` resets both when a command ends.
 */
export const messageLogs: { stderrJson?: NixJsonLog | undefined; display?: Display | undefined } = {};

/** Write one message to stderr as Nix's logger does (escape sequences, `\r` and tabs filtered), or as JSON. */
export function writeStderr(message: string): void {
  const logs = messageLogs.display?.jsonLogs ?? (messageLogs.stderrJson ? [messageLogs.stderrJson] : []);
  for (const l of logs) l.text(message);
  // Whether stderr is a terminal matters only to a message with escape sequences (kept on one), `\r`, tabs or bells.
  if (!messageLogs.stderrJson) stderr.write(NEEDS_FILTER.test(message) ? filterLogMessage(message, stderr.isTTY) : message);
}

/** An exception that is not one of Nix's errors (its JSON library's), as Nix's CLI prints it: `error: …`, in JSON a plain message. */
export function writeStderrException(message: string): void {
  const logs = messageLogs.display?.jsonLogs ?? (messageLogs.stderrJson ? [messageLogs.stderrJson] : []);
  for (const l of logs) l.exceptionError(message);
  if (!messageLogs.stderrJson) stderr.write(filterLogMessage(formatError(message), stderr.isTTY));
}

/** A failed build on stderr as Nix prints it: the kept build directory's note, then the error. */
export function writeFailure(f: TargetResult, showTail: boolean): void {
  const { message, note } = failureLines(f, showTail);
  if (note) writeStderr(note + '\n');
  writeStderr(formatError(message));
}

/** A warning on stderr in Nix's form (`warning: …`), filtered as every message. */
export function warnStderr(message: string): void {
  writeStderr(formatWarning(message));
}
