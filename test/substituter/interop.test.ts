/**
 * Interop with real Nix 2.8 both ways: caches we write are substituted by `nix copy --from` and
 * `nix-store --realise`; caches Nix wrote are substituted by us into a LocalStore that `nix-store --verify
 * --check-contents` accepts.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { Hash } from '../../src/store/hash.js';
import type { Store } from '../../src/store/store-api.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { copyToBinaryCache } from '../../src/substituter/binary-cache-writer.js';
import { parseNarInfo } from '../../src/substituter/narinfo.js';
import { generateKeyPair } from '../../src/substituter/signatures.js';
import { substitutePath } from '../../src/substituter/substituter.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { FakeStore } from './fake-store.js';
import { ALL_PATHS, cacheUrl, nixNarHash, PATH_INFO, PUBLIC_KEY, ROOTS, topoOrder } from './fixtures.js';

async function fill(store: Store, url: string): Promise<void> {
  const sub = new BinaryCacheSubstituter(url, { trustedPublicKeys: [PUBLIC_KEY] });
  const m = await sub.queryPathInfos(ALL_PATHS);
  for (const p of topoOrder()) await substitutePath(store, sub, m.get(p)!);
  await sub.close();
}

function expectSameAsNix(root: string): void {
  const infos = JSON.parse(nix('nix', ['path-info', '--store', root, '--json', '--recursive', ROOTS.top, ROOTS.src])) as {
    path: string;
    narHash: string;
    narSize: number;
    references: string[];
    ca?: string;
  }[];
  expect(infos.map((i) => i.path).sort()).toEqual(ALL_PATHS);
  for (const i of infos) {
    const want = PATH_INFO.get(i.path)!;
    expect(Hash.parse(i.narHash).equals(nixNarHash(i.path))).toBe(true);
    expect(i.narSize).toBe(want.narSize);
    expect(i.references.sort()).toEqual([...want.references].sort());
    expect(i.ca).toBe(want.ca);
  }
}

describe.skipIf(!nixOk())('interop with real Nix 2.8', () => {
  let store: FakeStore & Store;
  const keys = generateKeyPair('realise-test-1');
  const ours: Record<string, string> = {};

  beforeAll(async () => {
    store = await FakeStore.create(path.join(tempDir('realise-interop-'), 'store'));
    await fill(store, cacheUrl('none'));
    for (const compression of ['xz', 'zstd'] as const) {
      ours[compression] = pathToFileURL(path.join(tempDir('realise-ourcache-'), 'cache')).href;
      const written = await copyToBinaryCache(store, [ROOTS.top, ROOTS.src], ours[compression]!, { compression, secretKey: keys.secretKey });
      expect(written.sort()).toEqual(ALL_PATHS);
    }
  });

  it('writes narinfos real Nix would write (same fields, our signature)', () => {
    const dir = fileURLToPath(ours.xz!);
    expect(readFileSync(path.join(dir, 'nix-cache-info'), 'utf8')).toBe('StoreDir: /nix/store\n');
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.narinfo'))) {
      const ni = parseNarInfo(readFileSync(path.join(dir, f), 'utf8'));
      const want = PATH_INFO.get(ni.storePath)!;
      expect(ni.narHash.equals(nixNarHash(ni.storePath))).toBe(true);
      expect(ni.references).toEqual([...want.references].sort());
      expect(ni.sigs.filter((s) => s.startsWith('realise-test-1:'))).toHaveLength(1);
      expect(existsSync(path.join(dir, ni.url))).toBe(true);
      expect(ni.url).toMatch(/^nar\/[0-9a-z]{52}\.nar\.xz$/);
    }
  });

  for (const compression of ['xz', 'zstd']) {
    it(`real Nix substitutes from a ${compression} cache we wrote (nix copy --from, nix-store --realise)`, () => {
      const root = path.join(tempDir('realise-nixroot-'), 'root');
      nix('nix', ['copy', '--store', root, '--from', ours[compression]!, '--option', 'trusted-public-keys', keys.publicKey, ROOTS.top, ROOTS.src]);
      expectSameAsNix(root);
      expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);

      const root2 = path.join(tempDir('realise-nixroot-'), 'root');
      const r = runNix('nix-store', [
        '--store',
        root2,
        '--realise',
        ROOTS.top,
        '--option',
        'substituters',
        ours[compression]!,
        '--option',
        'trusted-public-keys',
        keys.publicKey,
      ]);
      expect(r.stderr).not.toMatch(/error/);
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toBe(ROOTS.top);
    });
  }

  it('real Nix refuses our cache without our public key (so the signature is what it checked)', () => {
    const root = path.join(tempDir('realise-nixroot-'), 'root');
    const r = runNix('nix', [
      'copy',
      '--store',
      root,
      '--from',
      ours.xz!,
      '--option',
      'trusted-public-keys',
      PUBLIC_KEY.replace('test-cache-1', 'realise-test-1'),
      ROOTS.top,
    ]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/lacks a valid signature|signature/);
  });

  const haveLocalStore = existsSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/store/local-store.ts'));
  for (const compression of ['xz', 'zstd']) {
    it.skipIf(!haveLocalStore)(`substitutes a ${compression} cache written by Nix into a LocalStore that Nix verifies`, async () => {
      const { LocalStore } = await import('../../src/store/local-store.js');
      const root = path.join(tempDir('realise-ls-'), 'root');
      const ls = await LocalStore.open({ root });
      try {
        await fill(ls, cacheUrl(compression));
        for (const p of ALL_PATHS) expect((await ls.queryPathInfo(p))?.narHash.equals(nixNarHash(p))).toBe(true);
      } finally {
        await ls.close();
      }
      const v = runNix('nix-store', ['--store', root, '--verify', '--check-contents']);
      expect(v.stderr).not.toMatch(/error|modified|corrupt/);
      expect(v.status).toBe(0);
      expectSameAsNix(root);
    });
  }
});
