/**
 * substitutePath into a LocalStore whose references are missing: the store's own closure check refuses it
 * before the NAR is read (substitutePath asks no second validity query), as the substituter's
 * `missing-references`, with nothing left in the store. A path already valid is returned as the store has it,
 * its NAR not read, whoever offers it (the store's addToStore finds it valid: substitutePath asks nothing first).
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

const at = (name: string) => `/nix/store/${Hash.of('sha256', name).base32.slice(0, 32)}-${name}` as StorePath;
const dep = at('dep');
const top = at('top');

const stores: LocalStore[] = [];
afterAll(async () => {
  for (const s of stores) await s.close();
});

/** A file:// cache (uncompressed, signed) holding, for each [path, references], a one-file NAR naming the path. */
async function cacheOf(paths: readonly (readonly [StorePath, readonly StorePath[]])[]): Promise<string> {
  const dir = tempDir();
  const w = await BinaryCacheWriter.open(pathToFileURL(dir).href, { storeDir: '/nix/store' });
  for (const [p, refs] of paths) {
    const nar = narOfRegularFile(Buffer.from(`contents of ${p}`));
    await w.addPath(
      { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [...refs] },
      (async function* () {
        yield nar;
      })(),
      { compression: 'none', secretKey: SECRET_KEY },
    );
  }
  return dir;
}

describe('substitutePath into a LocalStore', () => {
  it('refuses a path whose reference is not valid, before reading its NAR, as missing-references; then takes it once the reference is in', async () => {
    const dir = await cacheOf([
      [dep, []],
      [top, [dep]],
    ]);
    const store = await LocalStore.open({ root: tempDir() });
    stores.push(store);
    const sub = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
    const infos = await sub.queryPathInfos([dep, top]);
    const topInfo = infos.get(top)!;
    // Without its NAR file: had the NAR been read first, this would be 'not-found'.
    const narFile = path.join(dir, topInfo.url);
    const saved = readFileSync(narFile);
    rmSync(narFile);
    const e = await substitutePath(store, sub, topInfo).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(SubstituterError);
    expect((e as SubstituterError).code).toBe('missing-references');
    expect((e as SubstituterError).path).toBe(top);
    expect((e as SubstituterError).message).toContain(dep);
    expect(await store.isValidPath(top)).toBe(false);
    expect(existsSync(store.toRealPath(top))).toBe(false);
    // With the reference substituted (and the NAR back), it goes in.
    writeFileSync(narFile, saved);
    await substitutePath(store, sub, infos.get(dep)!);
    await substitutePath(store, sub, topInfo);
    expect(await store.isValidPath(top)).toBe(true);
    expect((await store.queryPathInfo(top))!.references).toEqual([dep]);
    await sub.close();
  });

  it('returns a valid path as the store has it, without reading its NAR, even when the substitute is not trusted', async () => {
    const dir = await cacheOf([[dep, []]]);
    const store = await LocalStore.open({ root: tempDir() });
    stores.push(store);
    const trusting = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
    const info = (await trusting.queryPathInfos([dep])).get(dep)!;
    const first = await substitutePath(store, trusting, info);
    // Without the NAR file: had it been read, this would be 'not-found'.
    rmSync(path.join(dir, info.url));
    expect(await substitutePath(store, trusting, info)).toEqual(first);
    // Not signed by a key this one trusts: refused for a path that is not valid, returned for one that is.
    const untrusting = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [] });
    const untrusted = (await untrusting.queryPathInfos([dep])).get(dep)!;
    expect(await substitutePath(store, untrusting, untrusted)).toEqual(first);
    const other = await LocalStore.open({ root: tempDir() });
    stores.push(other);
    const e = await substitutePath(other, untrusting, untrusted).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect((e as SubstituterError).code).toBe('untrusted');
    await trusting.close();
    await untrusting.close();
  });
});
