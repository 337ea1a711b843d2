/**
 * The engine's build hook end to end: a BuildEngine with maxJobs 0 builds a two-level DAG entirely on two
 * real Nix 2.8 remotes (nix-daemon --stdio, nix-store --serve), and the outputs equal real Nix's own build.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { createRemoteBuilders, type MachineBuilder } from '../../src/remote/remote-builder.js';
import { nixOk, runNix } from '../helpers/nix.js';
import { makeFixture, referenceBuild, remoteEnv, type Fixture } from './fixture.js';

describe.skipIf(!nixOk())('BuildEngine with remote builders', () => {
  let fx: Fixture;
  let store: LocalStore;
  let builders: MachineBuilder[] = [];

  beforeAll(async () => {
    fx = makeFixture({ prebuildDep: false });
    store = await LocalStore.open({ root: fx.localRoot });
  });
  afterAll(async () => {
    await Promise.all(builders.map((b) => b.close()));
    await store?.close();
  });

  it('builds the whole closure remotely with maxJobs 0, outputs equal to real Nix', async () => {
    const ref = referenceBuild(fx, 'top');
    builders = createRemoteBuilders(
      `ssh-ng://localhost?remote-store=${encodeURIComponent(path.join(fx.dir, 'e-ng'))} - - 1 1;` +
        `ssh://localhost?remote-store=${encodeURIComponent(path.join(fx.dir, 'e-serve'))} - - 1 1`,
      { env: remoteEnv() },
    );
    const engine = new BuildEngine({ store, maxJobs: 0, builders, sandbox: false });
    const logs: string[] = [];
    engine.on('build-log', (e: { line: string }) => logs.push(e.line));
    const [r] = await engine.buildPaths([{ drvPath: fx.drvs.top, outputs: ['out', 'dev'] }]);
    expect(r!.result.status).toBe('built');
    expect(logs).toContain('building dep');
    expect(logs).toContain('building top');
    for (const [name, want] of ref) {
      expect(r!.result.builtOutputs[name]).toBe(want.path);
      expect((await store.queryPathInfo(want.path))?.narHash.toString('base32')).toBe(want.narHash);
    }
    // Both builds ran on the machines: their outputs are valid in a remote store.
    const validOn = (p: string) =>
      ['e-ng', 'e-serve'].filter((d) => runNix('nix-store', ['--store', path.join(fx.dir, d), '--check-validity', p]).status === 0);
    expect(validOn(ref.get('out')!.path).length).toBeGreaterThan(0);
    const depOut = (await store.queryDerivationOutputs(fx.drvs.dep)).get('out')!;
    expect(validOn(depOut).length).toBeGreaterThan(0);
  });
});
