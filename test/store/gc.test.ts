/**
 * The garbage collector against real Nix 2.8 on the same store: the dead and live sets equal
 * `nix-store --gc --print-dead/--print-live` (gcroots direct, indirect and auto, profiles, runtime roots,
 * keep-outputs, keep-derivations, invalid entries); after our collection Nix verifies the store and the
 * rooted closures are intact; --delete, max-freed, unused .links.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { LocalStore } from '../../src/store/local-store.js';
import { hashPath } from '../../src/store/nar.js';
import { PathAliveError, type GcOptions } from '../../src/store/gc.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const nonce = `${process.pid}-${Date.now()}`;

interface Fixture {
  root: string;
  t: string[]; // text paths t0..t7
  drv: Record<'d1' | 'd2' | 'd3', string>;
  out: Record<'d1' | 'd2' | 'd3', string>;
  junk: string; // an invalid store-path entry
}

/** Register `out` (contents already written) as built by `drv`. */
async function registerOutput(store: LocalStore, out: string, drv: string, references: string[]): Promise<void> {
  const { hash, size } = await hashPath(store.toRealPath(out));
  await store.registerValidPaths([{ path: out, narHash: hash, narSize: size, references, deriver: drv, ultimate: true }]);
}

/**
 * A store with text paths (t0 ← t1 ← t2 rooted; t3 → t0 dead; t4 in a profile; t5 a regular-file root;
 * t6 named in a running process's environment; t7 dead), derivations d1 ← d2 (d2's output rooted
 * indirectly through gcroots/auto and a result link) and d3 (its .drv rooted directly), their outputs,
 * an invalid entry, a stray file and a stale auto link.
 */
async function fixture(): Promise<Fixture> {
  const dir = tempDir('realise-gc-');
  dirs.push(dir);
  const root = path.join(dir, 'root');
  const expr = path.join(dir, 'e.nix');
  writeFileSync(
    expr,
    `let mk = name: deps: derivation { inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "true"]; nonce = "${nonce}"; };
    d1 = mk "d1" []; d2 = mk "d2" [d1]; d3 = mk "d3" []; in { inherit d1 d2 d3; }`,
  );
  const drv = {} as Fixture['drv'];
  const out = {} as Fixture['out'];
  for (const n of ['d1', 'd2', 'd3'] as const) {
    drv[n] = nix('nix-instantiate', ['--store', root, expr, '-A', n]);
    out[n] = nix('nix-store', ['--store', root, '-q', '--outputs', drv[n]]);
  }
  const store = await LocalStore.open({ root });
  const t: string[] = [];
  for (let i = 0; i < 8; i++) t.push(await store.addTextToStore(`t${i}`, `text ${i} ${nonce}`, i === 1 || i === 3 ? [t[0]!] : i === 2 ? [t[1]!] : []));
  writeFileSync(store.toRealPath(out.d1), `one ${nonce}`);
  writeFileSync(store.toRealPath(out.d2), `two refers to ${out.d1}`);
  writeFileSync(store.toRealPath(out.d3), `three ${nonce}`);
  await registerOutput(store, out.d1, drv.d1, []);
  await registerOutput(store, out.d2, drv.d2, [out.d1]);
  await registerOutput(store, out.d3, drv.d3, []);
  await store.close();

  const state = path.join(root, 'nix/var/nix');
  symlinkSync(t[2]!, path.join(state, 'gcroots', 'text-root'));
  symlinkSync(drv.d3, path.join(state, 'gcroots', 'd3-drv'));
  mkdirSync(path.join(state, 'gcroots', 'auto'), { recursive: true });
  const result = path.join(dir, 'result');
  symlinkSync(out.d2, result);
  symlinkSync(result, path.join(state, 'gcroots', 'auto', 'indirect'));
  symlinkSync(path.join(dir, 'gone'), path.join(state, 'gcroots', 'auto', 'stale'));
  mkdirSync(path.join(state, 'gcroots', 'files'));
  writeFileSync(path.join(state, 'gcroots', 'files', path.basename(t[5]!)), '');
  symlinkSync(t[4]!, path.join(state, 'profiles', 'default-1-link'));
  // A running process that names t6 in its environment (a runtime root).
  const child = spawn('sleep', ['600'], { env: { ...process.env, HELD: t[6]! }, stdio: 'ignore' });
  children.push(child);
  // An invalid entry named like a store path, and a stray file.
  const junk = `/nix/store/${'0'.repeat(31)}1-junk`;
  mkdirSync(path.join(root, junk), { recursive: true });
  writeFileSync(path.join(root, junk, 'f'), 'junk');
  writeFileSync(path.join(root, 'nix/store/stray-file'), 'stray');
  return { root, t, drv, out, junk };
}

