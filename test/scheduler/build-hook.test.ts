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

describe.skipIf(process.arch !== 'x64')('hook-started of an engine without builders', () => {
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
});
