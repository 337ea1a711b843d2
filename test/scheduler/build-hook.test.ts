/**
 * When Nix 2.8's worker would start a build-hook process (the engine's `hook-started`): the rules on their
 * own (BuildHookLife, as nix-store --realise with one 1-slot machine shows them in test/remote/hook-parity),
 * and an engine without builders, which starts one hook for the call as Nix does (its hook declines for
 * good), none for builds that prefer to be built here.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildHookLife } from '../../src/scheduler/build-hook.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { createRemoteBuilders } from '../../src/remote/remote-builder.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { StorePath } from '../../src/store/store-path.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, writeTestDrv } from './helpers.js';

/** A life whose starts are recorded as `start` among the steps the test writes down. */
function life(): { hook: BuildHookLife; log: string[] } {
  const log: string[] = [];
  return { hook: new BuildHookLife(() => log.push('start')), log };
}

const [a, b, c] = ['a', 'b', 'c'].map((n) => `/nix/store/00000000000000000000000000000000-${n}.drv` as StorePath) as [StorePath, StorePath, StorePath];

describe('BuildHookLife', () => {
  it('starts a hook at the first offer and keeps it while builds are declined or postponed', () => {
    const { hook, log } = life();
    hook.offer(a);
    hook.offer(b);
    hook.settled(a); // built here
    hook.offer(c);
    hook.settled(b);
    hook.settled(c);
    expect(log).toEqual(['start']);
  });

  it('a machine takes the hook with its build: another starts at once when offered builds wait, as with -j1 and 2 derivations', () => {
    const { hook, log } = life();
    hook.offer(a);
    hook.offer(b); // waits: the machine is being connected to, the local slot held
    log.push('a on machine');
    hook.taken(a);
    hook.settled(b); // b starts here
    hook.settled(a);
    expect(log).toEqual(['start', 'a on machine', 'start']);
  });

  it('with nothing waiting, the next offer starts the next hook (-j0, builds offered one after the other)', () => {
    const { hook, log } = life();
    hook.offer(a);
    log.push('a on machine');
    hook.taken(a);
    hook.offer(b);
    log.push('b on machine');
    hook.taken(b);
    hook.settled(a);
    hook.offer(c);
    expect(log).toEqual(['start', 'a on machine', 'start', 'b on machine', 'start']);
  });

  it('a build that ended or started here waits for no answer; a build restarted on another machine changes nothing', () => {
    const { hook, log } = life();
    hook.offer(a);
    hook.offer(b);
    hook.settled(b);
    hook.taken(a);
    expect(log).toEqual(['start']);
    hook.taken(a); // its first machine was lost: it starts elsewhere
    hook.offer(c);
    expect(log).toEqual(['start', 'start']);
  });
});

describe.skipIf(process.arch !== 'x64')('the build hook of an engine (builds done by a FakeSandbox)', () => {
  let root: string;
  let store: LocalStore;
  beforeAll(async () => {
    root = tempDir('realise-build-hook-');
    store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
  });
  afterAll(async () => {
    await store?.close();
    if (root) await removeTree(root);
  });

  it('one hook per call, before the first build; none for builds that prefer this machine', async () => {
    const sandbox = new FakeSandbox((p) => store.toRealPath(p));
    sandbox.auto = () => 0;
    const engine = new BuildEngine({ store, sandbox, maxJobs: 2 });
    const seen: string[] = [];
    engine.on('hook-started', () => seen.push('hook'));
    engine.on('build-started', (e) => seen.push(path.basename(e.drvPath).slice(33)));
    try {
      const dep = await writeTestDrv(store, 'dep');
      const top = await writeTestDrv(store, 'top', [dep]);
      const other = await writeTestDrv(store, 'other');
      const rs = await engine.buildPaths([top, other].map((drvPath) => ({ drvPath, outputs: ['out'] })));
      expect(rs.map((r) => r.result.status)).toEqual(['built', 'built']);
      expect(seen.filter((s) => s === 'hook')).toHaveLength(1);
      expect(seen[0]).toBe('hook');
      // A second call is another worker: another hook.
      const more = await writeTestDrv(store, 'more');
      await engine.buildPaths([{ drvPath: more, outputs: ['out'] }]);
      expect(seen.filter((s) => s === 'hook')).toHaveLength(2);
      // preferLocalBuild, buildable here: Nix does not ask its hook.
      const pref = await Promise.all(['p1', 'p2'].map((n) => writeTestDrv(store, n, [], { env: { preferLocalBuild: '1' } })));
      await engine.buildPaths(pref.map((drvPath) => ({ drvPath, outputs: ['out'] })));
      expect(seen.filter((s) => s === 'hook')).toHaveLength(2);
      expect(seen.filter((s) => s !== 'hook')).toHaveLength(6);
    } finally {
      await engine.close();
    }
  });

  it("the hook's reports reach an API listener as plain text, their coloured form beside it", async () => {
    const sandbox = new FakeSandbox((p) => store.toRealPath(p));
    sandbox.auto = () => 0;
    const warnings: { message: string; colouredMessage?: string }[] = [];
    // A machine that refuses the connection (tried, then the build is done here), and one of another system.
    const down = createRemoteBuilders('ssh://127.0.0.1 - - 1 2', { sshOptions: ['-oPort=1', '-oBatchMode=yes'] });
    const arm = createRemoteBuilders('ssh://arm aarch64-linux - 1 1');
    for (const [builders, maxJobs] of [
      [down, 1],
      [arm, 0],
    ] as const) {
      const engine = new BuildEngine({ store, sandbox, maxJobs, builders });
      engine.on('warning', (e) => warnings.push(e));
      try {
        // With no machine that fits and maxJobs 0, the call ends with Nix's 'unable to start any build'.
        const built = engine.buildPaths([{ drvPath: await writeTestDrv(store, `plain-${maxJobs}`), outputs: ['out'] }]);
        if (maxJobs === 0) await expect(built).rejects.toThrow('unable to start any build');
        else expect((await built)[0]!.result.status).toBe('built');
      } finally {
        await engine.close();
        await Promise.all(builders.map((b) => b.close()));
      }
    }
    const failed = warnings.find((w) => w.message.startsWith("cannot build on 'ssh://127.0.0.1': error: "));
    const report = warnings.find((w) => w.message.startsWith('Failed to find a machine for remote build!\nderivation: '));
    expect(failed, JSON.stringify(warnings)).toBeDefined();
    expect(report, JSON.stringify(warnings)).toBeDefined();
    for (const w of warnings) expect(w.message).not.toContain('\x1b');
    expect(failed!.colouredMessage).toContain("cannot build on 'ssh://127.0.0.1': \x1b[31;1merror:\x1b[0m ");
    expect(report!.message).toContain('\n1 available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n(aarch64-linux, 1, , )');
    expect(report!.colouredMessage).toContain('\n\x1b[35;1m1\x1b[0m available machines:\n');
    expect(report!.colouredMessage).toContain('(\x1b[35;1maarch64-linux\x1b[0m, \x1b[35;1m1\x1b[0m, ');
  });
});
