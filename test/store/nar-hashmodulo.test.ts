/**
 * HashModulo against what Nix 2.8 computes for floating content-addressed outputs that refer to
 * themselves: the `ca` hash is the NAR hash modulo the output's own hash part, and the store path is
 * makeFixedOutputPath(recursive, that hash, name, references, self). Goldens from
 * scripts/make-store-goldens.ts; the live test builds fresh CA derivations with random payloads.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Hash, HashModulo } from '../../src/store/hash.js';
import { makeFixedOutputPath, storePathHashPart, storePathName } from '../../src/store/store-path.js';
import { collect, dumpPath, hashNar, streamOf } from '../../src/store/nar.js';
import { RefScanner } from '../../src/store/references.js';
import { CA_NIX_CONFIG, caExpression } from '../fixtures/store/ca.js';
import { nixEnv, nixOk, tempDir } from '../helpers/nix.js';

const FIX = path.join(import.meta.dirname, '..', 'fixtures', 'store');
interface CaInfo {
  path: string;
  ca: string;
  narHash: string;
  narSize: number;
  references: string[];
}
const golden = JSON.parse(readFileSync(path.join(FIX, 'ca.json'), 'utf8')) as (CaInfo & { file: string })[];

/** Everything we can derive from the NAR of a CA output, checked against Nix's path info. */
async function checkAgainstNix(info: CaInfo, nar: Buffer, chunk = 97): Promise<void> {
  const self = storePathHashPart(info.path);
  const hm = new HashModulo('sha256', self);
  for (let i = 0; i < nar.length; i += chunk) hm.update(nar.subarray(i, i + chunk));
  const { hash, size, offsets } = hm.finish();
  expect(`fixed:r:${hash.toString('base32')}`).toBe(info.ca);
  expect(size).toBe(info.narSize);
  const hasSelf = info.references.includes(info.path);
  expect(offsets.length > 0).toBe(hasSelf);
  const others = info.references.filter((r) => r !== info.path);
  expect(makeFixedOutputPath('recursive', hash, storePathName(info.path), { references: others, hasSelfReference: hasSelf })).toBe(info.path);
  const nh = await hashNar(streamOf(nar));
  expect(nh.hash.sri).toBe(info.narHash);
  // The references Nix registered are exactly what the scanner finds among plausible candidates.
  const decoys = ['0'.repeat(32), 'ars58snfqasl4q7h0z2lj22fnipbf2q1'];
  const scanner = new RefScanner([...info.references.map(storePathHashPart), self, ...decoys]);
  scanner.update(nar);
  expect([...scanner.result()].sort()).toEqual(info.references.map(storePathHashPart).sort());
}

describe('HashModulo and CA paths (goldens from Nix 2.8 ca-derivations builds)', () => {
  it('covers self-references, a dependency and no self-reference', () => {
    expect(golden.map((g) => storePathName(g.path)).sort()).toEqual(['ca-noself', 'ca-self', 'ca-with-dep']);
    expect(golden.find((g) => g.path.endsWith('ca-self'))!.references).toHaveLength(1);
    expect(golden.find((g) => g.path.endsWith('ca-with-dep'))!.references).toHaveLength(2);
    expect(golden.find((g) => g.path.endsWith('ca-noself'))!.references).toHaveLength(0);
  });
  for (const g of golden) {
    it(`${storePathName(g.path)}: ca hash, path, narHash and references`, async () => {
      const nar = readFileSync(path.join(FIX, g.file));
      for (const chunk of [1, 7, 32, 97, nar.length]) await checkAgainstNix(g, nar, chunk);
    });
  }
  it('without the modulus the hash is the plain NAR hash, so the self-reference matters', () => {
    const g = golden.find((x) => x.path.endsWith('ca-self'))!;
    const nar = readFileSync(path.join(FIX, g.file));
    expect(`fixed:r:${Hash.of('sha256', nar).toString('base32')}`).not.toBe(g.ca);
  });
});

describe.skipIf(!nixOk())('HashModulo against live Nix CA builds', () => {
  it('random payloads', async () => {
    const payloads = fc.sample(fc.string({ unit: fc.constantFrom('a', 'b', '0', ' ', '/', '-', 'é', 'z'), minLength: 1, maxLength: 30 }), {
      numRuns: 2,
      seed: 99,
    });
    for (const payload of payloads) {
      const dir = tempDir();
      const file = path.join(dir, 'ca.nix');
      writeFileSync(file, caExpression(payload));
      const env = nixEnv({ NIX_CONFIG: CA_NIX_CONFIG });
      const root = path.join(dir, 'root');
      const outs = execFileSync('nix-build', ['--store', root, file, '--no-out-link'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
        .toString()
        .trim()
        .split('\n');
      const infos = JSON.parse(execFileSync('nix', ['path-info', '--store', root, '--json', ...outs], { env }).toString()) as CaInfo[];
      expect(infos).toHaveLength(3);
      for (const info of infos) await checkAgainstNix(info, await collect(dumpPath(path.join(root, info.path))));
    }
  });
});
