import fc from 'fast-check';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Hash } from '../../src/store/hash.js';
import {
  BadNarInfoError,
  countValidSignatures,
  fingerprintOf,
  fingerprintPath,
  parseCacheInfo,
  parseNarInfo,
  printNarInfo,
  signPathInfo,
} from '../../src/substituter/narinfo.js';
import {
  BadKeyError,
  checkSignature,
  generateKeyPair,
  parsePublicKey,
  parseSecretKey,
  publicKeyMap,
  publicKeyOf,
  signDetached,
  verifyDetached,
} from '../../src/substituter/signatures.js';
import { cacheDir, COMPRESSIONS_WRITTEN_BY_NIX, narInfos, OTHER_PUBLIC_KEY, PATH_INFO, PUBLIC_KEY, ROOTS, SECRET_KEY } from './fixtures.js';

describe('narinfo goldens from real Nix 2.8', () => {
  for (const c of COMPRESSIONS_WRITTEN_BY_NIX) {
    it(`parses and prints every narinfo of the ${c} cache byte for byte`, () => {
      const dir = cacheDir(c);
      const files = readdirSync(dir).filter((f) => f.endsWith('.narinfo'));
      expect(files.length).toBe(PATH_INFO.size);
      for (const f of files) {
        const text = readFileSync(path.join(dir, f), 'utf8');
        const ni = parseNarInfo(text);
        expect(printNarInfo(ni)).toBe(text);
        const nix = PATH_INFO.get(ni.storePath)!;
        expect(nix).toBeDefined();
        expect(f).toBe(`${ni.storePath.slice(11, 43)}.narinfo`);
        expect(ni.narHash.equals(Hash.parse(nix.narHash))).toBe(true);
        expect(ni.narSize).toBe(nix.narSize);
        expect(ni.references).toEqual([...nix.references].sort());
        expect(ni.deriver).toBe(nix.deriver);
        expect(ni.ca).toBe(nix.ca);
        expect(ni.compression).toBe(c);
        expect(ni.url.startsWith('nar/')).toBe(true);
        expect(ni.sigs).toHaveLength(1);
      }
    });
  }

  it('reproduces the signatures of real Nix exactly and verifies them', () => {
    const sk = parseSecretKey(SECRET_KEY);
    const keys = publicKeyMap([PUBLIC_KEY]);
    for (const ni of narInfos('xz')) {
      expect(signPathInfo(ni, sk)).toBe(ni.sigs[0]);
      expect(verifyDetached(fingerprintOf(ni), ni.sigs[0]!, keys)).toBe(true);
      expect(countValidSignatures(ni, keys)).toEqual({ valid: 1, invalid: 0, unknown: 0 });
      // the same signature on a changed fingerprint is invalid
      expect(countValidSignatures({ ...ni, narSize: ni.narSize + 1 }, keys)).toEqual({ valid: 0, invalid: 1, unknown: 0 });
      expect(countValidSignatures(ni, publicKeyMap([OTHER_PUBLIC_KEY]))).toEqual({ valid: 0, invalid: 0, unknown: 1 });
    }
  });

  it('builds the fingerprint as Nix: 1;path;sha256:base32;size;comma-joined full refs', () => {
    const ni = narInfos('xz').find((n) => n.storePath.endsWith('-top'))!;
    const fp = fingerprintOf(ni);
    expect(fp).toBe(`1;${ni.storePath};${ni.narHash.toString('base32', true)};${ni.narSize};${ni.references.join(',')}`);
    expect(
      fp
        .split(';')[4]!
        .split(',')
        .every((r) => r.startsWith('/nix/store/')),
    ).toBe(true);
    expect(() => fingerprintPath(ni.storePath, Hash.of('sha1', 'x'), 1, [])).toThrow(BadNarInfoError);
  });

  it('derives the public key from the secret key and generates working key pairs', () => {
    expect(publicKeyOf(SECRET_KEY)).toBe(PUBLIC_KEY);
    const { secretKey, publicKey } = generateKeyPair('my-cache-1');
    expect(secretKey.startsWith('my-cache-1:')).toBe(true);
    expect(Buffer.from(secretKey.split(':')[1]!, 'base64')).toHaveLength(64);
    expect(publicKeyOf(secretKey)).toBe(publicKey);
    const sig = signDetached('hello', secretKey);
    expect(checkSignature('hello', sig, publicKeyMap([publicKey]))).toBe('valid');
    expect(checkSignature('hellp', sig, publicKeyMap([publicKey]))).toBe('invalid');
    expect(checkSignature('hello', 'nocolon', publicKeyMap([publicKey]))).toBe('malformed');
    expect(checkSignature('hello', 'my-cache-1:AAAA', publicKeyMap([publicKey]))).toBe('malformed');
  });

  it('refuses malformed keys with BadKeyError', () => {
    for (const bad of ['', 'nocolon', ':AAAA', 'name:!!!!', `name:${Buffer.alloc(31).toString('base64')}`, `name:${Buffer.alloc(63).toString('base64')}`]) {
      expect(() => parsePublicKey(bad)).toThrow(BadKeyError);
      expect(() => parseSecretKey(bad)).toThrow(BadKeyError);
    }
    expect(() => parsePublicKey(SECRET_KEY)).toThrow(
      expect.objectContaining({ shortMessage: 'public key is not valid', hint: expect.stringMatching(/expected 32/) }),
    );
    expect(() => generateKeyPair('a:b')).toThrow(BadKeyError);
  });
});

