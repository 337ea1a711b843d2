/**
 * One conformance suite for every Store implementation (LocalStore chroot and plain, MemoryStore).
 * Each test asserts observable behaviour through the Store interface plus the physical contents at
 * `toRealPath`, so an implementation that registers too early, leaves partial contents, or mishandles
 * the closure invariant fails here.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, promises as fsp, readdirSync, rmSync, symlinkSync, writeFileSync, chmodSync, existsSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { StoreError, RealiseError } from '../../src/store/errors.js';
import { Hash } from '../../src/store/hash.js';
import { collect, dumpPath, narOfRegularFile, narString, streamOf } from '../../src/store/nar.js';
import fc from 'fast-check';
import { LocalStore } from '../../src/store/local-store.js';
import type { PathInfo, Store } from '../../src/store/store-api.js';
import { computeTextPath, makeFixedOutputPath, makeStorePath, type StorePath } from '../../src/store/store-path.js';

export type StoreFactory = () => Promise<Store | { store: Store; dispose?: () => Promise<void> | void }>;

/** A NAR of a small tree: a file, an executable, a symlink and a subdirectory; `tag` varies the contents. */
export async function makeTreeNar(tag: string, extra: (dir: string) => void = () => {}): Promise<{ nar: Buffer; hash: Hash }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'realise-conf-tree-'));
  const root = path.join(dir, 't');
  mkdirSync(path.join(root, 'sub'), { recursive: true });
  writeFileSync(path.join(root, 'file'), `contents ${tag}\n`);
  writeFileSync(path.join(root, 'exe'), '#!/bin/sh\necho hi\n');
  chmodSync(path.join(root, 'exe'), 0o755);
  writeFileSync(path.join(root, 'sub', 'deep'), tag.repeat(100));
  symlinkSync('file', path.join(root, 'link'));
  extra(root);
  const nar = await collect(dumpPath(root));
  rmSync(dir, { recursive: true, force: true });
  return { nar, hash: Hash.of('sha256', nar) };
}

/** A fresh, never-valid store path with `name`. */
export function freshPath(name: string, storeDir = '/nix/store'): StorePath {
  return makeStorePath('output:out', Hash.of('sha256', `${name}-${Math.random()}-${process.hrtime.bigint()}`), name, storeDir);
}

/**
 * Temporary entries left in the store dir: anything `.tmp*` or `*-realise-tmp` except an empty directory (a LocalStore keeps
 * one empty, flock-ed temporary directory while it is open and deletes it on close).
 */
async function tmpLeftovers(store: Store): Promise<string[]> {
  try {
    return readdirSync(store.realStoreDir).filter((n) => {
      if (!n.startsWith('.tmp') && !n.endsWith('-realise-tmp')) return false;
      try {
        return readdirSync(path.join(store.realStoreDir, n)).length > 0;
      } catch {
        return true;
      }
    });
  } catch {
    return [];
  }
}

function expectCode(e: unknown, code: string): void {
  expect(e).toBeInstanceOf(RealiseError);
  expect((e as RealiseError).code).toBe(code);
}

