/**
 * Store optimisation against real Nix 2.8: on twin copies of one store, `store.optimiseStore()` and
 * `nix-store --optimise` make the same `.links` entries and link the same files (same counts, bytes and
 * inode sharing); afterwards each finds nothing more to do in the other's result; auto-optimise-store links
 * new paths so that `nix-store --optimise` finds nothing; the store verifies. Each test runs with the native
 * loop (src/platform/optimise-addon.c, checked to be loaded) and with the JavaScript one it falls back to
 * (REALISE_NATIVE_OPTIMISE=0, as without a C compiler).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../../src/platform/native-optimise.js'; // the native loop, as the package registers it
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, removeTreeSync, runNix, tempDir } from '../helpers/nix.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) removeTreeSync(d);
});
const nonce = `${process.pid}-${Date.now()}`;
const CRASH_CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'optimise-crash-child.ts');

/** A source tree with duplicates inside and across trees: same bytes, executable or not, symlinks, empty files. */
function sourceTree(dir: string, variant: number): string {
  const t = path.join(dir, `src${variant}`);
  mkdirSync(path.join(t, 'sub'), { recursive: true });
  writeFileSync(path.join(t, 'common'), `common ${nonce}\n`.repeat(100));
  writeFileSync(path.join(t, 'sub', 'common-again'), `common ${nonce}\n`.repeat(100));
  writeFileSync(path.join(t, 'exec'), `common ${nonce}\n`.repeat(100));
  chmodSync(path.join(t, 'exec'), 0o755);
  writeFileSync(path.join(t, 'own'), `only in ${variant} ${nonce}`);
  writeFileSync(path.join(t, 'empty'), '');
  symlinkSync('common', path.join(t, 'link'));
  symlinkSync('common', path.join(t, 'sub', 'link'));
  return t;
}

/** Map each file of the store (below the store dir, not .links) to a canonical id of its inode group. */
function inodeGroups(realStoreDir: string): Record<string, string> {
  const byIno = new Map<number, string[]>();
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    if (st.isDirectory()) {
      for (const n of readdirSync(p).sort()) walk(path.join(p, n), `${rel}/${n}`);
      return;
    }
    let l = byIno.get(st.ino);
    if (!l) byIno.set(st.ino, (l = []));
    l.push(rel);
  };
  // (A `.tmp-link-*` left by a killed optimiser is the collector's to remove.)
  for (const n of readdirSync(realStoreDir).sort())
    if (n !== '.links' && !n.endsWith('.lock') && !n.startsWith('.tmp-link-')) walk(path.join(realStoreDir, n), n);
  const out: Record<string, string> = {};
  for (const files of byIno.values()) for (const f of files) out[f] = files[0]!;
  return out;
}

/** This process's descriptors of deleted files below `dir`: a replaced file still open here is not freed yet. */
function heldDeleted(dir: string): string[] {
  const held: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target = '';
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the descriptor readdir used
    }
    if (target.startsWith(dir + '/') && target.endsWith(' (deleted)')) held.push(target);
  }
  return held;
}

/** Mode and mtime of each directory of the store's paths: replacing files in one leaves it read-only, mtime 1. */
function dirModes(realStoreDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    if (!st.isDirectory()) return;
    out[rel] = `${(st.mode & 0o7777).toString(8)} ${st.mtimeMs}`;
    for (const n of readdirSync(p)) walk(path.join(p, n), `${rel}/${n}`);
  };
  for (const n of readdirSync(realStoreDir)) if (n !== '.links') walk(path.join(realStoreDir, n), n);
  return out;
}

function nixOptimise(root: string): string {
  const r = runNix('nix-store', ['--store', root, '--optimise']);
  expect(r.status, r.stderr).toBe(0);
  return r.stderr;
}

/** Whether the compiled optimise addon is loaded into this process (and so did the work). */
function nativeLoaded(): boolean {
  return /\/optimise-[0-9a-f]+\.node$/m.test(readFileSync('/proc/self/maps', 'utf8'));
}