function nixGc(root: string, flag: '--print-dead' | '--print-live', settings: Record<string, string> = {}): string[] {
  const opts = Object.entries(settings).flatMap(([k, v]) => ['--option', k, v]);
  return nix('nix-store', ['--store', root, '--gc', flag, ...opts])
    .split('\n')
    .filter(Boolean)
    .sort();
}

describe.skipIf(!nixOk())('garbage collection against nix-store --gc', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await fixture();
  }, 60_000);

  const cases: Array<[string, GcOptions, Record<string, string>]> = [
    ['defaults (keep-derivations)', {}, {}],
    ['keep-outputs', { keepOutputs: true }, { 'keep-outputs': 'true' }],
    ['neither', { keepDerivations: false }, { 'keep-derivations': 'false' }],
    ['keep-outputs without keep-derivations', { keepOutputs: true, keepDerivations: false }, { 'keep-outputs': 'true', 'keep-derivations': 'false' }],
  ];
  it.each(cases)("the dead and live sets equal Nix's: %s", async (_name, opts, settings) => {
    const store = await LocalStore.open({ root: f.root });
    try {
      const dead = await store.collectGarbage({ ...opts, action: 'print-dead' });
      const live = await store.collectGarbage({ ...opts, action: 'print-live' });
      expect(dead.paths).toEqual(nixGc(f.root, '--print-dead', settings));
      expect(live.paths).toEqual(nixGc(f.root, '--print-live', settings));
      expect(dead.bytesFreed).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('the sets hold what the roots say', async () => {
    const store = await LocalStore.open({ root: f.root });
    try {
      const dead = new Set((await store.collectGarbage({ action: 'print-dead' })).paths);
      for (const p of [f.t[0], f.t[1], f.t[2], f.t[4], f.t[5], f.t[6], f.out.d1, f.out.d2, f.drv.d1, f.drv.d2, f.drv.d3]) expect(dead.has(p!), p).toBe(false);
      for (const p of [f.t[3], f.t[7], f.out.d3, f.junk]) expect(dead.has(p!), p).toBe(true);
      // Nix 2.8's --print-dead deletes names that are not store paths (and lists them); ours lists them only.
      expect(existsSync(path.join(f.root, 'nix/store/stray-file'))).toBe(false);
      const kept = new Set((await store.collectGarbage({ action: 'print-dead', keepOutputs: true })).paths);
      expect(kept.has(f.out.d3)).toBe(false);
      const noDrvs = new Set((await store.collectGarbage({ action: 'print-dead', keepDerivations: false })).paths);
      expect(noDrvs.has(f.drv.d2)).toBe(true);
    } finally {
      await store.close();
    }
    // The stale auto link was removed while looking for roots, as Nix removes it.
    expect(existsSync(path.join(f.root, 'nix/var/nix/gcroots/auto/stale')) || isLink(path.join(f.root, 'nix/var/nix/gcroots/auto/stale'))).toBe(false);
  });

  it('deletes exactly the dead set; Nix then verifies the store, finds nothing dead, and the rooted closures are intact', async () => {
    const store = await LocalStore.open({ root: f.root });
    let deleted: readonly string[];
    let expected: readonly string[];
    try {
      expected = (await store.collectGarbage({ action: 'print-dead' })).paths;
      const events: string[] = [];
      const r = await store.collectGarbage({
        onEvent: (e) => {
          if (e.type === 'info') events.push(e.message);
        },
      });
      deleted = r.paths;
      expect(r.bytesFreed).toBeGreaterThan(0);
      expect(events).toContain('finding garbage collector roots...');
      expect(events).toContain(`deleting '${f.t[3]}'`);
    } finally {
      await store.close();
    }
    expect(deleted).toEqual(expected);
    for (const p of deleted) expect(existsSync(path.join(f.root, p)), p).toBe(false);
    const verify = runNix('nix-store', ['--store', f.root, '--verify', '--check-contents']);
    expect(verify.stderr).not.toMatch(/error|corrupt|missing/i);
    expect(verify.status).toBe(0);
    expect(nixGc(f.root, '--print-dead')).toEqual([]);
    const closure = nix('nix-store', ['--store', f.root, '-qR', f.t[2]!, f.out.d2, f.drv.d3]).split('\n');
    for (const p of closure) expect(existsSync(path.join(f.root, p)), p).toBe(true);
    expect(closure).toEqual(expect.arrayContaining([f.t[0], f.t[1], f.out.d1]));
  });
});

function isLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

describe.skipIf(!nixOk())('nix-store --delete, --max-freed, .links', () => {
  it('--delete refuses a live path and a path with live referrers; deletes a dead one with its requested referrers', async () => {
    const root = path.join(tempDir('realise-gc-del-'), 'root');
    dirs.push(path.dirname(root));
    const store = await LocalStore.open({ root });
    const a = await store.addTextToStore('a', `a ${nonce}`);
    const b = await store.addTextToStore('b', `b ${nonce}`, [a]);
    const c = await store.addTextToStore('c', `c ${nonce}`);
    await store.close();
    symlinkSync(c, path.join(root, 'nix/var/nix/gcroots/c'));
    const s = await LocalStore.open({ root });
    try {
      await expect(s.collectGarbage({ action: 'delete-specific', paths: [c] })).rejects.toThrow(PathAliveError);
      await expect(s.collectGarbage({ action: 'delete-specific', paths: [a] })).rejects.toThrow(/Cannot delete path '.*' since it is still alive/);
      expect(await s.isValidPath(a)).toBe(true);
      const r = await s.collectGarbage({ action: 'delete-specific', paths: [a, b] });
      expect(r.paths).toEqual([a, b].sort());
      expect(await s.isValidPath(a)).toBe(false);
      const forced = await s.collectGarbage({ action: 'delete-specific', paths: [c], ignoreLiveness: true });
      expect(forced.paths).toEqual([c]);
      expect(existsSync(s.toRealPath(c))).toBe(false);
    } finally {
      await s.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
  });

  it('max-freed stops after more than that many bytes, as Nix: the store stays valid', async () => {
    const root = path.join(tempDir('realise-gc-max-'), 'root');
    dirs.push(path.dirname(root));
    const store = await LocalStore.open({ root });
    const paths: string[] = [];
    for (let i = 0; i < 20; i++) paths.push(await store.addTextToStore(`big${i}`, `${i}`.padEnd(10_000, '.') + nonce, i > 0 ? [paths[i - 1]!] : []));
    await store.close();
    const s = await LocalStore.open({ root });
    try {
      const r = await s.collectGarbage({ maxFreed: 35_000 });
      expect(r.limitReached).toBe(true);
      expect(r.bytesFreed).toBeGreaterThan(35_000);
      expect(r.paths.length).toBe(4); // Nix: 4 files of 10,000+ bytes
      expect(r.bytesFreed).toBeLessThan(50_000);
      // Referrers go first: what is left is still closed under references.
      const left = [...(await s.queryAllValidPaths())];
      expect(left.length).toBe(16);
      expect(await s.computeClosure(left)).toEqual(new Set(left));
    } finally {
      await s.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
    // Nix's own max-freed deletes the same number of paths of this store.
    const nixRun = runNix('nix-store', ['--store', root, '--gc', '--max-freed', '35000']);
    expect(nixRun.stdout).toMatch(/^4 store paths deleted, 0\.04 MiB freed$/m);
  });

  it('a path the collection deleted is no valid start of computeClosure from then on, during the collection too', async () => {
    const root = path.join(tempDir('realise-gc-closure-'), 'root');
    dirs.push(path.dirname(root));
    // (Added by another store object: this one's temporary roots would keep them.)
    const adder = await LocalStore.open({ root });
    const a = await adder.addTextToStore('closure-a', `a${nonce}`, []);
    const b = await adder.addTextToStore('closure-b', `b${nonce}`, [a]);
    await adder.close();
    const s = await LocalStore.open({ root });
    try {
      // Cached by the walk: both are valid starts now.
      expect(await s.computeClosure([b])).toEqual(new Set([a, b]));
      const during: Promise<string>[] = [];
      const outcome = (p: Promise<Set<string>>) =>
        p.then(
          () => 'valid',
          (e: { code?: string }) => String(e.code),
        );
      await s.collectGarbage({
        // (Asked synchronously as each batch's deletions are reported, before the collection ends.)
        onEvent: (e) => {
          if (e.type === 'progress') during.push(outcome(s.computeClosure([a])), outcome(s.computeClosure([b])));
        },
      });
      expect(during.length).toBeGreaterThan(0);
      expect(new Set(await Promise.all(during))).toEqual(new Set(['invalid-path']));
      await expect(s.computeClosure([b])).rejects.toMatchObject({ code: 'invalid-path' });
    } finally {
      await s.close();
    }
  });

  it('deletes unused .links entries (link count 1) and keeps used ones', async () => {
    const root = path.join(tempDir('realise-gc-links-'), 'root');
    dirs.push(path.dirname(root));
    const store = await LocalStore.open({ root });
    const keep = await store.addTextToStore('keep', `keep ${nonce}`);
    await store.close();
    symlinkSync(keep, path.join(root, 'nix/var/nix/gcroots/keep'));
    const links = path.join(root, 'nix/store/.links');
    mkdirSync(links, { recursive: true });
    linkSync(path.join(root, keep), path.join(links, 'used'));
    writeFileSync(path.join(links, 'unused'), 'x');
    const s = await LocalStore.open({ root });
    try {
      const r = await s.collectGarbage();
      expect(r.linksDeleted).toBe(1);
    } finally {
      await s.close();
    }
    expect(readdirSync(links)).toEqual(['used']);
    expect(readlinkSync(path.join(root, 'nix/var/nix/gcroots/keep'))).toBe(keep);
  });
});

describe.skipIf(!nixOk())("DerivationOutputs rows of a .drv we add, as Nix's registerValidPaths writes them", () => {
  it("a .drv added from a NAR (as substitution adds it) gets its rows: Nix's keep-outputs then keeps the output of a rooted .drv", async () => {
    const dir = tempDir('realise-gc-drvrows-');
    dirs.push(dir);
    const N = path.join(dir, 'N');
    const O = path.join(dir, 'O');
    const expr = path.join(dir, 'e.nix');
    writeFileSync(expr, `derivation { name = "rows"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "dev"]; nonce = "${nonce}"; }`);
    const drv = nix('nix-instantiate', ['--store', N, expr]);
    const [dev, out] = nix('nix-store', ['--store', N, '-q', '--outputs', drv])
      .split('\n')
      .sort((a, b) => (a.endsWith('-dev') ? -1 : b.endsWith('-dev') ? 1 : 0));
    const { Hash } = await import('../../src/store/hash.js');
    const nar = (await import('node:child_process')).execFileSync('nix-store', ['--dump', path.join(N, drv)]);
    const references = nix('nix-store', ['--store', N, '-q', '--references', drv]).split('\n').filter(Boolean);
    const store = await LocalStore.open({ root: O });
    try {
      await store.addToStore(
        { path: drv, narHash: Hash.of('sha256', nar), narSize: nar.length, references },
        (async function* () {
          yield nar;
        })(),
      );
      expect(Object.fromEntries(await store.queryDerivationOutputs(drv))).toEqual({ out, dev });
      for (const o of [out!, dev!]) writeFileSync(store.toRealPath(o), o);
      for (const o of [out!, dev!]) await registerOutput(store, o, drv, []);
    } finally {
      await store.close();
    }
    symlinkSync(drv, path.join(O, 'nix/var/nix/gcroots/drv'));
    const dead = nixGc(O, '--print-dead', { 'keep-outputs': 'true' });
    expect(dead).not.toContain(out);
    expect(dead).not.toContain(dev);
    expect(nixGc(O, '--print-dead')).toEqual([dev, out].sort());
  });
});
