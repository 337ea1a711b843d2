/**
 * Substitution goals that start in the same turn of the event loop do their first step as one wave: their
 * temporary roots in one write, their validity in one query (Nix's PathSubstitutionGoal::init per goal);
 * and those that get a slot together re-check their validity in one query. Each goal's outcome is still
 * its own: a path already valid is not fetched, a path the cache lacks fails alone.
 */
import { describe, expect, it, vi } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import { Hash } from '../../src/store/hash.js';
import { LocalStore } from '../../src/store/local-store.js';
import { narOfRegularFile } from '../../src/store/nar.js';
import { makeTextPath, type StorePath } from '../../src/store/store-path.js';
import { InMemorySubstituter } from '../../src/substituter/memory.js';
import { tempDir } from '../helpers/nix.js';

async function cacheOf(n: number, storeDir: string): Promise<{ sub: InMemorySubstituter; paths: StorePath[]; contents: Map<StorePath, string> }> {
  const sub = new InMemorySubstituter({ trusted: true, storeDir });
  const paths: StorePath[] = [];
  const contents = new Map<StorePath, string>();
  for (let i = 0; i < n; i++) {
    const text = `wave file ${i}\n`;
    const hash = Hash.of('sha256', text);
    const p = makeTextPath(`wave-${i}`, hash, [], storeDir);
    await sub.add({ path: p, references: [], ca: `text:${hash.toString('base32', true)}` }, narOfRegularFile(text));
    paths.push(p);
    contents.set(p, text);
  }
  return { sub, paths, contents };
}

describe('a wave of substitutions', () => {
  it('roots and checks the paths asked for together in one write and one query, and fetches only the invalid ones', async () => {
    const root = tempDir();
    const store = await LocalStore.open({ root });
    const { sub, paths } = await cacheOf(24, store.storeDir);
    // Two of them are valid already: they are not fetched again.
    const engine0 = new BuildEngine({ store, substituters: [sub] });
    const pre = await engine0.buildPaths(paths.slice(0, 2).map((p) => ({ path: p })));
    expect(pre.map((r) => r.result.status)).toEqual(['substituted', 'substituted']);
    const fetchedBefore = sub.fetches;

    const rootsCalls: StorePath[][] = [];
    const validCalls: StorePath[][] = [];
    const addTempRoots = store.addTempRoots.bind(store);
    const queryValidPaths = store.queryValidPaths.bind(store);
    vi.spyOn(store, 'addTempRoots').mockImplementation((ps) => {
      rootsCalls.push([...ps]);
      return addTempRoots(ps);
    });
    vi.spyOn(store, 'queryValidPaths').mockImplementation((ps) => {
      validCalls.push([...ps]);
      return queryValidPaths(ps);
    });
    const engine = new BuildEngine({ store, substituters: [sub], maxSubstitutionJobs: 4 });
    const results = await engine.buildPaths(paths.map((p) => ({ path: p })));
    expect(results.map((r) => r.result.status)).toEqual([...paths.map((_, i) => (i < 2 ? 'already-valid' : 'substituted'))]);
    expect(sub.fetches - fetchedBefore).toBe(paths.length - 2);
    // All 24 rooted in one write, then checked in one query.
    const all = [...paths].sort();
    expect(rootsCalls.some((c) => [...c].sort().join() === all.join())).toBe(true);
    expect(validCalls.some((c) => [...c].sort().join() === all.join())).toBe(true);
    // The slots (4) re-check validity together: fewer queries than substitutions.
    const slotChecks = validCalls.filter((c) => c.length < paths.length && c.every((p) => paths.includes(p)));
    expect(slotChecks.length).toBeGreaterThan(0);
    expect(slotChecks.length).toBeLessThan(paths.length - 2);
    for (const p of paths) expect(await store.isValidPath(p)).toBe(true);
    await store.close();
  });

  it('a path the cache lacks fails alone; the rest of its wave lands', async () => {
    const root = tempDir();
    const store = await LocalStore.open({ root });
    const { sub, paths } = await cacheOf(6, store.storeDir);
    sub.remove(paths[3]!);
    const engine = new BuildEngine({ store, substituters: [sub], keepGoing: true });
    const substituted: StorePath[] = [];
    engine.on('substitution-finished', (e) => e.ok && substituted.push(e.path));
    const err = await engine.buildPaths(paths.map((p) => ({ path: p }))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BuildFailedError);
    expect((err as BuildFailedError).failures.map((f) => f.path)).toEqual([paths[3]]);
    expect((err as BuildFailedError).message).toContain('there is no substituter that can build it');
    expect(substituted.sort()).toEqual(paths.filter((_, i) => i !== 3).sort());
    for (const [i, p] of paths.entries()) expect(await store.isValidPath(p)).toBe(i !== 3);
    await store.close();
  });
});
