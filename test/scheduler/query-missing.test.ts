/**
 * queryMissing over a local store: what it returns for a layered DAG with part of it built, and how it
 * asks the store (one batched validity query per wave and kind of path, not one per path).
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { StorePath } from '../../src/store/store-path.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, writeTestDrv } from './helpers.js';

let root: string;
let store: LocalStore;

beforeAll(async () => {
  root = tempDir('realise-query-missing-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
});

afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

/** `layers` layers of `width` derivations, each depending on every derivation of the layer below. */
async function layeredDag(tag: string, layers: number, width: number): Promise<StorePath[][]> {
  const out: StorePath[][] = [];
  for (let l = 0; l < layers; l++) {
    const below = out[l - 1] ?? [];
    out.push(await Promise.all(Array.from({ length: width }, (_, i) => writeTestDrv(store, `${tag}-${l}-${i}`, below))));
  }
  return out;
}

describe('queryMissing', () => {
  it('lists the derivations to build, stops at built ones, and asks the store once per wave and kind of path', async () => {
    const dag = await layeredDag('qm', 4, 5);
    const sandbox = new FakeSandbox((p) => store.toRealPath(p));
    sandbox.auto = () => 0;
    const engine = new BuildEngine({ store, sandbox, maxJobs: 2 });
    try {
      // One derivation of the second layer is built, and so the whole first layer (its inputs).
      const built = dag[1]![0]!;
      expect((await engine.buildPaths([built]))[0]!.result.status).toBe('built');
      const missingDrv = path.join(store.storeDir, '00000000000000000000000000000000-gone.drv') as StorePath;

      const single = vi.spyOn(store, 'isValidPath');
      const batched = vi.spyOn(store, 'queryValidPaths');
      const m = await engine.queryMissing([...dag[3]!, missingDrv]);
      const asked = single.mock.calls.length + batched.mock.calls.length;
      single.mockRestore();
      batched.mockRestore();

      const expected = [...dag[3]!, ...dag[2]!, ...dag[1]!.slice(1)].sort();
      expect(m.willBuild).toEqual(expected);
      expect(m.unknown).toEqual([missingDrv]);
      expect(m.willSubstitute).toEqual([]);
      // Waves: the top layer (and the missing .drv), layers 2, 1 and 0: for each, the .drv files and the
      // outputs (no sources). Path by path it would be a query per .drv and per output (over 40).
      expect(asked).toBeLessThanOrEqual(8);
    } finally {
      await engine.close();
    }
  });
});
