/**
 * Resolution of derivations depending on floating CA outputs (Nix 2.8's tryResolve): placeholders as
 * real nix-instantiate writes them, and the resolved derivation's shape and output paths.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  derivationNameFromPath,
  downstreamPlaceholder,
  hashDerivationModulo,
  needsResolution,
  parseDerivation,
  printDerivation,
  tryResolve,
  type Derivation,
} from '../../src/derivation/index.js';
import { toNixBase32 } from '../../src/store/hash.js';
import { makeOutputPath, type StorePath } from '../../src/store/store-path.js';
import { nix, nixOk, tempDir } from '../helpers/nix.js';

const A_DRV = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-ca-a.drv' as StorePath;
const A_OUT = '/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-ca-a' as StorePath;
const A_DEV = '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-ca-a-dev' as StorePath;

function placeholderByHand(drvPath: string, clearName: string): string {
  const hashPart = path.basename(drvPath).slice(0, 32);
  return '/' + toNixBase32(createHash('sha256').update(`nix-upstream-output:${hashPart}:${clearName}`).digest());
}

function deferredDrv(): Derivation {
  const pOut = downstreamPlaceholder(A_DRV, 'out');
  const pDev = downstreamPlaceholder(A_DRV, 'dev');
  return {
    name: 'dep-b',
    outputs: new Map([['out', { type: 'deferred' }]]),
    inputDrvs: new Map([[A_DRV, ['dev', 'out']]]),
    inputSrcs: ['/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-src' as StorePath],
    platform: 'x86_64-linux',
    builder: `${pOut}/bin/sh`,
    args: ['-c', `cat ${pOut}/msg ${pDev}/include`],
    env: new Map([
      ['out', ''],
      ['in', pOut],
      [`x${pDev}`, 'name rewritten'],
      ['builder', `${pOut}/bin/sh`],
    ]),
  };
}

describe('downstreamPlaceholder', () => {
  it('hashes "nix-upstream-output:<drv hash part>:<output path name>" (name-dev for other outputs)', () => {
    expect(downstreamPlaceholder(A_DRV, 'out')).toBe(placeholderByHand(A_DRV, 'ca-a'));
    expect(downstreamPlaceholder(A_DRV, 'dev')).toBe(placeholderByHand(A_DRV, 'ca-a-dev'));
    expect(downstreamPlaceholder(A_DRV, 'out')).toMatch(/^\/[0-9a-z]{52}$/);
  });
});

describe('needsResolution', () => {
  it('deferred, or floating with input derivations; not input-addressed, fixed, or floating without inputs', () => {
    const b = deferredDrv();
    expect(needsResolution(b)).toBe(true);
    const floating: Derivation = { ...b, outputs: new Map([['out', { type: 'floating', method: 'recursive', algorithm: 'sha256' }]]) };
    expect(needsResolution(floating)).toBe(true);
    expect(needsResolution({ ...floating, inputDrvs: new Map() })).toBe(false);
    const ia: Derivation = { ...b, outputs: new Map([['out', { type: 'input-addressed', path: A_OUT }]]) };
    expect(needsResolution(ia)).toBe(false);
  });
});

describe('tryResolve', () => {
  it('replaces input outputs by their paths in builder, args, env names and values; deferred outputs get input-addressed paths', async () => {
    const b = deferredDrv();
    const { resolved, missing, rewrites } = await tryResolve(
      b,
      new Map([
        [
          A_DRV,
          new Map([
            ['out', A_OUT],
            ['dev', A_DEV],
          ]),
        ],
      ]),
    );
    expect(missing).toEqual([]);
    expect(rewrites.size).toBe(2);
    const r = resolved!;
    expect(r.inputDrvs.size).toBe(0);
    expect(r.inputSrcs).toEqual([A_DEV, '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-src', A_OUT].sort());
    expect(r.builder).toBe(`${A_OUT}/bin/sh`);
    expect(r.args).toEqual(['-c', `cat ${A_OUT}/msg ${A_DEV}/include`]);
    expect(r.env.get('in')).toBe(A_OUT);
    expect(r.env.get(`x${A_DEV}`)).toBe('name rewritten');
    // The output path: makeOutputPath of the resolved derivation's hash modulo, outputs masked.
    const masked: Derivation = { ...r, outputs: new Map([['out', { type: 'deferred' }]]), env: new Map([...r.env, ['out', '']]) };
    const h = await hashDerivationModulo(
      async () => {
        throw new Error('no inputs');
      },
      masked,
      true,
    );
    const out = makeOutputPath('out', h.hashes.get('out')!, 'dep-b');
    expect(r.outputs.get('out')).toEqual({ type: 'input-addressed', path: out });
    expect(r.env.get('out')).toBe(out);
    expect(printDerivation(r)).toContain(`("out","${out}","","")`);
    // The input is left alone.
    expect(b.inputDrvs.size).toBe(1);
    expect(b.outputs.get('out')).toEqual({ type: 'deferred' });
  });

  it('floating outputs stay floating (their own placeholder is left for the build)', async () => {
    const b: Derivation = { ...deferredDrv(), outputs: new Map([['out', { type: 'floating', method: 'recursive', algorithm: 'sha256' }]]) };
    b.env.set('out', '/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9');
    const { resolved } = await tryResolve(
      b,
      new Map([
        [
          A_DRV,
          new Map([
            ['out', A_OUT],
            ['dev', A_DEV],
          ]),
        ],
      ]),
    );
    expect(resolved!.outputs.get('out')).toEqual({ type: 'floating', method: 'recursive', algorithm: 'sha256' });
    expect(resolved!.env.get('out')).toBe('/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9');
  });

  it('an input output without a known path: no resolved derivation, the missing output named', async () => {
    const { resolved, missing } = await tryResolve(deferredDrv(), new Map([[A_DRV, new Map([['out', A_OUT]])]]));
    expect(resolved).toBeUndefined();
    expect(missing).toEqual([{ drvPath: A_DRV, output: 'dev' }]);
  });
});

describe.skipIf(!nixOk())('placeholders as real nix-instantiate (Nix 2.8, ca-derivations) writes them', () => {
  it('a deferred dependent of a multi-output floating CA derivation uses downstreamPlaceholder(drv, output)', () => {
    const dir = tempDir('realise-resolve-');
    const root = path.join(dir, 'store');
    const file = path.join(dir, 'e.nix');
    writeFileSync(
      file,
      `
      let a = derivation { name = "ca-a"; system = "x86_64-linux"; builder = "/bin/sh"; __contentAddressed = true;
        outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputs = ["out" "dev"]; args = ["-c" "true"]; };
      in derivation { name = "dep-b"; system = "x86_64-linux"; builder = "/bin/sh"; o = a.out; d = a.dev; args = ["-c" "true"]; }`,
    );
    const drvPath = nix('nix-instantiate', ['--extra-experimental-features', 'ca-derivations', '--store', root, file]) as StorePath;
    const drv = parseDerivation(readFileSync(path.join(root, drvPath), 'utf8'), derivationNameFromPath(drvPath));
    expect(drv.outputs.get('out')).toEqual({ type: 'deferred' });
    const [aDrv] = [...drv.inputDrvs.keys()];
    expect(drv.env.get('o')).toBe(downstreamPlaceholder(aDrv!, 'out'));
    expect(drv.env.get('d')).toBe(downstreamPlaceholder(aDrv!, 'dev'));
    expect(needsResolution(drv)).toBe(true);
  });
});
