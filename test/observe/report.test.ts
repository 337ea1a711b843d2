/**
 * The HTML report of a real run (NoSandbox builders that sleep, one that fails, keepGoing), opened in a
 * real headless Chromium: it renders without errors, every build and the critical path are in the DOM,
 * and a screenshot is kept in test-artifacts/ (gitignored). `realise report` writes the same page.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { recordTrace, type TraceFile } from '../../src/observe/trace.js';
import { analyseTrace, renderReport } from '../../src/observe/report.js';
import { LocalStore } from '../../src/store/local-store.js';
import { IN_CI, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { removeTree, writeTestDrv } from '../scheduler/helpers.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test-artifacts/observe');

/** Use as `describe.skipIf(!chromiumOk())`: in CI a missing Chromium is an error (apt-get install chromium). */
function chromiumOk(): boolean {
  if (!CHROMIUM && IN_CI) throw new Error('the report test needs Chromium (apt-get install chromium)');
  return !!CHROMIUM;
}

function chromium(args: string[], profile: string): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(
    CHROMIUM!,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--user-data-dir=${profile}`,
      '--enable-logging=stderr',
      '--v=0',
      ...args,
    ],
    { encoding: 'utf8', timeout: 90_000, maxBuffer: 1 << 26 },
  );
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? '', status: r.status };
}

describe.skipIf(!chromiumOk())('the HTML report in headless Chromium', () => {
  let root: string;
  let store: LocalStore;
  let trace: TraceFile;
  let html: string;
  const drvs: Record<string, string> = {};

  beforeAll(async () => {
    root = tempDir('realise-obs-report-');
    store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
    const mk = (name: string, deps: string[], script: string) => writeTestDrv(store, name, deps, { script });
    drvs.a = await mk('rep-a', [], 'echo a; /bin/busybox sleep 0.3; echo a > $out');
    drvs.b = await mk('rep-b', [drvs.a], 'echo b; /bin/busybox sleep 0.4; echo b > $out');
    drvs.c = await mk('rep-c', [drvs.a], 'echo c; echo c > $out');
    drvs.top = await mk('rep-top', [drvs.b, drvs.c], 'echo top; /bin/busybox sleep 0.1; echo top > $out');
    drvs.bad = await mk('rep-bad', [], 'echo the last words of rep-bad; exit 7');
    const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2, keepGoing: true });
    const rec = recordTrace(engine);
    await engine.buildPathsWithResults([drvs.top, drvs.bad]);
    await engine.close();
    trace = await rec.finish();
    html = renderReport(trace);
  }, 60_000);
  afterAll(async () => {
    await store?.close();
    if (root) await removeTree(root);
  });

  it('the critical path is a → b → top, with the failure and its log tail', () => {
    const a = analyseTrace(trace);
    expect(a.criticalPath).toEqual([drvs.a, drvs.b, drvs.top]);
    expect(a.criticalTotal).toBeGreaterThanOrEqual(800_000);
    expect(a.failures.map((f) => f.goal.path)).toEqual([drvs.bad]);
    expect(a.failures[0]!.logTail).toEqual(['the last words of rep-bad']);
    // Self-contained: no scripts, nothing fetched.
    expect(html).not.toMatch(/<script|https?:\/\/|<link /);
  });

  it('renders in Chromium without errors; every build and the critical path are in the DOM; screenshot kept', () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'report.html');
    writeFileSync(file, html);
    const dom = chromium(['--dump-dom', `file://${file}`], path.join(root, 'profile-dom'));
    expect(dom.status, dom.stderr).toBe(0);
    expect(dom.stderr).not.toMatch(/CONSOLE|Uncaught|Failed to load/);
    const doc = dom.stdout;
    for (const d of Object.values(drvs)) expect(doc, d).toContain(`<rect class="bar build`);
    for (const d of Object.values(drvs)) expect(doc).toMatch(new RegExp(`<rect class="bar build[^"]*" data-drv="${d.replace(/[.]/g, '\\.')}"`));
    const critical = [...doc.matchAll(/<li data-drv="([^"]+)">/g)].map((m) => m[1]);
    expect(critical).toEqual([drvs.a, drvs.b, drvs.top]);
    for (const d of [drvs.a, drvs.b, drvs.top]) expect(doc).toMatch(new RegExp(`<rect class="bar build critical" data-drv="${d.replace(/[.]/g, '\\.')}"`));
    expect(doc).toMatch(/<span class="total" id="critical-total">[0-9.]+ (ms|s)<\/span>/);
    expect(doc).toContain('the last words of rep-bad');
    const shot = path.join(ARTIFACTS, 'report.png');
    const s = chromium([`--screenshot=${shot}`, '--window-size=1200,1600', `file://${file}`], path.join(root, 'profile-shot'));
    expect(s.status, s.stderr).toBe(0);
    expect(statSync(shot).size).toBeGreaterThan(10_000);
  }, 120_000);

  it('`realise report TRACE -o OUT` writes the same page from the trace file', async () => {
    const t = path.join(root, 'trace.json');
    writeFileSync(t, JSON.stringify(trace));
    const out = path.join(root, 'out.html');
    const r = await realise(['report', t, '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe(html);
    const bad = await realise(['report', path.join(root, 'nope.json')]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^error: cannot read the trace file/);
  });
});
