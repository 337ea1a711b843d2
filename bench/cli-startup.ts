/**
 * Benchmark: CLI start-up and the no-op build, whole processes, beside Nix 2.8 in the same run.
 *   - `realise --version` against `nix-store --version`, with `node -e 0` (Node's own start) as the floor;
 *   - a no-op `realise build` of bench/dag.ts's 200-node DAG (10 layers × 20, instantiated by real
 *     `nix-instantiate` into a plain store and built once by `nix-store --realise`, so every output is
 *     valid) against `nix-store --realise` of the same 200 `.drv` files on the same store.
 * Each round runs every command once, in an order that rotates every round (so no command always follows
 * the same one); figures are medians over the rounds, with min–max of the per-round ratios. Wall time is
 * taken around the command inside bash, CPU time (user + system) from bash's `times`: on a loaded machine
 * the CPU figures move far less than the wall ones.
 *
 *   npx tsx bench/cli-startup.ts                              # 21 rounds
 *   REALISE_BENCH_RUNS=41 npx tsx bench/cli-startup.ts
 *   REALISE_BENCH_SMALL=1 npx tsx bench/cli-startup.ts        # 7 rounds
 *
 * `realise` is `bin/realise`, the launcher an installed `realise` is (run by /bin/sh, which moves
 * NODE_EXTRA_CA_CERTS aside and execs Node on it), after `node scripts/bundle-cli.mjs` (the bundle of the
 * current sources). When NODE_EXTRA_CA_CERTS is set, Node's start and `node bin/realise.js` (no launcher,
 * Node reads the certificates) are timed with and without it as well, to show what the floor is made of
 * and what the launcher saves. Targets: `--version` ≤ 70 ms, the no-op ≤ 80 ms (issue #20).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { atMost, emitRow, num } from './_report.js';
import { fmt, instantiateDag, median, nixEnv, SMALL } from './dag.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const launcher = path.join(root, 'bin/realise');
const direct = path.join(root, 'bin/realise.js');

interface Command {
  readonly label: string;
  readonly file: string;
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
}

/** One run's wall and CPU milliseconds (user + system of the command, from bash's `times`). */
interface Run {
  readonly wall: number;
  readonly cpu: number;
}

const OUT = path.join(tmpdir(), `realise-bench-cli-startup-${process.pid}.out`);

/**
 * Run `c` once under bash, which times it (EPOCHREALTIME around the command, so bash's own start is not
 * counted) and reports its CPU time (`times`: the children's user and system time, in milliseconds).
 * Throws when the command fails or prints something unexpected.
 */
function timed(c: Command, check: (stdout: string) => boolean): Run {
  const script = 's=$EPOCHREALTIME; "$@" > "$OUT"; st=$?; e=$EPOCHREALTIME; times; echo "$s $e $st"';
  const r = spawnSync('bash', ['-c', script, 'bash', c.file, ...c.args], { env: { ...c.env, OUT }, encoding: 'utf8', maxBuffer: 1 << 26 });
  const lines = r.stdout.trim().split('\n');
  const [s, e, status] = lines[2]!.split(' ').map(Number);
  if (status !== 0 || !check(readFileSync(OUT, 'utf8'))) throw new Error(`${c.label} failed (${status}):\n${r.stderr.slice(-1000)}`);
  // `times`' second line: the children's user and system time, as `0m0.047s 0m0.012s`.
  const secs = lines[1]!.split(' ').map((t) => {
    const m = /^(\d+)m([\d.]+)s$/.exec(t)!;
    return Number(m[1]) * 60 + Number(m[2]);
  });
  return { wall: (e! - s!) * 1000, cpu: (secs[0]! + secs[1]!) * 1000 };
}

