/**
 * What `realise` writes to stderr around a build, in Nix 2.8's words and order: the "will be built /
 * fetched" summary (printMissing), error messages (continuation lines indented under `error: `), and the
 * closing summary of failed targets (Store::buildPaths: one error, or "build of '…', '…' failed").
 */
import {
  exitStatusOf,
  goalKey,
  isSuccess,
  keptBuildDirNote,
  LocalStore,
  withLogTail,
  systemErrorMessage,
  type BuildResult,
  type MissingInfo,
  type Store,
  type TargetResult,
} from '../index.js';

export { systemErrorMessage };

const INDENT = ' '.repeat('error: '.length);

/** The characters filterLogMessage changes or drops: a message without any is written as it is. */
export const NEEDS_FILTER = /[\x07\t\r\x1b]/;

/**
 * What Nix's logger does to every message before writing it to stderr (filterANSIEscapes), on the
 * message's bytes: escape sequences are dropped (on a terminal, SGR ones such as colours are kept), `\r`
 * and BEL are dropped, and a tab becomes spaces up to the next multiple of 8 columns, a column being one
 * UTF-8 character (or stray byte) counted from the start of the message, its earlier lines included.
 */
export function filterLogMessage(message: string | Buffer, terminal: boolean): Buffer {
  const bytes = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
  if (!bytes.includes(0x1b) && !bytes.includes(9) && !bytes.includes(13) && !bytes.includes(7)) return bytes;
  const s = bytes.toString('latin1');
  const n = s.length;
  const at = (j: number) => (j < n ? s.charCodeAt(j) : -1);
  const cont = (j: number) => (at(j) & 0xc0) === 0x80;
  let t = '';
  let w = 0;
  let i = 0;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === 0x1b) {
      const start = i++;
      let last = 0;
      if (at(i) === 0x5b) {
        i++;
        while (at(i) >= 0x30 && at(i) <= 0x3f) i++;
        while (at(i) >= 0x20 && at(i) <= 0x2f) i++;
        if (at(i) >= 0x40 && at(i) <= 0x7e) last = s.charCodeAt(i++);
      } else if (at(i) >= 0x40 && at(i) <= 0x5f) {
        i++;
      }
      if (terminal && last === 0x6d) t += s.slice(start, i);
    } else if (c === 9) {
      i++;
      do {
        t += ' ';
        w++;
      } while (w % 8);
    } else if (c === 13 || c === 7) {
      i++;
    } else {
      // One UTF-8 character: a lead byte and as many of its continuation bytes as follow.
      const more = (c & 0xe0) === 0xc0 ? 1 : (c & 0xf0) === 0xe0 ? 2 : (c & 0xf8) === 0xf0 ? 3 : 0;
      let j = i + 1;
      while (j - i - 1 < more && cont(j)) j++;
      t += s.slice(i, j);
      i = j;
      w++;
    }
  }
  return Buffer.from(t, 'latin1');
}

/**
 * `error: MESSAGE` with Nix's indentation of the following lines (empty ones stay empty), trailing white
 * space dropped (Nix's chomp). MESSAGE is in Nix's words: an error's `shortMessage`, without our hint.
 */
export function formatError(message: string): string {
  // As Nix's showErrorInfo: each line (the indentation included) without trailing blanks.
  const indented = `error: ${message.replace(/\s+$/, '').replace(/\n(?!\n|$)/g, '\n' + INDENT)}`;
  return `${indented.replace(/[ \t\r]+(?=\n|$)/g, '')}\n`;
}

/** `warning: MESSAGE`, as Nix prints it. */
export function formatWarning(message: string): string {
  return `warning: ${message.replace(/\n(?!\n|$)/g, '\n' + INDENT)}\n`;
}

/**
 * A failed result as Nix prints it: the kept build directory's note (a line of its own, before the
 * error) and the error, with the log tail under it only when the log was not shown as it came (`showTail`).
 */
