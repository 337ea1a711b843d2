/**
 * Deterministic scheduler tests: derivations written with the derivation layer into a plain LocalStore,
 * built through a fake Sandbox whose runs the test releases by hand (and, for time limits, through the
 * real NoSandbox with sleeping /bin/sh builders).
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildCancelledError, BuildFailedError, BuildSetupError } from '../../src/scheduler/errors.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { exitStatusOf, type BuildResult } from '../../src/scheduler/results.js';
import type { Progress } from '../../src/scheduler/events.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { StorePath } from '../../src/store/store-path.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, settle, testDrv, writeTestDrv, type DrvSpec } from './helpers.js';
import { computeDerivationPath, printDerivation, writeDerivation } from '../../src/derivation/derivation.js';
import { InMemorySubstituter } from '../../src/substituter/memory.js';
import { narOfRegularFile } from '../../src/store/nar.js';

let root: string;
let store: LocalStore;

beforeAll(async () => {
  root = tempDir('realise-sched-fake-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
});

afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

/**
 * Write a derivation `<name>` (unique per test run via a salt) depending on the `out` outputs of `deps`.
 * Returns the .drv path; its builder is /bin/sh -c `script`.
 */
function mkDrv(name: string, deps: StorePath[] = [], o: DrvSpec = {}): Promise<StorePath> {
  return writeTestDrv(store, name, deps, o);
}

async function outPath(drvPath: StorePath, output = 'out'): Promise<StorePath> {
  return (await store.queryDerivationOutputs(drvPath)).get(output)!;
}

const engines: BuildEngine[] = [];
function engineWith(sandbox: FakeSandbox | false, o: BuildEngineOptions = {}): BuildEngine {
  const e = new BuildEngine({ store, sandbox: sandbox === false ? false : sandbox, maxJobs: 2, ...o });
  engines.push(e);
  return e;
}
afterEach(() => {
  for (const e of engines.splice(0)) e.removeAllListeners();
});

const fake = () => new FakeSandbox((p) => store.toRealPath(p));
const nameOf = (drvPath: string) => drvPath.slice(drvPath.lastIndexOf('/') + 34).replace(/\.drv$/, '');

describe('slots', () => {
  it('maxJobs is never exceeded, and every build gets its turn', async () => {
    const sb = fake();
    const leaves = await Promise.all([1, 2, 3, 4, 5].map((i) => mkDrv(`leaf${i}`)));
    const top = await mkDrv('top', leaves);
    const engine = engineWith(sb, { maxJobs: 2 });
    const call = engine.buildPaths([top]);
    const order: string[] = [];
    for (let i = 0; i < 5; i++) {
      const pending = await sb.waitPending(Math.min(2, 5 - i));
      await settle(50);
      expect(sb.pending.length).toBeLessThanOrEqual(2);
      expect(sb.pending.map((r) => nameOf(r.request.drvPath))).not.toContain('top');
      order.push(nameOf(pending[0]!.request.drvPath));
      await pending[0]!.finish();
    }
    const [last] = await sb.waitPending(1);
    expect(nameOf(last!.request.drvPath)).toBe('top');
    await last!.finish();
    const [r] = await call;
    expect(r!.result.status).toBe('built');
    expect(sb.maxRunning).toBe(2);
    expect(new Set(order).size).toBe(5);
  });

  it('a goal waiting on its inputs holds no slot (maxJobs 1, a chain three deep)', async () => {
    const sb = fake();
    const a = await mkDrv('chain-a');
    const b = await mkDrv('chain-b', [a]);
    const c = await mkDrv('chain-c', [b]);
    const other = await mkDrv('chain-other');
    const engine = engineWith(sb, { maxJobs: 1 });
    const call = engine.buildPaths([c, other]);
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const [run] = await sb.waitPending(1);
      await settle(30);
      expect(sb.pending).toHaveLength(1);
      seen.push(nameOf(run!.request.drvPath));
      await run!.finish();
    }
    const rs = await call;
    expect(rs.map((r) => r.result.status)).toEqual(['built', 'built']);
    expect(seen.indexOf('chain-a')).toBeLessThan(seen.indexOf('chain-b'));
    expect(seen.indexOf('chain-b')).toBeLessThan(seen.indexOf('chain-c'));
    expect(sb.maxRunning).toBe(1);
  });

  it('a shared dependency is built once (diamond, and two targets sharing it)', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const base = await mkDrv('shared-base');
    const left = await mkDrv('shared-left', [base]);
    const right = await mkDrv('shared-right', [base]);
    const top = await mkDrv('shared-top', [left, right]);
    const engine = engineWith(sb, { maxJobs: 4 });
    const created: string[] = [];
    engine.on('goal-created', (e) => {
      if (e.kind === 'derivation') created.push(nameOf(e.path));
    });
    const rs = await engine.buildPaths([left, top, right, `${top}^out`]);
    expect(rs.map((r) => r.result.status)).toEqual(['built', 'built', 'built', 'built']);
    const built = sb.started.map((r) => nameOf(r.drvPath)).sort();
    expect(built).toEqual(['shared-base', 'shared-left', 'shared-right', 'shared-top']);
    expect(created.filter((n) => n === 'shared-base')).toHaveLength(1);
    expect(await store.isValidPath(await outPath(base))).toBe(true);
    // Both calls see the same output; a second call builds nothing.
    const again = await engine.buildPaths([top]);
    expect(again[0]!.result.status).toBe('already-valid');
    expect(sb.started).toHaveLength(4);
  });
});

