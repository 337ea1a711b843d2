/**
 * Interop with real Nix 2.8, both ways:
 *  - a store we wrote is read by `nix path-info`, `nix-store -q`, `--read-log`, its garbage collector
 *    (which reads DerivationOutputs for keep-derivations), and passes `nix-store --verify --check-contents`;
 *  - a store Nix wrote (`nix-store --add`, `nix-instantiate`, a sandboxed build) is opened by us and
 *    gives the same answers, including the bzip2-compressed build log.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, readFileSync, readdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { execFileSync, nix, nixEnv, nixOk, removeTreeSync, runNix, tempDir } from '../helpers/nix.js';
import { LocalStore } from '../../src/store/local-store.js';
import { Hash } from '../../src/store/hash.js';
import { collect, dumpPath, hashPath, streamOf } from '../../src/store/nar.js';
import { makeFixedOutputPath } from '../../src/store/store-path.js';
import { spawn } from 'node:child_process';
import type { PathInfo } from '../../src/store/store-api.js';
import { parseStoreUri, openStore } from '../../src/store/store-uri.js';

const EXPR = `
let src = builtins.toFile "input.txt" "input data"; in
derivation {
  name = "interop"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo building interop; echo line two; echo \${src} > $dev; echo $dev > $out" ];
  outputs = [ "out" "dev" ];
}`;

interface NixInfo {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string;
  ca?: string;
  registrationTime?: number;
  ultimate?: boolean;
}

function pathInfoJson(root: string, paths: string[], recursive = true): Map<string, NixInfo> {
  const out = nix('nix', ['path-info', '--store', root, '--json', ...(recursive ? ['--recursive'] : []), ...paths]);
  return new Map((JSON.parse(out) as NixInfo[]).map((i) => [i.path, i]));
}

function sqliteMaster(dbFile: string): unknown[] {
  const db = new Database(dbFile, { readonly: true });
  try {
    return db.prepare('select type, name, tbl_name, sql from sqlite_master order by rowid').all();
  } finally {
    db.close();
  }
}

function drvOutputRows(dbFile: string, drv: string): Array<{ id: string; path: string }> {
  const db = new Database(dbFile, { readonly: true });
  try {
    return db.prepare('select d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv where v.path = ? order by d.id').all(drv) as Array<{
      id: string;
      path: string;
    }>;
  } finally {
    db.close();
  }
}

function expectSameInfo(ours: PathInfo, theirs: NixInfo): void {
  expect(ours.path).toBe(theirs.path);
  expect(ours.narHash.equals(Hash.parse(theirs.narHash))).toBe(true);
  expect(ours.narSize).toBe(theirs.narSize);
  expect([...ours.references]).toEqual([...theirs.references].sort());
  expect(ours.deriver).toBe(theirs.deriver);
  expect(ours.ca).toBe(theirs.ca);
}

/** `nix-store --verify --check-contents` must exit 0 and print nothing but its progress lines. */
function expectVerifies(root: string): void {
  const r = runNix('nix-store', ['--store', root, '--verify', '--check-contents']);
  const noise = r.stderr
    .split('\n')
    .filter((l) => l.trim() && !/^(reading the Nix store|checking path existence|checking link hashes|checking store hashes)\.\.\.$/.test(l.trim()));
  expect(noise).toEqual([]);
  expect(r.status).toBe(0);
}

