/**
 * Hash encodings, store path computation and placeholders against goldens produced by real Nix 2.8
 * (scripts/make-store-goldens.ts), and against live Nix when it is installed.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BadHashError, InvalidStorePathError, RealiseError } from '../../src/store/errors.js';
import {
  Hash,
  HashModulo,
  HashSink,
  compressHash,
  fromBase16,
  fromBase64,
  fromNixBase32,
  isNixBase32,
  nixBase32Length,
  toBase16,
  toBase64,
  toNixBase32,
  type HashAlgorithm,
} from '../../src/store/hash.js';
import {
  checkStorePathName,
  computeTextPath,
  hashPlaceholder,
  isStorePath,
  makeFixedOutputPath,
  makeStorePath,
  makeTextPath,
  makeType,
  outputPathName,
  parseStorePath,
  storePathBase,
  storePathHashPart,
  storePathName,
  toStorePath,
} from '../../src/store/store-path.js';
import { hashPath } from '../../src/store/nar.js';
import { TREES, buildTree } from '../fixtures/store/trees.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';

const FIX = path.join(import.meta.dirname, '..', 'fixtures', 'store');
const hashesGolden = JSON.parse(readFileSync(path.join(FIX, 'hashes.json'), 'utf8')) as {
  hashes: { input: string; algorithm: HashAlgorithm; base16: string; base32: string; base64: string; sri: string }[];
  parse: { input: string; type?: HashAlgorithm; ok: boolean; base16?: string; error?: string }[];
};
const pathsGolden = JSON.parse(readFileSync(path.join(FIX, 'paths.json'), 'utf8')) as {
  names: { name: string; ok: boolean; path?: string }[];
  texts: { name: string; contents: string; references: string[]; path: string; storeDir: string }[];
  placeholders: { output: string; placeholder: string }[];
  fixed: { tree: string; method: 'flat' | 'recursive'; algorithm: HashAlgorithm; hash: string; name: string; path: string; via: string; storeDir: string }[];
};

describe('hash encodings (goldens from nix-hash / nix hash to-*)', () => {
  it('has goldens for all four algorithms', () => {
    expect(new Set(hashesGolden.hashes.map((h) => h.algorithm))).toEqual(new Set(['md5', 'sha1', 'sha256', 'sha512']));
  });
  for (const g of hashesGolden.hashes) {
    const label = `${g.algorithm} of ${Buffer.from(g.input, 'base64').length} bytes`;
    it(`${label}: computes and prints every form`, () => {
      const h = Hash.of(g.algorithm, Buffer.from(g.input, 'base64'));
      expect(h.base16).toBe(g.base16);
      expect(h.base32).toBe(g.base32);
      expect(h.toString('base64', false)).toBe(g.base64);
      expect(h.sri).toBe(g.sri);
      expect(h.toString('base32')).toBe(`${g.algorithm}:${g.base32}`);
      expect(h.toString('base16')).toBe(`${g.algorithm}:${g.base16}`);
      expect(h.toString('sri', false)).toBe(g.sri);
      expect(toNixBase32(h.bytes)).toBe(g.base32);
      expect(toBase64(h.bytes)).toBe(g.base64);
    });
    it(`${label}: parses every form back`, () => {
      for (const s of [`${g.algorithm}:${g.base16}`, `${g.algorithm}:${g.base32}`, `${g.algorithm}:${g.base64}`, g.sri]) {
        expect(Hash.parse(s).base16).toBe(g.base16);
        expect(Hash.parse(s, g.algorithm).base16).toBe(g.base16);
      }
      for (const s of [g.base16, g.base32, g.base64]) expect(Hash.parse(s, g.algorithm).base16).toBe(g.base16);
      expect(Hash.parseSri(g.sri).base16).toBe(g.base16);
      expect(toBase16(fromNixBase32(g.base32))).toBe(g.base16);
      expect(toBase16(fromBase64(g.base64))).toBe(g.base16);
      expect(toBase16(fromBase16(g.base16.toUpperCase()))).toBe(g.base16);
      expect(g.base32.length).toBe(nixBase32Length(g.base16.length / 2));
    });
  }

  it('accepts and rejects exactly the hash strings Nix 2.8 does', () => {
    expect(hashesGolden.parse.length).toBeGreaterThan(100);
    const disagreements: string[] = [];
    for (const c of hashesGolden.parse) {
      let got: string;
      try {
        got = Hash.parse(c.input, c.type).base16;
      } catch (e) {
        expect(e).toBeInstanceOf(BadHashError);
        got = 'error';
      }
      const want = c.ok ? c.base16! : 'error';
      if (got !== want) disagreements.push(`${JSON.stringify(c.input)} (${c.type ?? 'no type'}): nix ${want}, we ${got}`);
    }
    expect(disagreements).toEqual([]);
  });

  it('errors are BadHashError with a useful message', () => {
    expect(() => Hash.parse('0123')).toThrow(/does not include a type/);
    expect(() => Hash.parse('sha256:abc')).toThrow(/wrong length/);
    expect(() => Hash.parse('sha256:e' + 'a'.repeat(51))).toThrow(BadHashError);
    expect(() => Hash.parse('sha3:abc')).toThrow(/unknown hash algorithm 'sha3'/);
    expect(() => new Hash('sha256', new Uint8Array(3))).toThrow(/32 bytes, got 3/);
    expect(() => fromNixBase32('z'.repeat(52), 32)).toThrow(/padding/);
    expect(() => fromNixBase32('abc', 32)).toThrow(/wrong length/);
  });

  it('nix-base32 round trips any bytes and rejects non-alphabet characters', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
        const s = toNixBase32(b);
        expect(s.length).toBe(nixBase32Length(b.length));
        expect(isNixBase32(s)).toBe(true);
        expect(Buffer.from(fromNixBase32(s, b.length))).toEqual(Buffer.from(b));
        expect(Buffer.from(fromBase64(toBase64(b)))).toEqual(Buffer.from(b));
        expect(Buffer.from(fromBase16(toBase16(b)))).toEqual(Buffer.from(b));
      }),
      { numRuns: 300 },
    );
    for (const bad of 'eotuEOTU!-_ ') expect(isNixBase32('abc' + bad)).toBe(false);
  });

  it('equals compares algorithm and bytes', () => {
    const a = Hash.of('sha256', 'x');
    expect(a.equals(Hash.parse(a.sri))).toBe(true);
    expect(a.equals(Hash.of('sha256', 'y'))).toBe(false);
    expect(Hash.of('sha1', 'x').equals(Hash.of('md5', 'x'))).toBe(false);
  });

  it('HashSink counts bytes and matches one-shot hashing', () => {
    const s = new HashSink('sha512');
    s.update(Buffer.from('hel'));
    s.update(Buffer.from('lo'));
    const r = s.finish();
    expect(r.size).toBe(5);
    expect(r.hash.sri).toBe(hashesGolden.hashes.find((h) => h.algorithm === 'sha512' && Buffer.from(h.input, 'base64').toString() === 'hello')!.sri);
  });

  it('compressHash XOR-folds', () => {
    expect([...compressHash(Uint8Array.from([1, 2, 3, 4, 5]), 2)]).toEqual([1 ^ 3 ^ 5, 2 ^ 4]);
  });
});

describe('store path names and parsing (goldens from builtins.toFile)', () => {
  it('accepts and rejects the same names as Nix 2.8', () => {
    for (const v of pathsGolden.names) {
      if (v.ok) {
        expect(checkStorePathName(v.name)).toBe(v.name);
        expect(storePathName(v.path!)).toBe(v.name);
        expect(parseStorePath(v.path!).name).toBe(v.name);
        expect(computeTextPath(v.name, 'x')).toBe(v.path);
      } else {
        expect(() => checkStorePathName(v.name), v.name).toThrow(InvalidStorePathError);
      }
    }
  });

  it('parses store paths and rejects non-store paths', () => {
    const p = '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-dep-one';
    expect(parseStorePath(p)).toEqual({ storeDir: '/nix/store', hashPart: 'ars58snfqasl4q7h0z2lj22fnipbf2q1', name: 'dep-one' });
    expect(storePathHashPart(p)).toBe('ars58snfqasl4q7h0z2lj22fnipbf2q1');
    expect(storePathBase(p)).toBe('ars58snfqasl4q7h0z2lj22fnipbf2q1-dep-one');
    expect(toStorePath(p + '/bin/sh')).toBe(p);
    expect(parseStorePath('/x/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-a', '/x/store').storeDir).toBe('/x/store');
    const bad = [
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1',
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-',
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q-x',
      '/nix/store/ers58snfqasl4q7h0z2lj22fnipbf2q1-x',
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1_x',
      '/nix/stor/ars58snfqasl4q7h0z2lj22fnipbf2q1-x',
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-x/y',
      'ars58snfqasl4q7h0z2lj22fnipbf2q1-x',
      '/nix/store/',
      '/nix/store/ARS58SNFQASL4Q7H0Z2LJ22FNIPBF2Q1-x',
      '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-a b',
    ];
    for (const b of bad) {
      expect(() => parseStorePath(b), b).toThrow(InvalidStorePathError);
      expect(isStorePath(b)).toBe(false);
    }
    expect(() => toStorePath('/etc/passwd')).toThrow(/not in the Nix store/);
  });

  it('outputPathName', () => {
    expect(outputPathName('hello-2.12', 'out')).toBe('hello-2.12');
    expect(outputPathName('hello-2.12', 'dev')).toBe('hello-2.12-dev');
  });
});

describe('text paths (goldens from builtins.toFile)', () => {
  it('covers references and another store dir', () => {
    expect(pathsGolden.texts.some((t) => t.references.length === 2)).toBe(true);
    expect(pathsGolden.texts.some((t) => t.storeDir !== '/nix/store')).toBe(true);
  });
  for (const t of pathsGolden.texts) {
    it(`${t.name} in ${t.storeDir} with ${t.references.length} references`, () => {
      expect(computeTextPath(t.name, t.contents, t.references, t.storeDir)).toBe(t.path);
      expect(makeTextPath(t.name, Hash.of('sha256', t.contents), [...t.references].reverse(), t.storeDir)).toBe(t.path);
      if (t.references.length) expect(computeTextPath(t.name, t.contents, [], t.storeDir)).not.toBe(t.path);
    });
  }
});

describe('fixed-output and source paths (goldens from nix-store --add/--add-fixed, builtins.path)', () => {
  it('covers flat and recursive for md5, sha1, sha256 and sha512', () => {
    const kinds = new Set(pathsGolden.fixed.map((f) => `${f.method}:${f.algorithm}`));
    for (const m of ['flat', 'recursive']) for (const a of ['md5', 'sha1', 'sha256', 'sha512']) expect(kinds).toContain(`${m}:${a}`);
  });
  for (const f of pathsGolden.fixed) {
    it(`${f.via} ${f.method} ${f.algorithm} ${f.tree} in ${f.storeDir}`, () => {
      const h = Hash.parse(f.hash, f.algorithm);
      expect(makeFixedOutputPath(f.method, h, f.name, { storeDir: f.storeDir })).toBe(f.path);
    });
  }
  it('our NAR hashes of the trees give the same paths as nix-store --add', async () => {
    const dir = tempDir();
    const checked = new Set<string>();
    for (const f of pathsGolden.fixed.filter((x) => x.method === 'recursive' && TREES[x.tree]!.small)) {
      const p = path.join(dir, f.tree);
      if (!checked.has(f.tree)) {
        buildTree(p, TREES[f.tree]!.root);
        checked.add(f.tree);
      }
      if (f.algorithm !== 'sha256') continue;
      const { hash } = await hashPath(p);
      expect(makeFixedOutputPath('recursive', hash, f.name, { storeDir: f.storeDir })).toBe(f.path);
    }
    expect(checked.size).toBeGreaterThan(5);
  });
  it('only sha256 recursive paths may have references', () => {
    const h = Hash.of('sha256', 'x');
    const ref = '/nix/store/ars58snfqasl4q7h0z2lj22fnipbf2q1-dep-one';
    const withRef = makeFixedOutputPath('recursive', h, 'n', { references: [ref] });
    expect(withRef).toBe(makeStorePath(`source:${ref}`, h, 'n'));
    expect(makeFixedOutputPath('recursive', h, 'n', { references: [ref], hasSelfReference: true })).toBe(makeStorePath(`source:${ref}:self`, h, 'n'));
    expect(() => makeFixedOutputPath('flat', h, 'n', { references: [ref] })).toThrow(InvalidStorePathError);
    expect(() => makeFixedOutputPath('recursive', Hash.of('sha1', 'x'), 'n', { hasSelfReference: true })).toThrow(InvalidStorePathError);
    expect(makeType('text', ['/nix/store/b', '/nix/store/a'])).toBe('text:/nix/store/a:/nix/store/b');
  });
});

describe('placeholders (goldens from builtins.placeholder)', () => {
  for (const p of pathsGolden.placeholders) {
    it(`output '${p.output}'`, () => expect(hashPlaceholder(p.output)).toBe(p.placeholder));
  }
});

describe('HashModulo', () => {
  const mod = 'ars58snfqasl4q7h0z2lj22fnipbf2q1';
  /** Reference model: zero all occurrences in the whole buffer, append |offset per match. */
  function model(data: Buffer, algo: HashAlgorithm = 'sha256') {
    const z = Buffer.from(data);
    const offsets: number[] = [];
    let i = 0;
    while ((i = z.indexOf(mod, i, 'latin1')) >= 0) {
      offsets.push(i);
      z.fill(0, i, i + mod.length);
      i += mod.length;
    }
    const h = new HashSink(algo);
    h.update(z);
    for (const o of offsets) h.update(Buffer.from(`|${o}`));
    return { hash: h.finish().hash.base16, offsets, size: data.length };
  }
  it('zeroes occurrences split across any chunking and records their offsets', () => {
    const piece = fc.oneof(
      fc.constant(mod),
      fc.constant(mod.slice(0, 7)),
      fc.constant(mod.slice(7)),
      fc.string({ unit: fc.constantFrom('a', 'r', 's', '5', '\0', 'x'), maxLength: 40 }),
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 12 }), fc.array(fc.nat(80), { maxLength: 8 }), (pieces, cuts) => {
        const data = Buffer.from(pieces.join(''), 'latin1');
        const original = Buffer.from(data);
        const hm = new HashModulo('sha256', mod);
        let at = 0;
        for (const c of cuts) {
          const end = Math.min(data.length, at + c);
          hm.update(data.subarray(at, end));
          at = end;
        }
        hm.update(data.subarray(at));
        const r = hm.finish();
        const m = model(data);
        expect({ hash: r.hash.base16, offsets: r.offsets, size: r.size }).toEqual(m);
        expect(data).toEqual(original); // the caller's buffers are not modified
      }),
      { numRuns: 400 },
    );
  });
  it('differs from the plain hash exactly when the modulus occurs', () => {
    const plain = Buffer.from('no self reference here');
    const hm = new HashModulo('sha256', mod);
    hm.update(plain);
    expect(hm.finish().hash.equals(Hash.of('sha256', plain))).toBe(true);
    const withRef = Buffer.from(`x/nix/store/${mod}-foo`);
    const hm2 = new HashModulo('sha256', mod);
    hm2.update(withRef);
    const r2 = hm2.finish();
    expect(r2.offsets).toEqual([12]);
    expect(r2.hash.equals(Hash.of('sha256', withRef))).toBe(false);
    // Same bytes with the reference already zeroed hash differently (the |offset suffix), as in Nix.
    const zeroed = Buffer.from(withRef);
    zeroed.fill(0, 12, 44);
    const hm3 = new HashModulo('sha256', mod);
    hm3.update(zeroed);
    expect(hm3.finish().hash.equals(r2.hash)).toBe(false);
  });
  it('is independent of the modulus value (rewriting one hash part into another keeps the hash)', () => {
    const other = 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz';
    fc.assert(
      fc.property(fc.array(fc.string({ unit: fc.constantFrom('@', '-', '/', '\0', 'e', 'E', '\n'), maxLength: 20 }), { maxLength: 10 }), (parts) => {
        const a = new HashModulo('sha256', mod);
        a.update(Buffer.from(parts.join(mod)));
        const b = new HashModulo('sha256', other);
        b.update(Buffer.from(parts.join(other)));
        expect(a.finish().hash.base16).toBe(b.finish().hash.base16);
      }),
      { numRuns: 100 },
    );
  });
});

