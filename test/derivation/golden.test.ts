/**
 * Golden tests against .drv files written by real Nix 2.8 (scripts/make-derivation-goldens.sh):
 * parse → print is byte-identical, output paths recomputed through hashDerivationModulo equal Nix's,
 * and writing the derivation gives Nix's .drv path.
 */
import { describe, expect, it } from 'vitest';
import {
  DerivationHasher,
  computeDerivationPath,
  computeOutputPaths,
  derivationKind,
  derivationOutputsAndPaths,
  hashDerivationModulo,
  parseDerivation,
  printDerivation,
  readDerivationFromStore,
  staticOutputHashes,
  writeDerivation,
  type Derivation,
  type OutputSpec,
} from '../../src/derivation/derivation.js';
import { Hash } from '../../src/store/hash.js';
import { makeOutputPath } from '../../src/store/store-path.js';
import { FakeTextStore, drvOf, expected, goldenDrvs, readGolden } from './helpers.js';

const drvPaths = [...goldenDrvs.keys()];

/** The output descriptions the `derivation` builtin started from, recovered from a finished .drv. */
function specsOf(drv: Derivation): Map<string, OutputSpec> {
  const m = new Map<string, OutputSpec>();
  for (const [name, o] of drv.outputs) {
    if (o.type === 'input-addressed' || o.type === 'deferred') m.set(name, { type: 'input-addressed' });
    else if (o.type === 'fixed') m.set(name, { type: 'fixed', method: o.method, hash: o.hash });
    else m.set(name, { type: o.type, method: o.method, algorithm: o.algorithm });
  }
  return m;
}

describe('golden .drv files from Nix 2.8', () => {
  it('has the fixtures', () => {
    expect(drvPaths.length).toBeGreaterThanOrEqual(25);
    expect(Object.keys(expected.derivations).sort()).toEqual(drvPaths);
  });

  it.each(drvPaths)('parse → print is byte-identical: %s', (p) => {
    const text = goldenDrvs.get(p)!;
    expect(printDerivation(drvOf(p))).toBe(text);
  });

  it.each(drvPaths)('the .drv path is the text path of its contents: %s', (p) => {
    expect(computeDerivationPath(drvOf(p))).toBe(p);
  });

  it.each(drvPaths)('outputs and paths match `nix show-derivation`: %s', (p) => {
    const got = Object.fromEntries([...derivationOutputsAndPaths(drvOf(p))].map(([n, { path }]) => [n, path ?? null]));
    expect(got).toEqual(expected.derivations[p]!.outputs);
  });

  it.each(drvPaths)('recomputing the outputs as the derivation builtin does gives Nix’s derivation: %s', async (p) => {
    const drv = drvOf(p);
    const hasher = new DerivationHasher(readGolden);
    // Start from the derivation without outputs and without the output environment variables.
    const env = new Map(drv.env);
    for (const o of drv.outputs.keys()) env.delete(o);
    const { outputs: _ignored, ...rest } = drv;
    const again = await computeOutputPaths(hasher, { ...rest, env }, specsOf(drv));
    expect(printDerivation(again)).toBe(goldenDrvs.get(p));
  });

  it.each(drvPaths)('writeDerivation gives Nix’s .drv path and registers the known outputs: %s', async (p) => {
    const store = new FakeTextStore();
    const drv = drvOf(p);
    const written = await writeDerivation(store, drv);
    expect(written).toBe(p);
    expect(store.texts.get(p)!.text).toBe(goldenDrvs.get(p));
    const known = Object.entries(expected.derivations[p]!.outputs).filter(([, v]) => v !== null);
    expect(Object.fromEntries(store.drvOutputs.get(p) ?? [])).toEqual(Object.fromEntries(known));
  });
});

