import { afterAll, beforeAll } from 'vitest';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { InMemorySubstituter } from '../../src/substituter/memory.js';
import { substituterConformance } from './conformance.js';
import { ALL_PATHS, cacheDir, cacheUrl, COMPRESSIONS_WRITTEN_BY_NIX, narInfos, narOf } from './fixtures.js';
import { serveCache, type CacheServer } from './http-server.js';

substituterConformance('InMemorySubstituter', async ({ trustedPublicKeys }) => {
  const sub = new InMemorySubstituter({ trustedPublicKeys, chunkSize: 100 });
  for (const ni of narInfos('none')) {
    await sub.add(
      { path: ni.storePath, references: ni.references, deriver: ni.deriver, ca: ni.ca, sigs: ni.sigs, narHash: ni.narHash, narSize: ni.narSize },
      narOf(ni.storePath),
    );
  }
  if (ALL_PATHS.length !== narInfos('none').length) throw new Error('fixture mismatch');
  return sub;
});

for (const c of COMPRESSIONS_WRITTEN_BY_NIX) {
  substituterConformance(
    `BinaryCacheSubstituter file:// (${c}, written by Nix 2.8)`,
    async ({ trustedPublicKeys }) => new BinaryCacheSubstituter(cacheUrl(c), { trustedPublicKeys }),
  );
}

let server: CacheServer;
beforeAll(async () => {
  server = await serveCache(cacheDir('xz'));
});
afterAll(async () => {
  await server.close();
});
substituterConformance(
  'BinaryCacheSubstituter http:// (xz, node:http on 127.0.0.1)',
  async ({ trustedPublicKeys }) => new BinaryCacheSubstituter(server.url, { trustedPublicKeys }),
);
