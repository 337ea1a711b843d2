import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseStoreUri, openStore } from '../../src/store/store-uri.js';
import { decompressBzip2 } from '../../src/store/bzip2.js';
import { LocalStore } from '../../src/store/local-store.js';
import { tempDirs } from '../helpers/nix.js';

const tmp = tempDirs('realise-uri-');

describe('store URIs (what Nix --store takes for local stores)', () => {
  it('a bare absolute or relative directory is a chroot root', () => {
    expect(parseStoreUri('/var/lib/ci/root').options).toEqual({ root: '/var/lib/ci/root' });
    expect(parseStoreUri('./root', '/home/u').options).toEqual({ root: '/home/u/root' });
    expect(parseStoreUri('../r/', '/home/u').options).toEqual({ root: '/home/r' });
    // As Nix's isNonUriPath: any '/' without a scheme (a/b, a/); '.' and '..' have none and name no store.
    expect(parseStoreUri('a/b?frob=1', '/home/u')).toEqual({ options: { root: '/home/u/a/b' }, ignored: [], unknown: ['frob'] });
    expect(parseStoreUri('a/', '/home/u').options).toEqual({ root: '/home/u/a' });
    for (const none of ['.', '..', 'x']) expect(() => parseStoreUri(none, '/home/u')).toThrow(`don't know how to open Nix store '${none}'`);
  });

  it('local?root=, and local?store=&state=&log=&real= with percent-decoding', () => {
    expect(parseStoreUri('local').options).toEqual({});
    expect(parseStoreUri('local?root=/x/y').options).toEqual({ root: '/x/y' });
    // Nix's root may be empty (no root); its other path settings may not.
    expect(parseStoreUri('local?root=').options).toEqual({});
    for (const key of ['store', 'state', 'log', 'real']) {
      expect(() => parseStoreUri(`local?root=/r&${key}=`), key).toThrow(
        expect.objectContaining({ code: 'bad-store-uri', shortMessage: `setting '${key}' cannot be empty` }),
      );
    }
    expect(parseStoreUri('local?store=/x/store&state=/x/state&log=/x/log').options).toEqual({ storeDir: '/x/store', stateDir: '/x/state', logDir: '/x/log' });
    expect(parseStoreUri('local?root=/a%20b&real=/phys').options).toEqual({ root: '/a b', realStoreDir: '/phys' });
    expect(parseStoreUri('local?root=/r&trusted=1').ignored).toEqual(['trusted']);
  });

  it('refuses non-local stores and bad parameters with bad-store-uri', () => {
    for (const bad of ['daemon', 'auto', 'ssh://host', 'file:///cache', 'https://cache.nixos.org', 'bogus://x', 'local?store=relative', 'local?root', '']) {
      expect(() => parseStoreUri(bad), bad).toThrow(expect.objectContaining({ code: 'bad-store-uri' }));
    }
    // Nix's words for a scheme it has no store type for.
    expect(() => parseStoreUri('bogus://x')).toThrow("don't know how to open Nix store 'bogus://x'");
    // A path parameter must be absolute (Nix's path settings), normalised as Nix's canonPath.
    for (const key of ['root', 'state', 'log', 'real', 'store']) {
      expect(() => parseStoreUri(`local?${key}=x/y`, '/home/u'), key).toThrow(
        expect.objectContaining({ code: 'bad-store-uri', shortMessage: "not an absolute path: 'x/y'" }),
      );
    }
    expect(parseStoreUri('local?root=/a/../b/&store=/s//t/').options).toEqual({ root: '/b', storeDir: '/s/t' });
  });

  it('unknown parameters are ignored with a warning each, as Nix 2.8 does', async () => {
    expect(parseStoreUri('local?root=/r&frob=1&trusted=1&zap=2')).toEqual({ options: { root: '/r' }, ignored: ['trusted'], unknown: ['frob', 'zap'] });
    // Newer Nix's read-only is unknown to Nix 2.8 (its warning: "unknown setting 'read-only'").
    expect(parseStoreUri('local?root=/r&read-only=true').unknown).toEqual(['read-only']);
    const d = tmp();
    const warnings: string[] = [];
    const s = await openStore(`${d}/chroot?frob=1`, { warn: (m) => warnings.push(m) });
    expect(s.realStoreDir).toBe(path.join(d, 'chroot/nix/store'));
    expect(warnings).toEqual(["unknown setting 'frob'"]);
    await s.close();
  });

  it('openStore opens the layout the URI names', async () => {
    const d = tmp();
    const s = await openStore(`local?store=${d}/store&state=${d}/state&log=${d}/log`);
    expect(s.storeDir).toBe(`${d}/store`);
    expect(s.layout.dbDir).toBe(`${d}/state/db`);
    const p = await s.addTextToStore('u.txt', 'u');
    expect(s.logPath(p.replace(/u\.txt$/, 'u.drv'))).toMatch(new RegExp(`^${d}/log/drvs/../`));
    await s.close();
    const c = await openStore(path.join(d, 'chroot'));
    expect(c.storeDir).toBe('/nix/store');
    expect(c.realStoreDir).toBe(path.join(d, 'chroot/nix/store'));
    await c.close();
  });
});

