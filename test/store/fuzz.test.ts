/**
 * Fuzzing the store-format parsers with fast-check (bounded run counts, so it runs in CI): whatever the
 * input, only typed RealiseError subclasses are thrown, and NAR restore never writes outside its target.
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BadHashError, BadNarError, InvalidStorePathError, RealiseError } from '../../src/store/errors.js';
import { Hash, fromBase16, fromBase64, fromNixBase32, toNixBase32 } from '../../src/store/hash.js';
import { checkStorePathName, parseStorePath, toStorePath } from '../../src/store/store-path.js';
import { narString, parseNar, restorePath, streamOf, validatingSink } from '../../src/store/nar.js';
import { RefScanner } from '../../src/store/references.js';
import { tempDir } from '../helpers/nix.js';

const FIX = path.join(import.meta.dirname, '..', 'fixtures', 'store');
const B32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** Run f; it may succeed or throw an instance of `allowed`; anything else fails the property. */
function onlyThrows<T>(allowed: new (...a: never[]) => RealiseError, f: () => T): T | undefined {
  try {
    return f();
  } catch (e) {
    if (!(e instanceof allowed)) throw new Error(`unexpected ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`, { cause: e });
    if (!/^[a-z-]+$/.test((e as RealiseError).code)) throw new Error('bad code');
    return undefined;
  }
}

/** 64 pseudo-random bytes from a seed (fc.uint8Array is oddly slow under vitest). */
function seededBytes64(seed: number): Uint8Array {
  const b = new Uint8Array(64);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < 64; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

const textArb = fc.oneof(
  fc.string({ maxLength: 120 }),
  fc.string({ unit: fc.constantFrom(...B32.split(''), 'e', 'E', '=', '-', ':', '+', '/', '\n'), maxLength: 120 }),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
);

describe('fuzz: hashes', () => {
  it('fromNixBase32 on random strings: BadHashError or a value that prints back the same', () => {
    fc.assert(
      fc.property(textArb, fc.option(fc.constantFrom(16, 20, 32, 64), { nil: undefined }), (s, size) => {
        const b = onlyThrows(BadHashError, () => fromNixBase32(s, size));
        if (b) expect(toNixBase32(b)).toBe(s);
      }),
      { numRuns: 1000 },
    );
  });
  it('fromBase16 / fromBase64 on random strings', () => {
    fc.assert(
      fc.property(textArb, (s) => {
        onlyThrows(BadHashError, () => fromBase16(s));
        onlyThrows(BadHashError, () => fromBase64(s));
      }),
      { numRuns: 1000 },
    );
  });
  it('Hash.parse on random and nearly-valid strings: BadHashError or a hash that round trips', () => {
    const prefixed = fc
      .tuple(fc.constantFrom('md5', 'sha1', 'sha256', 'sha512', 'sha3', 'SHA256', ''), fc.constantFrom(':', '-', ''), textArb)
      .map(([a, sep, body]) => a + sep + body);
    const mutated = fc
      .tuple(
        fc.constantFrom('md5', 'sha1', 'sha256', 'sha512'),
        fc.integer().map(seededBytes64),
        fc.constantFrom('base16', 'base32', 'base64', 'sri'),
        fc.nat(200),
        fc.constantFrom('e', 'E', '=', '-', ':', '\0', 'z', '0', 'é', '😀', ' ', '/', '\n'),
      )
      .map(([a, bytes, fmt, at, ch]) => {
        const s = new Hash(a, bytes.subarray(0, { md5: 16, sha1: 20, sha256: 32, sha512: 64 }[a])).toString(fmt as 'base16');
        const i = at % (s.length + 1);
        return at % 3 === 0 ? s.slice(0, i) + ch + s.slice(i + 1) : at % 3 === 1 ? s.slice(0, i) : s;
      });
    fc.assert(
      fc.property(
        fc.oneof(prefixed, mutated, textArb),
        fc.option(fc.constantFrom('md5', 'sha1', 'sha256', 'sha512') as fc.Arbitrary<'md5'>, { nil: undefined }),
        (s, type) => {
          const h = onlyThrows(BadHashError, () => Hash.parse(s, type));
          if (h) {
            if (type && h.algorithm !== type) throw new Error(`parsed '${s}' as ${h.algorithm}, wanted ${type}`);
            for (const f of ['base16', 'base32', 'base64', 'sri'] as const)
              if (!Hash.parse(h.toString(f)).equals(h)) throw new Error(`'${s}' does not round trip via ${f}`);
          }
        },
      ),
      { numRuns: 1500 },
    );
  });
});

describe('fuzz: store paths', () => {
  it('parseStorePath / toStorePath / checkStorePathName: InvalidStorePathError or a consistent result', () => {
    const nearly = fc
      .tuple(
        fc.string({ unit: fc.constantFrom(...B32.split(''), 'e', 'A'), minLength: 30, maxLength: 34 }),
        fc.constantFrom('-', '_', ''),
        textArb,
        fc.constantFrom('', '/bin/sh', '/'),
      )
      .map(([h, sep, name, rest]) => `/nix/store/${h}${sep}${name}${rest}`);
    fc.assert(
      fc.property(
        fc.oneof(
          nearly,
          textArb,
          textArb.map((s) => '/nix/store/' + s),
        ),
        (s) => {
          const p = onlyThrows(InvalidStorePathError, () => parseStorePath(s));
          if (p) expect(`${p.storeDir}/${p.hashPart}-${p.name}`).toBe(s);
          const top = onlyThrows(InvalidStorePathError, () => toStorePath(s));
          if (top) expect(s.startsWith(top)).toBe(true);
          onlyThrows(InvalidStorePathError, () => checkStorePathName(s));
        },
      ),
      { numRuns: 1500 },
    );
  });
});

// ------------------------------------------------------------------ NAR
const goldenNars = readdirSync(path.join(FIX, 'nar')).map((f) => readFileSync(path.join(FIX, 'nar', f)));

type Mutation = { kind: 'flip' | 'insert' | 'delete' | 'truncate' | 'set8'; at: number; value: number };
const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  kind: fc.constantFrom('flip', 'insert', 'delete', 'truncate', 'set8'),
  at: fc.nat(1 << 16),
  value: fc.nat(255),
}) as fc.Arbitrary<Mutation>;
function mutate(nar: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(nar);
  for (const m of ms) {
    if (b.length === 0) break;
    const i = m.at % b.length;
    if (m.kind === 'flip') b[i] = b[i]! ^ (1 << (m.value & 7));
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, i), Buffer.from([m.value]), b.subarray(i)]);
    else if (m.kind === 'delete') b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
    else if (m.kind === 'truncate') b = b.subarray(0, i);
    else b.fill(m.value, i & ~7, Math.min(b.length, (i & ~7) + 8)); // clobber one 8-byte word (lengths)
  }
  return b;
}