describe('goal starts', () => {
  it('come a few per turn of the event loop, in creation order (Nix goal order: by name), so that builds with a slot are not held up by the others', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const targets = await Promise.all(Array.from({ length: 60 }, (_, i) => mkDrv(`batch${i}`)));
    const engine = engineWith(sb, { maxJobs: 2 });
    let turn = 0;
    let ticking = true;
    const tick = () => {
      turn++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const started: { path: string; turn: number }[] = [];
    engine.on('goal-started', (e) => {
      if (e.kind === 'derivation') started.push({ path: e.path, turn });
    });
    const results = await engine.buildPaths(targets);
    ticking = false;
    expect(results.map((r) => r.result.status)).toEqual(targets.map(() => 'built'));
    // Created in Nix's goal order: by derivation name, then path.
    const byName = [...targets].sort((a, b) => {
      const [ka, kb] = [`${a.slice(a.lastIndexOf('/') + 34)}$${a}`, `${b.slice(b.lastIndexOf('/') + 34)}$${b}`];
      return ka < kb ? -1 : ka > kb ? 1 : 0;
    });
    expect(byName).not.toEqual(targets);
    expect(started.map((s) => s.path)).toEqual(byName);
    const perTurn = new Map<number, number>();
    for (const s of started) perTurn.set(s.turn, (perTurn.get(s.turn) ?? 0) + 1);
    // 8 a turn (the worker's turn and the test's may straddle one check phase: at most two batches).
    expect(Math.max(...perTurn.values())).toBeLessThanOrEqual(16);
  });
});

describe('a builder that cannot be executed', () => {
  it('fails as in Nix: exit code 1, and the exec error in the log', async () => {
    const d = await mkDrv('noexec', [], { builder: '/nonexistent/realise-builder' });
    const [r] = await engineWith(false).buildPathsWithResults([d]);
    expect(r!.result.status).toBe('permanent-failure');
    expect(r!.result.errorMsg).toContain(`builder for '${d}' failed with exit code 1;`);
    // Nix's child writes "\1", a newline and the serialised error (with Nix's colours) into the log.
    expect(r!.result.errorMsg).toContain('\n> \x01\n> \x05\0\0\0\0\0\0\0Error');
    expect(r!.result.errorMsg).toContain("executing '\x1b[35;1m/nonexistent/realise-builder\x1b[0m': \x1b[35;1mNo such file or directory\x1b[0m");
  });
});

describe('event listeners', () => {
  it('a listener that throws ends the call with its error once the goals are done (nothing is left hanging)', async () => {
    const a = await mkDrv('listener-a', [], { script: 'echo > $out' });
    const b = await mkDrv('listener-b', [a], { script: 'echo > $out' });
    const e = engineWith(false);
    let finished = 0;
    e.on('goal-finished', () => {
      finished++;
      if (finished === 1) throw new Error('listener boom');
    });
    await expect(e.buildPaths([b])).rejects.toThrow('listener boom');
    expect(finished).toBe(2);
    expect(await store.isValidPath(await outPath(b))).toBe(true);
  });

  it("so do build-log and progress listeners (fired from the builder output's socket and from counters): the process goes on", async () => {
    for (const event of ['build-log', 'progress'] as const) {
      const d = await mkDrv(`listener-${event}`, [], { script: 'echo hello; echo > $out' });
      const e = engineWith(false);
      e.on(event, () => {
        throw new Error(`${event} boom`);
      });
      await expect(e.buildPaths([d])).rejects.toThrow(`${event} boom`);
      expect(await store.isValidPath(await outPath(d))).toBe(true);
      // Nothing is left over for the next call.
      e.removeAllListeners();
      expect((await e.buildPaths([d]))[0]!.result.status).toBe('already-valid');
    }
  });
});

describe('a builder killed by a signal', () => {
  it('fails as in Nix: "failed due to signal N (strsignal\'s words)"', async () => {
    const segv = await mkDrv('segv', [], { script: 'kill -SEGV $$' });
    const killed = await mkDrv('killed', [], { script: 'kill -KILL $$' });
    const results = await engineWith(false, { keepGoing: true }).buildPathsWithResults([segv, killed]);
    expect(results.map((r) => r.result.errorMsg)).toEqual([
      `builder for '${segv}' failed due to signal 11 (Segmentation fault)`,
      `builder for '${killed}' failed due to signal 9 (Killed)`,
    ]);
  });
});

describe('inputs rejected before the build', () => {
  it('a bad exportReferencesGraph fails as input-rejected (exit 100+4), counted as a failed build, never run', async () => {
    const sb = fake();
    const outside = await mkDrv('erg-outside');
    const odd = await mkDrv('erg-odd', [], { env: { exportReferencesGraph: 'graph' } });
    const foreign = await mkDrv('erg-foreign', [], { env: { exportReferencesGraph: `graph ${outside}` } });
    const engine = engineWith(sb, { keepGoing: true });
    const results = await engine.buildPathsWithResults([odd, foreign]);
    expect(results.map((r) => [r.result.status, r.result.errorMsg])).toEqual([
      ['input-rejected', "odd number of tokens in 'exportReferencesGraph': 'graph'"],
      ['input-rejected', `cannot export references of path '${outside}' because it is not in the input closure of the derivation`],
    ]);
    expect(exitStatusOf(results.map((r) => r.result))).toBe(0x64);
    expect(sb.started).toHaveLength(0);
    expect(engine.progress().builds).toEqual({ expected: 2, done: 0, running: 0, failed: 2 });
  });
});

describe('output checks', () => {
  it('a malformed outputChecks (maxSize that is no number) rejects the outputs instead of being ignored', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const d = await mkDrv('bad-maxsize', [], { env: { __json: JSON.stringify({ outputChecks: { out: { maxSize: 'big' } } }) } });
    const [r] = await engineWith(sb).buildPathsWithResults([d]);
    expect(r!.result.status).toBe('output-rejected');
    expect(r!.result.errorMsg).toBe(`attribute 'outputChecks.out.maxSize' of derivation '${d}' must be a non-negative integer`);
    expect(await store.isValidPath(await outPath(d))).toBe(false);
  });
});

