/**
 * One conformance suite for every Substituter implementation. The factory must serve the closure that
 * scripts/make-cache-goldens.sh made with real Nix (see fixtures.ts), with its signatures.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hashNar, hashPath } from '../../src/store/nar.js';
import type { Store } from '../../src/store/store-api.js';
import { substitutePath, SubstituterError, type Substituter } from '../../src/substituter/substituter.js';
import { tempDir } from '../helpers/nix.js';
import { FakeStore } from './fake-store.js';
import { ALL_PATHS, nixNarHash, PATH_INFO, PUBLIC_KEY, ROOTS, topoOrder } from './fixtures.js';

export interface SubstituterFactoryOptions {
  readonly trustedPublicKeys: readonly string[];
}
export type SubstituterFactory = (opts: SubstituterFactoryOptions) => Promise<Substituter>;

const MISSING = '/nix/store/00000000000000000000000000000000-missing';

async function expectCode(p: Promise<unknown>, code: string): Promise<SubstituterError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, `expected a SubstituterError '${code}'`).toBeInstanceOf(SubstituterError);
  expect((e as SubstituterError).code).toBe(code);
  return e as SubstituterError;
}

export function substituterConformance(name: string, make: SubstituterFactory): void {
  describe(`Substituter conformance: ${name}`, () => {
    let sub: Substituter;
    let store: FakeStore & Store;
    const opened: Substituter[] = [];
    const open = async (o: SubstituterFactoryOptions) => {
      const s = await make(o);
      opened.push(s);
      return s;
    };

    beforeEach(async () => {
      sub = await open({ trustedPublicKeys: [PUBLIC_KEY] });
      store = await FakeStore.create(tempDir('realise-sub-store-'));
    });
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close?.();
    });

    it('initialises once and reports its store dir and priority', async () => {
      await Promise.all([sub.init(), sub.init()]);
      expect(sub.storeDir).toBe('/nix/store');
      expect(Number.isInteger(sub.priority)).toBe(true);
      expect(typeof sub.uri).toBe('string');
      expect(sub.trusted).toBe(false);
    });

    it('answers a batched query with what real Nix registered, leaving missing paths absent', async () => {
      await sub.init();
      const m = await sub.queryPathInfos([...ALL_PATHS, MISSING]);
      expect([...m.keys()].sort()).toEqual(ALL_PATHS);
      for (const [p, info] of m) {
        const nix = PATH_INFO.get(p)!;
        expect(info.path).toBe(p);
        expect(info.narHash.equals(nixNarHash(p))).toBe(true);
        expect(info.narSize).toBe(nix.narSize);
        expect(info.references).toEqual([...nix.references].sort());
        expect(info.deriver).toBe(nix.deriver);
        expect(info.ca).toBe(nix.ca);
        expect(info.downloadSize).toBeGreaterThan(0);
        expect(info.sigs?.length).toBeGreaterThan(0);
      }
      expect((await sub.queryPathInfos([])).size).toBe(0);
    });

    it('streams the NAR of every path with the NAR hash real Nix computed, reporting progress', async () => {
      await sub.init();
      const m = await sub.queryPathInfos(ALL_PATHS);
      for (const info of m.values()) {
        let last: [number, number] | undefined;
        const { hash, size } = await hashNar(
          sub.fetchNar(info, {
            onProgress: (d, e) => {
              last = [d, e];
            },
          }),
        );
        expect(hash.equals(info.narHash)).toBe(true);
        expect(size).toBe(info.narSize);
        expect(last).toEqual([info.downloadSize, info.downloadSize]);
      }
    });

    it('substitutes the whole closure, references first, with identical contents', async () => {
      await sub.init();
      const m = await sub.queryPathInfos(ALL_PATHS);
      for (const p of topoOrder()) {
        const got = await substitutePath(store, sub, m.get(p)!);
        expect(got.path).toBe(p);
        expect(got.narHash.equals(nixNarHash(p))).toBe(true);
        expect(got.ultimate).toBe(false);
        expect((await hashPath(store.toRealPath(p))).hash.equals(nixNarHash(p))).toBe(true);
      }
      expect(store.validBaseNames()).toEqual(await store.listing());
      // already valid: returned without downloading again
      const before = store.addCalls;
      await substitutePath(store, sub, m.get(ROOTS.top)!);
      expect(store.addCalls).toBe(before);
    });

    it('refuses a path whose references are not valid yet, fetching nothing', async () => {
      await sub.init();
      const info = (await sub.queryPathInfos([ROOTS.top])).get(ROOTS.top)!;
      const e = await expectCode(substitutePath(store, sub, info), 'missing-references');
      expect(e.message).toContain(ROOTS.top);
      expect(e.path).toBe(ROOTS.top);
      expect(store.addCalls).toBe(0);
      expect(await store.listing()).toEqual([]);
    });

    it('refuses input-addressed paths without a trusted signature, but accepts content-addressed ones', async () => {
      const untrusting = await open({ trustedPublicKeys: [] });
      await untrusting.init();
      const m = await untrusting.queryPathInfos(ALL_PATHS);
      const order = topoOrder();
      for (const p of order) {
        const info = m.get(p)!;
        if (info.ca) {
          await substitutePath(store, untrusting, info);
          expect(await store.isValidPath(p)).toBe(true);
        }
      }
      const dep = order.find((p) => p.endsWith('-dep'))!;
      const e = await expectCode(substitutePath(store, untrusting, m.get(dep)!), 'untrusted');
      expect(e.message).toMatch(/lacks a signature by a trusted key/);
      expect(e.message).toContain('test-cache-1');
      expect(await store.isValidPath(dep)).toBe(false);
      // the engine's keys count as well
      await substitutePath(store, untrusting, m.get(dep)!, { trustedPublicKeys: [PUBLIC_KEY] });
      expect(await store.isValidPath(dep)).toBe(true);
      // and requireSigs: false accepts unsigned paths
      await substitutePath(store, untrusting, m.get(ROOTS.top)!, { requireSigs: false });
      expect(await store.isValidPath(ROOTS.top)).toBe(true);
    });

    it('stops when the signal is aborted, registering nothing', async () => {
      await sub.init();
      const m = await sub.queryPathInfos(ALL_PATHS);
      const ac = new AbortController();
      ac.abort();
      await expectCode(substitutePath(store, sub, m.get(ROOTS.src)!, { signal: ac.signal }), 'aborted');
      expect(await store.isValidPath(ROOTS.src)).toBe(false);
      expect(await store.listing()).toEqual([]);
    });
  });
}
