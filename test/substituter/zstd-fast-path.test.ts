/**
 * The zstd fast path of file:// caches: whole NAR files read into reused shared buffers, frames decoded
 * on the decoder thread into pooled output buffers that a LocalStore hands back after each path. Many
 * parallel substitutions, twice (the second round runs on recycled buffers), must restore every byte
 * exactly; a corrupt frame registers nothing and does not disturb the others.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Hash } from '../../src/store/hash.js';
import { LocalStore } from '../../src/store/local-store.js';
import { narOfRegularFile } from '../../src/store/nar.js';
import type { StorePath } from '../../src/store/store-path.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { BinaryCacheWriter } from '../../src/substituter/binary-cache-writer.js';
import { substitutePath, SubstituterError } from '../../src/substituter/substituter.js';
import { tempDir } from '../helpers/nix.js';
import { PUBLIC_KEY, SECRET_KEY } from './fixtures.js';

/** Compressible but distinct contents of `n` bytes. */
function contents(seed: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    if (i % 64 === 0) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
    }
    b[i] = 97 + ((x >>> (i % 24)) & 7) + (i % 7);
  }
  return b;
}

const N = 12;
const paths: { path: StorePath; data: Buffer }[] = [];
for (let i = 0; i < N; i++) {
  const name = `blob-${i}`;
  paths.push({ path: `/nix/store/${Hash.of('sha256', name).base32.slice(0, 32)}-${name}` as StorePath, data: contents(i + 1, 100_000 + i * 40_000) });
}

const stores: LocalStore[] = [];
afterAll(async () => {
  for (const s of stores) await s.close();
});

async function makeCache(): Promise<string> {
  const dir = tempDir();
  const w = await BinaryCacheWriter.open(pathToFileURL(dir).href, { storeDir: '/nix/store' });
  for (const p of paths) {
    const nar = narOfRegularFile(p.data);
    await w.addPath(
      { path: p.path, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [] },
      (async function* () {
        yield nar;
      })(),
      { compression: 'zstd', secretKey: SECRET_KEY },
    );
  }
  return dir;
}

describe('zstd from file:// caches into a LocalStore (decoder thread, reused buffers)', () => {
  it('parallel substitutions restore every byte, also on recycled buffers', async () => {
    const dir = await makeCache();
    for (let round = 0; round < 2; round++) {
      const store = await LocalStore.open({ root: tempDir() });
      stores.push(store);
      const sub = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
      const infos = await sub.queryPathInfos(paths.map((p) => p.path));
      expect(infos.size).toBe(N);
      expect([...infos.values()].every((i) => i.compression === 'zstd')).toBe(true);
      const queue = [...infos.values()];
      await Promise.all(
        Array.from({ length: 6 }, async () => {
          for (let i = queue.pop(); i; i = queue.pop()) await substitutePath(store, sub, i);
        }),
      );
      for (const p of paths) {
        expect(await store.isValidPath(p.path)).toBe(true);
        expect(readFileSync(store.toRealPath(p.path)).equals(p.data), `${p.path} in round ${round}`).toBe(true);
      }
      await sub.close();
    }
  });

  it('a corrupt frame: decompression error, nothing registered, the next path still substitutes', async () => {
    const dir = await makeCache();
    const store = await LocalStore.open({ root: tempDir() });
    stores.push(store);
    const sub = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
    const [bad, good] = [paths[3]!, paths[4]!];
    const infos = await sub.queryPathInfos([bad.path, good.path]);
    const file = path.join(dir, infos.get(bad.path)!.url);
    const z = readFileSync(file);
    for (let i = 200; i < z.length - 200; i += 997) z[i] ^= 0x5a;
    writeFileSync(file, z);
    const e = await substitutePath(store, sub, infos.get(bad.path)!).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SubstituterError);
    expect(['decompression', 'hash-mismatch', 'bad-nar']).toContain((e as SubstituterError).code);
    expect(await store.isValidPath(bad.path)).toBe(false);
    await substitutePath(store, sub, infos.get(good.path)!);
    expect(readFileSync(store.toRealPath(good.path)).equals(good.data)).toBe(true);
    await sub.close();
  });
});
