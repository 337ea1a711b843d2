/**
 * Derivation benchmarks: instantiating a graph with derivation() against nix-instantiate of the
 * equivalent expression (measured in the same run), and .drv parse/print/hash-modulo throughput.
 *
 *   npx tsx bench/derivations.ts [N]       (N derivations in a chain with a fan-in, default 500)
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { nix, type NixString } from '../src/derivation/context.js';
import { derivation, type DerivationValue } from '../src/derivation/instantiate.js';
import { DerivationHasher, derivationNameFromPath, parseDerivation, printDerivation, readDerivationFromStore } from '../src/derivation/derivation.js';
import { LocalStore } from '../src/store/local-store.js';
import { MemoryStore } from '../src/store/memory-store.js';
import { computeTextPath } from '../src/store/store-path.js';
import type { Store } from '../src/store/store-api.js';
import { emitRow } from './_report.js';

const N = Number(process.argv[2] ?? 500);
const RUNS = 3;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function tsGraph(store: Store): Promise<DerivationValue> {
  let prev: DerivationValue | undefined;
  const all: DerivationValue[] = [];
  for (let i = 0; i < N; i++) {
    const dep: (string | DerivationValue | NixString)[] = prev ? [prev] : [];
    prev = await derivation(store, {
      name: `node-${i}`,
      system: 'x86_64-linux',
      builder: '/bin/sh',
      args: ['-c', prev ? nix`echo ${prev} > $out` : 'echo leaf > $out'],
      deps: dep,
      index: i,
      flag: i % 2 === 0,
    });
    all.push(prev);
  }
  return derivation(store, { name: 'top', system: 'x86_64-linux', builder: '/bin/sh', all: all.filter((_, i) => i % 10 === 0) });
}

function nixExpr(): string {
  return `let
    step = prev: i: derivation {
      name = "node-\${toString i}"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" (if prev == null then "echo leaf > $out" else "echo \${prev} > $out") ];
      deps = if prev == null then [ ] else [ prev ]; index = i; flag = (i / 2) * 2 == i;
    };
    nodes = builtins.foldl' (acc: i: acc ++ [ (step (if acc == [ ] then null else builtins.elemAt acc (builtins.length acc - 1)) i) ]) [ ] (builtins.genList (i: i) ${N});
    every10 = builtins.filter (x: x != null) (builtins.genList (i: if i - (i / 10) * 10 == 0 then builtins.elemAt nodes i else null) ${N});
  in derivation { name = "top"; system = "x86_64-linux"; builder = "/bin/sh"; all = every10; }`;
}

const env = {
  ...process.env,
  NIX_REMOTE: '',
  NIX_USER_CONF_FILES: '/dev/null',
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n',
};

/** Just enough of a Store for instantiation, all in memory (measures our own work, not the store's I/O). */
function pureStore(): Store {
  const texts = new Map<string, { text: string; refs: string[] }>();
  const fake = {
    storeDir: '/nix/store',
    async addTextToStore(name: string, text: string, refs: Iterable<string> = []) {
      const p = computeTextPath(name, text, [...refs].sort());
      texts.set(p, { text, refs: [...refs] });
      return p;
    },
    async registerDerivationOutputs() {},
    async readTextFile(p: string) {
      return texts.get(p)!.text;
    },
    async computeClosure(ps: Iterable<string>) {
      const seen = new Set<string>();
      const todo = [...ps];
      while (todo.length) {
        const p = todo.pop()!;
        if (seen.has(p)) continue;
        seen.add(p);
        todo.push(...(texts.get(p)?.refs ?? []));
      }
      return seen;
    },
  };
  return fake as unknown as Store;
}

