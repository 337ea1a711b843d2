/**
 * Hostile and corrupt caches: nothing is registered, no file is left in the store, and the error says why.
 */
import { existsSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeEach, describe, expect, it } from 'vitest';
import { Hash } from '../../src/store/hash.js';
import { narString } from '../../src/store/nar.js';
import type { Store } from '../../src/store/store-api.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { BinaryCacheWriter } from '../../src/substituter/binary-cache-writer.js';
import { parseNarInfo, printNarInfo, signPathInfo, type NarInfo } from '../../src/substituter/narinfo.js';
import { substitutePath, SubstituterError } from '../../src/substituter/substituter.js';
import { tempDir } from '../helpers/nix.js';
import { FakeStore } from './fake-store.js';
import { copyCache, narOf, OTHER_SECRET_KEY, PUBLIC_KEY, ROOTS, SECRET_KEY, topoOrder } from './fixtures.js';

const order = topoOrder();
const A = order.find((p) => p.endsWith('-a.txt'))!;
const B = order.find((p) => p.endsWith('-b.txt'))!;
const DEP = order.find((p) => p.endsWith('-dep'))!;

async function code(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(e instanceof SubstituterError)) throw new Error(`expected a SubstituterError, got ${String(e)}`);
  return e.code;
}

describe('hostile binary caches', () => {
  let dir: string;
  let store: FakeStore & Store;
  let sub: BinaryCacheSubstituter;

  const niFile = (p: string) => path.join(dir, `${p.slice(11, 43)}.narinfo`);
  const readNi = (p: string) => parseNarInfo(readFileSync(niFile(p), 'utf8'));
  const writeNi = (ni: NarInfo, key: string | null = SECRET_KEY) => {
    const sigs = key ? [signPathInfo(ni, key)] : [];
    writeFileSync(niFile(ni.storePath), printNarInfo({ ...ni, sigs }));
  };
  const info = async (p: string) => (await sub.queryPathInfos([p])).get(p)!;
  /** Substitute the CA dependencies a.txt and b.txt of dep (both fine). */
  const depsOfDep = async () => {
    for (const p of [A, B]) await substitutePath(store, sub, await info(p));
  };
  const expectNothingMoreThan = async (valid: string[]) => {
    expect([...store.infos.keys()].sort()).toEqual([...valid].sort());
    expect(await store.listing()).toEqual(store.validBaseNames());
  };

  beforeEach(async () => {
    const root = tempDir('realise-hostile-');
    dir = copyCache('xz', path.join(root, 'cache'));
    store = await FakeStore.create(path.join(root, 'store'));
    sub = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
  });

  it('wrong narHash (validly signed): hash-mismatch, nothing registered', async () => {
    writeNi({ ...readNi(DEP), narHash: Hash.of('sha256', 'something else') });
    await depsOfDep();
    const i = await info(DEP);
    const e = await substitutePath(store, sub, i).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('hash-mismatch');
    expect((e as Error).message).toMatch(/hash mismatch importing path '.*-dep'/);
    expect((e as Error).message).toContain(sub.uri);
    await expectNothingMoreThan([A, B]);
  });

  it('wrong narSize, smaller and larger (validly signed): size-mismatch, nothing registered', async () => {
    await depsOfDep();
    const ni = readNi(DEP);
    for (const narSize of [ni.narSize - 8, ni.narSize + 8]) {
      writeNi({ ...ni, narSize });
      const s = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
      expect(await code(substitutePath(store, s, (await s.queryPathInfos([DEP])).get(DEP)!))).toBe('size-mismatch');
      await expectNothingMoreThan([A, B]);
    }
  });

  it('a signature that does not match the narinfo: bad-signature, nothing downloaded', async () => {
    const ni = readNi(DEP);
    writeFileSync(niFile(DEP), printNarInfo({ ...ni, narSize: ni.narSize + 1 })); // keeps the old Sig
    await depsOfDep();
    const before = store.addCalls;
    const e = await substitutePath(store, sub, await info(DEP)).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('bad-signature');
    expect((e as Error).message).toContain(DEP);
    expect(store.addCalls).toBe(before);
    await expectNothingMoreThan([A, B]);
  });

  it('signed by an untrusted key: untrusted', async () => {
    writeNi(readNi(DEP), OTHER_SECRET_KEY);
    await depsOfDep();
    const e = await substitutePath(store, sub, await info(DEP)).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('untrusted');
    expect((e as Error).message).toContain('other-cache-1');
    await expectNothingMoreThan([A, B]);
  });

  it('a content-addressed path whose content does not match its CA: ca-mismatch', async () => {
    // Same length contents, consistent narHash/narSize, no signature: only the CA check can catch it.
    const ni = readNi(A);
    const evilNar = Buffer.from(narOf(A));
    const at = evilNar.indexOf('hello\n');
    expect(at).toBeGreaterThan(0);
    evilNar.write('hellx\n', at);
    const writer = await BinaryCacheWriter.open(pathToFileURL(dir).href, { storeDir: '/nix/store' });
    const written = await writer.addPath(
      { path: A, narHash: Hash.of('sha256', evilNar), narSize: evilNar.length, references: [], ca: ni.ca },
      (async function* () {
        yield evilNar;
      })(),
      { compression: 'xz' },
    );
    expect(written.sigs).toEqual([]);
    const s = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [] });
    expect(await code(substitutePath(store, s, (await s.queryPathInfos([A])).get(A)!))).toBe('ca-mismatch');
    await expectNothingMoreThan([]);
  });

  it('a NAR that tries to write outside its path: bad-nar, nothing written anywhere', async () => {
    const evilPath = '/nix/store/ffffffffffffffffffffffffffffffff-evil';
    const t = (...s: string[]) => Buffer.concat(s.map((x) => narString(x)));
    const nars = [
      t('nix-archive-1', '(', 'type', 'directory', 'entry', '(', 'name', '..', 'node', '(', 'type', 'regular', 'contents', 'pwned', ')', ')', ')'),
      t('nix-archive-1', '(', 'type', 'directory', 'entry', '(', 'name', '../../escaped', 'node', '(', 'type', 'regular', 'contents', 'pwned', ')', ')', ')'),
      t(
        'nix-archive-1',
        '(',
        'type',
        'directory',
        'entry',
        '(',
        'name',
        'l',
        'node',
        '(',
        'type',
        'symlink',
        'target',
        '/tmp',
        ')',
        ')',
        'entry',
        '(',
        'name',
        'l',
        'node',
        '(',
        'type',
        'directory',
        'entry',
        '(',
        'name',
        'x',
        'node',
        '(',
        'type',
        'regular',
        'contents',
        'pwned',
        ')',
        ')',
        ')',
        ')',
        ')',
      ),
    ];
    const writer = await BinaryCacheWriter.open(pathToFileURL(dir).href, { storeDir: '/nix/store' });
    for (const nar of nars) {
      await writer.addPath(
        { path: evilPath, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [] },
        (async function* () {
          yield nar;
        })(),
        { compression: 'zstd', secretKey: SECRET_KEY },
      );
      const s = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
      const i = (await s.queryPathInfos([evilPath])).get(evilPath)!;
      expect(i.compression).toBe('zstd');
      const e = await substitutePath(store, s, i).catch((x: SubstituterError) => x);
      expect((e as SubstituterError).code).toBe('bad-nar');
      await expectNothingMoreThan([]);
      expect(existsSync(path.join(store.realStoreDir, '..', 'escaped'))).toBe(false);
      expect(readdirSync(path.join(store.realStoreDir, '..')).sort()).toEqual(['cache', 'store']);
    }
  });

  it('a narinfo with garbage fields: bad-narinfo from the query', async () => {
    writeFileSync(niFile(DEP), readFileSync(niFile(DEP), 'utf8').replace(/NarSize: \d+/, 'NarSize: lots'));
    const e = await sub.queryPathInfos([A, DEP]).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('bad-narinfo');
    expect((e as Error).message).toContain(`${DEP.slice(11, 43)}.narinfo`);
    // Asked again of the open cache (a synchronous read then): the same error.
    const again = await sub.queryPathInfos([DEP]).catch((x: SubstituterError) => x);
    expect((again as SubstituterError).code).toBe('bad-narinfo');
    expect((again as Error).message).toBe((e as Error).message);
    writeFileSync(niFile(A), Buffer.from([0xff, 0xfe, 0x00, 0x01]));
    expect(await code(new BinaryCacheSubstituter(pathToFileURL(dir).href).queryPathInfos([A]))).toBe('bad-narinfo');
  });

  it('a narinfo for another path than asked is treated as absent', async () => {
    writeFileSync(niFile(DEP), readFileSync(niFile(A)));
    expect((await sub.queryPathInfos([DEP])).size).toBe(0);
  });

  it('references to paths the cache does not have: missing-references, nothing fetched', async () => {
    const ni = readNi(B);
    const ghost = '/nix/store/0000000000000000000000000000000a-ghost';
    writeNi({ ...ni, references: [...ni.references, ghost].sort() });
    await substitutePath(store, sub, await info(A));
    expect((await sub.queryPathInfos([ghost])).size).toBe(0);
    const e = await substitutePath(store, sub, await info(B)).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('missing-references');
    expect((e as Error).message).toContain(ghost);
    await expectNothingMoreThan([A]);
  });

  it('a truncated NAR file: truncated; a corrupt one: decompression or hash error; a missing one: not-found', async () => {
    await depsOfDep();
    const ni = readNi(DEP);
    const file = path.join(dir, ni.url);
    const data = readFileSync(file);
    truncateSync(file, Math.floor(data.length / 2));
    expect(await code(substitutePath(store, sub, await info(DEP)))).toBe('truncated');
    await expectNothingMoreThan([A, B]);

    const corrupt = Buffer.from(data);
    for (let i = 60; i < corrupt.length - 40; i += 7) corrupt[i] ^= 0x5a;
    writeFileSync(file, corrupt);
    expect(['decompression', 'hash-mismatch', 'bad-nar']).toContain(await code(substitutePath(store, sub, await info(DEP))));
    await expectNothingMoreThan([A, B]);

    writeFileSync(niFile(DEP), printNarInfo({ ...ni, url: 'nar/doesnotexist.nar.xz' }));
    const s = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] });
    expect(await code(substitutePath(store, s, (await s.queryPathInfos([DEP])).get(DEP)!))).toBe('not-found');
    await expectNothingMoreThan([A, B]);
  });

  it('an uncompressed cache, open (its small NAR files read whole, synchronously): truncated, corrupt, longer and missing NAR files fail in their words', async () => {
    const noneDir = copyCache('none', path.join(path.dirname(dir), 'cache-none'));
    const s = new BinaryCacheSubstituter(pathToFileURL(noneDir).href, { trustedPublicKeys: [PUBLIC_KEY] });
    await s.init();
    const infoOf = async (p: string) => (await s.queryPathInfos([p])).get(p)!;
    for (const p of [A, B]) await substitutePath(store, s, await infoOf(p));
    const ni = parseNarInfo(readFileSync(path.join(noneDir, `${DEP.slice(11, 43)}.narinfo`), 'utf8'));
    const file = path.join(noneDir, ni.url);
    const data = readFileSync(file);
    const failure = async () => {
      const e = await substitutePath(store, s, await infoOf(DEP)).catch((x: unknown) => x);
      if (!(e instanceof SubstituterError)) throw new Error(`expected a SubstituterError, got ${String(e)}`);
      await expectNothingMoreThan([A, B]);
      return `${e.code}: ${e.message.replace(noneDir, '<cache>')}`;
    };
    const got: string[] = [];
    truncateSync(file, Math.floor(data.length / 2));
    got.push(await failure());
    const corrupt = Buffer.from(data);
    corrupt[data.length - 24] ^= 0x5a;
    writeFileSync(file, corrupt);
    got.push(await failure());
    writeFileSync(file, Buffer.concat([data, Buffer.alloc(16)]));
    got.push(await failure());
    rmSync(file);
    got.push(await failure());
    const from = `from 'file://<cache>'`;
    expect(got).toEqual([
      `truncated: NAR for '${DEP}' fetched ${from} is incomplete\n  hint: the NAR file is truncated; nothing was registered`,
      `hash-mismatch: hash mismatch importing path '${DEP}' ${from}: the NAR does not have the hash its narinfo gives (${ni.narHash.toString('sri')})\n  hint: the binary cache is corrupt; nothing was registered`,
      `bad-nar: NAR of '${DEP}' ${from} is invalid: NAR has trailing data after byte ${ni.narSize}\n  hint: the binary cache is corrupt or hostile; nothing was registered`,
      `not-found: file '${ni.url}' does not exist in binary cache\n  hint: the binary cache 'file://<cache>' lost the NAR file; try another substituter or build`,
    ]);
    writeFileSync(file, data);
    await substitutePath(store, s, await infoOf(DEP));
    await expectNothingMoreThan([A, B, DEP]);
  });

  it('an unsupported compression: decompression error naming it', async () => {
    await depsOfDep();
    writeNi({ ...readNi(DEP), compression: 'lz5' });
    const e = await substitutePath(store, sub, await info(DEP)).catch((x: SubstituterError) => x);
    expect((e as SubstituterError).code).toBe('decompression');
    expect((e as Error).message).toContain("unsupported compression 'lz5'");
    await expectNothingMoreThan([A, B]);
  });

  it('a cache for another store dir is skipped with a warning', async () => {
    writeFileSync(path.join(dir, 'nix-cache-info'), 'StoreDir: /gnu/store\nPriority: 10\n');
    const warnings: string[] = [];
    const s = new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY], onWarning: (m) => warnings.push(m) });
    expect((await s.queryPathInfos([ROOTS.top])).size).toBe(0);
    expect(s.enabled).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/is for Nix stores with prefix '\/gnu\/store', not '\/nix\/store'/);
    // As Nix's `?store=` on a store URI: the store dir it is for, so such a cache serves its paths.
    const g = new BinaryCacheSubstituter(`${pathToFileURL(dir).href}?store=/gnu/store`, {
      trustedPublicKeys: [PUBLIC_KEY],
      onWarning: (m) => warnings.push(m),
    });
    expect(g.storeDir).toBe('/gnu/store');
    await g.init();
    expect(g.enabled).toBe(true);
    expect(warnings).toHaveLength(1);
  });
});