for (const kind of ['native', 'JavaScript'] as const) {
  describe(`the ${kind} optimiser`, () => {
    const saved = process.env.REALISE_NATIVE_OPTIMISE;
    beforeAll(() => {
      if (kind === 'JavaScript') process.env.REALISE_NATIVE_OPTIMISE = '0';
    });
    afterAll(() => {
      if (saved === undefined) delete process.env.REALISE_NATIVE_OPTIMISE;
      else process.env.REALISE_NATIVE_OPTIMISE = saved;
    });
    if (kind === 'native')
      it('is the compiled addon, loaded on first use', async () => {
        const root = tempDir('realise-opt-native-');
        dirs.push(root);
        const store = await LocalStore.open({ root });
        try {
          await store.optimiseStore();
        } finally {
          await store.close();
        }
        expect(nativeLoaded()).toBe(true);
      });

    describe.skipIf(!nixOk())('store optimisation against nix-store --optimise', () => {
      let dir: string;
      let N: string;
      let O: string;
      beforeAll(() => {
        dir = tempDir('realise-opt-');
        dirs.push(dir);
        N = path.join(dir, 'N');
        O = path.join(dir, 'O');
        for (let v = 0; v < 3; v++) nix('nix-store', ['--store', N, '--add', sourceTree(dir, v)]);
        writeFileSync(path.join(dir, 'flat'), `common ${nonce}\n`.repeat(100));
        nix('nix-store', ['--store', N, '--add', path.join(dir, 'flat')]);
        expect(spawnSync('cp', ['-a', N, O]).status).toBe(0);
      }, 60_000);

      it('links the same files as Nix, with the same .links entries and the same count and bytes', async () => {
        const out = nixOptimise(N);
        const m = /([\d.]+) MiB freed by hard-linking (\d+) files/.exec(out);
        expect(m, out).not.toBeNull();
        const store = await LocalStore.open({ root: O });
        let stats;
        try {
          stats = await store.optimiseStore();
          expect(heldDeleted(O)).toEqual([]); // every replaced file freed before optimiseStore resolved
        } finally {
          await store.close();
        }
        expect(stats.filesLinked).toBe(Number(m![2]));
        expect((stats.bytesFreed / (1024 * 1024)).toFixed(2)).toBe(m![1]);
        expect(stats.filesLinked).toBeGreaterThanOrEqual(10);
        expect(readdirSync(path.join(O, 'nix/store/.links')).sort()).toEqual(readdirSync(path.join(N, 'nix/store/.links')).sort());
        expect(inodeGroups(path.join(O, 'nix/store'))).toEqual(inodeGroups(path.join(N, 'nix/store')));
        expect(dirModes(path.join(O, 'nix/store'))).toEqual(dirModes(path.join(N, 'nix/store')));
        expect(runNix('nix-store', ['--store', O, '--verify', '--check-contents']).status).toBe(0);
      });

      it('after either, the other finds nothing more to do', async () => {
        expect(nixOptimise(O)).toMatch(/0\.00 MiB freed by hard-linking 0 files/);
        const store = await LocalStore.open({ root: N });
        try {
          expect((await store.optimiseStore()).filesLinked).toBe(0);
        } finally {
          await store.close();
        }
      });

      it('auto-optimise-store links each new path as it is added, so that nix-store --optimise finds nothing', async () => {
        const root = path.join(dir, 'A');
        const store = await LocalStore.open({ root });
        store.autoOptimiseStore = true;
        try {
          const a = await store.addTextToStore('a.txt', `same text ${nonce}`);
          const b = await store.addTextToStore('b.txt', `same text ${nonce}`);
          expect(lstatSync(store.toRealPath(a)).ino).toBe(lstatSync(store.toRealPath(b)).ino);
          expect(lstatSync(store.toRealPath(a)).nlink).toBe(3); // a, b and the .links entry
          // registerValidPaths (build outputs) too: a tree written in place.
          const out = `/nix/store/${'1'.repeat(32)}-out`;
          const real = store.toRealPath(out);
          mkdirSync(real);
          writeFileSync(path.join(real, 'copy'), `same text ${nonce}`);
          const { hashPath } = await import('../../src/store/nar.js');
          const h = await hashPath(real);
          await store.registerValidPaths([{ path: out, narHash: h.hash, narSize: h.size, references: [] }]);
          expect(lstatSync(path.join(real, 'copy')).ino).toBe(lstatSync(store.toRealPath(a)).ino);
          expect(lstatSync(real).mode & 0o777).toBe(0o555);
        } finally {
          await store.close();
        }
        expect(heldDeleted(root)).toEqual([]); // the replaced files freed by close()
        expect(nixOptimise(root)).toMatch(/0\.00 MiB freed by hard-linking 0 files/);
        expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
      });
    });

    /**
     * A store of more paths than one thread takes alone (so the JavaScript optimiser's worker threads share them out), with identical
     * files across paths that different threads see, files larger than one read, an executable twin, symlinks,
     * a writable file and a corrupted `.links` entry: ours and Nix's give the same result and warnings.
     */
    describe.skipIf(!nixOk())('whole-store optimisation against nix-store --optimise', () => {
      let dir: string;
      let src: string;
      const PATHS = 150;
      const corrupted: string[] = [];
      /**
       * Every path's contents intact after a run that stopped early; the only errors are the corrupted
       * `.links` entries the store came with, for the paths the run did not get to.
       */
      const expectIntact = (O: string) => {
        const modified = [...runNix('nix-store', ['--store', O, '--verify', '--check-contents']).stderr.matchAll(/^(\S+) '([^']*)' was modified/gm)];
        for (const [, what, file] of modified) expect([what, corrupted]).toEqual(['link', expect.arrayContaining([path.basename(file!)])]);
      };
      const twin = (name: string) => {
        const t = path.join(dir, name);
        expect(spawnSync('cp', ['-a', src, t]).status).toBe(0);
        return t;
      };
      beforeAll(async () => {
        dir = tempDir('realise-opt-threads-');
        dirs.push(dir);
        src = path.join(dir, 'src');
        const { hashPath } = await import('../../src/store/nar.js');
        const { Hash } = await import('../../src/store/hash.js');
        const { makeStorePath } = await import('../../src/store/store-path.js');
        const store = await LocalStore.open({ root: src });
        try {
          const infos = [];
          for (let i = 0; i < PATHS; i++) {
            const p = makeStorePath('output:out', Hash.of('sha256', `opt-threads-${nonce}-${i}`), `p${i}`);
            const real = store.toRealPath(p);
            mkdirSync(path.join(real, 'sub'), { recursive: true });
            const k = i % 7; // paths i and i + 7, i + 14, ... hold the same files
            writeFileSync(path.join(real, 'a'), `a ${k} ${nonce}\n`.repeat(10 + k));
            writeFileSync(path.join(real, 'sub', 'b'), `b ${i % 3} ${nonce}\n`);
            if (i < 10) writeFileSync(path.join(real, 'sub', 'twin'), `b ${i % 3} ${nonce}\n`); // a file of sub is replaced, whichever is seen first
            writeFileSync(path.join(real, 'own'), `own ${i} ${nonce}`);
            writeFileSync(path.join(real, 'writable'), `writable ${k} ${nonce}`); // made writable below: every thread warns
            writeFileSync(path.join(real, 'empty'), '');
            symlinkSync(`target ${k}`, path.join(real, 'link'));
            if (i % 25 === 0) writeFileSync(path.join(real, 'big'), Buffer.alloc(1.5 * 2 ** 20 + i, `big ${i % 2} `)); // three reads, two contents
            if (i % 2 === 0) chmodSync(path.join(real, 'a'), 0o755);
            const h = await hashPath(real);
            infos.push({ path: p, narHash: h.hash, narSize: h.size, references: [] });
          }
          await store.registerValidPaths(infos);
          for (const i of infos) chmodSync(path.join(store.toRealPath(i.path), 'writable'), 0o644);
          for (const i of infos.slice(0, 10)) chmodSync(path.join(store.toRealPath(i.path), 'sub'), 0o755); // not canonical, and a file replaced in it
          for (const i of infos.slice(0, 3))
            corrupted.push(nix('nix-hash', ['--type', 'sha256', '--base32', path.join(store.toRealPath(i.path), 'sub', 'b')]).trim());
        } finally {
          await store.close();
        }
        mkdirSync(path.join(src, 'nix/store/.links'), { recursive: true });
        for (const c of corrupted) writeFileSync(path.join(src, 'nix/store/.links', c), 'not the same size');
      }, 120_000);

      it('links what Nix links, warns as Nix warns, and leaves nothing for Nix to do', async () => {
        const N = twin('N');
        const O = twin('O');
        const nixOut = nixOptimise(N);
        const m = /([\d.]+) MiB freed by hard-linking (\d+) files/.exec(nixOut);
        expect(m, nixOut).not.toBeNull();
        const warnings: string[] = [];
        const progress: number[] = [];
        const store = await LocalStore.open({ root: O });
        let stats;
        try {
          stats = await store.optimiseStore({ onWarning: (w) => warnings.push(w), onProgress: (done) => progress.push(done) });
          expect(heldDeleted(O)).toEqual([]);
        } finally {
          await store.close();
        }
        expect(stats.filesLinked).toBe(Number(m![2]));
        expect(stats.filesLinked).toBeGreaterThan(PATHS * 3);
        expect((stats.bytesFreed / (1024 * 1024)).toFixed(2)).toBe(m![1]);
        // The same warnings (which thread met a corrupted link first varies, not that it is warned about once).
        const nixWarnings = [...nixOut.matchAll(/^warning: ((skipping suspicious|removing corrupted) .*)$/gm)].map((w) => w[1]!.replaceAll(N, O));
        const ours = warnings.filter((w) => /^(skipping suspicious|removing corrupted) /.test(w));
        expect(ours.sort()).toEqual(nixWarnings.sort());
        expect(ours.filter((w) => w.startsWith('removing corrupted'))).toHaveLength(3);
        expect(ours.filter((w) => w.startsWith('skipping suspicious'))).toHaveLength(PATHS);
        expect(progress.at(-1)).toBe(PATHS);
        expect(progress).toEqual([...progress].sort((a, b) => a - b));
        expect(readdirSync(path.join(O, 'nix/store/.links')).sort()).toEqual(readdirSync(path.join(N, 'nix/store/.links')).sort());
        expect(inodeGroups(path.join(O, 'nix/store'))).toEqual(inodeGroups(path.join(N, 'nix/store')));
        expect(dirModes(path.join(O, 'nix/store'))).toEqual(dirModes(path.join(N, 'nix/store')));
        expect(readdirSync(path.join(O, 'nix/store')).filter((n) => n.startsWith('.tmp-link-'))).toEqual([]);
        expect(runNix('nix-store', ['--store', O, '--verify', '--check-contents']).status).toBe(0);
        expect(nixOptimise(O)).toMatch(/0\.00 MiB freed by hard-linking 0 files/);
      });

      it('killed (SIGKILL) in the middle, leaves every path intact, and a second run finishes the job', async () => {
        const O = twin('O3');
        const N = twin('N3');
        nixOptimise(N);
        const child = spawn(process.execPath, ['--import', 'tsx', CRASH_CHILD, O], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stderr.on('data', (b: Buffer) => (err += b.toString()));
        const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
        await new Promise<void>((resolve) => {
          child.stdout.on('data', (b: Buffer) => {
            out += b.toString();
            if (out.includes('WARNING')) child.kill('SIGKILL'); // at the first path done, most not
          });
          void exited.then(resolve);
        });
        expect(out, err).toContain('WARNING');
        expectIntact(O);
        const store = await LocalStore.open({ root: O });
        try {
          await store.optimiseStore();
        } finally {
          await store.close();
        }
        expect(readdirSync(path.join(O, 'nix/store/.links')).sort()).toEqual(readdirSync(path.join(N, 'nix/store/.links')).sort());
        expect(inodeGroups(path.join(O, 'nix/store'))).toEqual(inodeGroups(path.join(N, 'nix/store')));
        expect(runNix('nix-store', ['--store', O, '--verify', '--check-contents']).status).toBe(0);
        expect(nixOptimise(O)).toMatch(/0\.00 MiB freed by hard-linking 0 files/);
      });

      it('stops when aborted, with every path intact, and a second run finishes the job', async () => {
        const O = twin('O2');
        const N = twin('N2');
        nixOptimise(N);
        const ac = new AbortController();
        let store = await LocalStore.open({ root: O });
        try {
          // Every path has a writable file: the first warning comes with the first path (or batch) done.
          const run = store.optimiseStore({ signal: ac.signal, onWarning: () => ac.abort(new Error('enough')) });
          await expect(run).rejects.toThrow('enough');
          expect(heldDeleted(O)).toEqual([]);
        } finally {
          await store.close();
        }
        expectIntact(O);
        store = await LocalStore.open({ root: O });
        try {
          expect((await store.optimiseStore()).filesLinked).toBeGreaterThan(0);
        } finally {
          await store.close();
        }
        expect(readdirSync(path.join(O, 'nix/store/.links')).sort()).toEqual(readdirSync(path.join(N, 'nix/store/.links')).sort());
        expect(inodeGroups(path.join(O, 'nix/store'))).toEqual(inodeGroups(path.join(N, 'nix/store')));
        expect(nixOptimise(O)).toMatch(/0\.00 MiB freed by hard-linking 0 files/);
      });
    });
  });
}
