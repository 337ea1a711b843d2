import { describe, expect, it, vi } from 'vitest';
import { closeSync, existsSync, lstatSync, openSync, promises as fsp, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { isStoreTempDirName, LocalStore, defaultStoreRoot, resolveLayout } from '../../src/store/local-store.js';
import { tryFlockFd } from '../../src/store/locks.js';
import { freshPath, makeTreeNar, storeConformance } from './conformance.js';
import { streamOf } from '../../src/store/nar.js';
import type { PathInfo } from '../../src/store/store-api.js';
import { nix, nixOk, tempDirs } from '../helpers/nix.js';

const tmp = tempDirs('realise-ls-');

storeConformance('LocalStore (chroot)', async () => LocalStore.open({ root: tmp() }));
storeConformance('LocalStore (plain)', async () => {
  const d = tmp();
  return LocalStore.open({ storeDir: path.join(d, 'store'), stateDir: path.join(d, 'state'), logDir: path.join(d, 'log') });
});

describe('LocalStore closures', () => {
  it('a closure follows references registered since it was last computed, by this store object or another (its references cache is not stale)', async () => {
    const d = tmp();
    const dirs = { storeDir: path.join(d, 'store'), stateDir: path.join(d, 'state'), logDir: path.join(d, 'log') };
    const s = await LocalStore.open(dirs);
    const other = await LocalStore.open(dirs);
    const a = await s.addTextToStore('a', 'a');
    const b = await s.addTextToStore('b', `b ${a}`, [a]);
    const c = await s.addTextToStore('c', 'c');
    const top = await s.addTextToStore('top', `top ${b}`, [b]);
    expect(await s.computeClosure([top])).toEqual(new Set([top, b, a]));
    // Another process (here another connection) registers b again with one reference more.
    const info = (await s.queryPathInfo(b))!;
    await other.registerValidPaths([{ ...info, references: [a, c] }]);
    expect(await s.computeClosure([top])).toEqual(new Set([top, b, a, c]));
    // This store object does the same.
    const e = await s.addTextToStore('e', 'e');
    await s.registerValidPaths([{ ...info, references: [a, c, e] }]);
    expect(await s.computeClosure([top])).toEqual(new Set([top, b, a, c, e]));
    expect(await other.computeClosure([b, c])).toEqual(new Set([b, a, c, e]));
    await other.close();
    await s.close();
  });

  it('a batch that registers a valid path again beside new ones updates its row (same id, new references) and points the new ones at it and at paths outside', async () => {
    const s = await LocalStore.open({ root: tmp() });
    const a = await s.addTextToStore('a', 'a');
    const b = await s.addTextToStore('b', 'b');
    const db = new Database(path.join(s.layout.dbDir, 'db.sqlite'), { readonly: true });
    const idOf = (p: string) => (db.prepare('select id from ValidPaths where path = ?').get(p) as { id: number } | undefined)?.id;
    const refsOf = (p: string) =>
      (
        db.prepare('select v.path from Refs join ValidPaths v on v.id = Refs.reference where Refs.referrer = ? order by v.path').all(idOf(p)) as {
          path: string;
        }[]
      ).map((r) => r.path);
    const aId = idOf(a)!;
    const [c, d] = [freshPath('c', s.storeDir), freshPath('d', s.storeDir)];
    for (const p of [c, d]) await fsp.writeFile(s.toRealPath(p), p);
    const infoOf = (p: string, references: string[]): PathInfo => ({ ...(infoA as PathInfo), path: p, references, ca: undefined });
    const infoA = (await s.queryPathInfo(a))!;
    // d refers to c (in the batch) and to a (valid, registered again in the batch with a reference to b, outside).
    await s.registerValidPaths([infoOf(d, [a, c]), { ...infoA, references: [b] }, infoOf(c, [b])]);
    expect(idOf(a)).toBe(aId);
    expect(refsOf(a)).toEqual([b]);
    expect(refsOf(c)).toEqual([b]);
    expect(refsOf(d)).toEqual([a, c].sort());
    expect((await s.queryPathInfo(d))!.references).toEqual([a, c].sort());
    db.close();
    await s.close();
  });

  it('a closure of a path no longer valid throws, even when its references were read before (deleted by this store object or another)', async () => {
    const d = tmp();
    const dirs = { storeDir: path.join(d, 'store'), stateDir: path.join(d, 'state'), logDir: path.join(d, 'log') };
    // Added by a store object that is closed (its temporary roots gone), so that they can be deleted.
    const writer = await LocalStore.open(dirs);
    const a = await writer.addTextToStore('a', 'a');
    const b = await writer.addTextToStore('b', 'b');
    const c = await writer.addTextToStore('c', `c ${a}`, [a]);
    await writer.close();
    const s = await LocalStore.open(dirs);
    const other = await LocalStore.open(dirs);
    // Valid, one without references: both read (and kept) by this walk.
    expect(await s.computeClosure([b, c])).toEqual(new Set([a, b, c]));
    const gone = freshPath('never-added', s.storeDir);
    await expect(s.computeClosure([b, gone])).rejects.toMatchObject({ code: 'invalid-path' });
    await s.collectGarbage({ action: 'delete-specific', paths: [b], ignoreLiveness: true, runtimeRoots: false });
    await expect(s.computeClosure([b])).rejects.toMatchObject({ code: 'invalid-path' });
    expect(await other.computeClosure([c])).toEqual(new Set([a, c]));
    await s.collectGarbage({ action: 'delete-specific', paths: [c], ignoreLiveness: true, runtimeRoots: false });
    await expect(other.computeClosure([c])).rejects.toMatchObject({ code: 'invalid-path' });
    await other.close();
    await s.close();
  });

  it('a closure deeper than the walk it does from paths it has not seen is whole (a new store object, then again)', async () => {
    const d = tmp();
    const dirs = { storeDir: path.join(d, 'store'), stateDir: path.join(d, 'state'), logDir: path.join(d, 'log') };
    const s = await LocalStore.open(dirs);
    const chain: string[] = [];
    for (let i = 0; i < 8; i++) chain.push(await s.addTextToStore(`p${i}`, `p${i} ${chain.join(' ')}`, i > 0 ? [chain[i - 1]!] : []));
    const side = await s.addTextToStore('side', 'side');
    await s.close();
    const fresh = await LocalStore.open(dirs);
    const all = new Set([...chain, side]);
    const top = await fresh.addTextToStore('top', `top ${chain[7]} ${side}`, [chain[7]!, side]);
    for (let i = 0; i < 2; i++) expect(await fresh.computeClosure([top])).toEqual(new Set([...all, top]));
    expect(await fresh.computeClosure([chain[2]!, side])).toEqual(new Set([chain[0], chain[1], chain[2], side]));
    await fresh.close();
  });
});

describe('LocalStore layout', () => {
  it.skipIf(!nixOk())('a new store has the directories, links and modes Nix 2.8 makes (chroot root, and store/state/log apart)', async () => {
    const dir = tmp();
    /** Every entry under `top`: its mode, its path and a link's target, with `top` itself as TOP. */
    const listing = (top: string): string[] =>
      (readdirSync(top, { recursive: true }) as string[])
        .map((rel) => {
          const p = path.join(top, rel);
          const st = lstatSync(p);
          const target = st.isSymbolicLink() ? ` -> ${readlinkSync(p).split(top).join('TOP')}` : '';
          return `${(st.mode & 0o170777).toString(8)} ${rel}${target}`;
        })
        .sort();
    const missing = `/nix/store/${'0'.repeat(32)}-x`;
    nix('nix-store', ['--store', path.join(dir, 'N'), '--check-validity', '--print-invalid', missing]);
    await (await LocalStore.open({ root: path.join(dir, 'O') })).close();
    const want = listing(path.join(dir, 'N'));
    expect(want).toContain('120777 nix/var/nix/gcroots/profiles -> TOP/nix/var/nix/profiles');
    expect(listing(path.join(dir, 'O'))).toEqual(want);
    const apart = (side: string) => ({ storeDir: '/nix/store', stateDir: path.join(dir, side, 'state'), logDir: path.join(dir, side, 'log') });
    const n = apart('N2');
    nix('nix-store', ['--store', `local?store=/nix/store&state=${n.stateDir}&log=${n.logDir}`, '--check-validity', '--print-invalid', missing]);
    await (await LocalStore.open(apart('O2'))).close();
    expect(listing(path.join(dir, 'O2'))).toEqual(listing(path.join(dir, 'N2')));
  });

  it('creates Nix 2.8 files: schema "10", big-lock, reserved, WAL database with Nix pragmas', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    expect(s.storeDir).toBe('/nix/store');
    expect(s.realStoreDir).toBe(path.join(root, 'nix/store'));
    expect(s.toRealPath('/nix/store/abc')).toBe(path.join(root, 'nix/store/abc'));
    const db = path.join(root, 'nix/var/nix/db');
    expect(readFileSync(path.join(db, 'schema'), 'utf8')).toBe('10');
    expect(existsSync(path.join(db, 'big-lock'))).toBe(true);
    expect(statSync(path.join(db, 'reserved')).size).toBe(8 * 1024 * 1024);
    // As Nix, the log directory comes with the first log.
    expect(existsSync(path.join(root, 'nix/var/log'))).toBe(false);
    const conn = new Database(path.join(db, 'db.sqlite'));
    expect(conn.pragma('journal_mode', { simple: true })).toBe('wal');
    const tables = conn
      .prepare("select name from sqlite_master where type = 'table' order by name")
      .all()
      .map((r) => (r as { name: string }).name);
    expect(tables).toEqual(['DerivationOutputs', 'Refs', 'ValidPaths', 'sqlite_sequence']);
    conn.close();
    await s.close();
  });

  it('one flock-ed temporary directory serves all additions; another store object leaves it alone, close removes it', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const tmps = () => readdirSync(path.join(root, 'nix/store')).filter(isStoreTempDirName);
    expect(tmps()).toEqual([]);
    await Promise.all(['a', 'b', 'c'].map((n) => s.addTextToStore(`${n}.txt`, n)));
    expect(tmps()).toHaveLength(1);
    expect(readdirSync(path.join(root, 'nix/store', tmps()[0]!))).toEqual([]);
    // a second store object on the same store does not remove a directory that is in use
    const s2 = await LocalStore.open({ root });
    expect(await s2.removeStaleTempDirs()).toEqual([]);
    expect(tmps()).toHaveLength(1);
    await s.close();
    expect(tmps()).toEqual([]);
    await s2.close();
  });

  it('a sweeper that takes a new temporary directory between its mkdir and its flock does not break the writer', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const sweeper = await LocalStore.open({ root });
    const tmps = () => readdirSync(path.join(root, 'nix/store')).filter(isStoreTempDirName);
    const mkdir = fsp.mkdir.bind(fsp);
    const swept: string[] = [];
    const held: number[] = [];
    // First new directory: another process's removeStaleTempDirs deletes it (its lock is still free).
    // Second: a sweeper holds its lock (about to delete it) when the writer tries to take it.
    const spy = vi.spyOn(fsp, 'mkdir').mockImplementation(async (dir, opts) => {
      const r = await mkdir(dir, opts);
      if (!isStoreTempDirName(path.basename(String(dir)))) return r;
      if (swept.length === 0) swept.push(...(await sweeper.removeStaleTempDirs()));
      else if (held.length === 0) {
        const fd = openSync(String(dir), 'r');
        expect(tryFlockFd(fd, String(dir))).toBe(true);
        held.push(fd);
      }
      return r;
    });
    try {
      const p = await s.addTextToStore('a.txt', 'a');
      expect(readFileSync(s.toRealPath(p), 'utf8')).toBe('a');
    } finally {
      spy.mockRestore();
    }
    expect(swept).toHaveLength(1);
    expect(held).toHaveLength(1);
    // the writer's own directory (the third) is there and locked; the sweeper's held one is left to it
    expect(tmps()).toHaveLength(2);
    for (const fd of held) closeSync(fd);
    expect(await sweeper.removeStaleTempDirs()).toHaveLength(1);
    expect(tmps()).toHaveLength(1);
    await s.close();
    expect(tmps()).toEqual([]);
    await sweeper.close();
  });

  it('a plain store keeps contents at the logical paths', async () => {
    const d = tmp();
    const s = await LocalStore.open({ storeDir: path.join(d, 'store'), stateDir: path.join(d, 'state'), logDir: path.join(d, 'log') });
    expect(s.realStoreDir).toBe(s.storeDir);
    const p = await s.addTextToStore('plain.txt', 'plain');
    expect(p.startsWith(path.join(d, 'store') + '/')).toBe(true);
    expect(s.toRealPath(p)).toBe(p);
    expect(readFileSync(p, 'utf8')).toBe('plain');
    expect(existsSync(path.join(d, 'state/db/db.sqlite'))).toBe(true);
    await s.close();
  });

  it('data persists across reopen, and closed stores refuse work', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const p = await s.addTextToStore('persist.txt', 'persist');
    await s.close();
    await expect(s.isValidPath(p)).rejects.toMatchObject({ code: 'store-closed' });
    const s2 = await LocalStore.open({ root });
    expect(await s2.isValidPath(p)).toBe(true);
    expect(await s2.readTextFile(p)).toBe('persist');
    await s2.close();
  });

  it('refuses a newer schema and a relative root config', async () => {
    const root = tmp();
    await (await LocalStore.open({ root })).close();
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(root, 'nix/var/nix/db/schema'), '11');
    await expect(LocalStore.open({ root })).rejects.toMatchObject({ code: 'schema-too-new' });
    expect(() => resolveLayout({ storeDir: 'relative/store' })).toThrow(/absolute/);
  });

  it('layout defaults follow Nix: root prefixes storeDir, state and log', () => {
    expect(resolveLayout({ root: '/r' })).toMatchObject({
      storeDir: '/nix/store',
      realStoreDir: '/r/nix/store',
      stateDir: '/r/nix/var/nix',
      dbDir: '/r/nix/var/nix/db',
      logDir: '/r/nix/var/log/nix',
    });
    // As Nix 2.8 (`local?root=/r&store=/foo` keeps its contents in /r/nix/store).
    expect(resolveLayout({ root: '/r', storeDir: '/foo' })).toMatchObject({ storeDir: '/foo', realStoreDir: '/r/nix/store' });
    expect(resolveLayout({ storeDir: '/x/store', stateDir: '/x/state', logDir: '/x/log' })).toMatchObject({ realStoreDir: '/x/store', dbDir: '/x/state/db' });
  });

  it('defaultStoreRoot honours REALISE_STORE, then XDG_DATA_HOME, then ~/.local/share', async () => {
    expect(defaultStoreRoot({ REALISE_STORE: '/a/b' })).toBe('/a/b');
    expect(defaultStoreRoot({ XDG_DATA_HOME: '/xdg' })).toBe('/xdg/realise/root');
    expect(defaultStoreRoot({ HOME: '/home/u' })).toBe('/home/u/.local/share/realise/root');
    const root = tmp();
    const old = process.env.REALISE_STORE;
    process.env.REALISE_STORE = root;
    try {
      const s = await LocalStore.openDefault();
      expect(s.realStoreDir).toBe(path.join(root, 'nix/store'));
      await s.close();
    } finally {
      if (old === undefined) delete process.env.REALISE_STORE;
      else process.env.REALISE_STORE = old;
    }
  });
});

