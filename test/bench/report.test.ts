/**
 * bench/_report.ts: the result rows the benchmarks print (`BENCH-ROW {json}`), their collection from a
 * benchmark's process by `npm run bench`, and the Markdown tables of docs/performance.md made from them.
 * Rows are fabricated; the collection runs a real child process that prints rows among its human output.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AREAS,
  benchCommand,
  machineLine,
  markdownReport,
  num,
  parseRowLine,
  ROW_PREFIX,
  rowCells,
  runBenchmark,
  type BenchRow,
  type CollectedRow,
} from '../../bench/_report.js';
import { tempDir } from '../helpers/nix.js';

const dagRow: BenchRow = {
  area: 'Scheduler: layered DAG, unsandboxed',
  measure: '200 derivations, per build',
  unit: 'ms',
  realise: 2.5123,
  realiseNote: '1.42 ms above the floor',
  nix: 4.71,
  ratio: 0.48612,
  ratioMin: 0.456,
  ratioMax: 0.5851,
  floor: 1.09,
  target: 'engine ≤ 0.5 ms per build above the floor',
  met: false,
};

describe('result rows', () => {
  it('a BENCH-ROW line parses back to its row; other lines and malformed rows are not rows', () => {
    expect(parseRowLine(ROW_PREFIX + JSON.stringify(dagRow))).toEqual(dagRow);
    expect(parseRowLine('run 1: ours 500 ms  nix 900 ms')).toBeUndefined();
    expect(parseRowLine(ROW_PREFIX + '{"area": "x"')).toBeUndefined();
    expect(parseRowLine(ROW_PREFIX + '{"measure": "no area"}')).toBeUndefined();
  });

  it('numbers are shown with three significant digits, thousands grouped', () => {
    expect([num(0.48612), num(2.5123), num(22.104), num(221.4), num(9846.2), num(0)]).toEqual(['0.486', '2.51', '22.1', '221', '9,846', '0']);
  });

  it('a row becomes the cells measure | realise | Nix 2.8 | ratio | floor | target | met?', () => {
    expect(rowCells(dagRow)).toEqual([
      '200 derivations, per build',
      '2.51 ms (1.42 ms above the floor)',
      '4.71 ms',
      '**0.486** (0.456–0.585)',
      '1.09 ms (0.231)',
      'engine ≤ 0.5 ms per build above the floor',
      '**no**',
    ]);
    // Text cells stay as given; missing figures are dashes; a | in a cell does not split the table.
    expect(rowCells({ area: 'a', measure: 'x | y', unit: 'ms', realise: '77.9 ms / 34.9 ms', met: true })).toEqual([
      'x \\| y',
      '77.9 ms / 34.9 ms',
      '—',
      '—',
      '—',
      '—',
      'yes',
    ]);
    expect(rowCells({ ...dagRow, ratioNote: 'CPU 1.21' })[3]).toBe('**0.486** (0.456–0.585; CPU 1.21)');
    expect(rowCells({ area: 'a', measure: 'm', unit: 's', realise: 1.99, ratioNote: 'Nix / realise 3.0', met: 'yes, under load' }).slice(3)).toEqual([
      'Nix / realise 3.0',
      '—',
      '—',
      'yes, under load',
    ]);
  });

  it('the report has one table per area in the order of docs/performance.md, with when, the load and the commands', () => {
    const at = { started: '2026-12-07T05:10:03.000Z', ended: '2026-12-07T05:12:59.000Z', loadStart: 1.2, loadEnd: 2.34 };
    const rows: CollectedRow[] = [
      { area: 'An area of no section', measure: 'x', unit: 'ms', realise: 1 },
      { ...dagRow, ...at, command: 'REALISE_BENCH_SMALL=1 npx tsx bench/dag.ts' },
      {
        area: 'Store formats',
        reference: 'reference (same run)',
        subject: 'ours',
        started: '2026-12-07T05:20:01.000Z',
        ended: '2026-12-07T05:20:40.000Z',
        loadStart: 0.5,
        loadEnd: 0.5,
        measure: 'hashPath, whole tree',
        unit: 'MiB/s',
        realise: 113,
        nix: 35,
        ratio: 3.21,
        command: 'npx tsx bench/nar-hash.ts',
      },
      { ...dagRow, ...at, measure: '2,000 derivations, per build', loadEnd: 7.9, command: 'REALISE_BENCH_SMALL=1 npx tsx bench/dag.ts' },
    ];
    const md = markdownReport(rows, 'Machine: test');
    const lines = md.split('\n');
    expect(lines[0]).toBe('Machine: test');
    const dag = lines.indexOf('## Scheduler: layered DAG, unsandboxed');
    const formats = lines.indexOf('## Store formats');
    expect(dag).toBeGreaterThan(0);
    expect(formats).toBeGreaterThan(dag);
    expect(lines.filter((l) => l.startsWith('## '))).toEqual(['## Scheduler: layered DAG, unsandboxed', '## Store formats', '## An area of no section']);
    expect(lines[dag + 2]).toBe('Reproduce: `REALISE_BENCH_SMALL=1 npx tsx bench/dag.ts`.');
    expect(lines[dag + 3]).toBe('Measured 2026-12-07 05:10–05:12 UTC, load avg 1.2–7.9.');
    expect(lines[dag + 5]).toBe('| measure | realise | Nix 2.8 | ratio | floor | target | met? |');
    expect(lines[dag + 6]).toBe('|---|---|---|---|---|---|---|');
    expect(lines[dag + 7]).toMatch(/^\| 200 derivations, per build \| 2\.51 ms/);
    expect(lines[dag + 8]).toMatch(/^\| 2,000 derivations, per build \|/);
    // An area whose rows name another reference (or subject) gets that column header; a run within one
    // minute is one time.
    expect(lines[formats + 3]).toBe('Measured 2026-12-07 05:20 UTC, load avg 0.5–0.5.');
    expect(lines[formats + 5]).toBe('| measure | ours | reference (same run) | ratio | floor | target | met? |');
    expect(lines[formats + 7]).toBe('| hashPath, whole tree | 113 MiB/s | 35.0 MiB/s | **3.21** | — | — | — |');
    expect(markdownReport([], 'Machine: test')).toContain('no benchmark printed a result row');
  });

  it('every area the benchmarks name is a section of docs/performance.md, in the same order', () => {
    const doc = readFileSync(new URL('../../docs/performance.md', import.meta.url), 'utf8');
    const headings = doc.split('\n').flatMap((l) => (/^###? /.test(l) ? [l.replace(/^###? /, '')] : []));
    expect(headings.filter((h) => AREAS.includes(h))).toEqual(AREAS);
  });

  it('every area a benchmark names is one of those', () => {
    const dir = new URL('../../bench/', import.meta.url);
    const named = readdirSync(dir)
      .filter((f) => f.endsWith('.ts') && !f.startsWith('_'))
      .flatMap((f) => [...readFileSync(new URL(f, dir), 'utf8').matchAll(/\barea(?::|\s*=)\s*([^,;\n]+)/g)].map((m) => m[1]!))
      .flatMap((expr) => [...expr.matchAll(/'([^']*)'|"([^"]*)"/g)].map((m) => m[1] ?? m[2]!));
    expect(named.length).toBeGreaterThan(10);
    expect(named.filter((a) => !AREAS.includes(a))).toEqual([]);
  });

  it('the command of a row names only the knobs its benchmark reads', () => {
    const dir = tempDir('realise-bench-report-');
    const env = { REALISE_BENCH_SMALL: '1', REALISE_BENCH_SIZES: '200', NARHASH_MB: '64', PATH: '/bin' };
    const dag = path.join(dir, 'dag.ts');
    writeFileSync(dag, 'const n = process.env.REALISE_BENCH_SIZES; const small = process.env.REALISE_BENCH_SMALL;\n');
    expect(benchCommand(dag, env)).toBe('REALISE_BENCH_SIZES=200 REALISE_BENCH_SMALL=1 npx tsx bench/dag.ts');
    const startup = path.join(dir, 'cli-startup.ts');
    writeFileSync(startup, "import { SMALL } from './dag.js';\n");
    expect(benchCommand(startup, env)).toBe('REALISE_BENCH_SMALL=1 npx tsx bench/cli-startup.ts');
    const queries = path.join(dir, 'query-valid-paths.ts');
    writeFileSync(queries, 'const N = Number(process.argv[2] ?? 100_000);\n');
    expect(benchCommand(queries, env)).toBe('npx tsx bench/query-valid-paths.ts');
  });

  it('the machine line names cores, Node, kernel, /dev/kvm and the load at start and end', () => {
    const line = machineLine({ start: [1, 2, 3], end: [0.5, 1.5, 2.5] });
    expect(line).toContain(`Node ${process.version}`);
    expect(line).toMatch(/\d+ cores/);
    expect(line).toMatch(/\/dev\/kvm (present|absent)/);
    expect(line).toContain('1.00 2.00 3.00 at the start, 0.50 1.50 2.50 at the end');
  });
});

describe('runBenchmark', () => {
  it("collects a benchmark's rows with its run's time and load, and passes its other output through", async () => {
    const dir = tempDir('realise-bench-report-');
    const file = path.join(dir, 'fake.mjs');
    const row = { area: 'A', measure: 'm', unit: 'ms', realise: 1 };
    writeFileSync(
      file,
      [
        `console.log('# fake: human output');`,
        `console.log(${JSON.stringify(ROW_PREFIX + JSON.stringify(row))});`,
        `process.stdout.write('last line without a newline');`,
        `process.exitCode = 3;`,
      ].join('\n'),
    );
    const seen: string[] = [];
    const r = await runBenchmark(file, process.env, (l) => seen.push(l));
    expect(r.status).toBe('failed (exit 3)');
    expect(seen).toEqual(['# fake: human output', 'last line without a newline']);
    expect(r.rows).toHaveLength(1);
    expect(r.rows[0]).toMatchObject(row);
    expect(Date.parse(r.rows[0]!.ended!)).toBeGreaterThanOrEqual(Date.parse(r.rows[0]!.started!));
    expect(typeof r.rows[0]!.loadStart).toBe('number');
  });
});
