/**
 * What Nix's `derivation` builtin rejects, derivation() rejects with InvalidDerivationAttrsError;
 * each case is also checked against real nix-instantiate (it must fail too).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix } from '../../src/derivation/context.js';
import { InvalidDerivationAttrsError } from '../../src/derivation/errors.js';
import { addPath, addText, derivation, type DerivationAttrs } from '../../src/derivation/instantiate.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { nixEnv, nixOk, tempDir } from '../helpers/nix.js';
import { FIXTURES } from './helpers.js';

const base = { name: 'x', system: 'x86_64-linux', builder: '/bin/sh' };
const nixBase = 'name = "x"; system = "x86_64-linux"; builder = "/bin/sh";';

// [what, TS attrs, Nix attrs (inside `derivation { ... }`), message]
const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
  ['missing name', { system: 'x86_64-linux', builder: '/bin/sh' }, 'system = "x86_64-linux"; builder = "/bin/sh";', /required attribute 'name' missing/],
  ['missing builder', { name: 'x', system: 'x86_64-linux' }, 'name = "x"; system = "x86_64-linux";', /required attribute 'builder' missing/],
  ['missing system', { name: 'x', builder: '/bin/sh' }, 'name = "x"; builder = "/bin/sh";', /required attribute 'system' missing/],
  [
    'invalid name',
    { ...base, name: 'has space' },
    'name = "has space"; system = "x86_64-linux"; builder = "/bin/sh";',
    /invalid derivation name|illegal character/,
  ],
  ['name ending in .drv', { ...base, name: 'x.drv' }, 'name = "x.drv"; system = "x86_64-linux"; builder = "/bin/sh";', /not allowed to end in '.drv'/],
  ['duplicate outputs', { ...base, outputs: ['out', 'out'] }, `${nixBase} outputs = [ "out" "out" ];`, /duplicate derivation output 'out'/],
  ['output named drv', { ...base, outputs: ['out', 'drv'] }, `${nixBase} outputs = [ "out" "drv" ];`, /invalid derivation output name 'drv'/],
  ['slash in an output name', { ...base, outputs: ['out', 'a/b'] }, `${nixBase} outputs = [ "out" "a/b" ];`, /invalid derivation output name 'a\/b'/],
  ['no outputs', { ...base, outputs: [] }, `${nixBase} outputs = [ ];`, /empty set of outputs/],
  [
    'fixed output with several outputs',
    { ...base, outputs: ['out', 'dev'], outputHash: 'sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=' },
    `${nixBase} outputs = [ "out" "dev" ]; outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";`,
    /multiple outputs are not supported in fixed-output derivations/,
  ],
  [
    'bad hash',
    { ...base, outputHashAlgo: 'sha256', outputHash: 'nothex' },
    `${nixBase} outputHashAlgo = "sha256"; outputHash = "nothex";`,
    /invalid outputHash/,
  ],
  [
    'hash of the wrong length',
    { ...base, outputHashAlgo: 'sha256', outputHash: '2cf24dba' },
    `${nixBase} outputHashAlgo = "sha256"; outputHash = "2cf24dba";`,
    /wrong length/,
  ],
  [
    'hash without a type',
    { ...base, outputHash: '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824' },
    `${nixBase} outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";`,
    /does not include a type/,
  ],
  [
    'unknown hash algorithm',
    { ...base, outputHashAlgo: 'sha3', outputHash: '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824' },
    `${nixBase} outputHashAlgo = "sha3"; outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";`,
    /unknown hash algorithm 'sha3'/,
  ],
  [
    'hash type mismatch',
    { ...base, outputHashAlgo: 'sha1', outputHash: 'sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=' },
    `${nixBase} outputHashAlgo = "sha1"; outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";`,
    /should have type 'sha1'/,
  ],
  ['empty hash without type', { ...base, outputHash: '' }, `${nixBase} outputHash = "";`, /empty hash requires explicit hash type/],
  [
    'bad outputHashMode',
    { ...base, outputHashMode: 'deep', outputHash: 'sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=' },
    `${nixBase} outputHashMode = "deep"; outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";`,
    /invalid value 'deep' for 'outputHashMode'/,
  ],
  ['attribute set without structured attrs', { ...base, set: { a: 1 } }, `${nixBase} set = { a = 1; };`, /cannot coerce an attribute set to a string/],
  [
    'structured system that is not a string',
    { name: 'x', builder: '/bin/sh', __structuredAttrs: true, system: 5 },
    'name = "x"; builder = "/bin/sh"; __structuredAttrs = true; system = 5;',
    /value is number while a string was expected/,
  ],
  [
    'CA without the experimental feature',
    { ...base, __contentAddressed: true },
    `${nixBase} __contentAddressed = true;`,
    /experimental Nix feature 'ca-derivations' is disabled/,
  ],
  [
    'an integer above 64 bits',
    { ...base, big: 2n ** 63n },
    `${nixBase} big = 9223372036854775808;`,
    /integer 9223372036854775808 is outside Nix's 64-bit integers/,
  ],
  ['a number below 64 bits', { ...base, big: -1e19 }, `${nixBase} big = -10000000000000000000;`, /outside Nix's 64-bit integers/],
  [
    'an integer above 64 bits, structured',
    { ...base, __structuredAttrs: true, big: 2n ** 64n },
    `${nixBase} __structuredAttrs = true; big = 18446744073709551616;`,
    /outside Nix's 64-bit integers/,
  ],
  ['NaN', { ...base, n: NaN }, `${nixBase} n = 0.0 / 0.0;`, /NaN is not a Nix value/],
  [
    'Infinity, structured',
    { ...base, __structuredAttrs: true, n: [Infinity] },
    `${nixBase} __structuredAttrs = true; n = [ (1.0 / 0) ];`,
    /Infinity is not a Nix value/,
  ],
  [
    'a bare number in an interpolation',
    {
      ...base,
      get s() {
        return nix`v${42 as never}`;
      },
    },
    `${nixBase} s = "v\${42}";`,
    /cannot coerce an integer to a string/,
  ],
];

describe('derivation() rejects what Nix rejects', () => {
  const store = new MemoryStore();
  afterAll(async () => store.close());

  it.each(cases)('%s', async (_what, attrs, _nixAttrs, msg) => {
    const err = await derivation(store, attrs as unknown as DerivationAttrs).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(InvalidDerivationAttrsError);
    expect((err as InvalidDerivationAttrsError).code).toBe('invalid-derivation-attrs');
    expect((err as Error).message).toMatch(msg);
  });

  it('interpolating a Boolean, a number or a list in a template is an error, as in Nix', async () => {
    expect(() => nix`${true}`).toThrow(/cannot coerce a Boolean to a string/);
    expect(() => nix`${42}`).toThrow(/cannot coerce an integer to a string/);
    expect(() => nix`${1.5}`).toThrow(/cannot coerce a float to a string/);
    expect(() => nix`${42n}`).toThrow(InvalidDerivationAttrsError);
    // The 64-bit limits themselves are Nix integers.
    const d = await derivation(store, { ...base, lo: -(2n ** 63n), hi: 2n ** 63n - 1n, f: 0.5, __structuredAttrs: true });
    expect(d.drv.env.get('__json')).toContain('"hi":9223372036854775807,"lo":-9223372036854775808');
    expect(() => nix`${['a']}`).toThrow(InvalidDerivationAttrsError);
  });

  it('system must not carry context in structured mode', async () => {
    const t = await addText(store, 't', 'x');
    await expect(derivation(store, { ...base, __structuredAttrs: true, system: t })).rejects.toThrow(/not allowed to refer to a store path/);
  });

  it('toFile refuses derivation outputs in its text', async () => {
    const d = await derivation(store, base);
    await expect(addText(store, 'f', nix`${d}`)).rejects.toThrow(/must not contain a reference to a derivation/);
  });

  it('addPath: bad names, missing files, non-files with recursive = false, hash mismatch', async () => {
    await expect(addPath(store, `${FIXTURES}/tree`, { name: 'bad name' })).rejects.toThrow(InvalidDerivationAttrsError);
    await expect(addPath(store, `${FIXTURES}/does-not-exist`)).rejects.toThrow(/cannot add/);
    await expect(addPath(store, `${FIXTURES}/tree`, { recursive: false })).rejects.toThrow(/not a regular file/);
    await expect(addPath(store, `${FIXTURES}/tree`, { sha256: 'sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=' })).rejects.toThrow(/hash mismatch/);
  });
});

describe.skipIf(!nixOk())('real nix-instantiate rejects the same attributes', () => {
  const root = tempDir('realise-drv-errors-');
  // All cases at once (a few in parallel) to keep the suite fast.
  const results = new Map<string, { status: number | null; stderr: string }>();
  beforeAll(async () => {
    const { execFile } = await import('node:child_process');
    const run = (what: string, nixAttrs: string) =>
      new Promise<void>((resolve) => {
        execFile('nix-instantiate', ['--store', root, '-E', `derivation { ${nixAttrs} }`], { env: nixEnv() }, (err, _out, stderr) => {
          results.set(what, { status: err ? ((err as { code?: number }).code ?? 1) : 0, stderr });
          resolve();
        });
      });
    for (let i = 0; i < cases.length; i += 4) await Promise.all(cases.slice(i, i + 4).map(([what, , nixAttrs]) => run(what, nixAttrs)));
  });
  it.each(cases)('%s', (what) => {
    const r = results.get(what)!;
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/error/);
  });
});

describe('derivation() on hostile values', () => {
  it('fuzz: any JS value as an attribute gives a derivation or a RealiseError, legacy and structured', async () => {
    const { RealiseError } = await import('../../src/store/errors.js');
    const fc = (await import('fast-check')).default;
    const store = new MemoryStore();
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.anything({ withBigInt: true, withNullPrototype: true, withMap: true, withSet: true, withDate: true, withTypedArray: true, withSparseArray: true }),
          fc.boolean(),
          async (v, structured) => {
            try {
              await derivation(store, { ...base, attr: v as never, __structuredAttrs: structured });
            } catch (e) {
              if (!(e instanceof RealiseError)) throw e;
            }
          },
        ),
        { numRuns: 300 },
      );
    } finally {
      await store.close();
    }
  });

  it('self-containing values are errors, not stack overflows', async () => {
    const store = new MemoryStore();
    const list: unknown[] = ['a'];
    list.push(list);
    const obj: Record<string, unknown> = {};
    obj.self = obj;
    await expect(derivation(store, { ...base, l: list as never })).rejects.toThrow(/contains itself/);
    await expect(derivation(store, { ...base, __structuredAttrs: true, o: obj as never })).rejects.toThrow(/contains itself/);
    await store.close();
  });
});