describe('hashDerivationModulo', () => {
  const fixed = (name: string) => expected.fixtures.fixed!.find((p) => p.endsWith(`-${name}.drv`))!;

  it('hashes a fixed-output derivation by its output only (different builders, same hash)', async () => {
    const [a, b] = expected.fixtures.fixed!.filter((p) => p.endsWith('-flat-sha256.drv'));
    expect(a).not.toBe(b);
    const ha = await hashDerivationModulo(readGolden, drvOf(a!), false);
    const hb = await hashDerivationModulo(readGolden, drvOf(b!), false);
    expect(ha.hashes.get('out')!.equals(hb.hashes.get('out')!)).toBe(true);
    const out = drvOf(a!).outputs.get('out')!;
    expect(out.type).toBe('fixed');
    const want = Hash.of('sha256', `fixed:out:sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824:${(out as { path: string }).path}`);
    expect(ha.hashes.get('out')!.base16).toBe(want.base16);
  });

  it('uses r: for recursive fixed outputs', async () => {
    const d = drvOf(fixed('rec-sha256'));
    const o = d.outputs.get('out') as { path: string; hash: Hash };
    const h = await hashDerivationModulo(readGolden, d, false);
    expect(h.hashes.get('out')!.base16).toBe(Hash.of('sha256', `fixed:out:r:sha256:${o.hash.base16}:${o.path}`).base16);
  });

  it('gives the output paths of an input-addressed derivation with outputs masked', async () => {
    for (const p of expected.fixtures['multiple-outputs']!) {
      const d = drvOf(p);
      const h = await hashDerivationModulo(readGolden, d, true);
      expect(h.kind).toBe('regular');
      for (const [name, o] of d.outputs) {
        expect(makeOutputPath(name, h.hashes.get(name)!, d.name)).toBe((o as { path: string }).path);
      }
    }
  });

  it('is deferred for floating CA derivations and their consumers, regular otherwise', async () => {
    const kinds: Record<string, string> = {};
    for (const p of expected.fixtures.ca!) kinds[drvOf(p).name] = (await hashDerivationModulo(readGolden, drvOf(p), false)).kind;
    expect(kinds).toEqual({ ca: 'deferred', 'ca-multi': 'deferred', 'ca-flat': 'deferred', 'ca-consumer': 'deferred' });
    expect(derivationKind(drvOf(expected.fixtures.ca!.find((p) => p.endsWith('-ca-consumer.drv'))!))).toBe('deferred');
    expect((await hashDerivationModulo(readGolden, drvOf(expected.fixtures.simple![0]!), false)).kind).toBe('regular');
  });

  it('memoises input derivations (each read once)', async () => {
    let reads = 0;
    const hasher = new DerivationHasher(async (p) => {
      reads++;
      return readGolden(p);
    });
    const c = drvOf(expected.fixtures.deps!.find((p) => p.endsWith('-c.drv'))!);
    await hasher.hashModulo(c, false);
    await hasher.hashModulo(c, true);
    expect(reads).toBe(2); // a and b
  });

  it('memoises a hash while it is computed and once it is; a failed read is asked again', async () => {
    const c = drvOf(expected.fixtures.deps!.find((p) => p.endsWith('-c.drv'))!);
    const a = [...c.inputDrvs.keys()][0]!;
    let reads = 0;
    let fail = true;
    const hasher = new DerivationHasher(async (p) => {
      if (p === a) reads++;
      if (fail) throw new Error('unreadable');
      return readGolden(p);
    });
    await expect(hasher.pathHashModulo(a)).rejects.toThrow('unreadable');
    fail = false;
    const [x, y] = [hasher.pathHashModulo(a), hasher.pathHashModulo(a)];
    expect(x).toBe(y);
    const h = await x;
    expect(await hasher.pathHashModulo(a)).toBe(h);
    expect(reads).toBe(2);
    expect(h.hashes.get('out')!.base16).toBe((await new DerivationHasher(readGolden).pathHashModulo(a)).hashes.get('out')!.base16);
  });

  it('hashes an input handed to parsedFrom without reading it, to the hash reading it gives', async () => {
    const deps = expected.fixtures.deps!;
    const c = drvOf(deps.find((p) => p.endsWith('-c.drv'))!);
    const inputs = [...c.inputDrvs.keys()];
    expect(inputs.length).toBe(2);
    const read: string[] = [];
    const hasher = new DerivationHasher(async (p) => {
      read.push(p);
      return readGolden(p);
    });
    hasher.parsedFrom(inputs[0]!, drvOf(inputs[0]!));
    const got = await hasher.hashModulo(c, true);
    expect(read).toEqual([inputs[1]]);
    const byReading = await new DerivationHasher(readGolden).hashModulo(c, true);
    expect(got.hashes.get('out')!.base16).toBe(byReading.hashes.get('out')!.base16);
    // Hashed once, it is forgotten: the memo answers from then on.
    hasher.parsedFrom(inputs[0]!, drvOf(inputs[1]!));
    expect((await hasher.pathHashModulo(inputs[0]!)).hashes.get('out')!.base16).toBe(
      (await new DerivationHasher(readGolden).pathHashModulo(inputs[0]!)).hashes.get('out')!.base16,
    );
    expect(read).toEqual([inputs[1]]);
  });

  it('staticOutputHashes: every output of a regular derivation has the hash with its outputs masked (as Nix 2.8)', async () => {
    const d = drvOf(expected.fixtures['multiple-outputs']!.find((p) => p.endsWith('-multi.drv'))!);
    const hs = await staticOutputHashes(readGolden, d);
    expect([...hs.keys()].sort()).toEqual(['dev', 'lib', 'out']);
    // No inputs: the hash of the .drv text with its output paths blanked (Nix's hashDerivationModulo(…, true);
    // test/cli/nix-functional.test.ts compares the Realisations rows these name with Nix's).
    const masked = Hash.of('sha256', printDerivation(d, { maskOutputs: true }));
    expect(hs.get('dev')!.base16).toBe(masked.base16);
    expect(hs.get('out')!.base16).toBe(masked.base16);
  });

  it('reads inputs through readDerivationFromStore', async () => {
    const store = new FakeTextStore();
    const c = drvOf(expected.fixtures.deps!.find((p) => p.endsWith('-c.drv'))!);
    const a = await hashDerivationModulo(readDerivationFromStore(store), c, false);
    const b = await hashDerivationModulo(readGolden, c, false);
    expect(a.hashes.get('out')!.base16).toBe(b.hashes.get('out')!.base16);
  });

  it('rejects a wanted output the input does not have', async () => {
    const c = drvOf(expected.fixtures['multiple-outputs']!.find((p) => p.endsWith('-consumer.drv'))!);
    const bad = { ...c, inputDrvs: new Map([...c.inputDrvs].map(([k]) => [k, ['nope']])) };
    await expect(hashDerivationModulo(readGolden, bad, false)).rejects.toMatchObject({ code: 'bad-derivation' });
  });
});

