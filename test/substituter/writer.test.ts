import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Store } from '../../src/store/store-api.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { copyToBinaryCache } from '../../src/substituter/binary-cache-writer.js';
import { parseNarInfo } from '../../src/substituter/narinfo.js';
import { substitutePath, SubstituterError } from '../../src/substituter/substituter.js';
import { generateKeyPair } from '../../src/substituter/signatures.js';
import { tempDir } from '../helpers/nix.js';
import { FakeStore } from './fake-store.js';
import { ALL_PATHS, cacheUrl, nixNarHash, PATH_INFO, PUBLIC_KEY, ROOTS, topoOrder } from './fixtures.js';

describe('copyToBinaryCache', () => {
  let store: FakeStore & Store;
  beforeAll(async () => {
    store = await FakeStore.create(path.join(tempDir('realise-writer-'), 'store'));
    const sub = new BinaryCacheSubstituter(cacheUrl('zstd'), { trustedPublicKeys: [PUBLIC_KEY] });
    const m = await sub.queryPathInfos(ALL_PATHS);
    for (const p of topoOrder()) await substitutePath(store, sub, m.get(p)!);
    await sub.close();
  });

  it('writes references before referrers, skips what is there, and round-trips through our substituter', async () => {
    const url = pathToFileURL(path.join(tempDir('realise-writer-cache-'), 'c')).href;
    const dep = topoOrder().find((p) => p.endsWith('-dep'))!;
    const seen: string[] = [];
    const first = await copyToBinaryCache(store, [dep], url, { compression: 'br', onPath: (p) => seen.push(p) });
    // the closure of dep, each path after its references
    expect(first.sort()).toEqual([...store.infos.keys()].filter((p) => p === dep || PATH_INFO.get(dep)!.references.includes(p) || p.endsWith('-a.txt')).sort());
    for (const [i, p] of seen.entries()) for (const r of PATH_INFO.get(p)!.references) if (r !== p) expect(seen.indexOf(r)).toBeLessThan(i);
    const second = await copyToBinaryCache(store, [ROOTS.top, ROOTS.src], url, { compression: 'br' });
    expect(second.sort()).toEqual([ROOTS.top, ROOTS.src].sort());
    expect(await copyToBinaryCache(store, [ROOTS.top], url)).toEqual([]);
    const dir = new URL(url).pathname;
    expect(readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);
    expect(readdirSync(path.join(dir, 'nar')).every((f) => f.endsWith('.nar.br'))).toBe(true);
    // unsigned: refused unless requireSigs is off; CA paths need no signature
    const sub = new BinaryCacheSubstituter(url, { requireSigs: true });
    const m = await sub.queryPathInfos(ALL_PATHS);
    expect(m.size).toBe(ALL_PATHS.length);
    const target = await FakeStore.create(path.join(tempDir('realise-writer-target-'), 'store'));
    for (const p of topoOrder()) {
      const info = m.get(p)!;
      expect(info.narHash.equals(nixNarHash(p))).toBe(true);
      // our narinfo keeps the signatures the store had (from the Nix-written cache)
      expect(info.sigs?.some((s) => s.startsWith('test-cache-1:'))).toBe(true);
      await substitutePath(target, sub, info, { trustedPublicKeys: [PUBLIC_KEY] });
    }
    expect([...target.infos.keys()].sort()).toEqual(ALL_PATHS);
    await sub.close();
  });

  it('signs with the given key and overwrites on request', async () => {
    const url = pathToFileURL(path.join(tempDir('realise-writer-cache-'), 'c')).href;
    await copyToBinaryCache(store, [ROOTS.src], url, { compression: 'none' });
    const dir = new URL(url).pathname;
    const file = path.join(dir, `${ROOTS.src.slice(11, 43)}.narinfo`);
    const keys = generateKeyPair('writer-1');
    await copyToBinaryCache(store, [ROOTS.src], url, { secretKey: keys.secretKey });
    expect(parseNarInfo(readFileSync(file, 'utf8')).sigs.some((s) => s.startsWith('writer-1:'))).toBe(false);
    await copyToBinaryCache(store, [ROOTS.src], url, { secretKey: keys.secretKey, overwrite: true, compression: 'xz' });
    const ni = parseNarInfo(readFileSync(file, 'utf8'));
    expect(ni.sigs.some((s) => s.startsWith('writer-1:'))).toBe(true);
    expect(ni.compression).toBe('xz');
    expect(existsSync(path.join(dir, ni.url))).toBe(true);
    const sub = new BinaryCacheSubstituter(url, { trustedPublicKeys: [keys.publicKey] });
    const target = await FakeStore.create(path.join(tempDir('realise-writer-target-'), 'store'));
    await substitutePath(target, sub, (await sub.queryPathInfos([ROOTS.src])).get(ROOTS.src)!);
    expect(await target.isValidPath(ROOTS.src)).toBe(true);
    await sub.close();
  });

  it('refuses a cache for another store dir, and http:// targets', async () => {
    const dir = path.join(tempDir('realise-writer-cache-'), 'c');
    await copyToBinaryCache(store, [ROOTS.src], pathToFileURL(dir).href);
    writeFileSync(path.join(dir, 'nix-cache-info'), 'StoreDir: /gnu/store\n');
    await expect(copyToBinaryCache(store, [ROOTS.src], pathToFileURL(dir).href, { overwrite: true })).rejects.toThrow(
      /is for Nix stores with prefix '\/gnu\/store'/,
    );
    await expect(copyToBinaryCache(store, [ROOTS.src], 'https://cache.example.org')).rejects.toBeInstanceOf(SubstituterError);
  });
});
