/**
 * NAR serialisation, hashing and restore: goldens from real Nix 2.8 (`nix-store --dump`, `nix-hash`),
 * round trips, live comparisons with `nix-store --dump/--restore`, and hostile archives.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BadNarError, StoreError } from '../../src/store/errors.js';
import { Hash } from '../../src/store/hash.js';
import {
  collect,
  dumpPath,
  dumpPathTo,
  hashNar,
  hashPath,
  narOfRegularFile,
  narString,
  parseNar,
  regularFileContentsOfNar,
  resolvedPath,
  restorePath,
  streamOf,
  teeHash,
  validatingSink,
} from '../../src/store/nar.js';
import { TREES, buildTree, type TreeNode } from '../fixtures/store/trees.js';
import { nixEnv, nixOk, tempDir } from '../helpers/nix.js';

const FIX = path.join(import.meta.dirname, '..', 'fixtures', 'store');
const golden = JSON.parse(readFileSync(path.join(FIX, 'nar.json'), 'utf8')) as {
  tree: string;
  size: number;
  sha256: string;
  md5: string;
  sha1: string;
  sha512: string;
  file?: string;
}[];

/** Feed a buffer in chunks of the given sizes (cycled). */
async function* chunked(b: Buffer, sizes: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  for (let k = 0; at < b.length; k++) {
    const n = Math.max(1, sizes[k % sizes.length]!);
    yield b.subarray(at, at + n);
    at += n;
  }
}