describe('keepGoing', () => {
  it('off: the first failure stops the call and kills the running sibling', async () => {
    const sb = fake();
    const bad = await mkDrv('kg-bad');
    const good = await mkDrv('kg-good');
    const later = await mkDrv('kg-later', [good]);
    const engine = engineWith(sb, { maxJobs: 2 });
    const call = engine.buildPaths([bad, later]).then(
      () => undefined,
      (e: unknown) => e,
    );
    await sb.waitPending(2);
    const badRun = sb.find('kg-bad')!;
    const goodRun = sb.find('kg-good')!;
    badRun.log('it broke\n');
    await badRun.finish(1);
    const e = await call;
    expect(e).toBeInstanceOf(BuildFailedError);
    const err = e as BuildFailedError;
    expect(err.exitStatus).toBe(100);
    // The real failure is reported first; the stopped build is no failure of its own. (The top-level
    // `later` did not succeed either: Nix lists it in 'build of ... failed' too.)
    expect(err.failures[0]!.path).toBe(bad);
    expect(err.failures.map((f) => f.path)).not.toContain(good);
    expect(err.failures.slice(1).map((f) => f.result.status)).toEqual(err.failures.slice(1).map(() => 'dependency-failed'));
    expect(err.failures[0]!.result.errorMsg).toBe(
      `builder for '${bad}' failed with exit code 1;\nlast 1 log lines:\n> it broke\nFor full logs, run 'nix log ${bad}'.`,
    );
    expect(goodRun.aborted).toBe(true);
    expect(sb.started.map((r) => nameOf(r.drvPath))).not.toContain('kg-later');
    // Nothing of the stopped builds is valid or left on disk.
    for (const d of [good, later]) {
      const p = await outPath(d);
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
    }
  });

  it('off: a queued build does not start in the slot a failed build frees', async () => {
    const sb = fake();
    const a = await mkDrv('kgq-a');
    const b = await mkDrv('kgq-b');
    const engine = engineWith(sb, { maxJobs: 1 });
    const call = engine.buildPaths([a, b]).then(
      () => undefined,
      (e: unknown) => e,
    );
    await sb.waitPending(1);
    expect(sb.started).toHaveLength(1);
    const first = nameOf(sb.started[0]!.drvPath);
    await sb.find(first)!.finish(1);
    const e = await call;
    expect(e).toBeInstanceOf(BuildFailedError);
    expect((e as BuildFailedError).failures[0]!.path).toBe(first === 'kgq-a' ? a : b);
    expect(sb.started.map((r) => nameOf(r.drvPath))).toEqual([first]);
  });

  it('on, one slot: a failed build ends with its failure before the next build takes its slot', async () => {
    const sb = fake();
    const a = await mkDrv('kgs-a');
    const b = await mkDrv('kgs-b');
    const engine = engineWith(sb, { maxJobs: 1, keepGoing: true });
    const events: string[] = [];
    engine.on('build-started', (e) => events.push(`started ${nameOf(e.drvPath)}`));
    engine.on('build-finished', (e) => events.push(`finished ${nameOf(e.drvPath)} ${e.outcome} ${e.result?.failure?.message ?? '-'}`));
    engine.on('goal-finished', (e) => events.push(`goal ${nameOf(e.path)} ${e.result.status}`));
    const call = engine.buildPathsWithResults([a, b]);
    const [first] = await sb.waitPending(1);
    const firstName = nameOf(first!.request.drvPath);
    const firstDrv = firstName === 'kgs-a' ? a : b;
    first!.log('it broke\n');
    await first!.finish(1);
    const [second] = await sb.waitPending(1);
    await second!.finish();
    await call;
    const secondName = firstName === 'kgs-a' ? 'kgs-b' : 'kgs-a';
    // The failure (with its log tail, as the goal's result) comes with build-finished, before the next build starts.
    expect(events.filter((e) => !e.startsWith('goal'))).toEqual([
      `started ${firstName}`,
      `finished ${firstName} failure builder for '${firstDrv}' failed with exit code 1`,
      `started ${secondName}`,
      `finished ${secondName} success -`,
    ]);
    expect(events).toContain(`goal ${firstName} permanent-failure`);
  });

  it('on: independent builds go on, dependents of the failure are dependency-failed', async () => {
    const sb = fake();
    const bad = await mkDrv('kgo-bad');
    const good = await mkDrv('kgo-good');
    const top = await mkDrv('kgo-top', [bad, good]);
    const other = await mkDrv('kgo-other', [good]);
    const engine = engineWith(sb, { maxJobs: 2, keepGoing: true });
    const call = engine.buildPathsWithResults([top, other]);
    await sb.waitPending(2);
    await sb.find('kgo-bad')!.finish(1);
    await settle(50);
    const goodRun = sb.find('kgo-good')!;
    expect(goodRun.aborted).toBe(false);
    await goodRun.finish();
    const [otherRun] = await sb.waitPending(1);
    expect(nameOf(otherRun!.request.drvPath)).toBe('kgo-other');
    await otherRun!.finish();
    const rs = await call;
    expect(rs[0]!.result.status).toBe('dependency-failed');
    expect(rs[0]!.result.errorMsg).toBe(`1 dependencies of derivation '${top}' failed to build`);
    expect(rs[1]!.result.status).toBe('built');
    expect(sb.started.map((r) => nameOf(r.drvPath))).not.toContain('kgo-top');

    // buildPaths throws with every failure: the root cause and the goal that depended on it.
    const sb2 = fake();
    sb2.auto = (req) => (req.drvPath === bad ? 1 : 0);
    const e = await engineWith(sb2, { keepGoing: true })
      .buildPaths([top])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(e).toBeInstanceOf(BuildFailedError);
    const statuses = Object.fromEntries((e as BuildFailedError).failures.map((f) => [nameOf(f.path), f.result.status]));
    expect(statuses).toEqual({ 'kgo-bad': 'permanent-failure', 'kgo-top': 'dependency-failed' });
    expect((e as BuildFailedError).exitStatus).toBe(100);
  });
});

