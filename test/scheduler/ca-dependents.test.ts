/**
 * Dependents of floating content-addressed derivations (Nix 2.8's ca-derivations): a derivation using a
 * floating CA output is "deferred" (no output path in its .drv) and is built by resolving it once its
 * inputs are built. The same .drv files, instantiated by real Nix, are built by real Nix and by us in
 * two chroot stores (sandboxed); the resolved output paths, NAR hashes, references and derivers agree.
 */
import { existsSync, promises as fsp, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { busyboxOk, nixSandboxArgs, outputsOf, pathFacts, removeTree, SANDBOX_PATHS } from './helpers.js';

const CA = ['--extra-experimental-features', 'ca-derivations'];
const EXPR = `
let sh = "/bin/sh"; bb = "/bin/busybox"; sys = "x86_64-linux";
  ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  a = derivation (ca // { name = "ca-a"; system = sys; builder = sh;
    args = ["-c" "\${bb} mkdir $out; echo hello > $out/msg; echo $out > $out/self"]; });
  b = derivation { name = "dep-b"; system = sys; builder = sh;
    args = ["-c" "\${bb} mkdir $out; \${bb} cat \${a}/msg > $out/copy; echo \${a} > $out/ref; echo $out > $out/self"]; };
  c = derivation { name = "dep-c"; system = sys; builder = sh; inB = b;
    args = ["-c" "echo $inB > $out"]; };
  d = derivation (ca // { name = "ca-d"; system = sys; builder = sh;
    args = ["-c" "\${bb} mkdir $out; echo \${a} > $out/a; echo $out > $out/self"]; });
  # Another floating CA drv with the same output contents, and b built on it: both resolve to the same .drv.
  a2 = derivation (ca // { name = "ca-a"; system = sys; builder = sh;
    args = ["-c" "\${bb} mkdir $out; echo hello > $out/msg; echo $out > $out/self; true"]; });
  b2 = derivation { name = "dep-b"; system = sys; builder = sh;
    args = ["-c" "\${bb} mkdir $out; \${bb} cat \${a2}/msg > $out/copy; echo \${a2} > $out/ref; echo $out > $out/self"]; };
in { inherit a b c d a2 b2; }`;

describe.skipIf(!nixOk() || !busyboxOk())('dependents of floating CA derivations vs Nix 2.8 (chroot stores, sandboxed)', () => {
  let R1: string;
  let R2: string;
  const drvs: Record<string, string> = {};
  const nixOut: Record<string, string> = {};

  beforeAll(() => {
    const dir = tempDir('realise-ca-dep-');
    R1 = path.join(dir, 'nix');
    R2 = path.join(dir, 'ours');
    const file = path.join(dir, 'ca.nix');
    writeFileSync(file, EXPR);
    for (const attr of ['a', 'b', 'c', 'd', 'a2', 'b2']) {
      drvs[attr] = nix('nix-instantiate', [...CA, '--store', R1, file, '-A', attr]);
      expect(nix('nix-instantiate', [...CA, '--store', R2, file, '-A', attr])).toBe(drvs[attr]);
    }
    const r = runNix('nix-store', [...CA, '--store', R1, '--realise', drvs.c!, drvs.d!, ...nixSandboxArgs()]);
    expect(r.status, r.stderr).toBe(0);
    // Already built: each realise just reports the (resolved) output path.
    for (const attr of ['a', 'b', 'c', 'd', 'b2']) {
      nixOut[attr] = nix('nix-store', [...CA, '--store', R1, '--realise', drvs[attr]!, ...nixSandboxArgs()]);
    }
  });

  it('the instantiated .drv files are deferred (b, c) and floating with an input derivation (d)', () => {
    const text = (attr: string) => nix('cat', [path.join(R2, drvs[attr]!)]);
    expect(text('b')).toContain('[("out","","","")]');
    expect(text('c')).toContain('[("out","","","")]');
    expect(text('d')).toContain('[("out","","r:sha256","")]');
    expect(text('d')).toContain(drvs.a!);
  });

  it('a chain floating CA → deferred → deferred, and CA → CA: same paths, NAR hashes, references, derivers; persisted; early cut-off', async () => {
    const store = await LocalStore.open({ root: R2 });
    try {
      const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS });
      const res = await engine.buildPaths([drvs.c!, drvs.d!]);
      expect(res.map((x) => x.result.status)).toEqual(['built', 'built']);
      expect(res[0]!.result.builtOutputs).toEqual({ out: nixOut.c });
      expect(res[1]!.result.builtOutputs).toEqual({ out: nixOut.d });
      for (const attr of ['a', 'b', 'c', 'd']) {
        expect((await outputsOf(store, drvs[attr]!)).get('out'), attr).toBe(nixOut[attr]);
      }
      await engine.close(); // no chroot is being prepared when the store goes
    } finally {
      await store.close();
    }
    const outs = ['a', 'b', 'c', 'd'].map((x) => nixOut[x]!);
    const theirs = pathFacts(R1, outs);
    const ours = pathFacts(R2, outs);
    for (const p of outs) expect(ours.get(p), p).toEqual(theirs.get(p));
    // b's output names a's (resolved) path and c's names b's: references cross the resolution.
    expect(ours.get(nixOut.b!)!.references).toEqual([nixOut.a!, nixOut.b!].sort());
    expect(ours.get(nixOut.c!)!.references).toEqual([nixOut.b!]);
    expect(ours.get(nixOut.d!)!.references).toEqual([nixOut.a!, nixOut.d!].sort());
    // The deriver of a resolved build is the resolved .drv, which Nix wrote too (same path, same text).
    const resolvedB = ours.get(nixOut.b!)!.deriver!;
    expect(resolvedB).not.toBe(drvs.b);
    expect(existsSync(path.join(R1, resolvedB))).toBe(true);
    expect(nix('cat', [path.join(R2, resolvedB)])).toBe(nix('cat', [path.join(R1, resolvedB)]));
    expect(nix('cat', [path.join(R2, resolvedB)])).toContain(`("out","${nixOut.b}","","")`);

    const v = runNix('nix-store', ['--store', R2, '--verify', '--check-contents']);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stderr).not.toMatch(/modified|error/);

    // A new engine on the reopened store: the mapping of the original .drv files is persisted.
    const store2 = await LocalStore.open({ root: R2 });
    try {
      const engine = new BuildEngine({ store: store2, sandbox: true, sandboxPaths: SANDBOX_PATHS });
      const again = await engine.buildPaths([drvs.c!, drvs.d!, drvs.b!]);
      expect(again.map((x) => x.result.status)).toEqual(['already-valid', 'already-valid', 'already-valid']);
      expect(again.map((x) => x.result.builtOutputs.out)).toEqual([nixOut.c, nixOut.d, nixOut.b]);
      await engine.close();
    } finally {
      await store2.close();
    }
    // Early cut-off: b2 differs from b only by its input a2, whose output is a's; it resolves to b's
    // resolved .drv, already valid, so nothing of b's is built again (Nix: ResolvesToAlreadyValid).
    expect(drvs.b2).not.toBe(drvs.b);
    expect(nixOut.b2).toBe(nixOut.b);
    const store3 = await LocalStore.open({ root: R2 });
    try {
      const engine = new BuildEngine({ store: store3, sandbox: true, sandboxPaths: SANDBOX_PATHS });
      let built = 0;
      engine.on('progress', (p) => {
        built = Math.max(built, p.builds.done);
      });
      const [r2] = await engine.buildPaths([drvs.b2!]);
      expect(r2!.result.status).toBe('already-valid');
      expect(r2!.result.builtOutputs).toEqual({ out: nixOut.b });
      expect(built).toBe(1); // a2 only
      expect((await outputsOf(store3, drvs.b2!)).get('out')).toBe(nixOut.b);
      await engine.close();
    } finally {
      await store3.close();
    }
    // Real Nix reads the mapping too (its local store looks in DerivationOutputs before Realisations):
    // realising the original .drv files in our store builds nothing.
    const n = runNix('nix-store', [...CA, '--store', R2, '--realise', drvs.c!, drvs.d!, ...nixSandboxArgs()]);
    expect(n.status, n.stderr).toBe(0);
    expect(n.stdout.trim().split('\n')).toEqual([nixOut.c, nixOut.d]);
    expect(n.stderr).not.toMatch(/building|resolved derivation/);
  });
});