describe.skipIf(!nixOk())('interop with real Nix 2.8', () => {
  let work: string;
  let nixRoot: string; // a store real Nix made
  let drv: string;
  let outs: Map<string, string>;
  let src: string;
  let tree: string;

  beforeAll(() => {
    work = tempDir('realise-interop-');
    nixRoot = path.join(work, 'nixroot');
    // A tree with a file, an executable, a symlink and an empty directory, added by Nix.
    const t = path.join(work, 'tree');
    mkdirSync(path.join(t, 'empty'), { recursive: true });
    writeFileSync(path.join(t, 'data'), 'some data\n');
    writeFileSync(path.join(t, 'run'), '#!/bin/sh\n');
    chmodSync(path.join(t, 'run'), 0o755);
    symlinkSync('data', path.join(t, 'link'));
    tree = nix('nix-store', ['--store', nixRoot, '--add', t]);
    const exprFile = path.join(work, 'default.nix');
    writeFileSync(exprFile, EXPR);
    drv = nix('nix-instantiate', ['--store', nixRoot, exprFile]);
    const built = runNix('nix-store', ['--store', nixRoot, '--realise', drv, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox']);
    if (built.status !== 0) throw new Error(`nix build failed: ${built.stderr}`);
    outs = new Map(drvOutputRows(path.join(nixRoot, 'nix/var/nix/db/db.sqlite'), drv).map((r) => [r.id, r.path]));
    src = nix('nix-store', ['--store', nixRoot, '-q', '--references', drv])
      .split('\n')
      .find((p) => p.endsWith('-input.txt'))!;
  }, 120_000);

  afterAll(() => {
    if (work) removeTreeSync(work);
  });

  it('our database schema is statement for statement the one Nix 2.8 creates', async () => {
    const root = path.join(work, 'schema');
    await (await LocalStore.open({ root })).close();
    expect(sqliteMaster(path.join(root, 'nix/var/nix/db/db.sqlite'))).toEqual(sqliteMaster(path.join(nixRoot, 'nix/var/nix/db/db.sqlite')));
    expect(readFileSync(path.join(root, 'nix/var/nix/db/schema'), 'utf8')).toBe(readFileSync(path.join(nixRoot, 'nix/var/nix/db/schema'), 'utf8'));
  });

  it('we open a store Nix wrote and answer as Nix does', async () => {
    const store = await LocalStore.open({ root: nixRoot });
    try {
      const out = outs.get('out')!;
      const dev = outs.get('dev')!;
      const theirs = new Map([...pathInfoJson(nixRoot, [out, tree]), ...pathInfoJson(nixRoot, ['--derivation', drv])]);
      expect([...theirs.keys()].sort()).toEqual([out, dev, src, drv, tree].sort());
      for (const [p, info] of theirs) expectSameInfo((await store.queryPathInfo(p))!, info);
      expect((await store.queryPathInfo(out))!.ultimate).toBe(true);
      expect(await store.queryDerivationOutputs(drv)).toEqual(
        new Map([
          ['dev', dev],
          ['out', out],
        ]),
      );
      expect([...(await store.computeClosure([out]))].sort()).toEqual(nix('nix-store', ['--store', nixRoot, '-qR', out]).split('\n').sort());
      expect(await store.queryReferrers(src)).toEqual(nix('nix-store', ['--store', nixRoot, '-q', '--referrers', src]).split('\n').sort());
      expect(await store.queryValidPaths([out, dev, drv, src, tree, '/nix/store/00000000000000000000000000000000-x'])).toEqual(
        new Set([out, dev, drv, src, tree]),
      );
      // NAR bytes identical to `nix-store --dump`.
      const dumped = execFileSync('nix-store', ['--dump', store.toRealPath(tree)], { env: nixEnv(), maxBuffer: 1 << 26 });
      const ourNar = await collect(store.narFromPath(tree));
      expect(ourNar.equals(dumped)).toBe(true);
      expect(Hash.of('sha256', ourNar).equals(Hash.parse(theirs.get(tree)!.narHash))).toBe(true);
      // The build log Nix wrote is bzip2-compressed; we read it.
      expect(store.logPath(drv) + '.bz2').toMatch(/\/nix\/var\/log\/nix\/drvs\/..\/.+\.drv\.bz2$/);
      expect(
        readFileSync(store.logPath(drv) + '.bz2')
          .subarray(0, 3)
          .toString(),
      ).toBe('BZh');
      expect(await store.readBuildLog(drv)).toBe(nix('nix-store', ['--store', nixRoot, '--read-log', drv]) + '\n');
      expect(await store.readTextFile(drv)).toBe(readFileSync(store.toRealPath(drv), 'utf8'));
      // We add to Nix's store; Nix still verifies it and sees our path.
      const mine = await store.addTextToStore('added-by-realise.txt', `refers to ${tree}`, [tree]);
      await store.close();
      expectVerifies(nixRoot);
      expect(nix('nix-store', ['--store', nixRoot, '-q', '--references', mine])).toBe(tree);
    } finally {
      await store.close();
    }
  });

  it('Nix reads, queries, garbage-collects and verifies a store we wrote', async () => {
    const root = path.join(work, 'ours');
    const store = await openStore(root);
    expect(parseStoreUri(root).options.root).toBe(root);
    const nixDb = path.join(nixRoot, 'nix/var/nix/db/db.sqlite');
    const out = outs.get('out')!;
    const dev = outs.get('dev')!;
    try {
      // Same text paths as Nix computes: builtins.toFile and the .drv.
      expect(await store.addTextToStore('input.txt', 'input data')).toBe(src);
      const drvText = readFileSync(path.join(nixRoot, drv), 'utf8');
      expect(await store.addTextToStore('interop.drv', drvText, [src])).toBe(drv);
      await store.registerDerivationOutputs(drv, outs);
      // The outputs the builder would write, registered as build outputs.
      writeFileSync(store.toRealPath(dev), `${src}\n`);
      writeFileSync(store.toRealPath(out), `${dev}\n`);
      const infoOf = async (p: string, references: string[]): Promise<PathInfo> => {
        const nar = await collect(dumpPath(store.toRealPath(p)));
        return { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references, deriver: drv, ultimate: true };
      };
      await store.registerValidPaths([await infoOf(out, [dev]), await infoOf(dev, [src])]);
      // A tree from a NAR, referring to the text path.
      const t = path.join(work, 'tree2');
      mkdirSync(path.join(t, 'bin'), { recursive: true });
      writeFileSync(path.join(t, 'bin', 'tool'), `#!/bin/sh\ncat ${src}\n`);
      chmodSync(path.join(t, 'bin', 'tool'), 0o755);
      symlinkSync('bin/tool', path.join(t, 'tool-link'));
      const nar = await collect(dumpPath(t));
      const treePath = '/nix/store/' + 'a'.repeat(32) + '-tree2';
      await store.addToStore({ path: treePath, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [src] }, streamOf(nar));
      await store.addBuildLog(drv, 'building interop\nline two\n');
      expect(drvOutputRows(path.join(root, 'nix/var/nix/db/db.sqlite'), drv)).toEqual(drvOutputRows(nixDb, drv));
    } finally {
      await store.close();
    }

    // Nix's view equals the one of the store Nix built itself.
    const theirs = pathInfoJson(nixRoot, [out]);
    const ours = pathInfoJson(root, [out, '/nix/store/' + 'a'.repeat(32) + '-tree2']);
    for (const p of [out, dev, src]) {
      const a = ours.get(p)!;
      const b = theirs.get(p)!;
      expect({ ...a, registrationTime: 0 }).toEqual({ ...b, registrationTime: 0 });
    }
    expect(ours.get('/nix/store/' + 'a'.repeat(32) + '-tree2')!.references).toEqual([src]);
    expect(nix('nix-store', ['--store', root, '-q', '--references', out])).toBe(dev);
    expect(nix('nix-store', ['--store', root, '-q', '--referrers', src]).split('\n').sort()).toEqual(
      [drv, dev, '/nix/store/' + 'a'.repeat(32) + '-tree2'].sort(),
    );
    expect(nix('nix-store', ['--store', root, '-q', '--deriver', out])).toBe(drv);
    // `nix path-info DRV` resolves the outputs through DerivationOutputs.
    expect([...pathInfoJson(root, [drv], false).keys()].sort()).toEqual([dev, out].sort());
    expect(nix('nix-store', ['--store', root, '-q', '--outputs', drv]).split('\n').sort()).toEqual([dev, out].sort());
    expect(nix('nix-store', ['--store', root, '--read-log', drv])).toBe('building interop\nline two');
    expect(nix('nix', ['log', '--store', root, drv])).toBe('building interop\nline two');
    // The garbage collector keeps the .drv of a rooted output only through DerivationOutputs.
    symlinkSync(out, path.join(root, 'nix/var/nix/gcroots/out-root'));
    const dead = nix('nix-store', ['--store', root, '--gc', '--print-dead']).split('\n');
    expect(dead).not.toContain(drv);
    expect(dead).not.toContain(dev);
    expect(dead).toContain('/nix/store/' + 'a'.repeat(32) + '-tree2');
    const deadNoKeep = nix('nix-store', ['--store', root, '--gc', '--print-dead', '--option', 'keep-derivations', 'false']).split('\n');
    expect(deadNoKeep).toContain(drv);
    expectVerifies(root);
  });

  it('our path lock excludes a real Nix process adding the same path (flock on <real path>.lock)', async () => {
    const root = path.join(work, 'locking');
    const f = path.join(work, 'locked-file.txt');
    writeFileSync(f, 'lock interop\n');
    const store = await LocalStore.open({ root });
    try {
      const narHash = (await hashPath(f)).hash;
      const p = makeFixedOutputPath('recursive', narHash, 'locked-file.txt');
      const held = await store.lockPaths([p]);
      const child = spawn('nix-store', ['--store', root, '--add', f], { env: nixEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (b: Buffer) => {
        out += b.toString();
      });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      // Wait until Nix has the lock file open (it is blocked in flock), then check it made no progress.
      const lockFile = store.toRealPath(p) + '.lock';
      const hasLockOpen = () => {
        try {
          return readdirSync(`/proc/${child.pid}/fd`).some((fd) => {
            try {
              return readlinkSync(`/proc/${child.pid}/fd/${fd}`) === lockFile;
            } catch {
              return false;
            }
          });
        } catch {
          return false;
        }
      };
      for (let i = 0; i < 300 && !hasLockOpen() && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      expect(hasLockOpen()).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
      expect(child.exitCode).toBeNull(); // Nix is waiting for our lock
      expect(await store.isValidPath(p)).toBe(false);
      await held.release();
      expect(await exited).toBe(0);
      expect(out.trim()).toBe(p);
      expect(await store.isValidPath(p)).toBe(true);
    } finally {
      await store.close();
    }
  }, 60_000);

  it('a real Nix build holds the output lock; we wait for it and then see the output valid', async () => {
    const root = path.join(work, 'nixlock');
    const exprFile = path.join(work, 'sleeper.nix');
    writeFileSync(
      exprFile,
      'derivation { name = "sleeper"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "sleep 2; echo done > $out" ]; }',
    );
    const sleeper = nix('nix-instantiate', ['--store', root, exprFile]);
    const out = nix('nix-store', ['--store', root, '-q', '--outputs', sleeper]);
    const child = spawn('nix-store', ['--store', root, '--realise', sleeper, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox'], {
      env: nixEnv(),
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const store = await LocalStore.open({ root });
    try {
      let sawHeld = false;
      for (let i = 0; i < 400 && child.exitCode === null; i++) {
        const l = await store.tryLockPaths([out]);
        if (!l) {
          sawHeld = true;
          break;
        }
        await l.release();
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(sawHeld).toBe(true);
      expect(await store.isValidPath(out)).toBe(false);
      const l = await store.lockPaths([out]);
      expect(await store.isValidPath(out)).toBe(true); // Nix registered the output before unlocking
      await l.release();
      expect(await exited).toBe(0);
      expect(await store.readTextFile(out)).toBe('done\n');
    } finally {
      child.kill();
      await store.close();
    }
  }, 60_000);

  it('a plain store URI as nix-instantiate takes it works for both', async () => {
    const d = path.join(work, 'plain');
    const uri = `local?store=${d}/store&state=${d}/state&log=${d}/log`;
    const exprFile = path.join(work, 'plain.nix');
    writeFileSync(exprFile, 'builtins.toFile "plain.txt" "plain store"');
    const p = nix('nix-instantiate', ['--store', uri, '--eval', '--read-write-mode', exprFile]).replace(/"/g, '');
    expect(p.startsWith(`${d}/store/`)).toBe(true);
    const store = await openStore(uri);
    try {
      expect(store.storeDir).toBe(`${d}/store`);
      expect(store.realStoreDir).toBe(`${d}/store`);
      expect(await store.isValidPath(p)).toBe(true);
      expect(await store.readTextFile(p)).toBe('plain store');
      const mine = await store.addTextToStore('mine.txt', 'from realise', [p]);
      expect(mine.startsWith(`${d}/store/`)).toBe(true);
    } finally {
      await store.close();
    }
    expect(
      nix('nix-store', [
        '--store',
        uri,
        '-q',
        '--references',
        `${d}/store/${(await import('node:fs')).readdirSync(`${d}/store`).find((n) => n.endsWith('-mine.txt'))}`,
      ]),
    ).toBe(p);
    expectVerifies(uri);
  });
});