export function failureLines(r: TargetResult | { path: string; result: BuildResult }, showTail: boolean): { message: string; note?: string } {
  const d = r.result.failure;
  if (!d) return { message: r.result.errorMsg ?? `build of '${r.path}' failed` };
  // In Nix's colours where they are known (a display off a terminal filters them, as Nix's logger does).
  const shown = d.colouredMessage ?? d.message;
  const message = showTail ? withLogTail(shown, d.logTail) : shown;
  return d.keptBuildDir === undefined ? { message } : { message, note: keptBuildDirNote(d.keptBuildDir) };
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Nix's reversed topoSortPaths, its order for the derivations it will build and for `nix path-info`'s
 * text listing: a depth-first walk over the sorted set that emits a path after the ones it refers to
 * (dependencies first); invalid paths have no references.
 */
export async function dependenciesFirst(store: Store, drvs: readonly string[]): Promise<string[]> {
  const items = new Set(drvs);
  const out: string[] = [];
  const visited = new Set<string>();
  // A local store's references of them all in one query (a path missing there has none).
  const known = store instanceof LocalStore ? store.queryReferencesSync([...items]) : undefined;
  const refs = async (p: string): Promise<string[]> => {
    if (known) return (known.get(p) ?? []).sort(byString);
    const info = await store.queryPathInfo(p).catch(() => undefined);
    return [...(info?.references ?? [])].sort(byString);
  };
  const visit = async (p: string): Promise<void> => {
    if (visited.has(p)) return;
    visited.add(p);
    for (const r of await refs(p)) if (r !== p && items.has(r)) await visit(r);
    out.push(p);
  };
  for (const p of [...items].sort(byString)) await visit(p);
  return out;
}

/** Nix's printMissing, line by line. */
export async function missingLines(store: Store, m: MissingInfo): Promise<string[]> {
  const lines: string[] = [];
  if (m.willBuild.length) {
    lines.push(m.willBuild.length === 1 ? 'this derivation will be built:' : `these ${m.willBuild.length} derivations will be built:`);
    for (const p of await dependenciesFirst(store, m.willBuild)) lines.push(`  ${p}`);
  }
  if (m.willSubstitute.length) {
    const mib = (n: number) => (n / (1024 * 1024)).toFixed(2);
    lines.push(
      m.willSubstitute.length === 1
        ? `this path will be fetched (${mib(m.downloadSize)} MiB download, ${mib(m.narSize)} MiB unpacked):`
        : `these ${m.willSubstitute.length} paths will be fetched (${mib(m.downloadSize)} MiB download, ${mib(m.narSize)} MiB unpacked):`,
    );
    for (const p of [...m.willSubstitute].sort(byString)) lines.push(`  ${p}`);
  }
  if (m.unknown.length) {
    lines.push("don't know how to build these paths:");
    for (const p of [...m.unknown].sort(byString)) lines.push(`  ${p}`);
  }
  return lines;
}

/** Nix's goal order (Goals is a set ordered by key): substitutions, then derivations, each by name then path. */
function targetKey(r: TargetResult): string {
  return goalKey('path' in r.target ? 'substitution' : 'derivation', r.path);
}

export interface FailureSummary {
  /** Lines Nix prints when the goals fail, before the errors ("note: keeping build directory …"). */
  readonly notes: string[];
  /** Error messages to print, in order (without the `error: ` prefix). */
  readonly messages: string[];
  readonly exitStatus: number;
}

/**
 * The end of Nix's Store::buildPaths for failed top-level targets. Each derivation target with its own
 * error contributes it (the first one last); targets that were only stopped or are opaque paths have
 * none. One failed target with an error: that error. Otherwise: "build of '…', '…' failed". A failure that
 * ended the call (FailureDetails.endedCall) is all there is.
 * `allFailed` are every failed goal's results (dependencies too): the exit status comes from them.
 */
export function summariseFailures(results: readonly TargetResult[], allFailed: readonly BuildResult[], showTail: boolean): FailureSummary | undefined {
  const tops = new Map<string, TargetResult>();
  for (const r of results) if (!tops.has(r.path) || !isSuccess(r.result.status)) tops.set(r.path, r);
  const failedTops = [...tops.values()].filter((r) => !isSuccess(r.result.status)).sort((a, b) => byString(targetKey(a), targetKey(b)));
  if (failedTops.length === 0) return undefined;
  // A failure that ended the call (Nix's Error thrown out of its worker) is all Nix prints, exit status 1,
  // at the end: a target's here; a dependency's is kept by the caller (engine-build.ts), which saw it.
  if (allFailed.some((r) => r.failure?.endedCall)) {
    const own = failedTops.find((r) => r.result.failure?.endedCall);
    const lines = own ? failureLines(own, showTail) : undefined;
    return { notes: lines?.note ? [lines.note] : [], messages: lines ? [lines.message] : [], exitStatus: 1 };
  }
  const messages: string[] = [];
  const notes: string[] = [];
  let first: string | undefined;
  for (const r of failedTops) {
    if ('path' in r.target || r.result.status === 'stopped' || !r.result.errorMsg) continue;
    const { message, note } = failureLines(r, showTail);
    if (note) notes.push(note);
    if (first === undefined) first = message;
    else messages.push(message);
  }
  if (failedTops.length === 1 && first !== undefined) {
    messages.push(first);
  } else {
    if (first !== undefined) messages.push(first);
    messages.push(
      `build of ${failedTops
        .map((r) => `'${r.path}'`)
        .sort(byString)
        .join(', ')} failed`,
    );
  }
  const statuses = [...allFailed, ...failedTops.map((r) => r.result)];
  return { notes, messages, exitStatus: exitStatusOf(statuses) };
}
