/**
 * Store query benchmarks (run: npx tsx bench/query-valid-paths.ts [N]):
 *  - queryValidPaths of N (default 100,000) paths, half of them valid, in a LocalStore with N/2 + 50,000
 *    valid paths: ours (chunked `IN (?,…)` statements of 2,000) vs one json_each query vs chunks of 500
 *    vs one synchronous SQL lookup per path, against awaiting isValidPath per path (the reference);
 *  - computeClosure of a 3,000-path DAG (repeated: LocalStore keeps the references it has read) vs a per-path breadth-first walk with
 *    queryPathInfo (the reference).
 * Rows are inserted into a fresh store's SQLite database directly (no contents on disk are needed to
 * query), in Nix's format. Prints medians of 5 runs and ratios against the references.
 */
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { LocalStore } from '../src/store/local-store.js';
import { Hash } from '../src/store/hash.js';
import { makeStorePath } from '../src/store/store-path.js';
import { emitRow } from './_report.js';

const N = Number(process.argv[2] ?? 100_000);
const RUNS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function time(fn: () => Promise<unknown> | unknown): Promise<number> {
  const ts: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

const pathOf = (i: number) => makeStorePath('output:out', Hash.of('sha256', `bench-${i}`), `pkg-${i}`);

const root = mkdtempSync(path.join(tmpdir(), 'realise-bench-store-'));
try {
  (await LocalStore.open({ root })).close();
  const dbFile = path.join(root, 'nix/var/nix/db/db.sqlite');
  const valid = N / 2 + 50_000;
  const dagSize = 3000;
  {
    const db = new Database(dbFile);
    db.pragma('journal_mode = wal');
    const ins = db.prepare('insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, ?, ?)');
    const ref = db.prepare('insert into Refs (referrer, reference) values (?, ?)');
    const h = `sha256:${'0'.repeat(64)}`;
    db.transaction(() => {
      for (let i = 0; i < valid; i++) ins.run(pathOf(i), h, 1700000000, 120);
      // A DAG over the first dagSize rows (ids 1..dagSize): each path refers to up to 3 earlier ones.
      for (let i = 2; i <= dagSize; i++) for (const d of [1, 7, 31]) if (i - d >= 1) ref.run(i, i - d);
    })();
    db.close();
  }
  const store = await LocalStore.open({ root });
  // Query N paths: N/2 valid, N/2 not.
  const query: string[] = [];
  for (let i = 0; i < N / 2; i++) query.push(pathOf(i * 2));
  for (let i = 0; i < N / 2; i++) query.push(pathOf(valid + i));
  const expected = (await store.queryValidPaths(query)).size;
  if (expected !== query.filter((_, i) => i < N / 2).length) throw new Error(`wrong answer: ${expected}`);

  const ours = await time(() => store.queryValidPaths(query));
  const altDb = new Database(dbFile, { readonly: true });
  const CH = 500;
  const full = altDb.prepare(`select path from ValidPaths where path in (${Array(CH).fill('?').join(',')})`).pluck();
  const chunked = await time(() => {
    const out = new Set<string>();
    for (let i = 0; i < query.length; i += CH) {
      const part = query.slice(i, i + CH);
      const st = part.length === CH ? full : altDb.prepare(`select path from ValidPaths where path in (${part.map(() => '?').join(',')})`).pluck();
      for (const p of st.all(...part) as string[]) out.add(p);
    }
    if (out.size !== expected) throw new Error('chunked: wrong answer');
  });
  const jsonEach = altDb.prepare('select v.path from json_each(?) j cross join ValidPaths v on v.path = j.value').pluck();
  const viaJson = await time(() => {
    const out = new Set(jsonEach.all(JSON.stringify(query)) as string[]);
    if (out.size !== expected) throw new Error('json_each: wrong answer');
  });
  const one = altDb.prepare('select 1 from ValidPaths where path = ?').pluck();
  const perPathSync = await time(() => {
    let n = 0;
    for (const p of query) if (one.get(p)) n++;
    if (n !== expected) throw new Error('per path: wrong answer');
  });
  const reference = await time(async () => {
    let n = 0;
    for (const p of query) if (await store.isValidPath(p)) n++;
    if (n !== expected) throw new Error('reference: wrong answer');
  });
  altDb.close();

  // Closure of the DAG's top path (reaches all dagSize paths).
  const top = pathOf(dagSize - 1);
  const closureSize = (await store.computeClosure([top])).size;
  const closureOurs = await time(() => store.computeClosure([top]));
  const closureRef = await time(async () => {
    const seen = new Set<string>([top]);
    const todo = [top];
    while (todo.length) {
      const p = todo.pop()!;
      for (const r of (await store.queryPathInfo(p))!.references)
        if (!seen.has(r)) {
          seen.add(r);
          todo.push(r);
        }
    }
    if (seen.size !== closureSize) throw new Error('closure reference: wrong answer');
  });
  await store.close();

  const f = (ms: number) => `${ms.toFixed(1)} ms`;
  console.log(`queryValidPaths of ${N} paths (${expected} valid) in a store of ${valid} valid paths, median of ${RUNS}:`);
  console.log(`  ours: IN (2000 per statement)  ${f(ours)}   ${(reference / ours).toFixed(1)}x faster than the reference`);
  console.log(`  IN (500 per statement)         ${f(chunked)}   ${(reference / chunked).toFixed(1)}x`);
  console.log(`  one json_each join             ${f(viaJson)}   ${(reference / viaJson).toFixed(1)}x`);
  console.log(`  synchronous lookup per path    ${f(perPathSync)}   ${(reference / perPathSync).toFixed(1)}x`);
  console.log(`  await isValidPath per path (reference) ${f(reference)}`);
  console.log(`computeClosure of a ${closureSize}-path DAG, median of ${RUNS}:`);
  console.log(`  computeClosure (ours)     ${f(closureOurs)}   ${(closureRef / closureOurs).toFixed(1)}x faster than the reference`);
  console.log(`  queryPathInfo walk (ref)  ${f(closureRef)}`);
  const area = 'Store queries and derivations';
  const header = 'reference (same run)';
  emitRow({
    area,
    reference: header,
    measure: `\`queryValidPaths\` of ${N.toLocaleString('en-US')} paths (${expected.toLocaleString('en-US')} valid) in a store of ${valid.toLocaleString('en-US')}`,
    unit: 'ms',
    realise: ours,
    realiseNote: 'chunked `IN (?,…)` of 2,000',
    nix: reference,
    nixNote: '`await isValidPath` per path',
    ratio: ours / reference,
  });
  emitRow({
    area,
    reference: header,
    measure: `\`computeClosure\` of a ${closureSize.toLocaleString('en-US')}-path DAG`,
    unit: 'ms',
    realise: closureOurs,
    realiseNote: 'references kept once read, else a recursive CTE',
    nix: closureRef,
    nixNote: '`queryPathInfo` walk',
    ratio: closureOurs / closureRef,
  });
} finally {
  rmSync(root, { recursive: true, force: true });
}
