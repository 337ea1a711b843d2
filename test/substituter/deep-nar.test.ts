/**
 * Deep trees: a path nested 600 directories deep is dumped as Nix dumps it, restored, and substituted
 * from a binary cache (Nix 2.8 substitutes it); a hostile NAR nested far deeper is refused with a typed
 * error and bounded memory, not a crash.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { addPath } from '../../src/derivation/instantiate.js';
import { BadNarError } from '../../src/store/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { collect, dumpPath, narString, parseNar, restorePath, streamOf, validatingSink } from '../../src/store/nar.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { copyToBinaryCache } from '../../src/substituter/binary-cache-writer.js';
import { substitutePath } from '../../src/substituter/substituter.js';
import { nixEnv, nixOk, tempDir } from '../helpers/nix.js';

const DEPTH = 600;

function deepTree(root: string): string {
  const leaf = path.join(root, ...Array<string>(DEPTH).fill('d'));
  mkdirSync(leaf, { recursive: true });
  writeFileSync(path.join(leaf, 'bottom'), 'deep\n');
  return root;
}

/** A NAR of `depth` nested directories named `n`, built in memory (no file system could hold it). */
function nestedNar(depth: number): Buffer {
  const open = Buffer.concat(['(', 'type', 'directory', 'entry', '(', 'name', 'n', 'node'].map((t) => narString(t)));
  const close = Buffer.concat([')', ')'].map((t) => narString(t))); // the entry, then the directory
  const leaf = Buffer.concat(['(', 'type', 'regular', 'contents', ''].map((t) => narString(t)).concat(narString(')')));
  return Buffer.concat([narString('nix-archive-1'), ...Array<Buffer>(depth).fill(open), leaf, ...Array<Buffer>(depth).fill(close)]);
}

describe.skipIf(!nixOk())('deep NARs', () => {
  it(`dumps and restores a tree ${DEPTH} directories deep as Nix 2.8 does`, async () => {
    const dir = tempDir('realise-deep-');
    const src = deepTree(path.join(dir, 'src'));
    const ours = await collect(dumpPath(src));
    const nix = execFileSync('nix-store', ['--dump', src], { env: nixEnv(), maxBuffer: 1 << 26 });
    expect(ours.equals(nix)).toBe(true);
    await restorePath(path.join(dir, 'restored'), streamOf(nix), { canonical: true });
    expect((await collect(dumpPath(path.join(dir, 'restored')))).equals(nix)).toBe(true);
  });

  it(`substitutes a path ${DEPTH} directories deep from a binary cache`, async () => {
    const dir = tempDir('realise-deep-');
    const from = await LocalStore.open({ root: path.join(dir, 'from') });
    const to = await LocalStore.open({ root: path.join(dir, 'to') });
    try {
      const p = String(await addPath(from, deepTree(path.join(dir, 'src')), { name: 'deep' }));
      const url = pathToFileURL(path.join(dir, 'cache')).href;
      await copyToBinaryCache(from, [p], url, { compression: 'none' });
      const sub = new BinaryCacheSubstituter(url, { trustedPublicKeys: [], requireSigs: false });
      const info = (await sub.queryPathInfos([p])).get(p)!;
      await substitutePath(to, sub, info);
      expect(await to.isValidPath(p)).toBe(true);
      // Real Nix agrees that the contents match the registered hash.
      execFileSync('nix-store', ['--store', path.join(dir, 'to'), '--verify-path', p], { env: nixEnv() });
    } finally {
      await from.close();
      await to.close();
    }
  });

  it('refuses a NAR nested 100,000 deep (a path longer than PATH_MAX) with BadNarError, without a crash', async () => {
    const nar = nestedNar(100_000);
    const e = await parseNar(streamOf(nar), validatingSink).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(BadNarError);
    expect((e as Error).message).toMatch(/path longer than 4096 bytes/);
    // 2,000 levels fit in PATH_MAX: parsed fine (it has no depth limit of its own).
    await expect(parseNar(streamOf(nestedNar(2000)), validatingSink)).resolves.toEqual({ size: nestedNar(2000).length });
  });
});
