/**
 * ChrootPool's warm-up, on its own (no sandbox needed: the pool only makes and renames directories):
 * prefill() makes skeletons in the background (on the thread pool, a directory level at a time), so that
 * the first take() finds one ready and makes no chroot on the main thread (fs.mkdirSync).
 */
import * as fs from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ChrootPool, prepareChroot, SANDBOX_GID, SANDBOX_UID, type PrepareChrootOptions } from '../../src/platform/chroot.js';
import { tempDir } from '../helpers/nix.js';

const cjsFs = createRequire(import.meta.url)('node:fs') as typeof fs;
const realMkdirSync = cjsFs.mkdirSync;

/** Count the synchronous directory creations made under `dir` from now on (chroot.ts's own fs calls included). */
function countSyncMkdirs(dir: string): { readonly count: number } {
  const seen = { count: 0 };
  cjsFs.mkdirSync = ((p: fs.PathLike, o?: fs.MakeDirectoryOptions) => {
    if (String(p).startsWith(dir)) seen.count++;
    return realMkdirSync(p, o);
  }) as typeof fs.mkdirSync;
  syncBuiltinESMExports();
  return seen;
}

function options(realStoreDir: string, drv: string): PrepareChrootOptions {
  return {
    root: path.join(realStoreDir, `${drv}.drv.chroot`),
    storeDir: '/nix/store',
    sandboxBuildDir: '/build',
    uid: SANDBOX_UID,
    gid: SANDBOX_GID,
    network: false,
    devSkeleton: true,
  };
}

describe('ChrootPool warm-up', () => {
  let pool: ChrootPool | undefined;
  afterEach(async () => {
    cjsFs.mkdirSync = realMkdirSync;
    syncBuiltinESMExports();
    await pool?.drain();
  });

  it('after prefill(), the first take() gets a skeleton made in the background, and makes none on the main thread', async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(2);
    const hash = '0'.repeat(32);
    const sync = countSyncMkdirs(store);
    pool.prefill(options(store, `${hash}-first`));
    expect(sync.count).toBe(0);
    await pool.settled();
    const pooled = fs.readdirSync(store).filter((n) => n.startsWith(`${hash}-realise-chroot-`));
    expect(pooled).toHaveLength(2);
    const inodes = pooled.map((n) => fs.statSync(path.join(store, n)).ino);
    const layout = pool.take(options(store, `${hash}-first`));
    expect(sync.count).toBe(0);
    expect(inodes).toContain(fs.statSync(layout.root).ino);
    expect(layout.skeleton).toBeDefined();
    for (const d of ['etc', 'tmp', 'dev/pts', 'nix/store', 'build', 'proc']) expect(fs.statSync(path.join(layout.root, d)).isDirectory()).toBe(true);
    expect(fs.readFileSync(path.join(layout.root, 'etc/passwd'), 'utf8')).toContain(`nixbld:x:${SANDBOX_UID}:${SANDBOX_GID}:`);
    // Made in the background as on the main thread: the same tree, the same modes.
    const cold = prepareChroot(options(store, `${'2'.repeat(32)}-cold`));
    const listing = (root: string) => {
      const out: string[] = [];
      const walk = (rel: string) => {
        const st = fs.lstatSync(path.join(root, rel));
        out.push(
          `${rel} ${(st.mode & 0o7777).toString(8)} ${st.isDirectory() ? 'd' : st.isSymbolicLink() ? `l ${fs.readlinkSync(path.join(root, rel))}` : `f ${st.size}`}`,
        );
        if (st.isDirectory()) for (const n of fs.readdirSync(path.join(root, rel)).sort()) walk(rel ? `${rel}/${n}` : n);
      };
      walk('');
      return out;
    };
    expect(sync.count).toBeGreaterThan(0);
    expect(listing(layout.root)).toEqual(listing(cold.root));
  });
});