describe('cancellation', () => {
  it('an AbortSignal mid-build kills the builder, throws BuildCancelledError and registers nothing', async () => {
    const sb = fake();
    const dep = await mkDrv('cancel-dep');
    const a = await mkDrv('cancel-a', [dep]);
    const b = await mkDrv('cancel-b');
    const engine = engineWith(sb, { maxJobs: 2 });
    const ctl = new AbortController();
    const finished: BuildResult[] = [];
    engine.on('goal-finished', (e) => finished.push(e.result));
    const call = engine.buildPaths([a, b], { signal: ctl.signal }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const runs = await sb.waitPending(2);
    // The builders have written part of their outputs already.
    for (const r of runs) for (const p of r.request.outputPaths) await fsp.writeFile(store.toRealPath(p), 'half');
    ctl.abort();
    const e = await call;
    expect(e).toBeInstanceOf(BuildCancelledError);
    expect((e as BuildCancelledError).code).toBe('cancelled');
    expect(runs.every((r) => r.aborted)).toBe(true);
    for (const d of [dep, a, b]) {
      const p = await outPath(d);
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
    }
    expect(sb.started.map((r) => nameOf(r.drvPath))).not.toContain('cancel-a');
    // Locks were released: the same derivations build afterwards.
    const sb2 = fake();
    sb2.auto = () => 0;
    const rs = await engineWith(sb2).buildPaths([a, b]);
    expect(rs.map((r) => r.result.status)).toEqual(['built', 'built']);
  });

  it('an already aborted signal builds nothing', async () => {
    const sb = fake();
    const a = await mkDrv('cancel-early');
    const ctl = new AbortController();
    ctl.abort();
    await expect(engineWith(sb).buildPaths([a], { signal: ctl.signal })).rejects.toBeInstanceOf(BuildCancelledError);
    expect(sb.started).toHaveLength(0);
  });
});

describe('limits', () => {
  it('maxLogSize: the builder is killed, status log-limit-exceeded, exit status 1', async () => {
    const sb = fake();
    const a = await mkDrv('chatty');
    const engine = engineWith(sb, { maxLogSize: 1000 });
    const lines: string[] = [];
    engine.on('build-log', (e) => lines.push(e.line));
    const call = engine.buildPathsWithResults([a]);
    const [run] = await sb.waitPending(1);
    run!.log('x'.repeat(600) + '\n');
    await settle(20);
    expect(run!.aborted).toBe(false);
    run!.log('y'.repeat(600) + '\n');
    await run!.done;
    expect(run!.aborted).toBe(true);
    const [r] = await call;
    expect(r!.result.status).toBe('log-limit-exceeded');
    expect(r!.result.errorMsg).toContain(`building of '${a}!*' from .drv file killed after writing more than 1000 bytes of log output`);
    expect(await store.isValidPath(await outPath(a))).toBe(false);
    expect(exitStatusOf([r!.result])).toBe(1);
    // As Nix: the output that went over the limit is not logged (neither as an event nor in the store's log).
    expect(lines).toEqual(['x'.repeat(600)]);
    expect(await store.readBuildLog(a)).toBe('x'.repeat(600) + '\n');
  });

  describe('with the real NoSandbox and a sleeping /bin/sh builder', () => {
    it('maxSilentTime: timed-out, exit status 101, the builder is killed', async () => {
      const a = await mkDrv('silent', [], { script: 'echo started; exec /bin/sleep 30' });
      const engine = engineWith(false, { maxSilentTime: 1 });
      const t0 = Date.now();
      const e = await engine.buildPaths([a]).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(e).toBeInstanceOf(BuildFailedError);
      const err = e as BuildFailedError;
      expect(err.exitStatus).toBe(101);
      expect(err.failures[0]!.result.status).toBe('timed-out');
      expect(err.message).toBe(`building of '${a}!*' from .drv file timed out after 1 seconds of silence`);
      expect(await store.isValidPath(await outPath(a))).toBe(false);
      expect(await store.readBuildLog(a)).toBe('started\n');
    });

    it('buildTimeout: timed-out even while the builder keeps talking', async () => {
      const a = await mkDrv('talker', [], { script: 'while :; do echo tick; /bin/sleep 0.2; done' });
      const engine = engineWith(false, { buildTimeout: 1, maxSilentTime: 5 });
      const t0 = Date.now();
      const [r] = await engine.buildPathsWithResults([a]);
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(r!.result.status).toBe('timed-out');
      expect(r!.result.errorMsg).toBe(`building of '${a}!*' from .drv file timed out after 1 seconds`);
      expect(await store.isValidPath(await outPath(a))).toBe(false);
    });

    it('negative limits, as Nix 2.8 takes them: timed out at once, the silence first', async () => {
      const a = await mkDrv('negative', [], { script: 'exec /bin/sleep 30' });
      const t0 = Date.now();
      const [r] = await engineWith(false, { buildTimeout: -1 }).buildPathsWithResults([a]);
      expect(r!.result.errorMsg).toBe(`building of '${a}!*' from .drv file timed out after -1 seconds`);
      const [s] = await engineWith(false, { buildTimeout: -1, maxSilentTime: -5 }).buildPathsWithResults([a]);
      expect(s!.result.status).toBe('timed-out');
      expect(s!.result.errorMsg).toBe(`building of '${a}!*' from .drv file timed out after -5 seconds of silence`);
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(() => engineWith(false, { buildTimeout: 1.5 })).toThrow(/^Expected `buildTimeout` to be an integer, got /);
    });

    it('a quick builder under the same limits succeeds', async () => {
      const a = await mkDrv('quick', [], { script: 'echo hi > $out' });
      const [r] = await engineWith(false, { buildTimeout: 5, maxSilentTime: 5, maxLogSize: 100 }).buildPaths([a]);
      expect(r!.result.status).toBe('built');
      expect(await fsp.readFile(await outPath(a), 'utf8')).toBe('hi\n');
    });
  });
});

describe('events', () => {
  it('goals, log lines and progress counters', async () => {
    const sb = fake();
    const base = await mkDrv('ev-base');
    const top = await mkDrv('ev-top', [base]);
    const engine = engineWith(sb, { maxJobs: 1 });
    const log: string[] = [];
    const progress: (Progress & { time: number })[] = [];
    engine.on('goal-created', (e) => log.push(`created ${nameOf(e.path)}`));
    engine.on('goal-started', (e) => log.push(`started ${nameOf(e.path)}`));
    engine.on('goal-finished', (e) => log.push(`finished ${nameOf(e.path)} ${e.result.status}`));
    engine.on('build-started', (e) => log.push(`build ${nameOf(e.drvPath)}`));
    engine.on('build-log', (e) => log.push(`log ${nameOf(e.drvPath)}: ${e.line}`));
    engine.on('build-finished', (e) => log.push(`built ${nameOf(e.drvPath)} ${e.outcome}`));
    engine.on('progress', (p) => progress.push(p));
    const call = engine.buildPaths([top]);

    const [b] = await sb.waitPending(1);
    expect(engine.progress().builds.running).toBe(1);
    b!.log('first line\nprogress ');
    b!.log('10%\r');
    b!.log('progress 100%\n');
    await b!.finish();
    const [t] = await sb.waitPending(1);
    t!.log('no newline at the end');
    await t!.finish();
    await call;
    await settle(10);

    expect(log.filter((l) => l.startsWith('log '))).toEqual(['log ev-base: first line', 'log ev-base: progress 100%', 'log ev-top: no newline at the end']);
    const at = (s: string) => log.indexOf(s);
    expect(at('created ev-top')).toBeGreaterThanOrEqual(0);
    expect(at('created ev-top')).toBeLessThan(at('created ev-base'));
    expect(at('build ev-base')).toBeLessThan(at('log ev-base: first line'));
    expect(at('built ev-base success')).toBeLessThan(at('finished ev-base built'));
    expect(at('finished ev-base built')).toBeLessThan(at('build ev-top'));
    expect(log[log.length - 1]).toBe('finished ev-top built');
    expect(log.filter((l) => l.startsWith('created'))).toHaveLength(2);
    expect(log.filter((l) => l.startsWith('finished'))).toHaveLength(2);

    const last = progress[progress.length - 1]!;
    expect(last.builds.done).toBe(last.builds.expected);
    expect(last.builds.done).toBeGreaterThanOrEqual(2);
    expect(last.builds.running).toBe(0);
    expect(last.builds.failed).toBe(0);
    // Every event is stamped with a monotonic time; the snapshot is the counters alone.
    const { time, ...counters } = last;
    expect(engine.progress()).toEqual(counters);
    expect(progress.map((p) => p.time)).toEqual(progress.map((p) => p.time).sort((x, y) => x - y));
    expect(time).toBeLessThanOrEqual(performance.now());
    // The full log of each build is in the store's log dir.
    expect(await store.readBuildLog(base)).toBe('first line\nprogress 10%\rprogress 100%\n');
  });

  it("with one slot, a build's post-build hook runs before the next build starts, however long it takes (as in Nix's worker loop)", async () => {
    const sb = fake();
    sb.auto = () => 0;
    const drvs = await Promise.all(['hookorder-a', 'hookorder-b', 'hookorder-c'].map((n) => mkDrv(n)));
    // The hook outlasts the gate's wait for busy goals (FALLBACK_MS), then speaks.
    const hook = path.join(root, 'hookorder-hook.sh');
    await fsp.writeFile(hook, '#!/bin/sh\nsleep 0.6\necho "hook for $DRV_PATH"\n', { mode: 0o755 });
    const engine = engineWith(sb, { maxJobs: 1, postBuildHook: hook });
    const log: string[] = [];
    engine.on('build-started', (e) => log.push(`build ${nameOf(e.drvPath)}`));
    engine.on('build-finished', (e) => log.push(`built ${nameOf(e.drvPath)}`));
    engine.on('post-build-hook-started', (e) => log.push(`hook ${nameOf(e.drvPath)}`));
    engine.on('post-build-hook-log', (e) => log.push(`${e.line === `hook for ${e.drvPath}` ? 'said' : e.line} ${nameOf(e.drvPath)}`));
    const rs = await engine.buildPaths(drvs);
    expect(rs.map((r) => r.result.status)).toEqual(['built', 'built', 'built']);
    const order = log.filter((l) => l.startsWith('build ')).map((l) => l.slice('build '.length));
    expect([...order].sort()).toEqual(['hookorder-a', 'hookorder-b', 'hookorder-c']);
    expect(log).toEqual(order.flatMap((n) => [`build ${n}`, `built ${n}`, `hook ${n}`, `said ${n}`]));
    expect(sb.maxRunning).toBe(1);
  });

  it('failures are counted', async () => {
    const sb = fake();
    sb.auto = () => 2;
    const a = await mkDrv('ev-fail');
    const engine = engineWith(sb);
    await engine.buildPathsWithResults([a]);
    await settle(10);
    const p = engine.progress();
    expect(p.builds.failed).toBe(1);
    expect(p.builds.running).toBe(0);
    expect(p.builds.done).toBe(0);
  });
});

describe('goals and locks', () => {
  it('a later request for more outputs widens the goal: one build for `^out` and `^dev`', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const m = await mkDrv('widen', [], { outputs: ['out', 'dev'] });
    const engine = engineWith(sb);
    const rs = await engine.buildPaths([`${m}^out`, `${m}^dev`]);
    expect(rs.map((r) => r.result.status)).toEqual(['built', 'built']);
    expect(sb.started).toHaveLength(1);
    expect(await store.isValidPath(await outPath(m, 'out'))).toBe(true);
    expect(await store.isValidPath(await outPath(m, 'dev'))).toBe(true);
    const again = await engine.buildPaths([{ drvPath: m, outputs: ['dev'] }]);
    expect(again[0]!.result.status).toBe('already-valid');
    expect(again[0]!.result.builtOutputs).toEqual({ dev: await outPath(m, 'dev') });
  });

  it('an unknown wanted output fails the goal without building', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const m = await mkDrv('no-such-output');
    const [r] = await engineWith(sb).buildPathsWithResults([`${m}^nope`]);
    expect(r!.result.status).toBe('misc-failure');
    expect(r!.result.errorMsg).toContain("does not have wanted outputs 'nope'");
    expect(sb.started).toHaveLength(0);
  });

  it('a valid .drv and its outputs are found valid in one query, after the temporary roots (no query of the .drv alone)', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const d = await mkDrv('one-query', [], { outputs: ['out', 'dev'] });
    const engine = engineWith(sb);
    await engine.buildPaths([d]);
    const calls: string[] = [];
    const spies = [
      vi.spyOn(store, 'isValidPath').mockImplementation(async function (this: LocalStore, p) {
        calls.push(`isValidPath ${p}`);
        return LocalStore.prototype.isValidPath.call(this, p);
      }),
      vi.spyOn(store, 'queryValidPaths').mockImplementation(async function (this: LocalStore, ps) {
        const list = [...ps];
        calls.push(`queryValidPaths ${list.join(' ')}`);
        return LocalStore.prototype.queryValidPaths.call(this, list);
      }),
      vi.spyOn(store, 'addTempRoots').mockImplementation(async function (this: LocalStore, ps) {
        calls.push('addTempRoots');
        return LocalStore.prototype.addTempRoots.call(this, ps);
      }),
    ];
    try {
      const [r] = await engineWith(sb).buildPaths([d]);
      expect(r!.result.status).toBe('already-valid');
    } finally {
      for (const s of spies) s.mockRestore();
    }
    expect(calls).toEqual([`addTempRoots`, `queryValidPaths ${d} ${await outPath(d, 'dev')} ${await outPath(d, 'out')}`]);
  });

  it('a .drv file in the store that is not registered is a missing derivation, and what was read of it is not kept', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const drv = await testDrv(store, 'unregistered', [], { script: 'echo real > $out' });
    const drvPath = computeDerivationPath(drv, store.storeDir);
    // Another derivation's text at its path, not registered (as an interrupted copy can leave one).
    const other = await testDrv(store, 'unregistered', [], { script: 'echo other > $out' });
    await fsp.writeFile(store.toRealPath(drvPath), printDerivation(other));
    const engine = engineWith(sb);
    const [missing] = await engine.buildPathsWithResults([drvPath]);
    expect(missing!.result.status).toBe('misc-failure');
    expect(missing!.result.errorMsg).toBe(`cannot build missing derivation '${drvPath}'`);
    expect(sb.started).toHaveLength(0);
    // Registered now (its real text replaces the file): the same engine builds what it says.
    expect(await writeDerivation(store, drv)).toBe(drvPath);
    const [built] = await engine.buildPathsWithResults([drvPath]);
    expect(built!.result.status).toBe('built');
    expect(sb.started.map((r) => r.args)).toEqual([['-c', 'echo real > $out']]);
  });

  it('a .drv file present but not registered, then substituted: its temporary roots are taken once', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const drv = await testDrv(store, 'unregistered-subst', [], { script: 'echo subst > $out' });
    const drvPath = computeDerivationPath(drv, store.storeDir);
    const text = printDerivation(drv);
    await fsp.writeFile(store.toRealPath(drvPath), text);
    const sub = new InMemorySubstituter({ storeDir: store.storeDir, requireSigs: false });
    await sub.add({ path: drvPath, references: [] }, narOfRegularFile(Buffer.from(text), false));
    const [r] = await engineWith(sb, { substituters: [sub] }).buildPathsWithResults([drvPath]);
    expect(r!.result.status).toBe('built');
    expect(sub.fetches).toBe(1);
    const out = drv.outputs.get('out')!;
    // The derivation goal's roots (the file read), then the substitution's of the .drv: each written once.
    const file = (await fsp.readFile(path.join(root, 'state/temproots', String(process.pid)), 'utf8')).split('\0');
    expect(file.filter((p) => p === drvPath)).toHaveLength(1);
    if (out.type !== 'input-addressed') throw new Error('an input-addressed output expected');
    expect(file.filter((p) => p === out.path)).toHaveLength(1);
  });

  it('a build directory made ahead gets the number Nix gives it in the slot (the first free one)', async () => {
    const sb = fake();
    // Two derivations of the same name: with one slot, Nix builds both in `nix-build-same.drv-0`.
    const x = await mkDrv('same', [], { script: 'echo x > $out' });
    const y = await mkDrv('same', [], { script: 'echo y > $out' });
    const buildDir = tempDir('realise-sched-ahead-');
    const call = engineWith(sb, { maxJobs: 1, buildDir }).buildPaths([x, y]);
    for (let i = 0; i < 2; i++) {
      const [run] = await sb.waitPending(1);
      expect(path.relative(buildDir, run!.request.buildDir).split('/')[0]).toBe('nix-build-same.drv-0');
      await run!.finish();
    }
    expect((await call).map((r) => r.result.status)).toEqual(['built', 'built']);
    await removeTree(buildDir);
  });

  it('two engines on one store: the second waits for the output lock and finds the output valid', async () => {
    const sbA = fake();
    const sbB = fake();
    sbB.auto = () => 0;
    const d = await mkDrv('locked');
    const engineA = engineWith(sbA);
    const waitsA: unknown[] = [];
    engineA.on('build-waiting', (e) => waitsA.push(e));
    const callA = engineA.buildPaths([d]);
    const [run] = await sbA.waitPending(1);
    const engineB = engineWith(sbB);
    const waitsB: unknown[] = [];
    engineB.on('build-waiting', (e) => waitsB.push(e));
    const callB = engineB.buildPaths([d]);
    await settle(300);
    expect(sbB.started).toHaveLength(0);
    // B says once what it waits for (Nix's "waiting for lock on '<physical output path>'"); A never waited.
    expect(waitsB).toEqual([{ drvPath: d, lockedPaths: [store.toRealPath(await outPath(d))], time: expect.any(Number) }]);
    expect(waitsA).toEqual([]);
    await run!.finish();
    const [[a], [b]] = await Promise.all([callA, callB]);
    expect(a!.result.status).toBe('built');
    expect(b!.result.status).toBe('already-valid');
    expect(sbB.started).toHaveLength(0);
    // Progress of both ends with done == expected: B's build turned out not to be needed.
    await settle(10);
    const [pa, pb] = [engines[engines.length - 2]!.progress(), engines[engines.length - 1]!.progress()];
    expect([pa.builds.done, pa.builds.expected]).toEqual([1, 1]);
    expect([pb.builds.done, pb.builds.expected, pb.builds.running, pb.builds.failed]).toEqual([0, 0, 0, 0]);
  });

  it('a goal waiting for an output lock holds no build slot', async () => {
    const sbA = fake();
    const sbB = fake();
    const d = await mkDrv('lock-slot');
    const other = await mkDrv('lock-slot-other');
    const callA = engineWith(sbA).buildPaths([d]);
    const [runA] = await sbA.waitPending(1);
    const callB = engineWith(sbB, { maxJobs: 1 }).buildPaths([d, other]);
    // B's goal for `d` waits for A's lock; `other` still gets B's only slot.
    const [runB] = await sbB.waitPending(1);
    expect(nameOf(runB!.request.drvPath)).toBe('lock-slot-other');
    await runB!.finish();
    await runA!.finish();
    const [[a], rb] = await Promise.all([callA, callB]);
    expect(a!.result.status).toBe('built');
    expect(rb.map((r) => r.result.status)).toEqual(['already-valid', 'built']);
    expect(sbB.started).toHaveLength(1);
  });

  it('stale, invalid outputs are deleted before the builder runs', async () => {
    const sb = fake();
    const d = await mkDrv('stale');
    const out = store.toRealPath(await outPath(d));
    await fsp.mkdir(path.join(out, 'sub'), { recursive: true });
    await fsp.writeFile(path.join(out, 'sub', 'junk'), 'junk');
    await fsp.chmod(path.join(out, 'sub'), 0o555);
    let existed: boolean | undefined;
    sb.auto = (req) => {
      existed = existsSync(store.toRealPath(req.outputPaths[0]!));
      return 0;
    };
    const [r] = await engineWith(sb).buildPaths([d]);
    expect(r!.result.status).toBe('built');
    expect(existed).toBe(false);
    expect((await fsp.stat(out)).isFile()).toBe(true);
  });
});