/** Tree listing: relative path → kind, mode bits that matter, contents or target. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) out[rel] = `link ${readlinkSync(p)}`;
    else if (st.isFile()) out[rel] = `file ${st.mode & 0o100 ? 'x' : '-'} ${Hash.of('sha256', readFileSync(p)).base32}`;
    else {
      out[rel] = 'dir';
      for (const n of readdirSync(p)) walk(path.join(p, n), rel ? `${rel}/${n}` : n);
    }
  };
  walk(root, '');
  return out;
}

describe('NAR goldens from nix-store --dump and nix-hash', () => {
  const dir = tempDir();
  for (const g of golden) {
    it(`${g.tree}: bytes, size and hashes in all algorithms`, async () => {
      const p = path.join(dir, g.tree);
      if (!existsSync(p)) buildTree(p, TREES[g.tree]!.root);
      const nar = await collect(dumpPath(p));
      expect(nar.length).toBe(g.size);
      if (g.file) expect(nar.equals(readFileSync(path.join(FIX, g.file)))).toBe(true);
      const h = await hashPath(p);
      expect(h.size).toBe(g.size);
      expect(h.hash.base32).toBe(g.sha256);
      expect((await hashNar(streamOf(nar))).hash.base32).toBe(g.sha256);
      expect((await hashPath(p, 'md5')).hash.base16).toBe(g.md5);
      expect((await hashPath(p, 'sha1')).hash.base16).toBe(g.sha1);
      expect((await hashPath(p, 'sha512')).hash.base16).toBe(g.sha512);
      const viaSink: Buffer[] = [];
      await dumpPathTo(p, (c) => {
        viaSink.push(Buffer.from(c));
      });
      expect(Buffer.concat(viaSink).equals(nar)).toBe(true);
    });
  }

  it('covers the cases the goldens are for', () => {
    const s = JSON.stringify(TREES);
    for (const needle of ['"symlink"', '"/etc/passwd"', 'does/not/exist', '..a', '日本語', '"entries":{}', '"mode":493']) expect(s).toContain(needle);
    expect(golden.find((g) => g.tree === 'large')!.size).toBeGreaterThan(7 * (1 << 20));
  });

  it('narOfRegularFile is the NAR of such a file', () => {
    const regular = readFileSync(path.join(FIX, 'nar', 'regular-file.nar'));
    expect(narOfRegularFile('Hello, NAR!\n').equals(regular)).toBe(true);
    expect(narOfRegularFile('#!/bin/sh\necho hi\n', true).equals(readFileSync(path.join(FIX, 'nar', 'executable-file.nar')))).toBe(true);
    expect(narOfRegularFile('').equals(readFileSync(path.join(FIX, 'nar', 'empty-file.nar')))).toBe(true);
  });

  it("regularFileContentsOfNar gives a one-file NAR's contents (Nix's NARs), and nothing for any other NAR", () => {
    const nar = (name: string) => readFileSync(path.join(FIX, 'nar', name));
    expect(Buffer.from(regularFileContentsOfNar(nar('regular-file.nar'))!).toString()).toBe('Hello, NAR!\n');
    expect(Buffer.from(regularFileContentsOfNar(nar('executable-file.nar'))!).toString()).toBe('#!/bin/sh\necho hi\n');
    expect(regularFileContentsOfNar(nar('empty-file.nar'))!.length).toBe(0);
    const nine = narOfRegularFile('123456789');
    expect(Buffer.from(regularFileContentsOfNar(nine)!).toString()).toBe('123456789');
    // Not exactly one regular file: cut short, something after it, a symlink, a directory.
    expect(regularFileContentsOfNar(nine.subarray(0, nine.length - 8))).toBeUndefined();
    expect(regularFileContentsOfNar(Buffer.concat([nine, narString('x')]))).toBeUndefined();
    expect(regularFileContentsOfNar(nar('symlink-root.nar'))).toBeUndefined();
    expect(regularFileContentsOfNar(nar('empty-dir.nar'))).toBeUndefined();
  });

  it('dumps and restores names that are not valid UTF-8 (names are bytes, as in Nix)', async () => {
    const d = tempDir();
    const root = path.join(d, 't');
    mkdirSync(root);
    const latin1 = Buffer.from([0x6c, 0x61, 0x74, 0xe9]); // latin-1 "laté"
    const broken = Buffer.from([0x78, 0xff, 0xfe]);
    writeFileSync(Buffer.concat([Buffer.from(root + '/'), latin1]), 'x');
    mkdirSync(Buffer.concat([Buffer.from(root + '/'), broken]));
    writeFileSync(Buffer.concat([Buffer.from(root + '/'), broken, Buffer.from('/'), latin1]), 'y');
    const nar = await collect(dumpPath(root));
    expect(nar.includes(Buffer.concat([narString(latin1), narString('node')]))).toBe(true);
    const back = path.join(d, 'back');
    await restorePath(back, streamOf(nar));
    expect((await collect(dumpPath(back))).equals(nar)).toBe(true);
    if (nixOk()) expect(spawnSync('nix-store', ['--dump', root], { env: nixEnv() }).stdout.equals(nar)).toBe(true);
  });

  it('stopping a dump early releases the walker', async () => {
    const p = path.join(dir, 'early-stop');
    buildTree(p, TREES['large']!.root);
    let n = 0;
    for await (const chunk of dumpPath(p)) {
      n += chunk.length;
      if (n > 3 << 20) break;
    }
    expect(n).toBeGreaterThan(3 << 20);
  });
});

describe('NAR restore', () => {
  for (const g of golden.filter((x) => x.file)) {
    it(`${g.tree}: restore(dump) is the identity, whatever the chunking`, async () => {
      const nar = readFileSync(path.join(FIX, g.file!));
      for (const sizes of [[nar.length], [1], [7, 13, 1], [8], [4096]]) {
        const parent = tempDir();
        const target = path.join(parent, 'out');
        const r = await restorePath(target, chunked(nar, sizes));
        expect(r.size).toBe(nar.length);
        expect((await collect(dumpPath(target))).equals(nar)).toBe(true);
      }
    });
  }
  /** Every entry: files 0444/0555, directories 0555, mtime 1 (symlinks: mtime 1). */
  function expectCanonical(root: string): void {
    const walk = (p: string) => {
      const st = lstatSync(p);
      expect(st.mtimeMs, p).toBe(1000);
      if (st.isSymbolicLink()) return;
      if (st.isDirectory()) {
        expect(st.mode & 0o7777, p).toBe(0o555);
        for (const n of readdirSync(p)) walk(path.join(p, n));
      } else {
        expect([0o444, 0o555], p).toContain(st.mode & 0o7777);
      }
    };
    walk(root);
  }
  it('canonical restore: same tree and NAR, canonical metadata, also under a restrictive umask', async () => {
    for (const g of golden.filter((x) => x.file)) {
      const nar = readFileSync(path.join(FIX, g.file!));
      for (const [sizes, mask] of [
        [[nar.length], undefined],
        [[7, 13, 1], 0o077],
        [[nar.length], 0o277],
      ] as const) {
        const target = path.join(tempDir(), 'out');
        const old = mask !== undefined ? process.umask(mask) : undefined;
        try {
          expect((await restorePath(target, chunked(nar, [...sizes]), { canonical: true })).size).toBe(nar.length);
          // The same, batched on the restore thread.
          expect((await restorePath(target + '-batch', chunked(nar, [...sizes]), { canonical: true, batch: true })).size).toBe(nar.length);
        } finally {
          if (old !== undefined) process.umask(old);
        }
        expect((await collect(dumpPath(target))).equals(nar), g.tree).toBe(true);
        expectCanonical(target);
        expect((await collect(dumpPath(target + '-batch'))).equals(nar), `${g.tree} (batch)`).toBe(true);
        expectCanonical(target + '-batch');
      }
    }
  });
  it('restores modes and symlinks faithfully', async () => {
    const target = path.join(tempDir(), 'mixed');
    await restorePath(target, streamOf(readFileSync(path.join(FIX, 'nar', 'mixed.nar'))));
    expect(statSync(path.join(target, 'bin', 'hello')).mode & 0o100).toBe(0o100);
    expect(statSync(path.join(target, 'share', 'doc', 'README')).mode & 0o111).toBe(0);
    expect(readlinkSync(path.join(target, 'absolute'))).toBe('/etc/passwd');
    expect(readlinkSync(path.join(target, 'dangling'))).toBe('does/not/exist');
    expect(readdirSync(path.join(target, 'share', 'empty'))).toEqual([]);
  });
  it('restores large trees (files across chunk boundaries)', async () => {
    const src = path.join(tempDir(), 'large');
    buildTree(src, TREES['large']!.root);
    const target = path.join(tempDir(), 'large');
    await restorePath(target, dumpPath(src));
    expect(snapshot(target)).toEqual(snapshot(src));
    expect((await hashPath(target)).hash.base32).toBe(golden.find((g) => g.tree === 'large')!.sha256);
  });
  it('refuses an existing target and leaves it alone', async () => {
    const parent = tempDir();
    const target = path.join(parent, 'exists');
    mkdirSync(target);
    writeFileSync(path.join(target, 'keep'), 'keep');
    const err = await restorePath(target, streamOf(readFileSync(path.join(FIX, 'nar', 'mixed.nar')))).catch((e) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect(err.code).toBe('restore-target-exists');
    expect(readdirSync(target)).toEqual(['keep']);
    const err2 = await restorePath(target, streamOf(readFileSync(path.join(FIX, 'nar', 'mixed.nar'))), { canonical: true, batch: true }).catch((e) => e);
    expect(err2).toBeInstanceOf(StoreError);
    expect(err2.code).toBe('restore-target-exists');
    expect(readdirSync(target)).toEqual(['keep']);
  });
  it('parseNar reports the size and validates without writing', async () => {
    const nar = readFileSync(path.join(FIX, 'nar', 'odd-names.nar'));
    expect((await parseNar(streamOf(nar), validatingSink)).size).toBe(nar.length);
  });
  it('teeHash passes bytes through and hashes them', async () => {
    const nar = readFileSync(path.join(FIX, 'nar', 'mixed.nar'));
    const t = teeHash(chunked(nar, [100]));
    expect(() => t.result()).toThrow();
    expect((await collect(t.stream)).equals(nar)).toBe(true);
    expect(t.result().hash.base32).toBe(golden.find((g) => g.tree === 'mixed')!.sha256);
    expect(t.result().size).toBe(nar.length);
  });
});

