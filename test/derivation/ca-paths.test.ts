/**
 * makeCaOutputPath against real Nix 2.8 building floating content-addressed derivations
 * (ca-derivations): the final output path follows from the content address, the references and the
 * self-reference, as Nix computes it.
 */
import { existsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeCaOutputPath } from '../../src/derivation/derivation.js';
import { Hash } from '../../src/store/hash.js';
import { busyboxTree, nix as nixOut, nixOk, runNix, tempDir } from '../helpers/nix.js';

describe.skipIf(!nixOk() || !existsSync('/bin/busybox'))('makeCaOutputPath equals the paths of CA outputs Nix builds', () => {
  it('recursive and flat, with references and a self-reference', () => {
    const tree = busyboxTree(tempDir('realise-ca-busybox-'));
    const root = tempDir('realise-ca-root-');
    const expr = `let
      sh = "\${builtins.path { path = ${tree}; name = "busybox"; }}/bin/sh";
      dep = builtins.toFile "dep.txt" "dep\\n";
      mk = name: attrs: derivation ({ inherit name; system = "x86_64-linux"; builder = sh; __contentAddressed = true; } // attrs);
    in {
      plain = mk "ca-plain" { args = [ "-c" "echo plain > $out" ]; };
      refs = mk "ca-refs" { outputs = [ "out" "dev" ]; args = [ "-c" "mkdir $out $dev; echo \${dep} > $out/dep; echo $out > $out/self; echo $dev > $dev/self" ]; };
      flat = mk "ca-flat" { outputHashMode = "flat"; outputHashAlgo = "sha256"; args = [ "-c" "echo flat > $out" ]; };
    }`;
    const env = { NIX_CONFIG: 'experimental-features = nix-command ca-derivations\nbuild-users-group =\nsubstituters =\n' };
    const exprFile = path.join(tempDir('realise-ca-expr-'), 'ca.nix');
    writeFileSync(exprFile, expr);
    const drvs = nixOut('nix-instantiate', ['--store', root, exprFile], { env }).split('\n');
    const r = runNix('nix-store', ['--store', root, '--realise', ...drvs, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox'], { env });
    expect(r.status, r.stderr).toBe(0);
    const outs = r.stdout.trim().split('\n');
    expect(outs.length).toBe(4);
    const infos = JSON.parse(nixOut('nix', ['path-info', '--json', '--store', root, ...outs], { env })) as Array<{
      path: string;
      ca: string;
      references: string[];
    }>;
    for (const info of infos) {
      const m = /^fixed:(r:)?(\w+):(.+)$/.exec(info.ca)!;
      expect(m, info.ca).not.toBeNull();
      const method = m[1] ? 'recursive' : 'flat';
      const hash = Hash.parse(m[3]!, m[2] as 'sha256');
      const base = path.basename(info.path).slice(33);
      const [drvName, outputName] = base.endsWith('-dev') ? [base.slice(0, -4), 'dev'] : [base, 'out'];
      const others = info.references.filter((p) => p !== info.path);
      const self = info.references.includes(info.path);
      expect(makeCaOutputPath(drvName, outputName, method, hash, { references: others, hasSelfReference: self }), info.ca).toBe(info.path);
    }
    expect(infos.some((i) => i.references.includes(i.path))).toBe(true);
    expect(infos.some((i) => i.ca.startsWith('fixed:sha256:'))).toBe(true);
  });
});