describe('parseDerivation specifics', () => {
  it('parses the CA floating and fixed output forms of Nix 2.8', () => {
    const ca = drvOf(expected.fixtures.ca!.find((p) => p.endsWith('-ca.drv'))!);
    expect(ca.outputs.get('out')).toEqual({ type: 'floating', method: 'recursive', algorithm: 'sha256' });
    const flat = drvOf(expected.fixtures.ca!.find((p) => p.endsWith('-ca-flat.drv'))!);
    expect(flat.outputs.get('out')).toEqual({ type: 'floating', method: 'flat', algorithm: 'sha512' });
    const md5 = drvOf(expected.fixtures.fixed!.find((p) => p.endsWith('-flat-md5.drv'))!);
    const o = md5.outputs.get('out')!;
    expect(o.type === 'fixed' && o.method === 'flat' && o.hash.base16 === '5d41402abc4b2a76b9719d911017c592').toBe(true);
  });

  it('unescapes strings', () => {
    const e = drvOf(expected.fixtures.escapes![0]!);
    expect(e.env.get('quoted')).toBe('double " quote, back\\slash, ${not interpolated}');
    expect(e.args).toEqual(['-c', 'echo "$quoted" > $out', 'tab\there', 'cr\rhere']);
    expect(e.env.get('unicode')).toBe('ünïcödé ✓ 日本語 🎉');
    expect(e.env.get('control')).toBe('bell \x07 backspace \x08 formfeed \x0c del \x7f escape \x1b');
  });

  it('accepts other escapes as the character itself (as Nix does) and prints canonically', () => {
    const d = parseDerivation('Derive([("out","","","")],[],[],"x\\y","/bin/sh",[],[])', 'n');
    expect(d.platform).toBe('xy');
    expect(printDerivation(d)).toBe('Derive([("out","","","")],[],[],"xy","/bin/sh",[],[])');
  });
});
