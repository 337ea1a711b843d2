/** HTTP binary caches against a real server on 127.0.0.1: faults, keep-alive, narinfo caching. */
import Database from 'better-sqlite3';
import { existsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { toNixBase32 } from '../../src/store/hash.js';
import type { Store } from '../../src/store/store-api.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { NarInfoCache } from '../../src/substituter/narinfo-cache.js';
import { parseNarInfo } from '../../src/substituter/narinfo.js';
import { substitutePath, SubstituterError } from '../../src/substituter/substituter.js';
import { tempDir } from '../helpers/nix.js';
import { FakeStore } from './fake-store.js';
import { ALL_PATHS, copyCache, PUBLIC_KEY, ROOTS, topoOrder } from './fixtures.js';
import { serveCache, type CacheServer } from './http-server.js';

const SRC = ROOTS.src;
const missing = (i: number) => `/nix/store/${toNixBase32(Buffer.from(String(i).padStart(20, '0')))}-missing`;

async function code(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(e instanceof SubstituterError)) throw new Error(`expected a SubstituterError, got ${String(e)}`);
  return e.code;
}

describe('BinaryCacheSubstituter over HTTP', () => {
  let server: CacheServer;
  let dir: string;
  let store: FakeStore & Store;
  const subs: BinaryCacheSubstituter[] = [];
  const make = (opts: ConstructorParameters<typeof BinaryCacheSubstituter>[1] = {}, url = server.url) => {
    const s = new BinaryCacheSubstituter(url, { trustedPublicKeys: [PUBLIC_KEY], ...opts });
    subs.push(s);
    return s;
  };
  const narinfoRequests = (p: string) => server.requests.filter((r) => r === `${p.slice(11, 43)}.narinfo`).length;

  beforeEach(async () => {
    const root = tempDir('realise-http-');
    dir = copyCache('xz', path.join(root, 'cache'));
    server = await serveCache(dir);
    store = await FakeStore.create(path.join(root, 'store'));
  });
  afterEach(async () => {
    for (const s of subs.splice(0)) await s.close();
    await server.close();
  });

  it('treats 404 as absent and reads nix-cache-info once', async () => {
    const s = make();
    const m = await s.queryPathInfos([SRC, missing(1), missing(2)]);
    expect([...m.keys()]).toEqual([SRC]);
    await s.queryPathInfos([missing(3)]);
    expect(server.requests.filter((r) => r === 'nix-cache-info')).toHaveLength(1);
  });

  it('takes Priority and WantMassQuery from nix-cache-info; ?priority= overrides', async () => {
    writeFileSync(path.join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n');
    const s = make();
    await s.init();
    expect(s.priority).toBe(30);
    expect(s.wantMassQuery).toBe(true);
    const t = make({}, `${server.url}?priority=7&trusted=1`);
    await t.init();
    expect(t.priority).toBe(7);
    expect(t.trusted).toBe(true);
    expect(t.uri).toBe(server.url);
  });

  it('retries a 500 and then succeeds; a persistent 500 is a network error naming the URL', async () => {
    server.fault(/narinfo$/, { kind: 'status', status: 500 }, 1);
    expect((await make().queryPathInfos([SRC])).size).toBe(1);
    server.fault(/narinfo$/, { kind: 'status', status: 503 });
    const e = await make({ retries: 2 })
      .queryPathInfos([SRC])
      .catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('network');
    expect((e as Error).message).toMatch(/HTTP error 503/);
    expect((e as Error).message).toContain(server.url);
    expect(narinfoRequests(SRC)).toBe(2 + 3);
  });

  it('a 500 or 404 on the NAR file fails the substitution and registers nothing', async () => {
    const s = make({ retries: 0 });
    const info = (await s.queryPathInfos([SRC])).get(SRC)!;
    server.fault(/^nar\//, { kind: 'status', status: 500 }, 1);
    expect(await code(substitutePath(store, s, info))).toBe('network');
    server.fault(/^nar\//, { kind: 'status', status: 404 }, 1);
    expect(await code(substitutePath(store, s, info))).toBe('not-found');
    expect(store.infos.size).toBe(0);
    expect(await store.listing()).toEqual([]);
    await substitutePath(store, s, info);
    expect(await store.isValidPath(SRC)).toBe(true);
  });

  it("with fallback, a failed request disables the cache for 60 s (Nix's maybeDisable); a 404 does not, nor a failure without fallback", async () => {
    const told: string[] = [];
    const s = make({ retries: 0, fallback: true, onDisabled: (m) => told.push(m) });
    const info = (await s.queryPathInfos([SRC])).get(SRC)!;
    server.fault(/^nar\//, { kind: 'status', status: 404 }, 1);
    expect(await code(substitutePath(store, s, info))).toBe('not-found');
    expect(told).toEqual([]);
    server.fault(/^nar\//, { kind: 'status', status: 500 }, 1);
    expect(await code(substitutePath(store, s, info))).toBe('network');
    expect(told).toEqual([`disabling binary cache '${server.url}' for 60 seconds`]);
    const asked = server.requests.length;
    expect(await code(substitutePath(store, s, info))).toBe('disabled');
    const e = await s.queryPathInfos([missing(1)]).catch((x: unknown) => x);
    expect((e as SubstituterError).code).toBe('disabled');
    expect((e as Error).message).toContain(`substituter '${server.url}' is disabled`);
    expect(server.requests.length).toBe(asked);
    // 60 s later it is asked again (and said once only).
    const now = performance.now();
    const clock = vi.spyOn(performance, 'now').mockReturnValue(now + 60_001);
    try {
      await substitutePath(store, s, info);
    } finally {
      clock.mockRestore();
    }
    expect(await store.isValidPath(SRC)).toBe(true);
    expect(told).toHaveLength(1);
    // Without fallback the next request goes to the server.
    const t = make({ retries: 0, onDisabled: (m) => told.push(m) });
    server.fault(/narinfo$/, { kind: 'status', status: 500 }, 1);
    expect(await code(t.queryPathInfos([missing(2)]))).toBe('network');
    expect((await t.queryPathInfos([missing(3)])).size).toBe(0);
    expect(told).toHaveLength(1);
  });

  it('with fallback, a narinfo whose body fails after its headers disables the cache as a failed request does (Nix disables on every transfer error)', async () => {
    const told: string[] = [];
    const s = make({ retries: 0, fallback: true, onDisabled: (m) => told.push(m) });
    await s.init();
    server.fault(/narinfo$/, { kind: 'truncate', bytes: 20 }, 1);
    expect(await code(s.queryPathInfos([SRC]))).toBe('network');
    expect(told).toEqual([`disabling binary cache '${server.url}' for 60 seconds`]);
    const asked = server.requests.length;
    expect(await code(s.queryPathInfos([missing(1)]))).toBe('disabled');
    expect(server.requests.length).toBe(asked);
    // A NAR body cut short is the same, once the cache is asked again after its 60 s.
    const clock = vi.spyOn(performance, 'now').mockReturnValue(performance.now() + 60_001);
    try {
      const info = (await s.queryPathInfos([SRC])).get(SRC)!;
      server.fault(/^nar\//, { kind: 'truncate', bytes: Math.floor(info.downloadSize / 2) }, 1);
      expect(await code(substitutePath(store, s, info))).toBe('truncated');
      expect(told).toHaveLength(2);
      expect(await code(substitutePath(store, s, info))).toBe('disabled');
    } finally {
      clock.mockRestore();
    }
  });

  it('survives slow responses', async () => {
    server.fault(/./, { kind: 'slow', delayMs: 150 });
    const s = make();
    const info = (await s.queryPathInfos([SRC])).get(SRC)!;
    await substitutePath(store, s, info);
    expect(await store.isValidPath(SRC)).toBe(true);
  });

  it('a truncated response is a truncated error, nothing registered, no stray files', async () => {
    const s = make({ retries: 0 });
    const info = (await s.queryPathInfos([SRC])).get(SRC)!;
    server.fault(/^nar\//, { kind: 'truncate', bytes: Math.floor(info.downloadSize / 2) });
    expect(await code(substitutePath(store, s, info))).toBe('truncated');
    expect(store.infos.size).toBe(0);
    expect(await store.listing()).toEqual([]);
  });

  it('a server that never answers times out as a network error', async () => {
    server.fault(/narinfo$/, { kind: 'hang' });
    const e = await make({ retries: 0, timeoutMs: 300 })
      .queryPathInfos([SRC])
      .catch((x: unknown) => x);
    expect((e as SubstituterError).code).toBe('network');
  });

  it('cancels a query and a download through the signal', async () => {
    server.fault(/./, { kind: 'slow', delayMs: 6000 });
    const ac = new AbortController();
    const s = make();
    const p = s.queryPathInfos([SRC], { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    const t0 = Date.now();
    expect(await code(p)).toBe('aborted');
    expect(Date.now() - t0).toBeLessThan(4500);
  });

  it('cancels a NAR download in flight, registering nothing', async () => {
    const s = make();
    const info = (await s.queryPathInfos([SRC])).get(SRC)!;
    server.fault(/^nar\//, { kind: 'slow', delayMs: 6000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const t0 = Date.now();
    expect(await code(substitutePath(store, s, info, { signal: ac.signal }))).toBe('aborted');
    expect(Date.now() - t0).toBeLessThan(4500);
    expect(store.infos.size).toBe(0);
    expect(await store.listing()).toEqual([]);
  });

  it('keeps connections alive and bounded while querying many paths in parallel', async () => {
    const s = make({ maxConnections: 8, maxParallelQueries: 32 });
    const paths = Array.from({ length: 300 }, (_, i) => missing(i));
    const m = await s.queryPathInfos([...paths, ...ALL_PATHS]);
    expect(m.size).toBe(ALL_PATHS.length);
    expect(server.requests.length).toBe(1 + 300 + ALL_PATHS.length);
    expect(server.connections()).toBeLessThanOrEqual(8);
    expect(server.connections()).toBeGreaterThanOrEqual(1);
  });

  it('substitutes the closure with parallel downloads', async () => {
    const s = make();
    const m = await s.queryPathInfos(ALL_PATHS);
    const order = topoOrder();
    // a.txt and src have no references: substitute them together, then the rest in order.
    await Promise.all(order.filter((p) => m.get(p)!.references.length === 0).map((p) => substitutePath(store, s, m.get(p)!)));
    for (const p of order) await substitutePath(store, s, m.get(p)!);
    expect([...store.infos.keys()].sort()).toEqual(ALL_PATHS);
  });
});

describe('NarInfoCache', () => {
  let server: CacheServer;
  let served: string;
  beforeEach(async () => {
    served = copyCache('xz', path.join(tempDir('realise-nic-'), 'cache'));
    server = await serveCache(served);
  });
  afterEach(async () => {
    await server.close();
  });
  const count = (p: string) => server.requests.filter((r) => r === `${p.slice(11, 43)}.narinfo`).length;

  it('remembers positive and negative lookups in binary-cache-v6.sqlite, shared across substituters', async () => {
    const cacheDir = tempDir('realise-nic-dir-');
    const cache = NarInfoCache.open({ cacheDir });
    expect(cache.file).toBe(path.join(cacheDir, 'binary-cache-v6.sqlite'));
    const s1 = new BinaryCacheSubstituter(server.url, { narInfoCache: cache });
    const first = await s1.queryPathInfos([SRC, missing(1)]);
    await s1.close();
    const s2 = new BinaryCacheSubstituter(server.url, { narInfoCache: cache });
    const second = await s2.queryPathInfos([SRC, missing(1)]);
    await s2.close();
    expect(count(SRC)).toBe(1);
    expect(count(missing(1))).toBe(1);
    expect(server.requests.filter((r) => r === 'nix-cache-info')).toHaveLength(1);
    const a = first.get(SRC)!;
    const b = second.get(SRC)!;
    expect({ ...b, narHash: b.narHash.base32, fileHash: b.fileHash?.base32 }).toEqual({ ...a, narHash: a.narHash.base32, fileHash: a.fileHash?.base32 });
    cache.close();
    // The file has Nix's tables, with one present and one absent row.
    const db = new Database(path.join(cacheDir, 'binary-cache-v6.sqlite'), { readonly: true });
    const rows = db.prepare('select hashPart, present, namePart from NARs order by present').all() as {
      hashPart: string;
      present: number;
      namePart: string | null;
    }[];
    expect(rows.map((r) => r.present)).toEqual([0, 1]);
    expect(rows[1]!.namePart).toBe('src');
    expect(db.prepare('select url from BinaryCaches').all()).toEqual([{ url: server.url }]);
    db.close();
    // Reopened from disk: still no request.
    const again = NarInfoCache.open({ cacheDir });
    const s3 = new BinaryCacheSubstituter(server.url, { narInfoCache: again });
    expect((await s3.queryPathInfos([SRC])).has(SRC)).toBe(true);
    expect(count(SRC)).toBe(1);
    await s3.close();
    again.close();
  });

  it('expires entries after their TTL', async () => {
    let now = 1_000_000;
    const cache = NarInfoCache.open({ now: () => now, negativeTtl: 60, positiveTtl: 600 });
    expect(cache.file).toBeUndefined();
    const s = new BinaryCacheSubstituter(server.url, { narInfoCache: cache });
    await s.queryPathInfos([SRC, missing(1)]);
    now += 61;
    await s.queryPathInfos([SRC, missing(1)]);
    expect(count(missing(1))).toBe(2);
    expect(count(SRC)).toBe(1);
    now += 600;
    await s.queryPathInfos([SRC]);
    expect(count(SRC)).toBe(2);
    await s.close();
    cache.close();
    // A TTL of 0 keeps nothing, even within the same second (Nix: fresh while `timestamp > now - ttl`).
    const none = NarInfoCache.open({ now: () => now, negativeTtl: 0, positiveTtl: 0 });
    const s0 = new BinaryCacheSubstituter(server.url, { narInfoCache: none });
    await s0.queryPathInfos([SRC, missing(1)]);
    const sAgain = new BinaryCacheSubstituter(server.url, { narInfoCache: none });
    await sAgain.queryPathInfos([SRC, missing(1)]);
    expect(count(missing(1))).toBe(4);
    expect(count(SRC)).toBe(4);
    await s0.close();
    await sAgain.close();
    none.close();
  });

  it("nix-cache-info is remembered on disk for Nix's 7 days, then read again: a changed Priority or StoreDir is seen", async () => {
    const cacheDir = tempDir('realise-nic-info-');
    let now = 1_000_000;
    const warnings: string[] = [];
    // Each substituter opens the file itself (as each run of the CLI does) and closes it with itself.
    const run = async () => {
      const s = new BinaryCacheSubstituter(server.url, { narInfoCache: { cacheDir, now: () => now }, onWarning: (m) => warnings.push(m) });
      await s.queryPathInfos([SRC]);
      await s.close();
      return { priority: s.priority, enabled: s.enabled, reads: server.requests.filter((r) => r === 'nix-cache-info').length };
    };
    const info = (storeDir: string, priority: number) => writeFileSync(path.join(served, 'nix-cache-info'), `StoreDir: ${storeDir}\nPriority: ${priority}\n`);
    info('/nix/store', 30);
    expect(await run()).toEqual({ priority: 30, enabled: true, reads: 1 });
    info('/nix/store', 20);
    now += 6 * 24 * 3600;
    expect(await run()).toEqual({ priority: 30, enabled: true, reads: 1 });
    now += 2 * 24 * 3600;
    expect(await run()).toEqual({ priority: 20, enabled: true, reads: 2 });
    info('/other/store', 20);
    now += 7 * 24 * 3600 + 1;
    expect(await run()).toEqual({ priority: 20, enabled: false, reads: 3 });
    expect(warnings).toEqual([`binary cache '${server.url}' is for Nix stores with prefix '/other/store', not '/nix/store'`]);
  });

  it('in memory, answers as the file does: the narinfo (in the store dir asked for), absent paths, nix-cache-info', () => {
    const h = (c: string) => c.repeat(32);
    const hash = `sha256:1${'a'.repeat(51)}`;
    const info = parseNarInfo(
      `StorePath: /nix/store/${h('b')}-x.drv\nURL: nar/x.nar\nCompression: none\nFileHash: ${hash}\nFileSize: 8\nNarHash: ${hash}\nNarSize: 8\n` +
        `References: ${h('d')}-z ${h('c')}-y\nDeriver: ${h('f')}-w.drv\nSig: k:c2ln\nCA: text:${hash}\n`,
      { storeDir: '/nix/store' },
    );
    const file = NarInfoCache.open({ cacheDir: tempDir('realise-nic-same-') });
    const memory = NarInfoCache.open();
    expect(file.file).toBeDefined();
    expect(memory.file).toBeUndefined();
    const answers = (c: NarInfoCache) => {
      c.insert('file:///c', h('b'), info);
      c.insert('file:///c', h('9'), undefined);
      // A narinfo whose path is not the hash part asked for is not remembered.
      c.insert('file:///c', h('8'), info);
      c.setCacheInfo('file:///c', { storeDir: '/nix/store', wantMassQuery: true, priority: 40 });
      const flat = (l: ReturnType<NarInfoCache['lookup']>) =>
        l?.present ? { ...l.info, narHash: l.info.narHash.base32, fileHash: l.info.fileHash?.base32 } : l;
      return {
        here: flat(c.lookup('file:///c', h('b'), '/nix/store')),
        elsewhere: flat(c.lookup('file:///c', h('b'), '/other/store')),
        otherCache: c.lookup('file:///d', h('b'), '/nix/store'),
        absent: c.lookup('file:///c', h('9'), '/nix/store'),
        notKept: c.lookup('file:///c', h('8'), '/nix/store'),
        cacheInfo: c.getCacheInfo('file:///c'),
      };
    };
    const got = answers(memory);
    expect(got).toEqual(answers(file));
    expect(got.elsewhere).toMatchObject({
      storePath: `/other/store/${h('b')}-x.drv`,
      references: [`/other/store/${h('c')}-y`, `/other/store/${h('d')}-z`],
      deriver: `/other/store/${h('f')}-w.drv`,
    });
    expect(got.absent).toEqual({ present: false });
    expect(got.notKept).toBeUndefined();
    file.close();
    memory.close();
  });

  it('falls back to memory when the directory cannot be used', () => {
    const warnings: string[] = [];
    const blocker = path.join(tempDir('realise-nic-bad-'), 'file');
    writeFileSync(blocker, 'x');
    const cache = NarInfoCache.open({ cacheDir: path.join(blocker, 'sub'), onWarning: (m) => warnings.push(m) });
    expect(cache.file).toBeUndefined();
    expect(warnings[0]).toMatch(/using memory instead/);
    expect(existsSync(path.join(blocker, 'sub'))).toBe(false);
    cache.close();
  });
});
