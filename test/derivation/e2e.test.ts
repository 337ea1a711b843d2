/**
 * End to end: a graph described in TypeScript is built by the BuildEngine, and the outputs (paths and
 * NAR hashes) equal what real Nix 2.8 builds from the equivalent Nix expression — unsandboxed in a
 * plain store with the host's /bin/sh, and sandboxed in chroot stores with a static busybox.
 */
import { existsSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nix, type NixString } from '../../src/derivation/context.js';
import { addPath, derivation } from '../../src/derivation/instantiate.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { Store } from '../../src/store/store-api.js';
import { busyboxTree, bwrapOk, nix as nixOut, nixOk, runNix, tempDir } from '../helpers/nix.js';

const system = 'x86_64-linux';

/**
 * The graph in TypeScript (shell builtins only, so it also runs with the host's dash and no PATH);
 * returns the top derivation and every output.
 */
async function tsGraph(store: Store, sh: string | NixString, fixedHash: string) {
  const base = await derivation(store, { name: 'e2e-base', system, builder: sh, args: ['-c', 'echo base > $out'] });
  const lib = await derivation(store, {
    name: 'e2e-lib',
    system,
    builder: sh,
    outputs: ['out', 'dev'],
    args: ['-c', nix`read b < ${base}; echo "${base} $b" > $out; echo header > $dev`],
  });
  const fod = await derivation(store, { name: 'e2e-fixed', system, builder: sh, outputHash: fixedHash, args: ['-c', 'echo fixed > $out'] });
  const paf = await derivation(store, {
    name: 'e2e-paf',
    system,
    builder: sh,
    passAsFile: ['blob'],
    blob: 'multi\nline',
    args: ['-c', 'while IFS= read -r l || [ -n "$l" ]; do echo "$l"; done < $blobPath > $out'],
  });
  const top = await derivation(store, {
    name: 'e2e-top',
    system,
    builder: sh,
    args: ['-c', nix`{ read h < ${lib.output('dev')}; read f < ${fod}; read p < ${paf}; echo "$h $f $p ${lib} $out"; } > $out`],
  });
  return { top, all: [base.out, lib.out, lib.output('dev'), fod.out, paf.out, top.out] };
}

/** The same graph as a Nix expression. */
function nixGraph(sh: string, fixedHash: string): string {
  return `let
    sh = ${sh};
    system = "${system}";
    base = derivation { name = "e2e-base"; inherit system; builder = sh; args = [ "-c" "echo base > $out" ]; };
    lib = derivation { name = "e2e-lib"; inherit system; builder = sh; outputs = [ "out" "dev" ];
      args = [ "-c" "read b < \${base}; echo \\"\${base} $b\\" > $out; echo header > $dev" ]; };
    fod = derivation { name = "e2e-fixed"; inherit system; builder = sh; outputHash = "${fixedHash}"; args = [ "-c" "echo fixed > $out" ]; };
    paf = derivation { name = "e2e-paf"; inherit system; builder = sh; passAsFile = [ "blob" ]; blob = "multi\\nline";
      args = [ "-c" "while IFS= read -r l || [ -n \\"$l\\" ]; do echo \\"$l\\"; done < $blobPath > $out" ]; };
  in derivation { name = "e2e-top"; inherit system; builder = sh;
    args = [ "-c" "{ read h < \${lib.dev}; read f < \${fod}; read p < \${paf}; echo \\"$h $f $p \${lib} $out\\"; } > $out" ]; }`;
}

const fixedHash = 'sha256-' + (await import('node:crypto')).createHash('sha256').update('fixed\n').digest('base64');

