/**
 * ChrootPool's warm-up, on its own (no sandbox needed: the pool only makes and renames directories):
 * prefill() makes skeletons in the background (on the thread pool, a directory level at a time), so that
 * the first take() finds one ready and makes no chroot on the main thread (fs.mkdirSync); skeletons out
 * with builds count as ready, so builds that take turns make no more.
 */
import * as fs from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ChrootPool, flushRemovals, prepareChroot, SANDBOX_GID, SANDBOX_UID, type ChrootLayout, type PrepareChrootOptions } from '../../src/platform/chroot.js';
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

describe('ChrootPool recycling', () => {
  const none = { storeFiles: [], storeMountpoints: new Set<string>() };
  let pool: ChrootPool | undefined;
  afterEach(async () => {
    cjsFs.mkdirSync = realMkdirSync;
    syncBuiltinESMExports();
    await pool?.drain();
  });

  const pooledIn = (store: string) => fs.readdirSync(store).filter((n) => n.includes('-realise-chroot-') && !n.includes('.trash-'));

  it('a skeleton out with a build, or back and being checked, counts as ready: builds that take turns make no new one', async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(2);
    const opts = (name: string) => options(store, `${'1'.repeat(32)}-${name}`);
    pool.prefill(opts('a'));
    await pool.settled();
    expect(pooledIn(store)).toHaveLength(2);
    const a = pool.take(opts('a'));
    await pool.settled();
    // One ready and `a` out with its build: the pool makes none in its place.
    expect(pooledIn(store)).toHaveLength(1);
    pool.recycle(a, none);
    const b = pool.take(opts('b'));
    await pool.settled();
    // `b` took the other one and `a` is back: still the two skeletons the pool made, no third.
    expect(pooledIn(store)).toHaveLength(1);
    pool.recycle(b, none);
    await pool.settled();
    expect(pooledIn(store)).toHaveLength(2);
    await pool.drain();
    await flushRemovals();
    expect(pooledIn(store)).toEqual([]);
    expect(fs.readdirSync(store)).toEqual([]);
  });

  it('a take() that finds none ready makes its own and no more in the background; one lost after its build is made again', async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(2);
    const opts = (name: string) => options(store, `${'7'.repeat(32)}-${name}`);
    const sync = countSyncMkdirs(store);
    const a = pool.take(opts('a'));
    const b = pool.take(opts('b'));
    expect(sync.count).toBeGreaterThan(0);
    await pool.settled();
    // Two builds, two skeletons: none waiting besides.
    expect(pooledIn(store)).toEqual([]);
    const inoA = fs.statSync(a.root).ino;
    pool.recycle(a, none);
    await pool.settled();
    const made = sync.count;
    const c = pool.take(opts('c'));
    expect(sync.count).toBe(made);
    expect(fs.statSync(c.root).ino).toBe(inoA);
    await pool.settled();
    expect(pooledIn(store)).toEqual([]);
    // `b` does not come back (a build that did not end, or not recyclable): the pool makes one in its place.
    expect(pool.discard(b)).toBeUndefined();
    await pool.settled();
    expect(fs.existsSync(b.root)).toBe(false);
    expect(pooledIn(store)).toHaveLength(1);
    expect(sync.count).toBe(made);
    pool.discard(c);
    await pool.settled();
    expect(pooledIn(store)).toHaveLength(2);
    await pool.drain();
    await flushRemovals();
    expect(fs.readdirSync(store)).toEqual([]);
  });

  it('with none ready, take() checks a skeleton back from a build at once and reuses it, making no directory', async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(1);
    const opts = (name: string) => options(store, `${'3'.repeat(32)}-${name}`);
    pool.prefill(opts('a'));
    await pool.settled();
    const a = pool.take(opts('a'));
    await pool.settled();
    const b = pool.take(opts('b'));
    const ino = fs.statSync(a.root).ino;
    pool.recycle(a, none);
    const sync = countSyncMkdirs(store);
    // None ready (`b` made its own, `a` out with its build counted as ready) and `a`'s check has not run: `c` gets `a`, checked now.
    const c = pool.take(opts('c'));
    expect(sync.count).toBe(0);
    expect(fs.statSync(c.root).ino).toBe(ino);
    expect(c.skeleton).toBe(a.skeleton);
    await pool.settled();
    for (const l of [b, c]) fs.rmSync(l.root, { recursive: true });
  });

  it('a skeleton changed by its build is not reused: take() then makes a fresh one', async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(1);
    const opts = (name: string) => options(store, `${'4'.repeat(32)}-${name}`);
    pool.prefill(opts('a'));
    await pool.settled();
    const a = pool.take(opts('a'));
    await pool.settled();
    const b = pool.take(opts('b'));
    fs.writeFileSync(path.join(a.root, 'tmp/left-behind'), 'x');
    pool.recycle(a, none);
    const sync = countSyncMkdirs(store);
    const c = pool.take(opts('c'));
    expect(sync.count).toBeGreaterThan(0);
    expect(fs.readdirSync(path.join(c.root, 'tmp'))).toEqual([]);
    await pool.settled();
    for (const l of [b, c]) fs.rmSync(l.root, { recursive: true });
  });

  it("handBack(): a 'kept' report with a directory still at the chroot's name (not the helper's rename) keeps nothing and leaves nothing", async () => {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(1);
    const opts = options(store, `${'6'.repeat(32)}-a`);
    pool.prefill(opts);
    await pool.settled();
    // As the helper does for an unchanged skeleton: renamed to the pool name handOver() chose.
    const kept = pool.take(opts, { placed: false });
    const h = pool.handOver(kept)!;
    fs.renameSync(kept.root, h.dir);
    expect(pool.handBack(kept, h, none, true)).toBeUndefined();
    await pool.settled();
    expect(pooledIn(store)).toContain(path.basename(h.dir)); // in the pool
    // A forged or stale report: whatever is at the chroot's name is not left behind, nor is `h.dir` trusted.
    const forged = pool.take(opts, { placed: false });
    const h2 = pool.handOver(forged)!;
    fs.renameSync(forged.root, h2.dir);
    fs.mkdirSync(forged.root);
    fs.writeFileSync(path.join(forged.root, 'marker'), '');
    expect(pool.handBack(forged, h2, none, true)).toBeUndefined();
    await pool.settled();
    await flushRemovals();
    expect(fs.existsSync(forged.root)).toBe(false);
    expect(pooledIn(store)).not.toContain(path.basename(h2.dir));
    expect(fs.existsSync(h2.dir)).toBe(false);
  });
});