// ------------------------------------------------------------------ hostile archives
const S = (x: string | Buffer) => narString(x);
const cat = (...parts: (string | Buffer)[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? S(p) : p)));
const MAGIC = S('nix-archive-1');
const file = (contents: string | Buffer, exe = false) => cat('(', 'type', 'regular', ...(exe ? ['executable', ''] : []), 'contents', S(contents), ')');
const symlink = (target: string) => cat('(', 'type', 'symlink', 'target', target, ')');
const entry = (name: string | Buffer, node: Buffer) => cat('entry', '(', 'name', S(name), 'node', node, ')');
const directory = (...entries: Buffer[]) => cat('(', 'type', 'directory', ...entries, ')');
const nar = (node: Buffer) => Buffer.concat([MAGIC, node]);
function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

const VALID = nar(directory(entry('a', file('hello')), entry('b', symlink('a')), entry('c', directory(entry('d', file('x', true))))));

const hostile: Record<string, Buffer> = {
  'entries out of order': nar(directory(entry('b', file('1')), entry('a', file('2')))),
  'duplicate entries': nar(directory(entry('a', file('1')), entry('a', file('2')))),
  'symlink then file with the same name': nar(directory(entry('a', symlink('/tmp')), entry('a', directory(entry('x', file('pwned')))))),
  'symlink to parent then entry below it': nar(directory(entry('a', symlink('..')), entry('a', file('x')))),
  'name with a slash': nar(directory(entry('a/b', file('1')))),
  'name ..': nar(directory(entry('..', file('1')))),
  'name .': nar(directory(entry('.', directory()))),
  'name ../escape': nar(directory(entry('../escape', file('1')))),
  'name with NUL': nar(directory(entry(Buffer.from('a\0b'), file('1')))),
  'empty name': nar(directory(entry('', file('1')))),
  'bad magic': Buffer.concat([S('nix-archive-2'), file('x')]),
  'no magic': file('x'),
  'empty input': Buffer.alloc(0),
  'gzip data': Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]),
  'trailing data': Buffer.concat([VALID, S('(')]),
  'trailing zero bytes': Buffer.concat([VALID, Buffer.alloc(8)]),
  'non-zero padding in a token': Buffer.concat([MAGIC, u64(1n), Buffer.from('(\x01\0\0\0\0\0\0'), cat('type', 'regular', 'contents', S('x'), ')')]),
  'non-zero padding after contents': Buffer.concat([MAGIC, cat('(', 'type', 'regular', 'contents'), u64(3n), Buffer.from('abc\0\0\0\0\x07'), S(')')]),
  'unknown node type': nar(cat('(', 'type', 'fifo', ')')),
  'executable marker with a value': nar(cat('(', 'type', 'regular', 'executable', 'yes', 'contents', S('x'), ')')),
  'regular file without contents': nar(cat('(', 'type', 'regular', ')')),
  'symlink without target': nar(cat('(', 'type', 'symlink', ')')),
  'empty symlink target': nar(symlink('')),
  'symlink target with NUL': nar(cat('(', 'type', 'symlink', 'target', S(Buffer.from('a\0b')), ')')),
  'entry without node': nar(cat('(', 'type', 'directory', 'entry', '(', 'name', 'a', ')', ')')),
  'missing closing paren': nar(cat('(', 'type', 'directory')),
  'huge length field': Buffer.concat([MAGIC, cat('(', 'type', 'regular', 'contents'), u64(2n ** 63n)]),
  'huge string length': Buffer.concat([MAGIC, u64(2n ** 40n)]),
  'contents longer than the stream': Buffer.concat([MAGIC, cat('(', 'type', 'regular', 'contents'), u64(1000n), Buffer.from('short')]),
  'name longer than 255 bytes': nar(directory(entry('n'.repeat(256), file('1')))),
  'deeply nested': nar(
    (() => {
      let n = file('x');
      for (let i = 0; i < 3000; i++) n = directory(entry('d', n));
      return n;
    })(),
  ),
  'too long for the file system': nar(
    (() => {
      let n = file('x');
      for (let i = 0; i < 40; i++) n = directory(entry('d'.repeat(200), n));
      return n;
    })(),
  ),
  'symlink target too long': nar(symlink('x'.repeat(5000))),
  'garbage token where entry expected': nar(cat('(', 'type', 'directory', 'entri', ')')),
};