async function compare(store: LocalStore, nixStoreArg: string, sh: string | NixString, nixSh: string, sandbox: boolean, extraNixArgs: string[]) {
  const { top, all } = await tsGraph(store, sh, fixedHash);
  const engine = new BuildEngine({ store, sandbox, maxJobs: 2, sandboxPaths: [] });
  const results = await engine.buildPathsWithResults([{ drvPath: top.drvPath, outputs: ['out'] }]);
  expect(results[0]!.result.status, results[0]!.result.errorMsg).toBe('built');
  // Real Nix: same .drv from the expression, built by Nix.
  const drvPath = nixOut('nix-instantiate', ['--store', nixStoreArg, '-E', nixGraph(nixSh, fixedHash)]);
  expect(drvPath).toBe(top.drvPath);
  const r = runNix('nix-store', ['--store', nixStoreArg, '--realise', drvPath, ...extraNixArgs]);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout.trim()).toBe(top.out.path);
  const paths = all.map((o) => o.path);
  const nixInfo = JSON.parse(nixOut('nix', ['path-info', '--json', '--store', nixStoreArg, ...paths])) as Array<{
    path: string;
    narHash: string;
    references: string[];
  }>;
  const theirs = Object.fromEntries(nixInfo.map((i) => [i.path, { narHash: i.narHash, references: [...i.references].sort() }]));
  const ours: Record<string, { narHash: string; references: string[] }> = {};
  for (const p of paths) {
    const i = await store.queryPathInfo(p);
    expect(i, p).toBeDefined();
    ours[p] = { narHash: i!.narHash.toString('sri'), references: [...i!.references].sort() };
  }
  expect(ours).toEqual(theirs);
  expect(Object.keys(ours)).toHaveLength(6);
}

describe.skipIf(!nixOk())('a TypeScript graph built by the engine equals real Nix building its Nix twin', () => {
  it('unsandboxed, plain stores (logical = physical store dir), host /bin/sh', async () => {
    const ours = tempDir('realise-e2e-ours-');
    const theirs = tempDir('realise-e2e-nix-');
    // Both plain stores need the same store dir for equal paths: ours first, then (moved away) Nix's.
    const storeDir = path.join(ours, 'store');
    const store = await LocalStore.open({ storeDir, stateDir: path.join(ours, 'state'), logDir: path.join(ours, 'log') });
    try {
      const { top, all } = await tsGraph(store, '/bin/sh', fixedHash);
      const engine = new BuildEngine({ store, sandbox: false, maxJobs: 2 });
      const [res] = await engine.buildPathsWithResults([{ drvPath: top.drvPath, outputs: ['out'] }]);
      expect(res!.result.status, res!.result.errorMsg).toBe('built');
      const ourInfos = new Map<string, { narHash: string; references: string[] }>();
      for (const p of all.map((o) => o.path)) {
        const i = (await store.queryPathInfo(p))!;
        ourInfos.set(p, { narHash: i.narHash.toString('sri'), references: [...i.references].sort() });
      }
      await store.close();
      // Move our store away and let Nix build into the same logical store dir.
      const { renameSync } = await import('node:fs');
      renameSync(ours, theirs + '-moved');
      mkdirSync(ours);
      const nixStore = `local?store=${storeDir}&state=${path.join(ours, 'state')}&log=${path.join(ours, 'log')}`;
      const drvPath = nixOut('nix-instantiate', ['--store', nixStore, '-E', nixGraph('"/bin/sh"', fixedHash)]);
      expect(drvPath).toBe(top.drvPath);
      const r = runNix('nix-store', ['--store', nixStore, '--realise', drvPath, '--option', 'sandbox', 'false']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(top.out.path);
      const nixInfo = JSON.parse(nixOut('nix', ['path-info', '--json', '--store', nixStore, ...all.map((o) => o.path)])) as Array<{
        path: string;
        narHash: string;
        references: string[];
      }>;
      expect(Object.fromEntries(nixInfo.map((i) => [i.path, { narHash: i.narHash, references: [...i.references].sort() }]))).toEqual(
        Object.fromEntries(ourInfos),
      );
    } finally {
      await store.close().catch(() => {});
    }
  });

  it.skipIf(!bwrapOk() || !existsSync('/bin/busybox'))('sandboxed, chroot stores, static busybox as the builder', async () => {
    const tree = busyboxTree(tempDir('realise-e2e-busybox-'));
    const root = tempDir('realise-e2e-root-');
    const store = await LocalStore.open({ root });
    try {
      const busybox = await addPath(store, tree, { name: 'busybox' });
      await compare(
        store,
        tempDir('realise-e2e-nixroot-'),
        nix`${busybox}/bin/sh`,
        `"\${builtins.path { path = ${tree}; name = "busybox"; }}/bin/sh"`,
        true,
        [],
      );
    } finally {
      await store.close();
    }
  });
});