describe('LocalStore additions that finish together', () => {
  it('are registered together; each returns what queryPathInfo reads back; one whose reference vanished fails alone', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const ref = await s.addTextToStore('ref.txt', 'ref');
    const gone = await s.addTextToStore('gone.txt', 'gone');
    // Every NAR is held back until the paths are set up, so that the additions reach their registration together.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let reading = 0;
    async function* held(nar: Buffer): AsyncGenerator<Uint8Array> {
      reading++;
      await gate;
      yield* streamOf(nar);
    }
    const adds: Array<{ info: PathInfo; added: Promise<PathInfo> }> = [];
    for (const [i, refs] of [[ref], [gone], [ref, gone], [], [ref]].entries()) {
      const { nar, hash } = await makeTreeNar(`t${i}`);
      const info: PathInfo = {
        path: freshPath(`t${i}`),
        narHash: hash,
        narSize: nar.length,
        // Unsorted and repeated, as a narinfo may list them.
        references: [...refs].reverse().concat(refs),
        deriver: i % 2 ? freshPath(`t${i}.drv`) : undefined,
        sigs: i === 4 ? ['k-1:c2ln', 'k-2:c2ln'] : [],
        ultimate: i === 3,
      };
      adds.push({ info, added: s.addToStore(info, held(nar)) });
    }
    // Every addition has checked its references and locked its path, and waits for its NAR.
    while (reading < adds.length) await new Promise((r) => setTimeout(r, 5));
    // `gone` stops being valid while the additions run (another process's collector took it: nothing referenced it yet).
    const other = new Database(path.join(root, 'nix/var/nix/db/db.sqlite'));
    other.prepare('delete from ValidPaths where path = ?').run(gone);
    other.close();
    expect(await s.isValidPath(gone)).toBe(false);
    type Internals = { registerInDb(infos: PathInfo[]): void; registerSoon(info: PathInfo): Promise<void> };
    const internals = s as unknown as Internals;
    const batches: number[] = [];
    const registerInDb = internals.registerInDb;
    vi.spyOn(internals, 'registerInDb').mockImplementation(function (this: LocalStore, infos) {
      batches.push(infos.length);
      registerInDb.call(this, infos);
    });
    // The additions reach their registration at different times (their restores end one by one); held
    // until all five are there, they are handed on in one turn of the event loop, as a burst of them is.
    const registerSoon = internals.registerSoon;
    const waiting: Array<() => void> = [];
    vi.spyOn(internals, 'registerSoon').mockImplementation(function (this: LocalStore, info) {
      return new Promise<void>((resolve, reject) => {
        waiting.push(() => void registerSoon.call(this, info).then(resolve, reject));
        if (waiting.length === adds.length) for (const go of waiting) go();
      });
    });
    open();
    const outcomes = await Promise.allSettled(adds.map((a) => a.added));
    // One transaction for the five (refused), then one for each.
    expect(batches).toEqual([5, 1, 1, 1, 1, 1]);
    for (const [i, { info }] of adds.entries()) {
      const o = outcomes[i]!;
      if (info.references.includes(gone)) {
        expect(o.status, info.path).toBe('rejected');
        expect((o as PromiseRejectedResult).reason.code).toBe('missing-references');
        expect(await s.isValidPath(info.path)).toBe(false);
        expect(existsSync(s.toRealPath(info.path))).toBe(false);
      } else {
        expect(o.status, info.path).toBe('fulfilled');
        const got = (o as PromiseFulfilledResult<PathInfo>).value;
        expect(got).toEqual(await s.queryPathInfo(info.path));
        expect(got.references).toEqual([...new Set(info.references)].sort());
      }
    }
    await s.close();
  });
});

describe('canonicalisePathMetaData', () => {
  it('refuses a FIFO with a typed error naming the file on disk, and leaves the rest alone', async () => {
    const { canonicalisePathMetaData } = await import('../../src/store/canonicalise.js');
    const { UnsupportedFileTypeError } = await import('../../src/store/errors.js');
    const { execFileSync } = await import('node:child_process');
    const d = tmp();
    const fifo = path.join(d, 'sub', 'pipe');
    execFileSync('mkdir', ['-p', path.dirname(fifo)]);
    execFileSync('mkfifo', [fifo]);
    const e = await canonicalisePathMetaData(d).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(UnsupportedFileTypeError);
    expect((e as InstanceType<typeof UnsupportedFileTypeError>).file).toBe(fifo);
    expect((e as Error).message).toContain(`file '${fifo}' has an unsupported type`);
    expect(statSync(fifo).isFIFO()).toBe(true);
  });
});