/** Restore into parent/target and check nothing else ever appears in parent (nor remains in target). */
async function restoreHostile(data: Buffer, sizes: number[] = [data.length || 1], canonical = false, batch = false) {
  const parent = tempDir();
  const sentinel = path.join(parent, 'sentinel');
  writeFileSync(sentinel, 'untouched');
  const err = await restorePath(path.join(parent, 'target'), chunked(data, sizes), { canonical, batch }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(readdirSync(parent)).toEqual(['sentinel']);
  expect(readFileSync(sentinel, 'utf8')).toBe('untouched');
  return err;
}

describe('hostile NARs', () => {
  it('the valid reference archive restores', async () => {
    const t = path.join(tempDir(), 't');
    await restorePath(t, streamOf(VALID));
    expect(snapshot(t)).toMatchObject({ a: expect.stringMatching(/^file - /), b: 'link a', 'c/d': expect.stringMatching(/^file x /) });
  });
  for (const [name, data] of Object.entries(hostile)) {
    it(`${name}: BadNarError, nothing written outside the target, no partial target left`, async () => {
      // Only the file system can tell that a path is too long; the format itself is fine.
      if (name !== 'too long for the file system') await expect(parseNar(streamOf(data), validatingSink)).rejects.toBeInstanceOf(BadNarError);
      for (const sizes of name === 'deeply nested' ? [[data.length]] : [[data.length || 1], [5, 3]]) {
        const err = await restoreHostile(data, sizes);
        expect(err, name).toBeInstanceOf(BadNarError);
      }
      // the canonical restore (read-only directories) also cleans up after itself, streamed or batched
      expect(await restoreHostile(data, [data.length || 1], true), name).toBeInstanceOf(BadNarError);
      expect(await restoreHostile(data, [data.length || 1], true, true), `${name} (batch)`).toBeInstanceOf(BadNarError);
    });
  }
  it('every truncation of a valid NAR is a BadNarError', async () => {
    for (let n = 0; n < VALID.length; n++) {
      await expect(parseNar(streamOf(VALID.subarray(0, n)), validatingSink), `prefix ${n}`).rejects.toBeInstanceOf(BadNarError);
    }
    for (const n of [0, 9, 60, VALID.length - 1]) expect(await restoreHostile(VALID.subarray(0, n), [3])).toBeInstanceOf(BadNarError);
  });
  it('every single-byte corruption of a valid NAR is rejected or still restores inside the target', async () => {
    const parent = tempDir();
    const values = [0x00, 0x2f, 0x2e, 0xff, 0x01];
    for (let i = 0; i < VALID.length; i++) {
      const v = VALID[i] === values[i % values.length] ? 0x80 : values[i % values.length]!;
      const bad = Buffer.from(VALID);
      bad[i] = v;
      const target = path.join(parent, `t${i}`);
      const err = await restorePath(target, streamOf(bad)).then(
        () => undefined,
        (e: unknown) => e,
      );
      if (err) expect(err, `byte ${i} = ${v}`).toBeInstanceOf(BadNarError);
      expect(existsSync(target)).toBe(!err);
    }
    expect(readdirSync(parent).every((n) => /^t\d+$/.test(n))).toBe(true);
  });
  it('a symlink in the NAR is never followed when restoring', async () => {
    const parent = tempDir();
    const outside = path.join(parent, 'outside');
    mkdirSync(outside);
    // Symlink 'a' → outside, then a later entry trying to write through 'a' must be refused.
    const data = nar(directory(entry('a', symlink(outside)), entry('a', directory(entry('evil', file('x'))))));
    await expect(restorePath(path.join(parent, 'target'), streamOf(data))).rejects.toBeInstanceOf(BadNarError);
    expect(readdirSync(outside)).toEqual([]);
    expect(readdirSync(parent)).toEqual(['outside']);
  });
});

// ------------------------------------------------------------------ live Nix
const treeArb: fc.Arbitrary<TreeNode> = fc.letrec<{ node: TreeNode }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ type: fc.constant('file' as const), contents: fc.string({ maxLength: 40 }), mode: fc.constantFrom(0o644, 0o755, 0o600, 0o700) }),
    fc.record({ type: fc.constant('symlink' as const), target: fc.stringMatching(/^[a-z./]{1,12}$/) }),
    fc.record({
      type: fc.constant('dir' as const),
      entries: fc.dictionary(
        fc.stringMatching(/^[A-Za-z0-9 ._ä-]{1,8}$/).filter((n) => n !== '.' && n !== '..'),
        tie('node'),
        { maxKeys: 4 },
      ),
    }),
  ),
})).node;