describe.skipIf(!nixOk())('against live Nix 2.8', () => {
  it('random text files: builtins.toFile paths and hashString agree', () => {
    const samples = fc.sample(fc.tuple(fc.stringMatching(/^[a-zA-Z0-9+_?=][a-zA-Z0-9+\-._?=]{0,20}$/), fc.string({ maxLength: 60 })), {
      numRuns: 12,
      seed: 42,
    });
    const file = path.join(tempDir(), 'cases.json');
    writeFileSync(file, JSON.stringify(samples.map(([name, contents]) => ({ name, contents }))));
    const out = JSON.parse(
      nix('nix-instantiate', [
        '--eval',
        '--json',
        '--strict',
        '-E',
        `map (c: { path = builtins.toFile c.name c.contents; md5 = builtins.hashString "md5" c.contents; sha512 = builtins.hashString "sha512" c.contents; }) (builtins.fromJSON (builtins.readFile ${file}))`,
        '--store',
        tempDir(),
      ]),
    ) as { path: string; md5: string; sha512: string }[];
    samples.forEach(([name, contents], i) => {
      expect(computeTextPath(name, contents)).toBe(out[i]!.path);
      expect(Hash.of('md5', contents).base16).toBe(out[i]!.md5);
      expect(Hash.of('sha512', contents).base16).toBe(out[i]!.sha512);
    });
  });
  it('hash conversions of random hashes agree with nix hash to-*', () => {
    const hs = fc.sample(fc.uint8Array({ minLength: 32, maxLength: 32 }), { numRuns: 8, seed: 7 }).map((b) => new Hash('sha256', b));
    const b32 = nix('nix', ['hash', 'to-base32', ...hs.map((h) => h.sri)]).split('\n');
    const sri = nix('nix', ['hash', 'to-sri', ...hs.map((h) => h.toString('base32'))]).split('\n');
    hs.forEach((h, i) => {
      expect(b32[i]).toBe(h.base32);
      expect(sri[i]).toBe(h.sri);
    });
    expect(runNix('nix', ['hash', 'to-base16', 'sha256:' + 'e'.repeat(52)]).status).not.toBe(0);
  });
});

it('all store-format errors are RealiseErrors with stable codes', () => {
  const e1 = (() => {
    try {
      Hash.parse('x');
    } catch (e) {
      return e;
    }
  })();
  const e2 = (() => {
    try {
      parseStorePath('/x');
    } catch (e) {
      return e;
    }
  })();
  expect(e1).toBeInstanceOf(RealiseError);
  expect((e1 as RealiseError).code).toBe('bad-hash');
  expect((e2 as RealiseError).code).toBe('invalid-store-path');
});
