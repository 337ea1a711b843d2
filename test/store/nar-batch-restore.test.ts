/**
 * Batched NAR restores (restorePath with `canonical` and `batch`) made on the main thread while the restore
 * thread is not running, with the thread's own code, then on the thread, which the second such restore
 * starts. Its own file: the restore thread's state is the process's (vitest runs each file in a process).
 */
import { existsSync, lstatSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { StoreError } from '../../src/store/errors.js';
import { collect, dumpPath, restorePath, restoreThreadOnline, streamOf } from '../../src/store/nar.js';
import { tempDir } from '../helpers/nix.js';

/** Every entry: files 0444/0555, directories 0555, mtime 1 (symlinks: mtime 1). */
function expectCanonical(p: string): void {
  const st = lstatSync(p);
  expect(st.mtimeMs, p).toBe(1000);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    expect(st.mode & 0o7777, p).toBe(0o555);
    for (const n of readdirSync(p)) expectCanonical(path.join(p, n));
  } else expect([0o444, 0o555], p).toContain(st.mode & 0o7777);
}

/** A small tree (a file, an executable, a symlink, a subdirectory) and its NAR. */
async function smallNar(): Promise<Buffer> {
  const src = path.join(tempDir('realise-nar-batch-'), 'src');
  mkdirSync(path.join(src, 'sub'), { recursive: true });
  writeFileSync(path.join(src, 'a'), 'hello\n');
  writeFileSync(path.join(src, 'sub', 'run'), '#!/bin/sh\n', { mode: 0o755 });
  symlinkSync('a', path.join(src, 'link'));
  return collect(dumpPath(src));
}

describe('batched restore of small NARs', () => {
  it('on the main thread, before any thread: a step that fails is reported as on the thread, and nothing is made', async () => {
    expect(restoreThreadOnline()).toBe(false);
    // The first step (the root directory) fails: its parent does not exist.
    const target = path.join(tempDir('realise-nar-batch-'), 'missing', 'out');
    const err = await restorePath(target, streamOf(await smallNar()), { canonical: true, batch: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).message).toMatch(/ENOENT|no such file/i);
    expect(existsSync(path.dirname(target))).toBe(false);
    expect(restoreThreadOnline()).toBe(false);
  });

  it('the same tree and metadata on the main thread and on the thread, which the second small restore starts', async () => {
    const nar = await smallNar();
    const dir = tempDir('realise-nar-batch-');
    const restore = async (name: string) => {
      const target = path.join(dir, name);
      expect((await restorePath(target, streamOf(nar), { canonical: true, batch: true })).size).toBe(nar.length);
      expect((await collect(dumpPath(target))).equals(nar), name).toBe(true);
      expectCanonical(target);
    };
    // The second small restore of the process: still here, and it starts the thread.
    await restore('main');
    for (let waited = 0; !restoreThreadOnline(); waited += 20) {
      expect(waited, 'the restore thread started').toBeLessThan(30_000);
      await new Promise((r) => setTimeout(r, 20));
    }
    await restore('thread');
  });
});