describe.skipIf(!nixOk())('NAR against live nix-store', () => {
  it('random trees: our dump equals nix-store --dump, and nix-store --restore accepts it', async () => {
    const samples = fc.sample(treeArb, { numRuns: 8, seed: 1234 });
    for (const [i, t] of samples.entries()) {
      const d = tempDir();
      const p = path.join(d, `t${i}`);
      buildTree(p, t);
      const ours = await collect(dumpPath(p));
      const theirs = spawnSync('nix-store', ['--dump', p], { env: nixEnv(), maxBuffer: 1 << 28 }).stdout;
      expect(ours.equals(theirs), JSON.stringify(t)).toBe(true);
      const restored = path.join(d, 'by-nix');
      const r = spawnSync('nix-store', ['--restore', restored], { env: nixEnv(), input: ours });
      expect(r.status, r.stderr?.toString()).toBe(0);
      const mine = path.join(d, 'by-us');
      await restorePath(mine, streamOf(theirs));
      expect(snapshot(mine)).toEqual(snapshot(restored));
    }
  });
  it('real Nix rejects the hostile archives we reject (spot check)', () => {
    for (const name of [
      'duplicate entries',
      'name with a slash',
      'name ..',
      'name .',
      'bad magic',
      'non-zero padding after contents',
      'non-zero padding in a token',
    ]) {
      const d = tempDir();
      const r = spawnSync('nix-store', ['--restore', path.join(d, 'x')], { env: nixEnv(), input: hostile[name] });
      expect(r.status, name).not.toBe(0);
    }
  });
  it('where we are deliberately stricter than Nix 2.8 (documented in docs/formats.md)', () => {
    // Nix 2.8 restores unsorted directories and ignores trailing bytes; such a NAR's hash differs from
    // the hash of the tree it restores to, so we refuse it.
    for (const name of ['entries out of order', 'trailing data']) {
      const d = tempDir();
      const r = spawnSync('nix-store', ['--restore', path.join(d, 'x')], { env: nixEnv(), input: hostile[name] });
      expect(r.status, name).toBe(0);
    }
  });
});

