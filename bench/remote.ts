/**
 * Remote builds: trivial derivations built on real Nix 2.8 remotes (`nix-daemon --stdio` over private
 * chroot stores, run the way Nix runs `localhost` machines), by our RemoteBuilder over persistent
 * connections vs Nix 2.8's own build hook (`nix-store --realise --max-jobs 0 --builders ...`) with the
 * same machines, in the same run.
 *
 *   npx tsx bench/remote.ts            # N=20 builds per scenario
 *   REMOTE_BENCH_N=50 npx tsx bench/remote.ts
 *
 * Scenarios: (1) one machine, one slot: builds one after another (per-build latency);
 * (2) two machines with 2 slots each, all builds submitted at once (throughput);
 * (3) a DAG of REMOTE_BENCH_DAG nodes (default 200: 10 layers, each node depending on two of the layer
 *     below) through BuildEngine with 1 local slot plus the two machines, vs `nix-store --realise
 *     --max-jobs 1 --builders` with the same machines.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { LocalStore } from '../src/store/local-store.js';
import { machine, formatMachines, type Machine } from '../src/remote/machines.js';
import { buildOnRemote, MachineBuilder } from '../src/remote/remote-builder.js';
import { nixInstantiate, removeTreeSync, runNix, tempDir } from '../test/helpers/nix.js';
import { NIX_CONF, remoteEnv } from '../test/remote/fixture.js';
import { parseDerivation, derivationNameFromPath } from '../src/derivation/derivation.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { BuildEngine } from '../src/scheduler/build-engine.js';
import { emitRow, num } from './_report.js';

const N = Number(process.env.REMOTE_BENCH_N ?? 20);
const dir = tempDir('realise-bench-remote-');

function expr(salt: string): string {
  return `builtins.genList (i: derivation { name = "triv-\${toString i}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo \${toString i} > $out" ]; salt = "${salt}"; }) ${N}`;
}

function instantiate(root: string, salt: string): string[] {
  const file = path.join(dir, `expr-${salt}.nix`);
  writeFileSync(file, expr(salt));
  return nixInstantiate(root, file, { file: true });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function machinesFor(tag: string, count: number, maxJobs: number): Machine[] {
  return Array.from({ length: count }, (_, i) =>
    machine({ storeUri: `ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(dir, `${tag}-remote-${i}`))}`, maxJobs }),
  );
}

async function ours(tag: string, machines: Machine[], concurrent: boolean): Promise<{ wall: number; perBuild: number[] }> {
  const root = path.join(dir, `${tag}-ours-local`);
  const drvs = instantiate(root, tag);
  const store = await LocalStore.open({ root });
  const builders = machines.map((m) => new MachineBuilder(m, { env: remoteEnv() }));
  const read = (p: string) => parseDerivation(readFileSync(path.join(root, p), 'utf8'), derivationNameFromPath(p));
  const perBuild: number[] = [];
  let redone = 0;
  const one = async (p: string): Promise<void> => {
    const t = performance.now();
    const r = await buildOnRemote(builders, p, read(p), {}, { store, onMachineFailed: () => redone++ });
    if (r.kind === 'built' && process.env.REMOTE_BENCH_VERBOSE) {
      const tm = r.result.timings;
      console.log(
        `  ${path.basename(p)} on ${r.result.machine.slice(-12)}: connect ${tm.connect.toFixed(0)} ms, upload ${tm.upload.toFixed(0)} ms, build ${tm.build.toFixed(0)} ms, download ${tm.download.toFixed(0)} ms; ${(performance.now() - t).toFixed(0)} ms from submission`,
      );
    }
    if (r.kind !== 'built' || r.result.status !== 'built')
      throw new Error(`build of ${p} failed: ${JSON.stringify(r.kind === 'built' ? r.result.errorMsg : r.error.message)}`);
    perBuild.push((performance.now() - t) / 1000);
  };
  const t0 = performance.now();
  if (concurrent) await Promise.all(drvs.map(one));
  else for (const p of drvs) await one(p);
  const wall = (performance.now() - t0) / 1000;
  if (redone) console.log(`  (${redone} builds were redone on another machine after a connection failure)`);
  await Promise.all(builders.map((b) => b.close()));
  await store.close();
  return { wall, perBuild };
}

function nixRef(tag: string, machines: Machine[]): { wall: number } {
  const root = path.join(dir, `${tag}-nix-local`);
  const drvs = instantiate(root, tag);
  const t0 = performance.now();
  const r = runNix('nix-store', ['--store', root, '--realise', ...drvs, '--max-jobs', '0', '--builders', formatMachines(machines).replace(/\n/g, ';')], {
    env: { NIX_CONFIG: NIX_CONF },
  });
  const wall = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`nix-store --realise failed:\n${r.stderr}`);
  return { wall };
}

const DAG = Number(process.env.REMOTE_BENCH_DAG ?? 200);

function dagExpr(salt: string): string {
  const layers = 10;
  const width = Math.max(1, Math.round(DAG / layers));
  return `let
  mk = name: deps: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo \${name} \${builtins.concatStringsSep " " deps} > $out" ]; salt = "${salt}"; };
  layer = l: builtins.genList (i: mk "n-\${toString l}-\${toString i}"
    (if l == 0 then [] else [ (builtins.elemAt (layer (l - 1)) i) (builtins.elemAt (layer (l - 1)) (if i + 1 == ${width} then 0 else i + 1)) ])) ${width};
  top = layer ${layers - 1};
in mk "root" top`;
}

async function dagOurs(tag: string, machines: Machine[]): Promise<number> {
  const root = path.join(dir, `${tag}-ours-local`);
  const file = path.join(dir, `dag-${tag}.nix`);
  writeFileSync(file, dagExpr(tag));
  const [drv] = nixInstantiate(root, file, { file: true });
  const store = await LocalStore.open({ root });
  const builders = machines.map((m) => new MachineBuilder(m, { env: remoteEnv() }));
  const engine = new BuildEngine({ store, maxJobs: 1, builders, sandbox: true, sandboxPaths: ['/bin/sh=/bin/busybox'] });
  const t0 = performance.now();
  const [r] = await engine.buildPaths([{ drvPath: drv!, outputs: ['out'] }]);
  const wall = (performance.now() - t0) / 1000;
  if (r!.result.status !== 'built') throw new Error(`DAG build failed: ${r!.result.errorMsg}`);
  await Promise.all(builders.map((b) => b.close()));
  await store.close();
  return wall;
}

function dagNix(tag: string, machines: Machine[]): number {
  const root = path.join(dir, `${tag}-nix-local`);
  const file = path.join(dir, `dag-${tag}.nix`);
  writeFileSync(file, dagExpr(tag));
  const [drv] = nixInstantiate(root, file, { file: true });
  const t0 = performance.now();
  const r = runNix('nix-store', ['--store', root, '--realise', drv!, '--max-jobs', '1', '--builders', formatMachines(machines).replace(/\n/g, ';')], {
    env: { NIX_CONFIG: NIX_CONF },
  });
  if (r.status !== 0) throw new Error(`nix-store --realise failed:\n${r.stderr}`);
  return (performance.now() - t0) / 1000;
}

async function main(): Promise<void> {
  const salt = randomBytes(4).toString('hex');
  console.log(`remote builds, N=${N} trivial derivations per scenario (work dir ${dir}, removed at the end)`);

  const seqM = (t: string) => machinesFor(t, 1, 1);
  const o1 = await ours(`seq-${salt}`, seqM(`seq-ours-${salt}`), false);
  const n1 = nixRef(`seq-${salt}`, seqM(`seq-nix-${salt}`));
  const ourPer = median(o1.perBuild);
  const nixPer = n1.wall / N;
  console.log(`\n1 machine x 1 slot, sequential`);
  console.log(
    `  realise RemoteBuilder: median ${ourPer.toFixed(3)} s/build (first ${o1.perBuild[0]!.toFixed(3)} s incl. connect), wall ${o1.wall.toFixed(2)} s`,
  );
  console.log(`  Nix 2.8 build hook:    ${nixPer.toFixed(3)} s/build (wall ${n1.wall.toFixed(2)} s / ${N})`);
  console.log(`  ratio Nix/ours: ${(nixPer / ourPer).toFixed(1)}x`);

  const parM = (t: string) => machinesFor(t, 2, 2);
  const o2 = await ours(`par-${salt}`, parM(`par-ours-${salt}`), true);
  const n2 = nixRef(`par-${salt}`, parM(`par-nix-${salt}`));
  console.log(`\n2 machines x 2 slots, all submitted at once`);
  console.log(
    `  realise: wall ${o2.wall.toFixed(2)} s = ${(o2.wall / N).toFixed(3)} s/build (latency median ${median(o2.perBuild).toFixed(3)} s, max ${Math.max(...o2.perBuild).toFixed(3)} s)`,
  );
  console.log(`  Nix 2.8: wall ${n2.wall.toFixed(2)} s = ${(n2.wall / N).toFixed(3)} s/build`);
  console.log(`  ratio Nix/ours: ${(n2.wall / o2.wall).toFixed(1)}x`);
  let dag: { nodes: number; ours: number; nix: number } | undefined;
  if (DAG > 0) {
    const nodes = 10 * Math.max(1, Math.round(DAG / 10)) + 1;
    const o3 = await dagOurs(`dag-${salt}`, parM(`dag-ours-${salt}`));
    const n3 = dagNix(`dag-${salt}`, parM(`dag-nix-${salt}`));
    dag = { nodes, ours: o3, nix: n3 };
    console.log(`\n${nodes}-node DAG, 1 local slot + 2 machines x 2 slots`);
    console.log(`  realise BuildEngine: wall ${o3.toFixed(2)} s`);
    console.log(`  Nix 2.8:             wall ${n3.toFixed(2)} s`);
    console.log(`  ratio Nix/ours: ${(n3 / o3).toFixed(1)}x`);
  }
  const area = 'Remote builds';
  const vs = (o: number, x: number) => ({ ratio: o / x, ratioNote: `Nix / realise ${num(x / o)}` });
  emitRow({
    area,
    measure: `1 machine × 1 slot, ${N} builds one after another (\`--max-jobs 0\`), per build`,
    unit: 's',
    realise: ourPer,
    realiseNote: `median; the first, with connect, ${num(o1.perBuild[0]!)} s`,
    nix: nixPer,
    ...vs(ourPer, nixPer),
    target: '< 0.5 s per remote build',
    met: ourPer < 0.5,
  });
  emitRow({
    area,
    measure: `2 machines × 2 slots, ${N} builds at once (\`--max-jobs 0\`), wall`,
    unit: 's',
    realise: o2.wall,
    realiseNote: `${num(o2.wall / N)} s per build`,
    nix: n2.wall,
    ...vs(o2.wall, n2.wall),
    target: '< 0.5 s per remote build',
    met: o2.wall / N < 0.5,
  });
  if (dag)
    emitRow({
      area,
      measure: `${dag.nodes}-node DAG through \`BuildEngine\`, 1 local slot + 2 machines × 2 slots (\`--max-jobs 1\`), wall`,
      unit: 's',
      realise: dag.ours,
      nix: dag.nix,
      ...vs(dag.ours, dag.nix),
    });
  console.log(`\nRESULT ${JSON.stringify({ N, seq: { ours: ourPer, nix: nixPer }, par: { ours: o2.wall / N, nix: n2.wall / N }, dag })}`);
}

try {
  await main();
} finally {
  // The remotes' stores hold read-only store paths: removed as the tests remove theirs.
  removeTreeSync(dir);
}