describe('check mode and repeated rounds (fake sandbox)', () => {
  let n = 0;
  const varying = () => ({ code: 0, contents: () => `round ${n++}\n` });

  it('check: same output passes, a different one is not-deterministic (exit 104); keepFailed keeps `.check`', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const d = await mkDrv('checked');
    await engineWith(sb).buildPaths([d]);
    const out = await outPath(d);
    const before = await store.queryPathInfo(out);
    const ok = await engineWith(sb).buildPaths([d], { mode: 'check' });
    expect(ok[0]!.result.status).toBe('built');
    expect(sb.started).toHaveLength(2);
    // The check build writes elsewhere, not over the registered output.
    expect(sb.started[1]!.outputPaths[0]).not.toBe(out);

    sb.auto = varying;
    const e = await engineWith(sb)
      .buildPaths([d], { mode: 'check' })
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(e).toBeInstanceOf(BuildFailedError);
    expect((e as BuildFailedError).exitStatus).toBe(104);
    expect((e as BuildFailedError).failures[0]!.result.status).toBe('not-deterministic');
    expect(existsSync(store.toRealPath(out) + '.check')).toBe(false);
    expect(await store.queryPathInfo(out)).toEqual(before);
    expect(await fsp.readFile(store.toRealPath(out), 'utf8')).toBe(`built by ${d}\n`);

    const [r] = await engineWith(sb, { keepFailed: true, buildDir: tempDir('realise-sched-kept-') }).buildPathsWithResults([d], { mode: 'check' });
    expect(r!.result.status).toBe('not-deterministic');
    expect(await fsp.readFile(store.toRealPath(out) + '.check', 'utf8')).toMatch(/^round \d+\n$/);
    await removeTree(store.toRealPath(out) + '.check');
  });

  it('check of a derivation whose outputs are not valid ends the whole call, keepGoing or not, as Nix throws', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const d = await mkDrv('check-missing');
    const e = await engineWith(sb, { keepGoing: true })
      .buildPathsWithResults([d], { mode: 'check' })
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(e).toBeInstanceOf(BuildSetupError);
    expect((e as BuildSetupError).reason).toBe(`some outputs of '${d}' are not valid, so checking is not possible`);
    expect(sb.started).toHaveLength(0);
  });

  it('buildRepeat: rounds that differ fail with not-deterministic, or warn when not enforced', async () => {
    const sb = fake();
    sb.auto = varying;
    const d = await mkDrv('repeat-strict');
    const [r] = await engineWith(sb, { buildRepeat: 1 }).buildPathsWithResults([d]);
    expect(sb.started).toHaveLength(2);
    expect(r!.result.status).toBe('not-deterministic');
    expect(r!.result.timesBuilt).toBe(2);
    expect(r!.result.isNonDeterministic).toBe(true);
    // As Nix 2.8: exit 1 (104 is for check builds only), and nothing registered.
    expect(exitStatusOf([r!.result])).toBe(1);
    expect(await store.isValidPath(await outPath(d))).toBe(false);

    const d2 = await mkDrv('repeat-lax');
    const warnings: string[] = [];
    const engine = engineWith(sb, { buildRepeat: 2, enforceDeterminism: false });
    engine.on('warning', (w) => warnings.push(w.message));
    const [r2] = await engine.buildPaths([d2]);
    expect(r2!.result.status).toBe('built');
    expect(r2!.result.isNonDeterministic).toBe(true);
    expect(warnings.some((w) => w.includes('differs from previous round'))).toBe(true);
    expect(await store.isValidPath(await outPath(d2))).toBe(true);

    const d3 = await mkDrv('repeat-same');
    sb.auto = () => 0;
    const [r3] = await engineWith(sb, { buildRepeat: 2 }).buildPaths([d3]);
    expect(r3!.result.status).toBe('built');
    expect(r3!.result.timesBuilt).toBe(3);
    expect(r3!.result.isNonDeterministic).toBe(false);
    expect(await store.isValidPath(await outPath(d3))).toBe(true);
    expect(await fsp.readFile(store.toRealPath(await outPath(d3)), 'utf8')).toBe(`built by ${d3}\n`);
  });
});

