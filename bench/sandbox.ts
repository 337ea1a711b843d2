/**
 * Sandbox start cost: N trivial builds (`echo > $out` with static busybox) through LinuxSandbox
 * (helper and bwrap backends) and NoSandbox (forked from the helper server, or spawned from Node), against real Nix 2.8 realising N trivial derivations
 * sandboxed (`--option sandbox true`, chroot store, max-jobs 1) in the same run. For Nix the figure is
 * wall time / N (it includes Nix's own registration work: that is the cost a user sees per build).
 *
 *   npx tsx bench/sandbox.ts            # 200 builds
 *   BENCH_SANDBOX_BUILDS=20 npx tsx bench/sandbox.ts
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { LinuxSandbox, type LinuxSandboxBackend } from '../src/platform/linux-sandbox.js';
import { NoSandbox } from '../src/platform/no-sandbox.js';
import type { Sandbox, SandboxRequest } from '../src/platform/sandbox.js';
import { emitRow, num } from './_report.js';

const loadBefore = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const N = Number(process.env.BENCH_SANDBOX_BUILDS ?? 200);
const dir = mkdtempSync(path.join(tmpdir(), 'realise-bench-sandbox-'));
const nixEnv = {
  ...process.env,
  NIX_REMOTE: '',
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n',
  NIX_USER_CONF_FILES: '/dev/null',
};

/** CPU time (ms) of this process plus all children it has reaped (and their reaped descendants). */
function cpuMs(): number {
  const f = readFileSync('/proc/self/stat', 'utf8')
    .slice(readFileSync('/proc/self/stat', 'utf8').lastIndexOf(')') + 2)
    .split(' ');
  const tick = 100; // USER_HZ
  const [utime, stime, cutime, cstime] = [f[11], f[12], f[13], f[14]].map(Number) as [number, number, number, number];
  return ((utime + stime + cutime + cstime) * 1000) / tick;
}

