/**
 * Crash safety: a writer killed (SIGKILL) in the middle of addToStore leaves no valid path with
 * partial contents; the next LocalStore.open removes its `.tmp-*` directory, but never the temporary
 * directory of a writer that is still alive.
 */
import { describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isStoreTempDirName, LocalStore } from '../../src/store/local-store.js';
import { hashPath } from '../../src/store/nar.js';
import { nixOk, runNix, tempDirs } from '../helpers/nix.js';
import { makeTreeNar } from './conformance.js';
import { streamOf } from '../../src/store/nar.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'local-store-crash-child.ts');
const tmp = tempDirs('realise-crash-');

function startChild(root: string, mode: string): { child: ChildProcess; lines: string[]; waitFor(pred: (l: string) => boolean): Promise<string> } {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, root, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<{ pred: (l: string) => boolean; resolve: (l: string) => void }> = [];
  let buf = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
  });
  child.stdout!.on('data', (b: Buffer) => {
    buf += b.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      for (const w of [...waiters])
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
    }
  });
  return {
    child,
    lines,
    waitFor: (pred) => {
      const hit = lines.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ pred, resolve });
        child.on('exit', (code) => reject(new Error(`child exited (${code}) before the expected output:\n${err}`)));
      });
    },
  };
}

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    child.on('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

const tmpDirs = (root: string) => readdirSync(path.join(root, 'nix/store')).filter(isStoreTempDirName);

describe('LocalStore crash safety', () => {
  it('a writer killed mid-NAR leaves nothing valid; open() removes its temp dir, but not while it lives', async () => {
    const root = tmp();
    const c = startChild(root, 'half');
    const p = (await c.waitFor((l) => l.startsWith('PATH '))).slice(5);
    await c.waitFor((l) => l === 'HALF');
    expect(tmpDirs(root).length).toBe(1);
    // The writer is alive: opening the store must not remove its temporary directory.
    const live = await LocalStore.open({ root });
    expect(tmpDirs(root).length).toBe(1);
    expect(await live.isValidPath(p)).toBe(false);
    await live.close();
    await killed(c.child);
    const store = await LocalStore.open({ root });
    try {
      expect(tmpDirs(root)).toEqual([]);
      expect(await store.isValidPath(p)).toBe(false);
      expect(existsSync(store.toRealPath(p))).toBe(false);
      // The path can be added properly afterwards.
      const { nar, hash } = await makeTreeNar('crash');
      await store.addToStore({ path: p, narHash: hash, narSize: nar.length, references: [] }, streamOf(nar));
      expect(await store.isValidPath(p)).toBe(true);
    } finally {
      await store.close();
    }
  }, 60_000);

  it('killed at an arbitrary moment of a stream of additions: every valid path is complete and closed', async () => {
    const root = tmp();
    const c = startChild(root, 'loop');
    await c.waitFor((l) => l.startsWith('DONE ') && c.lines.filter((x) => x.startsWith('DONE ')).length >= 3);
    await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 40)));
    await killed(c.child);
    const reported = c.lines.filter((l) => l.startsWith('DONE ')).map((l) => l.slice(5));
    const store = await LocalStore.open({ root });
    try {
      expect(tmpDirs(root)).toEqual([]);
      for (const p of reported) expect(await store.isValidPath(p)).toBe(true);
      const entries = readdirSync(store.realStoreDir).filter((n) => !n.startsWith('.') && !isStoreTempDirName(n) && !n.endsWith('.lock'));
      const valid = await store.queryValidPaths(entries.map((n) => `/nix/store/${n}`));
      expect(valid.size).toBeGreaterThanOrEqual(reported.length);
      for (const p of valid) {
        const info = (await store.queryPathInfo(p))!;
        const got = await hashPath(store.toRealPath(p));
        expect(got.hash.equals(info.narHash), p).toBe(true);
        expect(got.size).toBe(info.narSize);
        for (const r of info.references) expect(valid.has(r) || (await store.isValidPath(r))).toBe(true);
      }
    } finally {
      await store.close();
    }
    if (nixOk()) {
      const r = runNix('nix-store', ['--store', root, '--verify', '--check-contents']);
      expect(r.status).toBe(0);
    }
  }, 60_000);
});
