/**
 * The result rows of the benchmarks, in one machine-readable form, and the Markdown tables of
 * docs/performance.md made from them.
 *
 * A benchmark prints each result as one line `BENCH-ROW {json}` (`emitRow`), beside its human output.
 * `npm run bench` (bench/run.ts) collects those lines from every benchmark it runs (`parseRowLine`) and
 * prints at the end, with `markdownReport`, one table per area in the columns of docs/performance.md
 * (measure | realise | Nix 2.8 | ratio | floor | target | met?), each with the date and load of its
 * measurement and the commands that reproduce its rows, under a line describing the machine.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';

/** The line prefix of a result row on a benchmark's standard output. */
export const ROW_PREFIX = 'BENCH-ROW ';

/** One result: a row of its area's table. Times and sizes are numbers in `unit`; text cells say what numbers cannot. */
export interface BenchRow {
  /** The area: the heading of its section in docs/performance.md. */
  readonly area: string;
  readonly measure: string;
  /** What the numbers of `realise`, `nix` and `floor` are in: 'ms', 's', 'MB', 'MiB/s', ... */
  readonly unit: string;
  readonly realise: number | string;
  /** What realise does beyond the main figure, put after it in parentheses (CPU time, spread, ...). */
  readonly realiseNote?: string;
  /** Nix 2.8's figure in the same run (or the area's reference, see `reference`), when there is one. */
  readonly nix?: number | string;
  readonly nixNote?: string;
  /** realise / Nix 2.8 (or as `ratioNote` says), with the min–max of the pair ratios. */
  readonly ratio?: number;
  readonly ratioMin?: number;
  readonly ratioMax?: number;
  readonly ratioNote?: string;
  /** The same work without the engine (the builders alone, a bare process start), in `unit`. */
  readonly floor?: number | string;
  readonly target?: string;
  readonly met?: boolean | string;
  /** The command that reproduces the row (see `benchCommand`). */
  readonly command?: string;
  /** The header of the reference column when it is not Nix 2.8 ('reference (same run)'). */
  readonly reference?: string;
  /** The header of the `realise` column when the figure is not realise's ('this machine'). */
  readonly subject?: string;
}

/** A row as run.ts keeps it: with when and under what load its benchmark ran. */
export interface CollectedRow extends BenchRow {
  /** ISO times and 1-minute load averages at the start and end of the benchmark that printed it. */
  readonly started?: string;
  readonly ended?: string;
  readonly loadStart?: number;
  readonly loadEnd?: number;
}

/** Print one result row (on standard output, where bench/run.ts reads it). */
export function emitRow(row: BenchRow): void {
  console.log(ROW_PREFIX + JSON.stringify({ command: benchCommand(), ...row }));
}