const pure: number[] = [];
const ours: number[] = [];
const oursLocal: number[] = [];
const theirs: number[] = [];
let topPath = '';
for (let r = 0; r < RUNS; r++) {
  let t0 = performance.now();
  const topPure = await tsGraph(pureStore());
  pure.push(performance.now() - t0);
  const mem = new MemoryStore();
  t0 = performance.now();
  const top = await tsGraph(mem);
  if (top.drvPath !== topPure.drvPath) throw new Error('pure and MemoryStore disagree');
  ours.push(performance.now() - t0);
  await mem.close();
  topPath = top.drvPath;

  const dir = mkdtempSync(path.join(tmpdir(), 'realise-bench-drv-'));
  const local = await LocalStore.open({ root: path.join(dir, 'ours') });
  t0 = performance.now();
  const top2 = await tsGraph(local);
  oursLocal.push(performance.now() - t0);
  await local.close();
  if (top2.drvPath !== topPath) throw new Error('LocalStore and MemoryStore disagree');

  const file = path.join(dir, 'graph.nix');
  writeFileSync(file, nixExpr());
  t0 = performance.now();
  const res = spawnSync('nix-instantiate', ['--store', path.join(dir, 'nix'), file], { env, encoding: 'utf8' });
  theirs.push(performance.now() - t0);
  if (res.status !== 0) throw new Error(res.stderr);
  if (res.stdout.trim() !== topPath) throw new Error(`nix-instantiate gave ${res.stdout.trim()}, we ${topPath}`);
  rmSync(dir, { recursive: true, force: true });
}
console.log(`instantiate ${N + 1} derivations (chain + fan-in), same top .drv as nix-instantiate: ${topPath}`);
console.log(`  derivation() computing only (in-memory text store): median ${median(pure).toFixed(0)} ms`);
console.log(`  derivation() into MemoryStore: median ${median(ours).toFixed(0)} ms`);
console.log(`  derivation() into LocalStore:  median ${median(oursLocal).toFixed(0)} ms`);
console.log(`  nix-instantiate (reference):   median ${median(theirs).toFixed(0)} ms`);
console.log(
  `  ratios to nix-instantiate: computing only ${(median(pure) / median(theirs)).toFixed(2)}, MemoryStore ${(median(ours) / median(theirs)).toFixed(2)}, LocalStore ${(median(oursLocal) / median(theirs)).toFixed(2)}`,
);

for (const [what, xs] of [
  ['computing only (in-memory text store)', pure],
  ['into `MemoryStore`', ours],
  ['into `LocalStore`', oursLocal],
] as const)
  emitRow({
    area: 'Store queries and derivations',
    reference: 'reference (same run)',
    measure: `\`derivation()\` ${what}, ${N + 1} derivations`,
    unit: 'ms',
    realise: median(xs),
    nix: median(theirs),
    nixNote: '`nix-instantiate`',
    ratio: median(xs) / median(theirs),
  });

// Parse / print / hash-modulo throughput over the .drv files of the graph.
const mem = new MemoryStore();
const top = await tsGraph(mem);
const texts: Array<[string, string]> = [];
for (const p of await mem.computeClosure([top.drvPath])) if (p.endsWith('.drv')) texts.push([p, await mem.readTextFile(p)]);
const bytes = texts.reduce((n, [, t]) => n + Buffer.byteLength(t), 0);
const parseT: number[] = [];
const printT: number[] = [];
const jsonT: number[] = [];
for (let r = 0; r < 5; r++) {
  let t0 = performance.now();
  const drvs = texts.map(([p, t]) => parseDerivation(t, derivationNameFromPath(p)));
  parseT.push(performance.now() - t0);
  t0 = performance.now();
  for (const d of drvs) printDerivation(d);
  printT.push(performance.now() - t0);
  const js = texts.map(([, t]) => JSON.stringify({ t }));
  t0 = performance.now();
  for (const j of js) JSON.parse(j);
  jsonT.push(performance.now() - t0);
}
const mbps = (ms: number) => (bytes / 1e6 / (ms / 1000)).toFixed(0);
console.log(`\n${texts.length} .drv files, ${(bytes / 1e6).toFixed(2)} MB:`);
console.log(
  `  parse median ${median(parseT).toFixed(1)} ms (${mbps(median(parseT))} MB/s); print ${median(printT).toFixed(1)} ms (${mbps(median(printT))} MB/s)`,
);
console.log(
  `  reference JSON.parse of the same text as one JSON string: ${median(jsonT).toFixed(1)} ms (${mbps(median(jsonT))} MB/s); parse/JSON ratio ${(median(parseT) / median(jsonT)).toFixed(2)}`,
);
const hashT: number[] = [];
for (let r = 0; r < 3; r++) {
  const hasher = new DerivationHasher(readDerivationFromStore(mem));
  const t0 = performance.now();
  await hasher.pathHashModulo(top.drvPath);
  hashT.push(performance.now() - t0);
}
console.log(`  hashDerivationModulo of the top (cold memo, reads every .drv): median ${median(hashT).toFixed(0)} ms`);
await mem.close();