it('FIFOs and sockets cannot be archived (BadNarError naming the file), as in Nix', async () => {
  const d = tempDir();
  const root = path.join(d, 'r');
  mkdirSync(root);
  writeFileSync(path.join(root, 'a'), 'x');
  expect(spawnSync('mkfifo', [path.join(root, 'fifo')]).status).toBe(0);
  const err = await collect(dumpPath(root)).catch((e) => e);
  expect(err).toBeInstanceOf(BadNarError);
  expect(err.message).toContain(path.join(root, 'fifo'));
  await expect(hashPath(root)).rejects.toBeInstanceOf(BadNarError);
});

it('symlinks on disk are archived, not followed', async () => {
  const d = tempDir();
  const root = path.join(d, 'r');
  mkdirSync(root);
  symlinkSync('/etc', path.join(root, 'etc'));
  const n = await collect(dumpPath(root));
  expect(n.includes(S('/etc'))).toBe(true);
  expect(n.includes(S('passwd'))).toBe(false);
});

describe('resolvedPath', () => {
  it('is path.resolve for absolute, relative and unnormalised paths', () => {
    const cases = [
      '/',
      '/a',
      '/a/b-1.drv',
      '/a/',
      '/a//b',
      '/a/./b',
      '/a/../b',
      '/a/.',
      '/a/..',
      '//a',
      'a',
      'a/b',
      '.',
      '..',
      '',
      '/a/.b',
      '/a/..b',
      '/a/b.',
      '/.a',
    ];
    for (const p of cases) expect(resolvedPath(p), p).toBe(path.resolve(p));
  });
});
