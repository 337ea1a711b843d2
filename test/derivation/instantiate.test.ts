/**
 * Equivalence with nix-instantiate: each TypeScript twin (equivalents.ts) of a fixture expression
 * writes the same .drv files (paths and bytes) as Nix 2.8 did (test/fixtures/derivation), and
 * addText/addPath give the paths of builtins.toFile/builtins.path.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix } from '../../src/derivation/context.js';
import { derivation, derivationFromStore } from '../../src/derivation/instantiate.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { expected, goldenDrvs } from './helpers.js';
import { sourcePaths, twins } from './equivalents.js';

describe('derivation(): the same .drv as nix-instantiate', () => {
  let store: MemoryStore;
  beforeAll(() => {
    store = new MemoryStore();
  });
  afterAll(async () => store.close());

  it('covers every fixture', () => {
    expect(Object.keys(twins).sort()).toEqual(Object.keys(expected.fixtures).sort());
  });

  it.each(Object.keys(twins))('%s', async (fixture) => {
    const drvs = await twins[fixture]!(store);
    expect(drvs.map((d) => d.drvPath).sort()).toEqual(expected.fixtures[fixture]);
    for (const d of drvs) {
      expect(await store.readTextFile(d.drvPath)).toBe(goldenDrvs.get(d.drvPath));
      // Output values carry Nix's output paths (or placeholders for floating CA outputs).
      for (const [name, want] of Object.entries(expected.derivations[d.drvPath]!.outputs)) {
        const o = d.output(name);
        expect(o.known).toBe(want !== null);
        if (want !== null) expect(o.path).toBe(want);
      }
      // Every input .drv is in the store with its references registered.
      const info = await store.queryPathInfo(d.drvPath);
      expect([...info!.references].sort()).toEqual([...new Set([...d.drv.inputSrcs, ...d.drv.inputDrvs.keys()])].sort());
    }
  });

  it('addText and addPath give the paths of builtins.toFile and builtins.path', async () => {
    const got = Object.fromEntries(Object.entries(await sourcePaths(store)).map(([k, v]) => [k, v.value]));
    expect(got).toEqual(expected.sources);
    const tree = expected.sources.tree!;
    const info = await store.queryPathInfo(tree);
    expect(info!.ca).toMatch(/^fixed:r:sha256:/);
    expect((await store.queryPathInfo(expected.sources.textWithRef!))!.references).toEqual([expected.sources.text]);
  });

  it('records context: output interpolation gives inputDrvs with exactly the wanted outputs', async () => {
    const [multi, consumer] = await twins['multiple-outputs']!(store);
    expect(Object.fromEntries(consumer!.drv.inputDrvs)).toEqual({ [multi!.drvPath]: ['dev', 'lib'] });
    expect(consumer!.drv.inputSrcs).toEqual([]);
  });

  it('a .drv path with deep context brings the whole closure in', async () => {
    const [a, , , d] = await twins.deps!(store);
    expect(Object.fromEntries(d!.drv.inputDrvs)).toEqual({ [a!.drvPath]: ['out'] });
    expect(d!.drv.inputSrcs).toEqual([a!.drvPath]);
  });

  it('is idempotent and fast for a repeated description', async () => {
    const t0 = performance.now();
    const again = await twins.deps!(store);
    expect(again.map((d) => d.drvPath).sort()).toEqual(expected.fixtures.deps);
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  it('the explicit form (options.inputDrvs) gives the same .drv as context', async () => {
    const dep = await derivation(store, { name: 'explicit-dep', system: 'x86_64-linux', builder: '/bin/sh' });
    const user = await derivation(
      store,
      { name: 'explicit', system: 'x86_64-linux', builder: '/bin/sh', path: dep.outPath },
      { inputDrvs: { [dep.drvPath]: ['out'] } },
    );
    const viaContext = await derivation(store, { name: 'explicit', system: 'x86_64-linux', builder: '/bin/sh', path: nix`${dep}` });
    expect(user.drvPath).toBe(viaContext.drvPath);
  });

  it('derivationFromStore keeps the declared output order (default output) and values serialise to JSON', async () => {
    for (const structured of [false, true]) {
      const d = await derivation(store, { name: 'order', system: 'x86_64-linux', builder: '/bin/sh', outputs: ['dev', 'out'], __structuredAttrs: structured });
      const back = await derivationFromStore(store, d.drvPath);
      expect(back.outputNames).toEqual(['dev', 'out']);
      expect(back.outPath).toBe(d.output('dev').path);
      expect(JSON.parse(JSON.stringify(back))).toEqual({ drvPath: d.drvPath, outputs: { dev: d.output('dev').path, out: d.out.path } });
    }
    const ca = await derivationFromStore(
      store,
      expected.fixtures.ca!.find((p) => p.endsWith('-ca.drv'))!,
    ).catch(() => undefined);
    expect(ca === undefined || ca.out.known === false).toBe(true);
  });
});