/** CPU time (ms) of our live child processes, including what they reaped. */
function childrenCpuMs(): number {
  let total = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    let kids = '';
    try {
      kids = readFileSync(`/proc/self/task/${tid}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const pid of kids.split(' ').filter(Boolean)) {
      try {
        const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        total += ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / 100;
      } catch {
        /* exited */
      }
    }
  }
  return total;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function nix(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { env: nixEnv, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

// --- Real Nix 2.8 -----------------------------------------------------------------------------------
mkdirSync(path.join(dir, 'bb/bin'), { recursive: true });
copyFileSync('/bin/busybox', path.join(dir, 'bb/bin/busybox'));
symlinkSync('busybox', path.join(dir, 'bb/bin/sh'));
writeFileSync(
  path.join(dir, 'default.nix'),
  `
let bb = ./bb; in
builtins.genList (i: derivation {
  name = "trivial-\${toString i}"; system = "x86_64-linux";
  builder = "\${bb}/bin/sh"; args = [ "-c" "echo \${toString i} > $out" ];
}) ${N}
`,
);
const nixRoot = path.join(dir, 'nix-root');
const drvs = nix('nix-instantiate', ['--store', nixRoot, path.join(dir, 'default.nix')])
  .split('\n')
  .filter(Boolean);
const t0 = performance.now();
const c0 = cpuMs();
nix('nix-store', ['--store', nixRoot, '--realise', ...drvs, '--option', 'sandbox', 'true', '--max-jobs', '1']);
const nixPerBuild = (performance.now() - t0) / N;
const nixCpuPerBuild = (cpuMs() - c0) / N;

// --- Ours ---------------------------------------------------------------------------------------------
const realStoreDir = path.join(dir, 'ours/nix/store');
mkdirSync(realStoreDir, { recursive: true });
const bbPath = '/nix/store/' + 'b'.repeat(32) + '-busybox';
mkdirSync(path.join(realStoreDir, path.basename(bbPath), 'bin'), { recursive: true });
copyFileSync('/bin/busybox', path.join(realStoreDir, path.basename(bbPath), 'bin/busybox'));
symlinkSync('busybox', path.join(realStoreDir, path.basename(bbPath), 'bin/sh'));

let seq = 0;
function request(sandboxed: boolean): SandboxRequest {
  const i = seq++;
  const hash = i.toString().padStart(32, '0');
  const out = `/nix/store/${hash}-trivial-${i}`;
  const buildDir = mkdtempSync(path.join(dir, 'build-'));
  return {
    drvPath: `/nix/store/${hash}-trivial-${i}.drv`,
    builder: sandboxed ? `${bbPath}/bin/sh` : '/bin/busybox',
    args: sandboxed ? ['-c', `echo ${i} > $out`] : ['sh', '-c', `echo ${i} > $out`],
    env: { PATH: '/path-not-set', HOME: '/homeless-shelter', NIX_BUILD_TOP: '/build', out: sandboxed ? out : path.join(realStoreDir, path.basename(out)) },
    buildDir,
    sandboxBuildDir: sandboxed ? '/build' : buildDir,
    storeDir: '/nix/store',
    realStoreDir: sandboxed ? realStoreDir : realStoreDir,
    inputPaths: [bbPath],
    outputPaths: [out],
    network: false,
  };
}

async function measure(sb: Sandbox, sandboxed: boolean): Promise<{ median: number; mean: number; cpu: number }> {
  const times: number[] = [];
  const all0 = performance.now();
  const c0 = cpuMs();
  for (let i = 0; i < N; i++) {
    const req = request(sandboxed);
    const t = performance.now();
    const r = await sb.run(req);
    times.push(performance.now() - t);
    if (r.kind !== 'exited' || r.code !== 0) throw new Error(`build ${i} failed: ${JSON.stringify(r)}`);
    rmSync(req.buildDir, { recursive: true, force: true });
  }
  return { median: median(times), mean: (performance.now() - all0) / N, cpu: (cpuMs() - c0) / N };
}

const results: Record<string, { median: number; mean: number; cpu: number }> = {};
const variants: [string, LinuxSandboxBackend, boolean][] = [
  ['helper server', 'helper', true],
  ['helper per build', 'helper', false],
  ['bwrap', 'bwrap', false],
];
for (const [label, backend, server] of variants) {
  const sb = new LinuxSandbox({ backend, server });
  await sb.backend();
  await sb.run(request(true)); // warm-up (compiles the helper on first use, starts the server)
  const server0 = childrenCpuMs();
  const r = await measure(sb, true);
  // A resident helper server is our child but not yet reaped: add its CPU (and its reaped builds').
  results[`LinuxSandbox (${label})`] = { ...r, cpu: r.cpu + (childrenCpuMs() - server0) / N };
  sb.close();
}
for (const launcher of ['helper', 'node'] as const) {
  const sb = new NoSandbox({ launcher });
  await sb.run(request(false)); // warm-up (compiles the helper on first use, starts the server)
  const server0 = childrenCpuMs();
  const r = await measure(sb, false);
  // The helper server reaps the builders: their CPU is in the (live) server's counters.
  results[`NoSandbox (${launcher === 'helper' ? 'helper server, default' : 'Node spawn'})`] = { ...r, cpu: r.cpu + (childrenCpuMs() - server0) / N };
}

console.log(`sandbox start cost, ${N} trivial builds, sequential`);
console.log(`  load average before: ${loadBefore}, after: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
console.log(`  Nix 2.8 sandboxed (nix-store --realise, wall / builds): ${nixPerBuild.toFixed(2)} ms/build, CPU ${nixCpuPerBuild.toFixed(2)} ms/build`);
for (const [name, r] of Object.entries(results)) {
  console.log(
    `  ${name.padEnd(40)} wall median ${r.median.toFixed(2)} ms, mean ${r.mean.toFixed(2)} ms/build (ratio ${(r.mean / nixPerBuild).toFixed(3)}); CPU ${r.cpu.toFixed(2)} ms/build (ratio ${(r.cpu / nixCpuPerBuild).toFixed(3)})`,
  );
  emitRow({
    area: 'Sandbox',
    measure: `one build at a time, ${N} builds, ${name}, per build (mean)`,
    unit: 'ms',
    realise: r.mean,
    realiseNote: `median ${num(r.median)} ms; CPU ${num(r.cpu)} ms`,
    nix: nixPerBuild,
    nixNote: `sandboxed; CPU ${num(nixCpuPerBuild)} ms`,
    ratio: r.mean / nixPerBuild,
    ratioNote: `CPU ${num(r.cpu / nixCpuPerBuild)}`,
  });
}
rmSync(dir, { recursive: true, force: true });
