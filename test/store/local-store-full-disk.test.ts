/**
 * A full disk (a 1 MiB tmpfs, as root): every store write that fails is a StoreError that names the file
 * and says what to do, and nothing is half-registered or left behind; once space is freed the same store
 * works again and real Nix verifies it.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { derivation } from '../../src/derivation/instantiate.js';
import { StoreError } from '../../src/store/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nixEnv, nixOk, rootOnly, tempDir } from '../helpers/nix.js';

/** Fill the file system holding `dir` completely: returns the filler file. */
function fill(dir: string): string {
  const filler = path.join(dir, 'filler');
  const chunk = Buffer.alloc(64 * 1024, 1);
  writeFileSync(filler, '');
  for (let size = chunk.length; size >= 1; size = Math.floor(size / 2)) {
    for (;;) {
      try {
        writeFileSync(filler, chunk.subarray(0, size), { flag: 'a' });
      } catch {
        break;
      }
    }
  }
  return filler;
}

async function storeErrorOf(p: Promise<unknown>): Promise<StoreError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, 'expected a StoreError').toBeInstanceOf(StoreError);
  return e as StoreError;
}

describe.skipIf(!rootOnly('a full disk is a 1 MiB tmpfs, which only root may mount') || !nixOk())('(root only) a full disk', () => {
  let mnt: string;
  beforeAll(() => {
    mnt = tempDir('realise-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'realise-full', mnt]);
  });
  afterAll(() => {
    if (mnt) execFileSync('umount', ['-l', mnt]);
  });

  it('derivation(), addTextToStore and addToStore fail with StoreError naming the path; nothing half-registered; usable after', async () => {
    const root = path.join(mnt, 'root');
    mkdirSync(root);
    const store = await LocalStore.open({ root });
    // A second store object of another state dir, whose temporary roots file is not written yet.
    const other = await LocalStore.open({ root: path.join(mnt, 'other') });
    try {
      const small = await store.addTextToStore('before', 'written before the disk filled\n');
      const before = readdirSync(store.realStoreDir).sort();
      const filler = fill(mnt);

      const big = 'x'.repeat(200_000);
      const e1 = await storeErrorOf(store.addTextToStore('big', big));
      expect(e1.code).toBe('store-disk-full');
      expect(e1.message).toMatch(/-big'/);
      expect(e1.hint).toMatch(/full: free space/);

      const e2 = await storeErrorOf(derivation(store, { name: 'full', system: 'x86_64-linux', builder: '/bin/sh', args: ['-c', big] }));
      expect(e2.code).toBe('store-disk-full');
      expect(e2.message).toMatch(/full\.drv'/);

      // The temporary roots file is the first write of a fresh store object.
      const e3 = await storeErrorOf(other.addTextToStore('t', 'text'));
      expect(e3.code).toBe('store-disk-full');
      expect(e3.message).toMatch(/temproots/);

      // Nothing registered, nothing left in the store directory but our (flocked) temporary directory.
      expect(await store.isValidPath(small)).toBe(true);
      expect(
        readdirSync(store.realStoreDir)
          .filter((n) => !n.startsWith('.tmp-'))
          .sort(),
      ).toEqual(before.filter((n) => !n.startsWith('.tmp-')));
      for (const t of readdirSync(store.realStoreDir).filter((n) => n.startsWith('.tmp-'))) expect(readdirSync(path.join(store.realStoreDir, t))).toEqual([]);

      rmSync(filler);
      const again = await store.addTextToStore('big', big);
      expect(await store.isValidPath(again)).toBe(true);
      const d = await derivation(store, { name: 'full', system: 'x86_64-linux', builder: '/bin/sh', args: ['-c', big] });
      expect(await store.isValidPath(d.drvPath)).toBe(true);
      await other.addTextToStore('t', 'text');
    } finally {
      await store.close();
      await other.close();
    }
    execFileSync('nix-store', ['--store', root, '--verify', '--check-contents'], { env: nixEnv() });
  });
});
