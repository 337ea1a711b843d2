/**
 * What starting a process costs on this machine, below any engine: a small C program (compiled here with
 * `cc`) times, per process, fork + exit, vfork + exit, and fork or vfork + exec + wait of `/bin/true`,
 * static busybox and `/bin/sh -c true`, one at a time and two at a time. The builders of bench/dag.ts pay
 * the exec of `/bin/sh`; on a paravirtualised VM, where page-table updates are hypervisor exits, that cost
 * can dominate, and two at a time may be no faster than one (docs/performance.md, "The machine's floor").
 *
 *   npx tsx bench/process-floor.ts            # 400 processes per line
 *   BENCH_FLOOR_N=1000 npx tsx bench/process-floor.ts
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { emitRow, num } from './_report.js';

const SOURCE = String.raw`
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
/* usage: floor N PAR MODE [PROGRAM ARGS...]; MODE: fork-exit | vfork-exit | fork-exec | vfork-exec */
int main(int argc, char **argv) {
  int n = atoi(argv[1]), par = atoi(argv[2]);
  const char *mode = argv[3];
  char *env[] = { "PATH=/path-not-set", 0 };
  int useV = !strncmp(mode, "vfork", 5), exec = strstr(mode, "exec") != 0;
  double t0 = now();
  for (int i = 0; i < n; i += par) {
    for (int j = 0; j < par; j++) {
      pid_t pid = useV ? vfork() : fork();
      if (pid == 0) { if (exec) execve(argv[4], argv + 4, env); _exit(exec ? 127 : 0); }
    }
    for (int j = 0; j < par; j++) wait(0);
  }
  printf("%.3f\n", (now() - t0) / n);
  return 0;
}
`;

const n = Number(process.env.BENCH_FLOOR_N ?? 400);
const dir = mkdtempSync(path.join(tmpdir(), 'realise-bench-floor-'));
try {
  writeFileSync(path.join(dir, 'floor.c'), SOURCE);
  const exe = path.join(dir, 'floor');
  execFileSync(process.env.CC ?? 'cc', ['-O2', '-o', exe, path.join(dir, 'floor.c')]);
  const run = (par: number, mode: string, ...prog: string[]) => Number(execFileSync(exe, [String(n), String(par), mode, ...prog], { encoding: 'utf8' }).trim());
  console.log(
    `process start cost on this machine, ms per process (${n} processes per line; load ${execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ').slice(0, 3).join(' ')})`,
  );
  console.log(`${'what'.padEnd(44)} 1 at a time   2 at a time`);
  const line = (what: string, mode: string, ...prog: string[]) => {
    const [one, two] = [run(1, mode, ...prog), run(2, mode, ...prog)];
    console.log(`${what.padEnd(44)} ${one.toFixed(3).padStart(10)}   ${two.toFixed(3).padStart(10)}`);
    emitRow({
      area: "The machine's floor",
      subject: 'this machine',
      measure: `${what}, per process`,
      unit: 'ms',
      realise: one,
      realiseNote: `1 at a time; 2 at a time: ${num(two)} ms`,
    });
  };
  line('fork + exit', 'fork-exit');
  line('vfork + exit', 'vfork-exit');
  for (const [label, prog] of [
    ['/bin/true', ['/bin/true']],
    ['static busybox true', ['/bin/busybox', 'true']],
    ['/bin/sh -c true', ['/bin/sh', '-c', 'true']],
  ] as const) {
    if (!existsSync(prog[0])) continue;
    line(`fork + exec + wait, ${label}`, 'fork-exec', ...prog);
    line(`vfork + exec + wait, ${label}`, 'vfork-exec', ...prog);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