async function catchErr(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

export function storeConformance(name: string, makeStore: StoreFactory): void {
  describe(`Store conformance: ${name}`, () => {
    let store: Store;
    let dispose: (() => Promise<void> | void) | undefined;

    beforeEach(async () => {
      const s = await makeStore();
      if ('store' in s && !('isValidPath' in s)) {
        store = s.store;
        dispose = s.dispose;
      } else {
        store = s as Store;
        dispose = undefined;
      }
    });
    afterEach(async () => {
      await store.close();
      await dispose?.();
    });

    const sd = () => store.storeDir;

    async function addTree(name: string, references: StorePath[] = [], extra?: Partial<PathInfo>): Promise<PathInfo> {
      const { nar, hash } = await makeTreeNar(name);
      const p = freshPath(name, sd());
      return store.addToStore({ path: p, narHash: hash, narSize: nar.length, references, ...extra }, streamOf(nar));
    }

    it('adds a tree from a NAR, registers it, and canonicalises its contents', async () => {
      const { nar, hash } = await makeTreeNar('one');
      const p = freshPath('one', sd());
      expect(await store.isValidPath(p)).toBe(false);
      expect(await store.queryPathInfo(p)).toBeUndefined();
      const deriver = freshPath('one.drv', sd());
      const info = await store.addToStore(
        { path: p, narHash: hash, narSize: nar.length, references: [], deriver, sigs: ['cache.example.org-1:c2lnbmF0dXJl'], ultimate: true, ca: undefined },
        streamOf(nar),
      );
      expect(info.path).toBe(p);
      expect(await store.isValidPath(p)).toBe(true);
      const q = (await store.queryPathInfo(p))!;
      expect(q.narHash).toBeInstanceOf(Hash);
      expect(q.narHash.equals(hash)).toBe(true);
      expect(q.narSize).toBe(nar.length);
      expect(q.references).toEqual([]);
      expect(q.deriver).toBe(deriver);
      expect(q.sigs).toEqual(['cache.example.org-1:c2lnbmF0dXJl']);
      expect(q.ultimate).toBe(true);
      expect(typeof q.registrationTime).toBe('number');
      expect(Math.abs(q.registrationTime! - Date.now() / 1000)).toBeLessThan(120);
      const real = store.toRealPath(p);
      expect(real.startsWith(store.realStoreDir + '/')).toBe(true);
      expect(store.toRealPath(p + '/sub/deep')).toBe(real + '/sub/deep');
      // Canonical metadata: mtime 1, read-only modes, executables 0555, directories 0555.
      for (const [rel, mode] of [
        ['', 0o555],
        ['file', 0o444],
        ['exe', 0o555],
        ['sub', 0o555],
        ['sub/deep', 0o444],
      ] as const) {
        const st = lstatSync(path.join(real, rel));
        expect(st.mode & 0o7777, rel).toBe(mode);
        expect(st.mtimeMs, rel).toBe(1000);
      }
      expect(lstatSync(path.join(real, 'link')).isSymbolicLink()).toBe(true);
      expect(lstatSync(path.join(real, 'link')).mtimeMs).toBe(1000);
      expect(await fsp.readFile(path.join(real, 'file'), 'utf8')).toBe('contents one\n');
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('top-level executable files and symlinks are stored as such', async () => {
      const exe = narOfRegularFile('#!/bin/sh\n', true);
      const pe = freshPath('tool', sd());
      await store.addToStore({ path: pe, narHash: Hash.of('sha256', exe), narSize: exe.length, references: [] }, streamOf(exe));
      expect(lstatSync(store.toRealPath(pe)).mode & 0o7777).toBe(0o555);
      expect((await collect(store.narFromPath(pe))).equals(exe)).toBe(true);
      const d = mkdtempSync(path.join(tmpdir(), 'realise-conf-link-'));
      symlinkSync('/nix/store/some-target', path.join(d, 'l'));
      const link = await collect(dumpPath(path.join(d, 'l')));
      rmSync(d, { recursive: true, force: true });
      const pl = freshPath('link', sd());
      await store.addToStore({ path: pl, narHash: Hash.of('sha256', link), narSize: link.length, references: [] }, streamOf(link));
      expect(lstatSync(store.toRealPath(pl)).isSymbolicLink()).toBe(true);
      expect(lstatSync(store.toRealPath(pl)).mtimeMs).toBe(1000);
      expect((await collect(store.narFromPath(pl))).equals(link)).toBe(true);
    });

    it('narFromPath round-trips the exact NAR bytes', async () => {
      const { nar, hash } = await makeTreeNar('rt');
      const p = freshPath('rt', sd());
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar));
      const back = await collect(store.narFromPath(p));
      expect(back.equals(nar)).toBe(true);
      await expect(collect(store.narFromPath(freshPath('nope', sd())))).rejects.toMatchObject({ code: 'invalid-path' });
    });

    it('adding an already valid path is a no-op that returns its info', async () => {
      const a = await addTree('idem');
      let consumed = false;
      async function* never() {
        consumed = true;
        yield new Uint8Array([1]);
      }
      const again = await store.addToStore({ ...a, narHash: Hash.of('sha256', 'other') }, never());
      expect(consumed).toBe(false);
      expect(again.narHash.equals(a.narHash)).toBe(true);
    });

    it('refuses a path whose references are not valid, and leaves nothing behind', async () => {
      const missing = freshPath('missing-dep', sd());
      const { nar, hash } = await makeTreeNar('orphan');
      const p = freshPath('orphan', sd());
      const e = await catchErr(store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [missing] }, streamOf(nar)));
      expectCode(e, 'missing-references');
      expect((e as Error).message).toContain(p);
      expect((e as Error).message).toContain(missing);
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('a wrong narHash or narSize leaves nothing registered and no contents', async () => {
      const { nar, hash } = await makeTreeNar('bad');
      const p = freshPath('bad', sd());
      const wrong = Hash.of('sha256', 'not the nar');
      const e = await catchErr(store.addToStore({ path: p, narHash: wrong, narSize: nar.length, references: [] }, streamOf(nar)));
      expectCode(e, 'nar-hash-mismatch');
      expect((e as Error).message).toContain(p);
      expect((e as Error).message).toContain(wrong.toString('base32'));
      expect((e as Error).message).toContain(hash.toString('base32'));
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);

      const e2 = await catchErr(store.addToStore({ path: p, narHash: hash, narSize: nar.length + 8, references: [] }, streamOf(nar)));
      expectCode(e2, 'nar-size-mismatch');
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);

      // A truncated (malformed) NAR: BadNarError, nothing left.
      const e3 = await catchErr(store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar.subarray(0, nar.length - 20))));
      expectCode(e3, 'bad-nar');
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      expect(await tmpLeftovers(store)).toEqual([]);

      // And the right NAR still goes in afterwards.
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar));
      expect(await store.isValidPath(p)).toBe(true);
    });

    it('an aborted addToStore leaves nothing', async () => {
      const { nar, hash } = await makeTreeNar('abort');
      const p = freshPath('abort', sd());
      const ac = new AbortController();
      async function* slow() {
        yield nar.subarray(0, 64);
        ac.abort(new Error('stop'));
        yield nar.subarray(64);
      }
      await expect(store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, slow(), { signal: ac.signal })).rejects.toThrow();
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('references, referrers and closures (including self-references)', async () => {
      const a = await addTree('a');
      const b = await addTree('b', [a.path]);
      const c = await addTree('c', [a.path]);
      const { nar, hash } = await makeTreeNar('d');
      const dPath = freshPath('d', sd());
      const d = await store.addToStore({ path: dPath, narHash: hash, narSize: nar.length, references: [c.path, dPath, b.path] }, streamOf(nar));
      expect(d.references).toEqual([b.path, c.path, dPath].sort());
      expect(await store.queryReferrers(a.path)).toEqual([b.path, c.path].sort());
      expect(await store.queryReferrers(dPath)).toEqual([dPath]);
      expect(await store.queryReferrers(freshPath('nobody', sd()))).toEqual([]);
      if (store instanceof LocalStore) {
        // Many paths' references in one query: those of the valid paths that have some (a has none).
        const many = store.queryReferencesSync([a.path, dPath, b.path, freshPath('nobody', sd())]);
        expect(new Map([...many].map(([p, rs]) => [p, [...rs].sort()]))).toEqual(
          new Map([
            [dPath, [b.path, c.path, dPath].sort()],
            [b.path, [a.path]],
          ]),
        );
      }
      expect(await store.computeClosure([dPath])).toEqual(new Set([a.path, b.path, c.path, dPath]));
      expect(await store.computeClosure([b.path, c.path])).toEqual(new Set([a.path, b.path, c.path]));
      expect(await store.computeClosure([])).toEqual(new Set());
      await expect(store.computeClosure([freshPath('invalid', sd())])).rejects.toMatchObject({ code: 'invalid-path' });
    });

    it('queryValidPaths returns exactly the valid subset', async () => {
      const a = await addTree('v1');
      const b = await addTree('v2');
      const invalid = Array.from({ length: 50 }, (_, i) => freshPath(`inv${i}`, sd()));
      const got = await store.queryValidPaths([a.path, ...invalid, b.path, a.path, 'not a path']);
      expect(got).toEqual(new Set([a.path, b.path]));
      expect(await store.queryValidPaths([])).toEqual(new Set());
    });

    it('registerValidPaths registers a batch atomically, in any order, with the closure invariant', async () => {
      const x = freshPath('x', sd());
      const y = freshPath('y', sd());
      for (const [p, t] of [
        [x, 'x'],
        [y, 'y'],
      ] as const) {
        await fsp.mkdir(store.toRealPath(p));
        await fsp.writeFile(path.join(store.toRealPath(p), 'f'), t);
        await fsp.chmod(path.join(store.toRealPath(p), 'f'), 0o666);
      }
      const info = async (p: StorePath, refs: StorePath[]): Promise<PathInfo> => {
        const nar = await collect(dumpPath(store.toRealPath(p)));
        return { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: refs };
      };
      const xi = await info(x, []);
      const yi = await info(y, [x, y]);
      // A missing reference makes the whole batch fail: neither becomes valid.
      const missing = freshPath('missing', sd());
      const e = await catchErr(store.registerValidPaths([yi, { ...xi, references: [missing] }]));
      expectCode(e, 'missing-references');
      expect(await store.queryValidPaths([x, y])).toEqual(new Set());
      // y is listed before x, which it references: still fine in one batch.
      await store.registerValidPaths([yi, xi]);
      expect(await store.queryValidPaths([x, y])).toEqual(new Set([x, y]));
      expect((await store.queryPathInfo(y))!.references).toEqual([x, y].sort());
      // Registration canonicalised the contents.
      expect(lstatSync(path.join(store.toRealPath(x), 'f')).mode & 0o7777).toBe(0o444);
      expect(lstatSync(path.join(store.toRealPath(x), 'f')).mtimeMs).toBe(1000);
      // Registering a path whose contents are missing is refused.
      const ghost = freshPath('ghost', sd());
      const e2 = await catchErr(store.registerValidPaths([{ path: ghost, narHash: xi.narHash, narSize: xi.narSize, references: [] }]));
      expectCode(e2, 'missing-contents');
      expect(await store.isValidPath(ghost)).toBe(false);
    });

    it('rejects reference cycles between different paths in a batch', async () => {
      const p = freshPath('cyc1', sd());
      const q = freshPath('cyc2', sd());
      for (const x of [p, q]) await fsp.writeFile(store.toRealPath(x), 'x');
      const nar = narOfRegularFile('x');
      const h = Hash.of('sha256', nar);
      const e = await catchErr(
        store.registerValidPaths([
          { path: p, narHash: h, narSize: nar.length, references: [q] },
          { path: q, narHash: h, narSize: nar.length, references: [p] },
        ]),
      );
      expectCode(e, 'reference-cycle');
      expect(await store.queryValidPaths([p, q])).toEqual(new Set());
    });

    it('a hostile NAR (entry named "..") is refused and writes nothing outside the temp dir', async () => {
      const s = (x: string) => narString(x);
      const nar = Buffer.concat([
        s('nix-archive-1'),
        s('('),
        s('type'),
        s('directory'),
        s('entry'),
        s('('),
        s('name'),
        s('..'),
        s('node'),
        s('('),
        s('type'),
        s('regular'),
        s('contents'),
        s('pwned'),
        s(')'),
        s(')'),
        s(')'),
      ]);
      const p = freshPath('hostile', sd());
      const before = readdirSync(path.dirname(store.realStoreDir)).sort();
      const e = await catchErr(store.addToStore({ path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [] }, streamOf(nar)));
      expectCode(e, 'bad-nar');
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      expect(readdirSync(path.dirname(store.realStoreDir)).sort()).toEqual(before);
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('property: a random batch registers entirely iff every reference is valid or in the batch', async () => {
      const existing = await store.addTextToStore('base.txt', 'base');
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 5 }).chain((n) =>
            fc.tuple(
              fc.constant(n),
              // Each path refers to earlier batch members (no cycles), the valid base, or a missing path.
              fc.array(fc.array(fc.integer({ min: -2, max: n - 1 }), { maxLength: 3 }), { minLength: n, maxLength: n }),
              fc.shuffledSubarray([...Array(n).keys()], { minLength: n, maxLength: n }),
            ),
          ),
          async ([n, refIdx, order]) => {
            const paths = Array.from({ length: n }, (_, i) => freshPath(`b${i}`, sd()));
            const missing = freshPath('absent', sd());
            const infos: PathInfo[] = [];
            let ok = true;
            for (let i = 0; i < n; i++) {
              const refs = new Set<StorePath>();
              for (const r of refIdx[i]!) {
                if (r === -1) refs.add(existing);
                else if (r === -2) {
                  refs.add(missing);
                  ok = false;
                } else if (r < i) refs.add(paths[r]!);
                else if (r === i) refs.add(paths[i]!);
              }
              await fsp.writeFile(store.toRealPath(paths[i]!), `p${i}`);
              const nar = narOfRegularFile(`p${i}`);
              infos.push({ path: paths[i]!, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [...refs] });
            }
            const batch = order.map((i) => infos[i]!);
            let threw: unknown;
            try {
              await store.registerValidPaths(batch);
            } catch (e) {
              threw = e;
            }
            const valid = await store.queryValidPaths(paths);
            if (ok) {
              expect(threw).toBeUndefined();
              expect(valid.size).toBe(n);
              for (const i of infos) expect((await store.queryPathInfo(i.path))!.references).toEqual([...i.references].sort());
            } else {
              expectCode(threw, 'missing-references');
              expect(valid.size).toBe(0);
            }
          },
        ),
        { numRuns: 12 },
      );
    });

    it('toRealPath never escapes the real store dir; locks need store paths', async () => {
      expect(() => store.toRealPath(`${sd()}/../etc/passwd`)).toThrow(expect.objectContaining({ code: 'invalid-store-path' }));
      expect(() => store.toRealPath(`${sd()}/x/./y`)).toThrow(expect.objectContaining({ code: 'invalid-store-path' }));
      expect(() => store.toRealPath('/etc/passwd')).toThrow(expect.objectContaining({ code: 'invalid-store-path' }));
      await expect(store.lockPaths([`${sd()}/../../tmp/x`])).rejects.toMatchObject({ code: 'invalid-store-path' });
      await expect(store.tryLockPaths(['/tmp/x'])).rejects.toMatchObject({ code: 'invalid-store-path' });
    });

    it('rejects malformed store paths with a typed error', async () => {
      const nar = narOfRegularFile('x');
      const e = await catchErr(
        store.addToStore({ path: '/nix/store/bad', narHash: Hash.of('sha256', nar), narSize: nar.length, references: [] }, streamOf(nar)),
      );
      expectCode(e, 'invalid-store-path');
      const e2 = await catchErr(
        store.addToStore({ path: freshPath('ok', sd()), narHash: Hash.of('sha256', nar), narSize: nar.length, references: ['/elsewhere/xxx'] }, streamOf(nar)),
      );
      expectCode(e2, 'invalid-store-path');
    });

    it('text paths: addTextToStore computes the text path and readTextFile reads it back', async () => {
      const a = await store.addTextToStore('a.txt', 'hello a');
      expect(a).toBe(computeTextPath('a.txt', 'hello a', [], sd()));
      const b = await store.addTextToStore('b.drv', `uses ${a}`, [a]);
      expect(b).toBe(computeTextPath('b.drv', `uses ${a}`, [a], sd()));
      expect(await store.readTextFile(b)).toBe(`uses ${a}`);
      const info = (await store.queryPathInfo(b))!;
      expect(info.references).toEqual([a]);
      expect(info.ca).toBe(`text:sha256:${Hash.of('sha256', `uses ${a}`).base32}`);
      const nar = narOfRegularFile(`uses ${a}`);
      expect(info.narHash.equals(Hash.of('sha256', nar))).toBe(true);
      expect(info.narSize).toBe(nar.length);
      expect(lstatSync(store.toRealPath(b)).mode & 0o7777).toBe(0o444);
      // Idempotent.
      expect(await store.addTextToStore('b.drv', `uses ${a}`, [a])).toBe(b);
      // References must be valid.
      await expect(store.addTextToStore('c', 'x', [freshPath('nope', sd())])).rejects.toMatchObject({ code: 'missing-references' });
      await expect(store.readTextFile(freshPath('nope', sd()))).rejects.toMatchObject({ code: 'invalid-path' });
    });

    it('fixed-output style paths with ca keep their ca', async () => {
      const { nar, hash } = await makeTreeNar('fixed');
      const p = makeFixedOutputPath('recursive', hash, 'fixed', { storeDir: sd() });
      const ca = `fixed:r:${hash.toString('base32')}`;
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [], ca }, streamOf(nar));
      expect((await store.queryPathInfo(p))!.ca).toBe(ca);
    });

    it('a content address that does not match the contents is refused (fixed:r, flat fixed, text)', async () => {
      const { nar, hash } = await makeTreeNar('ca');
      const p = freshPath('ca', sd());
      const wrong = Hash.of('sha256', 'something else');
      const e = await catchErr(
        store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [], ca: `fixed:r:${wrong.toString('base32')}` }, streamOf(nar)),
      );
      expectCode(e, 'ca-hash-mismatch');
      expect((e as Error).message).toContain(p);
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      // Recursive with another algorithm: the NAR is re-hashed with it.
      const sha512 = Hash.of('sha512', nar);
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [], ca: `fixed:r:${sha512.toString('base32')}` }, streamOf(nar));
      expect(await store.isValidPath(p)).toBe(true);
      // Flat: the hash of the file contents.
      const file = narOfRegularFile('flat contents');
      const q = freshPath('flat', sd());
      await expect(
        store.addToStore(
          { path: q, narHash: Hash.of('sha256', file), narSize: file.length, references: [], ca: `fixed:${Hash.of('sha1', 'other').toString('base32')}` },
          streamOf(file),
        ),
      ).rejects.toMatchObject({ code: 'ca-hash-mismatch' });
      await store.addToStore(
        { path: q, narHash: Hash.of('sha256', file), narSize: file.length, references: [], ca: `fixed:${Hash.of('sha1', 'flat contents').toString('base32')}` },
        streamOf(file),
      );
      const r = freshPath('text', sd());
      await expect(
        store.addToStore(
          { path: r, narHash: Hash.of('sha256', file), narSize: file.length, references: [], ca: `text:${Hash.of('sha256', 'nope').toString('base32')}` },
          streamOf(file),
        ),
      ).rejects.toMatchObject({ code: 'ca-hash-mismatch' });
      expect(await store.isValidPath(r)).toBe(false);
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('derivation outputs round-trip and need a valid .drv', async () => {
      const drv = await store.addTextToStore('foo.drv', 'Derive([])');
      const out = freshPath('foo', sd());
      const dev = freshPath('foo-dev', sd());
      expect(await store.queryDerivationOutputs(drv)).toEqual(new Map());
      await store.registerDerivationOutputs(
        drv,
        new Map([
          ['out', out],
          ['dev', dev],
        ]),
      );
      expect(await store.queryDerivationOutputs(drv)).toEqual(
        new Map([
          ['out', out],
          ['dev', dev],
        ]),
      );
      await store.registerDerivationOutputs(drv, new Map([['out', out]]));
      expect((await store.queryDerivationOutputs(drv)).size).toBe(2);
      await expect(store.registerDerivationOutputs(freshPath('bar.drv', sd()), new Map([['out', out]]))).rejects.toMatchObject({ code: 'invalid-path' });
      const extra = store as Store & { queryValidDerivers?(p: StorePath): Promise<StorePath[]>; queryAllValidPaths?(): Promise<Set<StorePath>> };
      if (extra.queryValidDerivers) expect(await extra.queryValidDerivers(dev)).toEqual([drv]);
      if (extra.queryAllValidPaths) expect(await extra.queryAllValidPaths()).toEqual(new Set([drv]));
    });

    it('deletePath refuses valid paths and removes invalid contents', async () => {
      const a = await addTree('keep');
      await expect(store.deletePath(a.path)).rejects.toMatchObject({ code: 'path-is-valid' });
      expect(existsSync(store.toRealPath(a.path))).toBe(true);
      const junk = freshPath('junk', sd());
      const real = store.toRealPath(junk);
      mkdirSync(path.join(real, 'd'), { recursive: true });
      writeFileSync(path.join(real, 'd', 'f'), 'x');
      chmodSync(path.join(real, 'd'), 0o555);
      chmodSync(real, 0o555);
      await store.deletePath(junk);
      expect(existsSync(real)).toBe(false);
      await store.deletePath(junk); // missing is fine
    });

    it('stale invalid contents at the target are replaced by addToStore', async () => {
      const { nar, hash } = await makeTreeNar('stale');
      const p = freshPath('stale', sd());
      const real = store.toRealPath(p);
      mkdirSync(real);
      writeFileSync(path.join(real, 'garbage'), 'partial');
      chmodSync(real, 0o555);
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar));
      expect(existsSync(path.join(real, 'garbage'))).toBe(false);
      expect((await collect(store.narFromPath(p))).equals(nar)).toBe(true);
    });

    it('repair replaces corrupted contents of a valid path', async () => {
      const { nar, hash } = await makeTreeNar('rep');
      const p = freshPath('rep', sd());
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar));
      const f = path.join(store.toRealPath(p), 'file');
      chmodSync(f, 0o644);
      writeFileSync(f, 'corrupted');
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar), { repair: true });
      expect(await fsp.readFile(f, 'utf8')).toBe('contents rep\n');
      expect(await store.isValidPath(p)).toBe(true);
    });

    it('concurrent addToStore of one path: one writer, both see it valid', async () => {
      const { nar, hash } = await makeTreeNar('conc');
      const p = freshPath('conc', sd());
      const info = { path: p, narHash: hash, narSize: nar.length, references: [] };
      const [r1, r2] = await Promise.all([store.addToStore(info, streamOf(nar)), store.addToStore(info, streamOf(nar))]);
      expect(r1.path).toBe(p);
      expect(r2.path).toBe(p);
      expect((await collect(store.narFromPath(p))).equals(nar)).toBe(true);
      expect(await tmpLeftovers(store)).toEqual([]);
    });

    it('locks: exclusive, non-blocking try, waiting, abort, release idempotent', async () => {
      const p = freshPath('lockme', sd());
      const q = freshPath('lockme2', sd());
      const l1 = await store.lockPaths([q, p]);
      expect([...l1.paths]).toEqual([p, q].sort());
      expect(await store.tryLockPaths([p])).toBeUndefined();
      expect(await store.tryLockPaths([freshPath('other', sd()), q])).toBeUndefined();
      // A waiter gets the lock only after release.
      let got = false;
      const waiter = store.lockPaths([p]).then((l) => {
        got = true;
        return l;
      });
      await new Promise((r) => setTimeout(r, 50));
      expect(got).toBe(false);
      // An aborted waiter rejects and does not take the lock later.
      const ac = new AbortController();
      const aborted = store.lockPaths([q], { signal: ac.signal });
      ac.abort();
      await expect(aborted).rejects.toThrow();
      await l1.release();
      await l1.release();
      const l2 = await waiter;
      expect(got).toBe(true);
      const l3 = await store.tryLockPaths([q]);
      expect(l3).toBeDefined();
      await l3!.release();
      await l2.release();
      const l4 = await store.tryLockPaths([p, q]);
      expect(l4).toBeDefined();
      await l4!.release();
    });

    it('build logs: logPath layout and round trip', async () => {
      const drv = computeTextPath('hello.drv', 'Derive()', [], sd());
      const base = drv.slice(sd().length + 1);
      expect(store.logPath(drv).endsWith(`/drvs/${base.slice(0, 2)}/${base.slice(2)}`)).toBe(true);
      expect(await store.readBuildLog(drv)).toBeUndefined();
      await store.addBuildLog(drv, 'line 1\nline 2\n');
      expect(await store.readBuildLog(drv)).toBe('line 1\nline 2\n');
    });

    it('errors are StoreErrors with codes', async () => {
      const e = await catchErr(store.registerDerivationOutputs(freshPath('x.drv', sd()), new Map()));
      expect(e).toBeInstanceOf(StoreError);
    });
  });
}