/** The row of a `BENCH-ROW` line, or undefined for any other line (or a malformed row). */
export function parseRowLine(line: string): BenchRow | undefined {
  if (!line.startsWith(ROW_PREFIX)) return undefined;
  try {
    const row = JSON.parse(line.slice(ROW_PREFIX.length)) as BenchRow;
    return typeof row.area === 'string' && typeof row.measure === 'string' ? row : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The command that reruns this benchmark as it ran: `npx tsx bench/NAME.ts` after the benchmark knobs
 * (REALISE_BENCH_*, NARHASH_*, ...) that are set and that its file names.
 */
export function benchCommand(script = process.argv[1] ?? '', env: NodeJS.ProcessEnv = process.env): string {
  const knob = /^(REALISE_BENCH_|REALISE_NATIVE_|REALISE_NOSANDBOX_|BENCH_|GC_BENCH_|OPT_BENCH_|NARHASH_|REFSCAN_|REMOTE_BENCH_)/;
  let text = '';
  try {
    text = readFileSync(script, 'utf8');
  } catch {
    // no script to read: every knob set is named
  }
  // Only the knobs this benchmark reads (named in its file), as `npm run bench -- --small` sets them all.
  // REALISE_BENCH_SMALL also through bench/dag.ts's SMALL, which several benchmarks import.
  const reads = (k: string) => !text || text.includes(k) || (k === 'REALISE_BENCH_SMALL' && /\bSMALL\b/.test(text));
  const set = Object.keys(env)
    .filter((k) => knob.test(k) && env[k] !== undefined && reads(k))
    .sort()
    .map((k) => `${k}=${env[k]}`);
  const name = path.basename(script).replace(/\.[cm]?[jt]s$/, '');
  return [...set, `npx tsx bench/${name}.ts`].join(' ');
}

/** A number as the tables show it: three significant digits, thousands grouped. */
export function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x === 0 ? '0' : x.toPrecision(3);
}

const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
const withNote = (main: string, note?: string): string => (note ? `${main} (${note})` : main);
const value = (v: number | string | undefined, unit: string): string | undefined =>
  v === undefined ? undefined : typeof v === 'number' ? `${num(v)} ${unit}` : v;

/** The cells of one row, in the order of `HEADER`. */
export function rowCells(r: BenchRow): string[] {
  const realise = withNote(value(r.realise, r.unit)!, r.realiseNote);
  const nix = r.nix === undefined ? '—' : withNote(value(r.nix, r.unit)!, r.nixNote);
  let ratio = '—';
  if (r.ratio !== undefined) {
    const range = r.ratioMin !== undefined && r.ratioMax !== undefined ? `${num(r.ratioMin)}–${num(r.ratioMax)}` : undefined;
    const note = [range, r.ratioNote].filter(Boolean).join('; ');
    ratio = withNote(`**${num(r.ratio)}**`, note || undefined);
  } else if (r.ratioNote) ratio = r.ratioNote;
  let floor = value(r.floor, r.unit) ?? '—';
  if (typeof r.floor === 'number' && typeof r.nix === 'number' && r.nix > 0) floor += ` (${num(r.floor / r.nix)})`;
  const met = r.met === undefined ? '—' : r.met === true ? 'yes' : r.met === false ? '**no**' : r.met;
  return [r.measure, realise, nix, ratio, floor, r.target ?? '—', met].map(cell);
}

export const HEADER = ['measure', 'realise', 'Nix 2.8', 'ratio', 'floor', 'target', 'met?'];

/** `yes`/`no` for a figure against an upper limit (undefined when there is no figure). */
export function atMost(x: number | undefined, limit: number): boolean | undefined {
  return x === undefined || !Number.isFinite(x) ? undefined : x <= limit;
}

/** What the machine is: cores, Node, kernel, /dev/kvm, the OS. */
export function machineLine(load: { start: number[]; end: number[] }): string {
  const cores = cpus();
  const model = cores[0]?.model.replace(/\s+/g, ' ').trim();
  let os = 'Linux';
  try {
    os = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os;
  } catch {
    // not Linux, or no os-release: the kernel's name stays
  }
  const la = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ');
  return (
    `Machine: ${os}, ${cores.length} cores${model ? ` (${model})` : ''}, Node ${process.version}, kernel ${release()}, ` +
    `/dev/kvm ${existsSync('/dev/kvm') ? 'present' : 'absent'}; load average (1, 5, 15 min) ${la(load.start)} at the start, ${la(load.end)} at the end.`
  );
}

export function currentLoad(): number[] {
  return loadavg();
}

const utc = (iso: string): string => iso.slice(0, 16).replace('T', ' ');

/** "Measured …" for rows of one area: the span of their benchmarks' runs and the load seen then. */
function measuredLine(rows: readonly CollectedRow[]): string {
  const starts = rows.map((r) => r.started).filter((x): x is string => !!x);
  const ends = rows.map((r) => r.ended).filter((x): x is string => !!x);
  const loads = rows.flatMap((r) => [r.loadStart, r.loadEnd]).filter((x): x is number => x !== undefined);
  if (!starts.length) return '';
  const [from, to] = [utc(starts.sort()[0]!), utc(ends.sort().at(-1) ?? starts[0]!)];
  const span = from === to ? from : from.slice(0, 10) === to.slice(0, 10) ? `${from}–${to.slice(11)}` : `${from} – ${to}`;
  const load = loads.length ? `, load avg ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}` : '';
  return `Measured ${span} UTC${load}.`;
}

/** The areas in the order of their sections in docs/performance.md; an area not named here comes after them. */
export const AREAS = [
  'Scheduler: layered DAG, unsandboxed',
  'Sandbox',
  'Scheduler: no-op build and overhead',
  "The machine's floor",
  'Substitution',
  'One path from an HTTP cache, through the CLI',
  'Remote builds',
  'Store formats',
  'Store queries and derivations',
  'CLI start-up and the no-op build',
  'The CLI: `realise build` of a fresh DAG',
  'Built-in fetchurl',
  'Observability overhead',
  'Garbage collection and optimisation',
];

/**
 * The Markdown of all areas under the machine line: the areas in the order of docs/performance.md (others
 * after them, in the order their first rows came), each area's rows in the order they came.
 */
export function markdownReport(rows: readonly CollectedRow[], machine: string): string {
  const rank = (a: string) => (AREAS.includes(a) ? AREAS.indexOf(a) : AREAS.length);
  const areas = new Map<string, CollectedRow[]>();
  for (const r of [...rows].sort((a, b) => rank(a.area) - rank(b.area))) areas.set(r.area, [...(areas.get(r.area) ?? []), r]);
  const out = [machine, ''];
  for (const [area, rs] of areas) {
    out.push(`## ${area}`, '');
    const measured = measuredLine(rs);
    const commands = [...new Set(rs.map((r) => r.command).filter((c): c is string => !!c))];
    if (commands.length) out.push(`Reproduce: ${commands.map((c) => `\`${c}\``).join('; ')}.`);
    if (measured) out.push(measured);
    if (commands.length || measured) out.push('');
    const named = (h: string, key: 'reference' | 'subject') => rs.find((r) => r[key])?.[key] ?? h;
    const header = HEADER.map((h) => (h === 'Nix 2.8' ? named(h, 'reference') : h === 'realise' ? named(h, 'subject') : h));
    out.push(`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`);
    for (const r of rs) out.push(`| ${rowCells(r).join(' | ')} |`);
    out.push('');
  }
  if (!areas.size) out.push('(no benchmark printed a result row)', '');
  return out.join('\n');
}

/**
 * Run one benchmark file in its own process (`node --import tsx FILE`), its standard output passed to
 * `out` line by line except its `BENCH-ROW` lines, which come back with the time and load of the run.
 * Standard error is the caller's. `status` is 'ok', 'failed (exit N)', 'killed by SIG…' or 'could not start: …'.
 */
export async function runBenchmark(
  file: string,
  env: NodeJS.ProcessEnv,
  out: (line: string) => void = (line) => process.stdout.write(line + '\n'),
): Promise<{ status: string; rows: CollectedRow[] }> {
  const started = new Date().toISOString();
  const loadStart = currentLoad()[0];
  const rows: BenchRow[] = [];
  const child = spawn(process.execPath, ['--import', 'tsx', file], { env, stdio: ['inherit', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
  lines.on('line', (line) => {
    const row = parseRowLine(line);
    if (row) rows.push(row);
    else out(line);
  });
  const [status] = await Promise.all([
    new Promise<string>((resolve) => {
      child.on('error', (e) => {
        lines.close();
        resolve(`could not start: ${e.message}`);
      });
      child.on('close', (code, signal) => resolve(signal ? `killed by ${signal}` : code === 0 ? 'ok' : `failed (exit ${code})`));
    }),
    new Promise((resolve) => lines.once('close', resolve)),
  ]);
  const [ended, loadEnd] = [new Date().toISOString(), currentLoad()[0]];
  return { status, rows: rows.map((r) => ({ ...r, started, ended, loadStart, loadEnd })) };
}