function main(): void {
  const rounds = Number(process.env.REALISE_BENCH_RUNS ?? (SMALL ? 7 : 21));
  const bundled = spawnSync(process.execPath, [path.join(root, 'scripts/bundle-cli.mjs')], { stdio: 'inherit' });
  if (bundled.status !== 0) throw new Error('scripts/bundle-cli.mjs failed');
  const d = instantiateDag(200, 'realise-bench-cli-startup-');
  const nixStore = (args: string[]): Command => ({ label: `nix-store ${args[0]}`, file: 'nix-store', args, env: nixEnv() });
  const build = ['--store', d.uri, '--realise', ...d.drvs, '--option', 'sandbox', 'false', '--max-jobs', '2'];
  const first = spawnSync('nix-store', build, { env: nixEnv(), encoding: 'utf8', maxBuffer: 1 << 26 });
  if (first.status !== 0) throw new Error(`nix-store --realise failed (${first.status}):\n${first.stderr.slice(-2000)}`);
  const realise = (args: string[]): Command => ({ label: `realise ${args[0]}`, file: launcher, args, env: process.env });
  const commands: [string, Command, (out: string) => boolean][] = [
    ['node -e 0', { label: 'node -e 0', file: process.execPath, args: ['-e', '0'], env: process.env }, () => true],
    ['realise --version', realise(['--version']), (o) => o.startsWith('realise ')],
    ['nix-store --version', nixStore(['--version']), (o) => o.startsWith('nix-store ')],
    [
      'realise build (no-op, 200)',
      realise(['build', '--store', d.uri, '--option', 'substituters', '', '--option', 'sandbox', 'false', ...d.drvs]),
      (o) => o.split('\n').filter(Boolean).length === 200,
    ],
    ['nix-store --realise (no-op, 200)', nixStore(build), (o) => o.split('\n').filter(Boolean).length === 200],
  ];
  // NODE_EXTRA_CA_CERTS makes every Node process parse that bundle of certificates as it starts (tens of
  // milliseconds for a system's whole bundle), before any of our code runs; the launcher hides it from
  // Node's start. Node's start without it is the floor; `node bin/realise.js` with it is what the launcher
  // saves, and without it what the launcher's shell and exec cost.
  const certs = process.env.NODE_EXTRA_CA_CERTS !== undefined;
  if (certs) {
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const [node, version, , noop] = commands;
    const viaNode = (c: Command, e: NodeJS.ProcessEnv): Command => ({ ...c, file: process.execPath, args: [direct, ...c.args], env: e });
    commands.push(['node -e 0, no extra CA certs', { ...node![1], env }, () => true]);
    commands.push(['node bin/realise.js --version', viaNode(version![1], process.env), version![2]]);
    commands.push(['node bin/realise.js --version, no certs', viaNode(version![1], env), version![2]]);
    commands.push(['node bin/realise.js no-op', viaNode(noop![1], process.env), noop![2]]);
    commands.push(['node bin/realise.js no-op, no certs', viaNode(noop![1], env), noop![2]]);
  }
  const times = new Map<string, number[]>(commands.map(([l]) => [l, []]));
  const cpu = new Map<string, number[]>(commands.map(([l]) => [l, []]));
  const loads: number[] = [];
  // One warm-up round (page cache; the bundle's first compile, which writes V8's code cache that every
  // later run of the same command takes, as after a user's first run), not counted.
  for (const [, c, check] of commands) timed(c, check);
  for (let i = 0; i < rounds; i++) {
    loads.push(loadavg()[0]!);
    for (let k = 0; k < commands.length; k++) {
      const [label, c, check] = commands[(i + k) % commands.length]!;
      const r = timed(c, check);
      times.get(label)!.push(r.wall);
      cpu.get(label)!.push(r.cpu);
    }
  }
  const med = (m: Map<string, number[]>, l: string) => median(m.get(l)!);
  const ratios = (m: Map<string, number[]>, a: string, b: string) => m.get(a)!.map((x, i) => x / m.get(b)![i]!);
  const spread = (xs: number[]) => `${fmt(Math.min(...xs), 2)}–${fmt(Math.max(...xs), 2)}`;
  console.log(`# CLI start-up: whole processes, ${rounds} rounds, medians (load avg ${fmt(Math.min(...loads))}–${fmt(Math.max(...loads))})`);
  console.log(`${'command'.padEnd(40)} ${'wall ms'.padStart(9)} ${'CPU ms'.padStart(9)}`);
  for (const [label] of commands) console.log(`${label.padEnd(40)} ${fmt(med(times, label)).padStart(9)} ${fmt(med(cpu, label)).padStart(9)}`);
  const row = (what: string, a: string, b: string) => {
    const [w, c] = [ratios(times, a, b), ratios(cpu, a, b)];
    console.log(`${what.padEnd(40)} wall ${fmt(median(w), 2)} (${spread(w)}), CPU ${fmt(median(c), 2)} (${spread(c)})`);
  };
  row('ratio --version / node -e 0', 'realise --version', 'node -e 0');
  row('ratio --version / nix-store', 'realise --version', 'nix-store --version');
  row('ratio no-op / nix-store', 'realise build (no-op, 200)', 'nix-store --realise (no-op, 200)');
  row('ratio no-op / node -e 0', 'realise build (no-op, 200)', 'node -e 0');
  if (certs) {
    row('ratio --version / node, no certs', 'realise --version', 'node -e 0, no extra CA certs');
    row('ratio no-op / node, no certs', 'realise build (no-op, 200)', 'node -e 0, no extra CA certs');
  }
  console.log(
    `targets: --version ≤ 70 ms (median ${fmt(med(times, 'realise --version'))}), no-op ≤ 80 ms (median ${fmt(med(times, 'realise build (no-op, 200)'))})`,
  );
  const area = 'CLI start-up and the no-op build';
  const [version, noop, nixNoop] = ['realise --version', 'realise build (no-op, 200)', 'nix-store --realise (no-op, 200)'];
  const nodeFloor = certs ? 'node -e 0, no extra CA certs' : 'node -e 0';
  const vsFloor = ratios(times, version, nodeFloor);
  const ms = (l: string) => `${num(med(times, l))} ms`;
  const vsNix = (a: string, b: string) => {
    const w = ratios(times, a, b);
    return { ratio: median(w), ratioMin: Math.min(...w), ratioMax: Math.max(...w), ratioNote: `CPU ${num(median(ratios(cpu, a, b)))}` };
  };
  emitRow({
    area,
    measure: '`realise --version` (launcher)',
    unit: 'ms',
    realise: med(times, version),
    realiseNote: `${num(med(cpu, version))} ms CPU`,
    nix: med(times, 'nix-store --version'),
    nixNote: '`nix-store --version`',
    ...vsNix(version, 'nix-store --version'),
    floor: `\`node -e 0\` ${ms(nodeFloor)}${certs ? ` (${ms('node -e 0')} with \`NODE_EXTRA_CA_CERTS\`)` : ''}; realise / floor ${num(median(vsFloor))} (${num(Math.min(...vsFloor))}–${num(Math.max(...vsFloor))})`,
    target: '≤ 70 ms',
    met: atMost(med(times, version), 70),
  });
  if (certs)
    emitRow({
      area,
      measure: '`node bin/realise.js --version` (no launcher), with / without `NODE_EXTRA_CA_CERTS`',
      unit: 'ms',
      realise: `${ms('node bin/realise.js --version')} / ${ms('node bin/realise.js --version, no certs')}`,
    });
  emitRow({
    area,
    measure: 'no-op `realise build`, 200 targets, every output valid (launcher)',
    unit: 'ms',
    realise: med(times, noop),
    realiseNote: `${num(med(cpu, noop))} ms CPU`,
    nix: med(times, nixNoop),
    nixNote: `\`nix-store --realise\`, ${num(med(cpu, nixNoop))} ms CPU`,
    ...vsNix(noop, nixNoop),
    target: '≤ 80 ms',
    met: atMost(med(times, noop), 80),
  });
  if (certs)
    emitRow({
      area,
      measure: 'the same, `node bin/realise.js`, with / without `NODE_EXTRA_CA_CERTS`',
      unit: 'ms',
      realise: `${ms('node bin/realise.js no-op')} / ${ms('node bin/realise.js no-op, no certs')}`,
    });
  rmSync(OUT, { force: true });
  spawnSync('rm', ['-rf', d.dir]);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
