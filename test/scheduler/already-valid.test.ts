/**
 * alreadyValidResults (the no-op answered without an engine) against BuildEngine.buildPathsWithResults on the
 * same plain LocalStore: the same results when every target is valid, and no answer (so the engine runs)
 * whenever something is missing or not fixed by the .drv. And the temporary roots it takes, as Nix's goals
 * take them: every target .drv and every output path a .drv names, in the process's roots file.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { alreadyValidResults } from '../../src/scheduler/already-valid.js';
import type { BuildTarget } from '../../src/scheduler/results.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { StorePath } from '../../src/store/store-path.js';
import { tempDir } from '../helpers/nix.js';
import { removeTree, writeTestDrv } from './helpers.js';

let root: string;
let store: LocalStore;
let leaf: StorePath;
let multi: StorePath;
let top: StorePath;
let unbuilt: StorePath;
const outputs = new Map<StorePath, Map<string, StorePath>>();

beforeAll(async () => {
  root = tempDir('realise-already-valid-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
  leaf = await writeTestDrv(store, 'av-leaf', [], { script: 'echo leaf > $out' });
  multi = await writeTestDrv(store, 'av-multi', [leaf], { outputs: ['out', 'dev'], script: 'echo o > $out; echo d > $dev' });
  top = await writeTestDrv(store, 'av-top', [multi], { script: 'echo top > $out' });
  unbuilt = await writeTestDrv(store, 'av-unbuilt', [], { script: 'echo u > $out' });
  const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
  await engine.buildPaths([top]);
  await engine.close();
  for (const d of [leaf, multi, top, unbuilt]) outputs.set(d, await store.queryDerivationOutputs(d));
});

afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

describe('alreadyValidResults', () => {
  it('gives what the engine gives when every target is valid: already-valid, the wanted outputs, in target order', async () => {
    const targets: BuildTarget[] = [
      { drvPath: top, outputs: '*' },
      { drvPath: multi, outputs: ['dev'] },
      { drvPath: multi },
      { drvPath: multi, outputs: ['dev', 'out'] },
      { path: outputs.get(leaf)!.get('out')! },
      { drvPath: leaf, outputs: '*' },
    ];
    const fast = await alreadyValidResults(store, targets);
    const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
    const slow = await engine.buildPathsWithResults(targets);
    await engine.close();
    expect(slow.every((r) => r.result.status === 'already-valid')).toBe(true);
    expect(fast).toEqual(slow);
    // One goal per .drv: every target of `multi` gets the outputs all of them want; alone, `multi!dev` gets dev.
    expect(fast![1]!.result.builtOutputs).toEqual(Object.fromEntries(outputs.get(multi)!));
    const alone = await alreadyValidResults(store, [{ drvPath: multi, outputs: ['dev'] }]);
    expect(alone![0]!.result.builtOutputs).toEqual({ dev: outputs.get(multi)!.get('dev') });
  });

  it('records each target .drv, then every output path its .drv names, as temporary roots', () => {
    const roots = readFileSync(path.join(root, 'state', 'temproots', String(process.pid)), 'utf8').split('\0');
    for (const p of [top, multi, leaf, ...outputs.get(multi)!.values(), outputs.get(top)!.get('out')!]) expect(roots).toContain(p);
    // Each path once, however many targets name it.
    expect(roots.filter((p) => p === multi)).toHaveLength(1);
  });

  it('gives no answer when something is missing or unknown: the engine decides', async () => {
    // An output that is not valid, an output the .drv does not have, a .drv that is not valid.
    expect(await alreadyValidResults(store, [{ drvPath: top }, { drvPath: unbuilt }])).toBeUndefined();
    expect(await alreadyValidResults(store, [{ drvPath: multi, outputs: ['lib'] }])).toBeUndefined();
    const missing = `${store.storeDir}/${'0'.repeat(32)}-av-missing.drv`;
    expect(await alreadyValidResults(store, [{ drvPath: missing }])).toBeUndefined();
    expect(await alreadyValidResults(store, [{ path: outputs.get(unbuilt)!.get('out')! }])).toBeUndefined();
  });

  it('gives no answer for a valid .drv that does not parse (the engine reports it)', async () => {
    const bad = await store.addTextToStore('av-bad.drv', 'Derive([("out","/nix/store/x","","")],', []);
    expect(await alreadyValidResults(store, [{ drvPath: bad }])).toBeUndefined();
    const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
    const [r] = await engine.buildPathsWithResults([{ drvPath: bad }]).catch((e: Error) => [{ result: { status: 'threw', errorMsg: e.message } }]);
    await engine.close();
    expect(r!.result.status).not.toBe('already-valid');
  });

  it('refuses a target that is not a store path, as the engine does', async () => {
    await expect(alreadyValidResults(store, [{ path: '/elsewhere/x' }])).rejects.toThrow(/not in the Nix store|store path/);
  });
});