describe('build logs in both forms Nix 2.8 reads', () => {
  it('reads .bz2 logs (as Nix writes them) and plain ones, preferring plain', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const drv = '/nix/store/6p8g830rclys4xvhfdamj69ymz9avfin-hello.drv';
    const text = Array.from({ length: 3000 }, (_, i) => `build line ${i}\n`).join('');
    const file = s.logPath(drv);
    expect(file).toBe(path.join(root, 'nix/var/log/nix/drvs/6p/8g830rclys4xvhfdamj69ymz9avfin-hello.drv'));
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file + '.bz2', execFileSync('bzip2', ['-c'], { input: text }));
    expect(await s.readBuildLog(drv)).toBe(text);
    s.compressBuildLog = false;
    await s.addBuildLog(drv, 'plain wins\n');
    expect(await s.readBuildLog(drv)).toBe('plain wins\n');
    await s.close();
  });

  it('writes .bz2 logs by default (compress-build-log), which bzip2 reads; plain ones with compressBuildLog false', async () => {
    const root = tmp();
    const s = await LocalStore.open({ root });
    const drv = '/nix/store/6p8g830rclys4xvhfdamj69ymz9avfin-hello.drv';
    const text = Array.from({ length: 30000 }, (_, i) => `build line ${i} \x1b[1mbold\x1b[0m ${'x'.repeat(i % 300)}\n`).join('');
    await s.addBuildLog(drv, text);
    const file = s.logPath(drv);
    expect(existsSync(file)).toBe(false);
    expect(execFileSync('bzip2', ['-dc', file + '.bz2'], { maxBuffer: 1 << 28 }).toString()).toBe(text);
    expect(await s.readBuildLog(drv)).toBe(text);
    await s.close();
    const p = await LocalStore.open({ root, compressBuildLog: false });
    await p.addBuildLog(drv, 'plain\n');
    expect(readFileSync(file, 'utf8')).toBe('plain\n');
    await p.close();
  });

  it('the bzip2 decoder matches bzip2(1) on varied data and rejects corruption', () => {
    const inputs = [
      Buffer.alloc(0),
      Buffer.from('a'),
      Buffer.alloc(100_000, 0x61),
      Buffer.from('abcd'.repeat(20_000) + 'xyz'),
      Buffer.from(Array.from({ length: 60_000 }, (_, i) => (i * 7919) % 251)),
    ];
    for (const input of inputs) {
      for (const level of ['-1', '-9']) {
        const z = execFileSync('bzip2', ['-c', level], { input });
        expect(Buffer.from(decompressBzip2(z)).equals(input)).toBe(true);
      }
    }
    const two = Buffer.concat([execFileSync('bzip2', ['-c'], { input: 'ab' }), execFileSync('bzip2', ['-c'], { input: 'cd' })]);
    expect(Buffer.from(decompressBzip2(two)).toString()).toBe('abcd');
    const z = Buffer.from(execFileSync('bzip2', ['-c'], { input: 'hello hello hello' }));
    z[z.length - 8] ^= 0xff;
    expect(() => decompressBzip2(z)).toThrow(expect.objectContaining({ code: 'bad-bzip2' }));
    expect(() => decompressBzip2(Buffer.from('not bzip2'))).toThrow(expect.objectContaining({ code: 'bad-bzip2' }));
    expect(() => decompressBzip2(z.subarray(0, 20))).toThrow(expect.objectContaining({ code: 'bad-bzip2' }));
  });
});
