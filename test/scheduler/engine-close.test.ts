/**
 * What a sandboxed BuildEngine leaves in the store directory: when a call returns, no chroot of its builds
 * (`<drv>.chroot`, or one renamed aside to be deleted), as after nix-store; after `close()`, not even the
 * prepared chroot skeletons the engine keeps between builds.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nixOk, tempDir } from '../helpers/nix.js';
import { SANDBOX_PATHS, busyboxOk, instantiateAttrs, removeTree } from './helpers.js';

const EXPR = `{
  a = derivation { name = "close-a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; };
  b = derivation { name = "close-b"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo b > $out; exit 1"]; };
}`;

describe.skipIf(!nixOk() || !busyboxOk())('a sandboxed engine cleans up after itself', () => {
  const root = tempDir('realise-engine-close-');
  afterAll(async () => {
    await removeTree(root);
  });

  it('no chroot left when buildPaths returns (success or failure); no skeleton after close()', async () => {
    const R = path.join(root, 'R');
    writeFileSync(path.join(root, 'e.nix'), EXPR);
    const drv = instantiateAttrs(R, path.join(root, 'e.nix'));
    const store = await LocalStore.open({ root: R });
    const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, keepGoing: true });
    const extras = () => readdirSync(store.realStoreDir).filter((n) => !/^[0-9a-z]{32}-[^.]+(\.drv)?$/.test(n) && n !== '.links');
    const results = await engine.buildPathsWithResults([drv.a!, drv.b!]);
    expect(results.map((r) => r.result.status)).toEqual(['built', 'permanent-failure']);
    expect(extras().filter((n) => n.includes('.chroot'))).toEqual([]);
    await engine.close();
    expect(extras().filter((n) => !n.endsWith('.lock'))).toEqual([]);
    await store.close();
  }, 60_000);
});