describe('cancellation while waiting', () => {
  it('for a build slot: the queued build never starts', async () => {
    const sb = fake();
    const a = await mkDrv('queue-a');
    const b = await mkDrv('queue-b');
    const engine = engineWith(sb, { maxJobs: 1 });
    const ctl = new AbortController();
    const call = engine.buildPaths([a, b], { signal: ctl.signal }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const [run] = await sb.waitPending(1);
    await settle(50);
    expect(sb.started).toHaveLength(1);
    ctl.abort();
    expect(await call).toBeInstanceOf(BuildCancelledError);
    expect(run!.aborted).toBe(true);
    await settle(50);
    expect(sb.started).toHaveLength(1);
    expect(engine.progress().builds.running).toBe(0);
  });

  it('for a build slot: what the next build made ahead (its lock file, its build directory) is undone, its log directory kept', async () => {
    const sb = fake();
    // Two derivations whose log directories (drvs/XX, by the first two characters of the hash) are not made
    // yet by the builds of earlier tests in this store, and not the same one.
    const logDirOf = (d: StorePath) => path.dirname(store.logPath(d));
    const freshLogDir = async (name: string, not?: StorePath): Promise<StorePath> => {
      for (let i = 0; ; i++) {
        const d = await mkDrv(`${name}-${i}`);
        if (!existsSync(logDirOf(d)) && (!not || logDirOf(d) !== logDirOf(not))) return d;
      }
    };
    const a = await freshLogDir('ahead-a');
    const b = await freshLogDir('ahead-b', a);
    const buildDir = tempDir('realise-sched-ahead-');
    const engine = engineWith(sb, { maxJobs: 1, buildDir });
    const ctl = new AbortController();
    const call = engine.buildPaths([a, b], { signal: ctl.signal }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const [run] = await sb.waitPending(1);
    const waiting = run!.request.drvPath === a ? b : a;
    const lockFile = store.toRealPath(await outPath(waiting)) + '.lock';
    const dirOf = (drv: StorePath) => path.join(buildDir, `nix-build-${nameOf(drv)}.drv-0`);
    const logDir = logDirOf(waiting);
    // The build in line has its lock file, log directory and build directory made while it waits.
    await expect.poll(() => existsSync(lockFile) && existsSync(dirOf(waiting)) && existsSync(logDir)).toBe(true);
    ctl.abort();
    expect(await call).toBeInstanceOf(BuildCancelledError);
    await expect.poll(() => existsSync(lockFile) || existsSync(dirOf(waiting))).toBe(false);
    expect(sb.started).toHaveLength(1);
    await removeTree(buildDir);
  });

  it('for an output lock held by another engine: the wait ends at once, nothing is built', async () => {
    const sbA = fake();
    const sbB = fake();
    const d = await mkDrv('lock-cancel');
    const callA = engineWith(sbA).buildPaths([d]);
    const [runA] = await sbA.waitPending(1);
    const ctl = new AbortController();
    const callB = engineWith(sbB)
      .buildPaths([d], { signal: ctl.signal })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    await settle(200);
    const t0 = Date.now();
    ctl.abort();
    expect(await callB).toBeInstanceOf(BuildCancelledError);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(sbB.started).toHaveLength(0);
    await runA!.finish();
    expect((await callA)[0]!.result.status).toBe('built');
  });
});

describe('other entry points', () => {
  it('buildDerivation never throws on a failure; queryMissing lists what will be built', async () => {
    const sb = fake();
    const dep = await mkDrv('qm-dep');
    const top = await mkDrv('qm-top', [dep]);
    const engine = engineWith(sb);
    const missing = await engine.queryMissing([top]);
    expect([...missing.willBuild].sort()).toEqual([dep, top].sort());
    expect(missing.willSubstitute).toEqual([]);
    expect(missing.unknown).toEqual([]);

    sb.auto = (req) => (req.drvPath === dep ? 0 : 3);
    const r = await engine.buildDerivation(top);
    expect(r.status).toBe('permanent-failure');
    expect(r.errorMsg).toContain('failed with exit code 3');
    const after = await engine.queryMissing([top]);
    expect(after.willBuild).toEqual([top]);
  });

  it('buildDerivation of a derivation not in the store builds it as it was given, whatever the caller changes in it afterwards', async () => {
    const sb = fake();
    sb.auto = () => 0;
    const drv = await testDrv(store, 'given', [], { script: 'echo given > $out' });
    const drvPath = computeDerivationPath(drv, store.storeDir);
    const call = engineWith(sb).buildDerivation(drvPath, drv);
    drv.args[1] = 'echo changed > $out';
    drv.env.set('salt', 'changed');
    expect((await call).status).toBe('built');
    expect(sb.started.map((r) => [r.args, r.env.salt === 'changed'])).toEqual([[['-c', 'echo given > $out'], false]]);
  });

  it('maxJobs 0 without remote builders: a setup error, as Nix', async () => {
    const sb = fake();
    const d = await mkDrv('no-jobs');
    const e = await engineWith(sb, { maxJobs: 0 })
      .buildPaths([d])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(e).toBeInstanceOf(BuildSetupError);
    expect((e as BuildSetupError).message.split('\n')[0]).toBe("unable to start any build; either increase '--max-jobs' or enable remote builds.");
    expect(sb.started).toHaveLength(0);
  });
});
