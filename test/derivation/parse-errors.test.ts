/** Hostile and malformed .drv text: typed BadDerivationError, never a crash or a hang (fast-check). */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BadDerivationError } from '../../src/derivation/errors.js';
import { parseDerivation, printDerivation, type Derivation } from '../../src/derivation/derivation.js';
import { Hash } from '../../src/store/hash.js';
import { goldenDrvs } from './helpers.js';

const P = '/nix/store/00000000000000000000000000000000-x';
const ok = `Derive([("out","${P}","","")],[("/nix/store/11111111111111111111111111111111-d.drv",["out"])],["${P}"],"x86_64-linux","/bin/sh",["-c","x"],[("a","b")])`;

function bad(text: string): BadDerivationError {
  try {
    parseDerivation(text, 'test');
  } catch (e) {
    expect(e).toBeInstanceOf(BadDerivationError);
    return e as BadDerivationError;
  }
  throw new Error(`parsed: ${text}`);
}

describe('parseDerivation rejects malformed input with BadDerivationError', () => {
  it('accepts the well-formed reference text', () => {
    expect(printDerivation(parseDerivation(ok, 'test'))).toBe(ok);
  });

  it('reads unsorted and repeated input lists as the sets Nix reads them into; sorted ones as they are', () => {
    const Q = '/nix/store/22222222222222222222222222222222-y';
    const D = '/nix/store/11111111111111111111111111111111-d.drv';
    const text = ok.replace(`["${P}"],"x86`, `["${Q}","${P}","${Q}"],"x86`).replace(`("${D}",["out"])`, `("${D}",["out","dev","out","bin"])`);
    const drv = parseDerivation(text, 'test');
    expect(drv.inputSrcs).toEqual([P, Q]);
    expect(drv.inputDrvs.get(D)).toEqual(['bin', 'dev', 'out']);
    const sorted = parseDerivation(ok.replace(`["${P}"],"x86`, `["${P}","${Q}"],"x86`), 'test');
    expect(sorted.inputSrcs).toEqual([P, Q]);
    expect(parseDerivation(ok.replace(`["${P}"],"x86`, `["${P}","${P}"],"x86`), 'test').inputSrcs).toEqual([P]);
    // Code point order (Nix's std::string), not UTF-16 order: U+FB01 sorts before U+1F600.
    const wide = parseDerivation(ok.replace(`("${D}",["out"])`, `("${D}",["\u{1F600}","\uFB01"])`), 'test');
    expect(wide.inputDrvs.get(D)).toEqual(['\uFB01', '\u{1F600}']);
  });

  const cases: Array<[string, string, RegExp]> = [
    ['empty', '', /expected 'Derive\(\['/],
    ['not a derivation', 'hello', /expected 'Derive/],
    ['truncated', ok.slice(0, 40), /unterminated string|expected/],
    ['trailing data', ok + '\n', /trailing data/],
    ['unterminated string', 'Derive([("out', /unterminated string/],
    ['backslash at the end', 'Derive([("out\\', /unterminated string/],
    ['missing comma', ok.replace('"x86_64-linux",', '"x86_64-linux"'), /expected ','/],
    ['bad output path', ok.replace(`("out","${P}"`, '("out","/tmp/x"'), /invalid path/],
    ['bad input drv path', ok.replace('11111111111111111111111111111111-d.drv', 'eeee-d.drv'), /input derivation/],
    ['bad input source', ok.replace(`["${P}"],"x86`, '["relative"],"x86'), /input source/],
    ['unknown hash algorithm', ok.replace(`"${P}","",""`, `"${P}","sha3","00"`), /unknown hash algorithm 'sha3'/],
    ['bad fixed hash', ok.replace(`"${P}","",""`, `"${P}","r:sha256","xyz"`), /invalid hash/],
    ['SRI hash where base16 belongs', ok.replace(`"${P}","",""`, `"${P}","sha256","sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="`), /not a bare hash/],
    ['hash without algorithm', ok.replace(`"${P}","",""`, `"${P}","","abcd"`), /hash but no hash algorithm/],
    ['floating output with a path', ok.replace(`"${P}","",""`, `"${P}","r:sha256",""`), /must not have a path/],
    ['impure output with a path', ok.replace(`"${P}","",""`, `"${P}","r:sha256","impure"`), /must not have a path/],
    ['duplicate output', ok.replace(`("out","${P}","","")`, `("out","${P}","",""),("out","${P}","","")`), /duplicate output 'out'/],
    ['duplicate env', ok.replace('("a","b")', '("a","b"),("a","c")'), /duplicate environment variable 'a'/],
    ['non-string list element', ok.replace('["-c","x"]', '["-c",x]'), /expected '"'/],
  ];
  it.each(cases)('%s', (_what, text, msg) => {
    const e = bad(text);
    expect(e.code).toBe('bad-derivation');
    expect(e.message).toMatch(msg);
    expect(e.message).toContain("derivation 'test' is malformed");
  });

  it('fuzz: random text never parses into a crash', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (s) => {
        try {
          parseDerivation(s, 'fuzz');
        } catch (e) {
          if (!(e instanceof BadDerivationError)) throw e;
        }
      }),
      { numRuns: 1000 },
    );
  });

  const golden = [...goldenDrvs.values()];
  it('fuzz: mutations of real .drv files give a derivation or a BadDerivationError', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...golden),
        fc.nat(),
        fc.nat({ max: 8 }),
        fc.string({ maxLength: 6, unit: fc.constantFrom('"', '\\', ',', '(', ')', '[', ']', 'a', '/', ':', 'r') }),
        (text, at, del, ins) => {
          const i = at % (text.length + 1);
          const mutated = text.slice(0, i) + ins + text.slice(i + del);
          let d: Derivation;
          try {
            d = parseDerivation(mutated, 'fuzz');
          } catch (e) {
            if (!(e instanceof BadDerivationError)) throw e;
            return;
          }
          // Whatever parses must print and re-parse to the same thing.
          const again = printDerivation(parseDerivation(printDerivation(d), 'fuzz'));
          expect(again).toBe(printDerivation(d));
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('fuzz: print → parse round-trips arbitrary strings in every field', () => {
    const str = fc.string({
      maxLength: 20,
      unit: fc.oneof(fc.constantFrom('"', '\\', '\n', '\r', '\t', '\x07', 'é', '🎉'), fc.string({ minLength: 1, maxLength: 1, unit: 'binary' })),
    });
    fc.assert(
      fc.property(fc.array(str, { maxLength: 5 }), fc.dictionary(str, str, { maxKeys: 5 }), str, str, (args, env, platform, builder) => {
        const drv: Derivation = {
          name: 'rt',
          outputs: new Map([['out', { type: 'fixed', method: 'recursive', hash: Hash.of('sha256', 'x'), path: P }]]),
          inputDrvs: new Map(),
          inputSrcs: [],
          platform,
          builder,
          args,
          env: new Map(Object.entries(env)),
        };
        const text = printDerivation(drv);
        const back = parseDerivation(text, 'rt');
        expect(back.args).toEqual(args);
        expect(back.platform).toBe(platform);
        expect(back.builder).toBe(builder);
        expect(Object.fromEntries(back.env)).toEqual(env);
        expect(printDerivation(back)).toBe(text);
      }),
      { numRuns: 1000 },
    );
  });

  it('parses a huge string quickly (linear, no catastrophic backtracking)', () => {
    const big = 'x\\"'.repeat(200_000);
    const text = ok.replace('("a","b")', `("a","${big}")`);
    const t0 = performance.now();
    expect(parseDerivation(text, 'big').env.get('a')!.length).toBe(400_000);
    expect(performance.now() - t0).toBeLessThan(2000);
  });
});