describe.skipIf(!nixOk() || !busyboxOk())('dependents of floating CA derivations vs Nix 2.8 (plain store, unsandboxed)', () => {
  it('the same store dir, state copied before Nix builds: identical resolved outputs', async () => {
    const root = tempDir('realise-ca-dep-plain-');
    try {
      const storeDir = path.join(root, 'store');
      const [stateA, stateB, logA, logB, tmp] = ['state-a', 'state-b', 'log-a', 'log-b', 'tmp'].map((x) => path.join(root, x)) as [
        string,
        string,
        string,
        string,
        string,
      ];
      await fsp.mkdir(tmp);
      const uriA = `local?store=${storeDir}&state=${stateA}&log=${logA}`;
      const uriB = `local?store=${storeDir}&state=${stateB}&log=${logB}`;
      const file = path.join(root, 'ca.nix');
      writeFileSync(file, EXPR);
      const drvs: Record<string, string> = {};
      for (const attr of ['a', 'b', 'c', 'd']) drvs[attr] = nix('nix-instantiate', [...CA, '--store', uriA, file, '-A', attr]);
      await fsp.cp(stateA, stateB, { recursive: true, verbatimSymlinks: true });
      const opts = ['--option', 'sandbox', 'false', '--option', 'build-users-group', '', '--option', 'substituters', ''];
      const r = runNix('nix-store', [...CA, '--store', uriA, '--realise', drvs.c!, drvs.d!, ...opts], { env: { TMPDIR: tmp } });
      expect(r.status, r.stderr).toBe(0);
      const outs: Record<string, string> = {};
      for (const attr of ['a', 'b', 'c', 'd']) outs[attr] = nix('nix-store', [...CA, '--store', uriA, '--realise', drvs[attr]!, ...opts]);
      const closure = Object.values(outs);
      const theirs = pathFacts(uriA, closure);
      // Remove everything Nix added (outputs and resolved .drv files); state B never knew them.
      const before = new Set(pathFacts(uriB, 'all').keys());
      const added = [...pathFacts(uriA, 'all').keys()].filter((p) => !before.has(p));
      expect(added.length).toBeGreaterThan(closure.length); // the resolved .drv files of b, c and d too
      for (const p of added) await removeTree(p);

      const store = await LocalStore.open({ storeDir, stateDir: stateB, logDir: logB });
      try {
        const engine = new BuildEngine({ store, sandbox: false, buildDir: tmp });
        const res = await engine.buildPaths([drvs.c!, drvs.d!]);
        expect(res.map((x) => x.result.status)).toEqual(['built', 'built']);
        expect(res.map((x) => x.result.builtOutputs.out)).toEqual([outs.c, outs.d]);
        const again = await engine.buildPaths([drvs.c!]);
        expect(again[0]!.result.status).toBe('already-valid');
      } finally {
        await store.close();
      }
      const ours = pathFacts(uriB, closure);
      for (const p of closure) expect(ours.get(p), p).toEqual(theirs.get(p));
      expect(new Set(pathFacts(uriB, 'all').keys())).toEqual(new Set(pathFacts(uriA, 'all').keys()));
      expect(await fsp.readFile(outs.c!, 'utf8')).toBe(`${outs.b}\n`);
      const v = runNix('nix-store', ['--store', uriB, '--verify', '--check-contents']);
      expect(v.status, v.stderr).toBe(0);
    } finally {
      await removeTree(root);
    }
  });
});