describe('narinfo parsing of bad input', () => {
  const good = readFileSync(path.join(cacheDir('xz'), `${ROOTS.top.slice(11, 43)}.narinfo`), 'utf8');
  const replace = (field: string, value: string | null) =>
    good
      .split('\n')
      .map((l) => (l.startsWith(field + ':') ? (value === null ? null : `${field}: ${value}`) : l))
      .filter((l) => l !== null)
      .join('\n');

  const cases: [string, string, RegExp][] = [
    ['no StorePath', replace('StorePath', null), /no StorePath/],
    ['no URL', replace('URL', null), /no URL/],
    ['no NarHash', replace('NarHash', null), /no NarHash/],
    ['no NarSize', replace('NarSize', null), /no NarSize/],
    ['NarSize 0', replace('NarSize', '0'), /NarSize/],
    ['StorePath outside the store', replace('StorePath', '/tmp/x'), /bad StorePath/],
    ['StorePath with bad hash', replace('StorePath', '/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x'), /bad StorePath/],
    ['NarHash garbage', replace('NarHash', 'sha256:zzz'), /bad NarHash/],
    ['NarHash sha1', replace('NarHash', Hash.of('sha1', 'x').toString()), /must be sha256/],
    ['NarSize negative', replace('NarSize', '-5'), /bad NarSize/],
    ['NarSize text', replace('NarSize', '12abc'), /bad NarSize/],
    ['FileSize huge', replace('FileSize', '99999999999999999999'), /bad FileSize/],
    ['FileHash garbage', replace('FileHash', 'md7:abc'), /bad FileHash/],
    ['Reference not a base name', replace('References', '/nix/store/abc'), /bad References/],
    ['Reference with bad name', replace('References', 'gwmiar65z74k22iamfdanqr8mn9r2lwj-a b'), /bad References/],
    ['Deriver garbage', replace('Deriver', '../../etc/passwd'), /bad Deriver/],
    ['Sig without name', replace('Sig', 'AAAA'), /bad Sig/],
    ['CA garbage', good + 'CA: fixed:md9:xyz\n', /bad CA/],
    ['URL escaping the cache', replace('URL', '../../../etc/shadow'), /bad URL/],
    ['Compression with odd characters', replace('Compression', 'xz; rm -rf'), /bad Compression/],
    ['line without colon', good + 'garbage line\n', /is not 'Name: value'/],
    ['duplicate NarSize', good + 'NarSize: 5\n', /appears twice/],
  ];
  for (const [what, text, re] of cases) {
    it(`refuses a narinfo with ${what}`, () => {
      let err: unknown;
      try {
        parseNarInfo(text, { whence: 'https://c/x.narinfo' });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(BadNarInfoError);
      expect((err as BadNarInfoError).code).toBe('bad-narinfo');
      expect((err as Error).message).toMatch(re);
      expect((err as Error).message).toContain('https://c/x.narinfo');
    });
  }

  it('ignores unknown fields, defaults Compression to bzip2 and accepts unknown-deriver', () => {
    const ni = parseNarInfo(replace('Compression', null).replace('Deriver: ', 'X-Extra: 1\nDeriver: ') + 'Unknown: field\n');
    expect(ni.compression).toBe('bzip2');
    const ni2 = parseNarInfo(replace('Deriver', 'unknown-deriver'));
    expect(ni2.deriver).toBeUndefined();
  });

  it('never throws anything but BadNarInfoError on arbitrary input (fuzz)', () => {
    const lines = fc.array(
      fc.oneof(
        fc.constantFrom(...good.split('\n')),
        fc
          .tuple(fc.constantFrom('StorePath', 'URL', 'NarHash', 'NarSize', 'References', 'Sig', 'CA', 'FileSize', 'Deriver', 'Compression'), fc.string())
          .map(([k, v]) => `${k}: ${v}`),
        fc.string(),
      ),
      { maxLength: 14 },
    );
    fc.assert(
      fc.property(lines, (ls) => {
        try {
          const ni = parseNarInfo(ls.join('\n'));
          expect(parseNarInfo(printNarInfo(ni))).toEqual(ni);
        } catch (e) {
          if (!(e instanceof BadNarInfoError)) throw e;
        }
      }),
      { numRuns: 1500 },
    );
  });

  it('parses nix-cache-info', () => {
    expect(parseCacheInfo('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n')).toEqual({ storeDir: '/nix/store', wantMassQuery: true, priority: 40 });
    expect(parseCacheInfo(readFileSync(path.join(cacheDir('xz'), 'nix-cache-info'), 'utf8'))).toEqual({
      storeDir: '/nix/store',
      wantMassQuery: undefined,
      priority: undefined,
    });
    expect(() => parseCacheInfo('Priority: high')).toThrow(BadNarInfoError);
  });
});

describe('blank lines, as Nix 2.8 reads them', () => {
  const text = readFileSync(
    path.join(
      cacheDir(COMPRESSIONS_WRITTEN_BY_NIX[0]!),
      readdirSync(cacheDir(COMPRESSIONS_WRITTEN_BY_NIX[0]!)).find((f) => f.endsWith('.narinfo'))!,
    ),
    'utf8',
  );
  it('a blank line at the end is corrupt', () => {
    expect(() => parseNarInfo(`${text}\n`)).toThrow(BadNarInfoError);
  });
  it('after a blank line, the next field is lost (Nix reads its name with the line break): a lost Sig, or a lost NarHash (corrupt)', () => {
    expect(text).toMatch(/^Sig: /m);
    expect(parseNarInfo(text.replace(/^Sig: /m, '\nSig: ')).sigs).toEqual([]);
    expect(parseNarInfo(text).sigs.length).toBeGreaterThan(0);
    expect(() => parseNarInfo(text.replace(/^NarHash: /m, '\nNarHash: '))).toThrow(BadNarInfoError);
  });
});