describe('ChrootPool recycling check, once the skeleton is older than its placing', () => {
  const none = { storeFiles: [], storeMountpoints: new Set<string>() };
  const realReaddirSync = cjsFs.readdirSync;
  let pool: ChrootPool | undefined;
  afterEach(async () => {
    cjsFs.readdirSync = realReaddirSync;
    syncBuiltinESMExports();
    await pool?.drain();
  });

  /** A skeleton taken from the pool well after it was made (a tick of the kernel's clock is at most 10 ms). */
  async function takeOld(name: string) {
    const store = path.join(tempDir('realise-chroot-pool-'), 'store');
    fs.mkdirSync(store);
    pool = new ChrootPool(1);
    const opts = options(store, `${'5'.repeat(32)}-${name}`);
    pool.prefill(opts);
    await pool.settled();
    await new Promise((r) => setTimeout(r, 40));
    const layout = pool.take(opts);
    await pool.settled(); // the refill
    return { store, layout, ino: fs.statSync(layout.root).ino };
  }

  /** Put `layout` back and run its check; whether it went back into the pool. */
  async function recycled(store: string, layout: ChrootLayout, ino: number): Promise<boolean> {
    pool!.recycle(layout, none);
    await pool!.settled();
    return fs
      .readdirSync(store)
      .filter((n) => n.includes('-realise-chroot-') && !n.includes('.trash-'))
      .some((n) => fs.statSync(path.join(store, n)).ino === ino);
  }

  it('an unchanged skeleton goes back', async () => {
    const { store, layout, ino } = await takeOld('same');
    expect(layout.placedCtimeNs).toBeGreaterThan(layout.skeleton!.checks.find((c) => c.suffix === '/tmp')!.ref.ctimeNs);
    expect(await recycled(store, layout, ino)).toBe(true);
  });

  it('a file of /etc rewritten with contents of the same size is seen: its ctime is newer', async () => {
    const { store, layout, ino } = await takeOld('etc');
    const passwd = path.join(layout.root, 'etc/passwd');
    const was = fs.readFileSync(passwd, 'utf8');
    fs.writeFileSync(passwd, was.replace('nixbld', 'nixbLD'));
    expect(fs.statSync(passwd).size).toBe(Buffer.byteLength(was));
    expect(await recycled(store, layout, ino)).toBe(false);
  });

  it('a file made and removed in /tmp is seen: its ctime is newer', async () => {
    const { store, layout, ino } = await takeOld('tmp');
    fs.writeFileSync(path.join(layout.root, 'tmp/x'), '');
    fs.unlinkSync(path.join(layout.root, 'tmp/x'));
    expect(await recycled(store, layout, ino)).toBe(false);
  });

  it('a build of many inputs: its hard-linked inputs are unlinked and its mount points kept, however long their lists', async () => {
    // Names of 39 bytes: 60 of them make lists longer than the addon's room for a call's strings on its stack (2 kB), and
    // 80 still fit the store dir's first block (its size, which a build must leave as it was, stays the same).
    const name = (i: number, kind: string) => `${String(i).padStart(20, '0')}-in-${kind}-${'x'.repeat(10)}`;
    const run = async (files: number, dirs: number, extra?: string) => {
      const { store, layout, ino } = await takeOld(`many-${files}-${dirs}${extra ? '-extra' : ''}`);
      const storeFiles = Array.from({ length: files }, (_, i) => name(i, 'file'));
      const mountpoints = Array.from({ length: dirs }, (_, i) => name(i, 'dirs'));
      for (const f of storeFiles) fs.writeFileSync(path.join(layout.storeDir, f), '');
      for (const d of mountpoints) fs.mkdirSync(path.join(layout.storeDir, d));
      if (extra) fs.writeFileSync(path.join(layout.storeDir, extra), '');
      pool!.recycle(layout, { storeFiles, storeMountpoints: new Set(mountpoints) });
      await pool!.settled();
      const back = fs.readdirSync(store).find((n) => n.includes('-realise-chroot-') && !n.includes('.trash-') && fs.statSync(path.join(store, n)).ino === ino);
      return { back, left: back ? fs.readdirSync(path.join(store, back, 'nix/store')).sort() : [], mountpoints };
    };
    for (const [files, dirs] of [
      [60, 20],
      [20, 60],
    ] as const) {
      const r = await run(files, dirs);
      expect(r.back).toBeDefined();
      expect(r.left).toEqual([...r.mountpoints].sort());
      await pool!.drain();
    }
    // One file more than the list names (the last one's name, but for its last byte): not reused.
    expect((await run(60, 20, name(59, 'file').slice(0, -1))).back).toBeUndefined();
  });

  it('a mode changed and changed back is seen: its ctime is newer', async () => {
    const { store, layout, ino } = await takeOld('mode');
    const etc = path.join(layout.root, 'etc');
    fs.chmodSync(etc, 0o777);
    fs.chmodSync(etc, 0o755);
    expect(await recycled(store, layout, ino)).toBe(false);
  });
});
