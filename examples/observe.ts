/**
 * Seeing a build: a small DAG with Nix's internal-json stream written to a file (what nix-output-monitor
 * and CI dashboards read), a Chrome trace of the run (open it in https://ui.perfetto.dev) and the
 * self-contained HTML report with the critical path.
 *
 *   npx tsx examples/observe.ts      # writes observe-log.json, observe-trace.json, observe-report.html in $TMPDIR
 */
import { openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { BuildEngine, attachNixJsonLog, derivation, recordTrace, renderReport, analyseTrace, formatDuration, type OutputValue } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();
const stamp = String(Date.now());
const mk = (name: string, seconds: number, deps: OutputValue[] = []) =>
  derivation(store, {
    name,
    system: 'x86_64-linux',
    builder: sh,
    stamp,
    deps,
    args: ['-c', `echo "building ${name}"; sleep ${seconds}; echo ${name} > $out`],
  });
const base = await mk('observe-base', 0.3);
const left = await mk('observe-left', 0.6, [base.out]);
const right = await mk('observe-right', 0.1, [base.out]);
const top = await mk('observe-top', 0.2, [left.out, right.out]);

const engine = new BuildEngine({ store, sandbox: sandboxed, maxJobs: 2 });
const out = (f: string) => path.join(tmpdir(), f);
const fd = openSync(out('observe-log.json'), 'w');
// Nix's `@nix {...}` lines, one per activity start/stop, log line, progress update and message.
const log = attachNixJsonLog(engine, (line) => writeSync(fd, line));
// A timeline: one track per build slot, and the derivation graph for the critical path.
const trace = recordTrace(engine);

log.startRealise();
await engine.buildPaths([top.drvPath]);
log.close();
closeSync(fd);
const t = await trace.writeFile(out('observe-trace.json'));
writeFileSync(out('observe-report.html'), renderReport(t, { title: 'observe example' }));

const a = analyseTrace(t);
console.log(`critical path (${formatDuration(a.criticalTotal)}):`);
for (const p of a.criticalPath) console.log(`  ${p}`);
console.log(`wrote ${out('observe-log.json')}, ${out('observe-trace.json')} and ${out('observe-report.html')}`);
await engine.close();
await store.close();