/** Hostile-but-structured NARs: valid framing with names and types drawn from a nasty pool. */
const S = (x: string | Buffer) => narString(x);
const nameArb = fc.oneof(fc.constantFrom('a', 'b', 'A', '.', '..', '', 'a/b', '/', '../x', 'a\0', 'ä', 'x'.repeat(256)), fc.string({ maxLength: 6 }));
const nodeArb: fc.Arbitrary<Buffer> = fc.letrec<{ node: Buffer }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc
      .tuple(fc.string({ maxLength: 20 }), fc.boolean())
      .map(([c, x]) => Buffer.concat([S('('), S('type'), S('regular'), ...(x ? [S('executable'), S('')] : []), S('contents'), S(c), S(')')])),
    fc.constantFrom('target', '/etc', '..', '', 'a/../../..').map((t) => Buffer.concat([S('('), S('type'), S('symlink'), S('target'), S(t), S(')')])),
    fc
      .array(fc.tuple(nameArb, tie('node')), { maxLength: 4 })
      .map((es) =>
        Buffer.concat([
          S('('),
          S('type'),
          S('directory'),
          ...es.flatMap(([n, node]) => [S('entry'), S('('), S('name'), S(n), S('node'), node, S(')')]),
          S(')'),
        ]),
      ),
  ),
})).node;

async function restoreChecked(data: Buffer, chunk: number): Promise<void> {
  const parent = tempDir();
  writeFileSync(path.join(parent, 'sentinel'), 'x');
  async function* src() {
    for (let i = 0; i < data.length; i += chunk) yield data.subarray(i, i + chunk);
  }
  let ok = true;
  try {
    await restorePath(path.join(parent, 'target'), src());
  } catch (e) {
    ok = false;
    if (!(e instanceof RealiseError)) throw new Error(`restorePath threw a non-RealiseError: ${e}`, { cause: e });
    expect(e).toBeInstanceOf(BadNarError);
  }
  expect(readdirSync(parent).sort()).toEqual(ok ? ['sentinel', 'target'] : ['sentinel']);
}

describe('fuzz: NAR', () => {
  it('parseNar over random bytes: BadNarError only', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([S('nix-archive-1'), b])),
        ),
        async (b) => {
          await parseNar(streamOf(b), validatingSink).catch((e) => {
            if (!(e instanceof BadNarError)) throw e;
          });
        },
      ),
      { numRuns: 500 },
    );
  });
  it('parseNar over mutated real NARs: BadNarError or a valid parse', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(goldenNars.length - 1),
        fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 64 }),
        async (k, ms, chunk) => {
          const b = mutate(goldenNars[k]!, ms);
          async function* src() {
            for (let i = 0; i < b.length; i += chunk) yield b.subarray(i, i + chunk);
          }
          await parseNar(src(), validatingSink).catch((e) => {
            if (!(e instanceof BadNarError)) throw e;
          });
        },
      ),
      { numRuns: 600 },
    );
  });
  it('restorePath over mutated real NARs: typed errors only, nothing outside the target', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(goldenNars.length - 1),
        fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 1, max: 4096 }),
        async (k, ms, chunk) => {
          await restoreChecked(mutate(goldenNars[k]!, ms), chunk);
        },
      ),
      { numRuns: 120 },
    );
  });
  it('restorePath over structured hostile NARs: typed errors only, nothing outside the target', async () => {
    await fc.assert(
      fc.asyncProperty(nodeArb, fc.integer({ min: 1, max: 100 }), async (node, chunk) => {
        await restoreChecked(Buffer.concat([S('nix-archive-1'), node]), chunk);
      }),
      { numRuns: 150 },
    );
  });
});

describe('fuzz: reference scanner', () => {
  it('never throws and never reports a hash that is not in the input', () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ unit: fc.constantFrom(...B32.split('')), minLength: 32, maxLength: 32 }), { maxLength: 5 }),
        fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
        (cands, chunks) => {
          const s = new RefScanner([...cands, 'junk', '']);
          for (const c of chunks) s.update(c);
          const all = Buffer.concat(chunks);
          for (const h of s.result()) expect(all.includes(Buffer.from(h))).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});
