/**
 * Path locks against real flock(2) users: util-linux flock(1) (the same system call Nix uses), a child
 * process that dies while holding a lock, and Nix's deletion protocol (unlink, then write "d").
 */
import { describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { lockFiles, tryLockFiles, lockPlainFile, OpenedLockFiles } from '../../src/store/locks.js';
import { tempDirs } from '../helpers/nix.js';

const fsExt = createRequire(import.meta.url)('fs-ext') as { flockSync(fd: number, how: string): void };
const tmp = tempDirs('realise-locks-');

/** Is `file` free for an exclusive flock by another process (util-linux flock -n)? */
function freeForFlock1(file: string): boolean {
  return spawnSync('flock', ['-n', '-E', '7', file, 'true']).status === 0;
}

describe('path locks', () => {
  it('exclude flock(1) of another process while held; the lock file is deleted on release', async () => {
    const d = tmp();
    const p = path.join(d, 'somepath');
    const l = await lockFiles([p]);
    expect(existsSync(p + '.lock')).toBe(true);
    expect(freeForFlock1(p + '.lock')).toBe(false);
    await l.release();
    expect(existsSync(p + '.lock')).toBe(false);
    expect(freeForFlock1(p + '.lock')).toBe(true);
  });

  it('wait for a lock held by another process, and recover it when that process is killed', async () => {
    const d = tmp();
    const p = path.join(d, 'held');
    // A child holds the flock and then hangs; SIGKILL releases it in the kernel.
    const child = spawn(
      process.execPath,
      [
        '-e',
        `
      const fs = require('fs'); const { flockSync } = require('fs-ext');
      const fd = fs.openSync(${JSON.stringify(p + '.lock')}, 'a+'); flockSync(fd, 'ex');
      process.stdout.write('locked\\n'); setInterval(() => {}, 1000);`,
      ],
      { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (b: Buffer) => {
        if (b.toString().includes('locked')) resolve();
      });
      child.on('exit', (c) => reject(new Error(`child exited ${c}`)));
    });
    expect(await tryLockFiles([p])).toBeUndefined();
    let got = false;
    const waiting = lockFiles([p]).then((l) => {
      got = true;
      return l;
    });
    await new Promise((r) => setTimeout(r, 150));
    expect(got).toBe(false);
    child.kill('SIGKILL');
    const l = await waiting;
    expect(got).toBe(true);
    expect(freeForFlock1(p + '.lock')).toBe(false);
    await l.release();
  });

  it('two descriptors of one process exclude each other (flock is per open file), and the in-process queue hands over', async () => {
    const d = tmp();
    const p = path.join(d, 'inproc');
    writeFileSync(p + '.lock', '');
    const fd = openSync(p + '.lock', 'r+');
    fsExt.flockSync(fd, 'exnb');
    expect(await tryLockFiles([p])).toBeUndefined(); // blocked by the raw flock alone, not by our map
    closeSync(fd);
    const a = (await tryLockFiles([p]))!;
    expect(a).toBeDefined();
    const fd2 = openSync(p + '.lock', 'r+');
    expect(() => fsExt.flockSync(fd2, 'exnb')).toThrow(/EAGAIN|EWOULDBLOCK/);
    closeSync(fd2);
    const order: string[] = [];
    const w1 = lockFiles([p]).then(async (l) => {
      order.push('w1');
      await l.release();
    });
    const w2 = lockFiles([p]).then(async (l) => {
      order.push('w2');
      await l.release();
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(order).toEqual([]);
    await a.release();
    await Promise.all([w1, w2]);
    expect(order).toEqual(['w1', 'w2']);
  });

  it('follows Nix deletion protocol: a waiter holding the old file sees "d" and it is unlinked', async () => {
    const d = tmp();
    const p = path.join(d, 'proto');
    const l = await lockFiles([p]);
    const old = openSync(p + '.lock', 'r');
    await l.release();
    expect(fstatSync(old).size).toBe(1);
    const buf = Buffer.alloc(1);
    (await import('node:fs')).readSync(old, buf, 0, 1, 0);
    expect(buf.toString()).toBe('d');
    closeSync(old);
    expect(existsSync(p + '.lock')).toBe(false);
  });

  it('a leftover lock file that says "d" but was never unlinked does not block forever', async () => {
    const d = tmp();
    const p = path.join(d, 'leftover');
    writeFileSync(p + '.lock', 'd');
    const l = await lockFiles([p]);
    expect(l.paths).toEqual([p]);
    await l.release();
  });

  it('abort while waiting rejects with a lock-aborted StoreError and leaves the lock usable', async () => {
    const d = tmp();
    const p = path.join(d, 'abort');
    const l = await lockFiles([p]);
    const ac = new AbortController();
    const w = lockFiles([p], { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await expect(w).rejects.toMatchObject({ code: 'lock-aborted' });
    await l.release();
    const again = await tryLockFiles([p]);
    expect(again).toBeDefined();
    await again!.release();
  });

  it('locks are taken in sorted order, so opposite orders do not deadlock', async () => {
    const d = tmp();
    const a = path.join(d, 'a'),
      b = path.join(d, 'b');
    const runs = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        lockFiles(i % 2 ? [a, b] : [b, a]).then(async (l) => {
          expect(l.paths).toEqual([a, b]);
          await new Promise((r) => setTimeout(r, 2));
          await l.release();
          return i;
        }),
      ),
    );
    expect(runs.sort()).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('shared plain-file locks (big-lock) coexist; an exclusive one waits', async () => {
    const d = tmp();
    const f = path.join(d, 'big-lock');
    const r1 = await lockPlainFile(f, 'shared');
    const r2 = await lockPlainFile(f, 'shared');
    const ac = new AbortController();
    const ex = lockPlainFile(f, 'exclusive', ac.signal);
    setTimeout(() => ac.abort(), 30);
    await expect(ex).rejects.toMatchObject({ code: 'lock-aborted' });
    r1();
    r2();
    const r3 = await lockPlainFile(f, 'exclusive');
    expect(existsSync(f)).toBe(true);
    r3();
  });

  describe('lock files opened ahead (OpenedLockFiles, a build waiting for its slot)', () => {
    it('are created but not locked; tryLockFiles then locks those very files, and the release deletes them', async () => {
      const d = tmp();
      const [a, b] = [path.join(d, 'a'), path.join(d, 'b')];
      const opened = new OpenedLockFiles([b, a]);
      await expect.poll(() => existsSync(a + '.lock') && existsSync(b + '.lock')).toBe(true);
      expect(freeForFlock1(a + '.lock')).toBe(true);
      const l = await tryLockFiles([a, b], { opened });
      expect(l?.paths).toEqual([a, b]);
      expect(freeForFlock1(a + '.lock')).toBe(false);
      expect(freeForFlock1(b + '.lock')).toBe(false);
      await l!.release();
      expect(existsSync(a + '.lock') || existsSync(b + '.lock')).toBe(false);
    });

    it('discarded unused, they leave no file behind, but one held through another descriptor stays', async () => {
      const d = tmp();
      const [a, b] = [path.join(d, 'a'), path.join(d, 'b')];
      const opened = new OpenedLockFiles([a, b]);
      const held = await lockFiles([b]);
      await opened.discard();
      expect(existsSync(a + '.lock')).toBe(false);
      expect(existsSync(b + '.lock')).toBe(true);
      expect(freeForFlock1(b + '.lock')).toBe(false);
      await held.release();
      // tryLockFiles finds the ones it does not take (held elsewhere: it gives up) and discards them too.
      const held2 = await lockFiles([a]);
      const opened2 = new OpenedLockFiles([a, b]);
      expect(await tryLockFiles([a, b], { opened: opened2 })).toBeUndefined();
      expect(existsSync(b + '.lock')).toBe(false);
      expect(freeForFlock1(a + '.lock')).toBe(false);
      await held2.release();
    });

    it('a file deleted and made again since it was opened (without the "d" mark) is not the one locked', async () => {
      const d = tmp();
      const p = path.join(d, 'replaced');
      const opened = new OpenedLockFiles([p]);
      await expect.poll(() => existsSync(p + '.lock')).toBe(true);
      unlinkSync(p + '.lock');
      writeFileSync(p + '.lock', '');
      const l = await tryLockFiles([p], { opened });
      expect(l).toBeDefined();
      // The flock is on the file the path names now, so another locker of the path is excluded.
      expect(freeForFlock1(p + '.lock')).toBe(false);
      await l!.release();
      expect(existsSync(p + '.lock')).toBe(false);
    });
  });
});
