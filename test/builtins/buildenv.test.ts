/**
 * builtin:buildenv and builtin:unpack-channel against real Nix 2.8, and the derivations of fetchurl() and
 * buildEnv() against nix-instantiate / nix-env. Twin chroot stores: Nix builds in N (nix-env makes the
 * user environments), our engine in O from the .drv files our TypeScript API writes; the .drv paths,
 * output paths, NAR hashes and references must be equal, and failures must fail with Nix's message.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, promises as fsp, readlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEnv, fetchurl, type UserEnvPackage } from '../../src/derivation/corepkgs.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { bwrapOk, nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { SANDBOX_PATHS, busyboxOk, instantiateAttrs, logTail, nixSandboxArgs, nixVerify, pathFacts, removeTree } from '../scheduler/helpers.js';

describe.skipIf(!nixOk())('fetchurl() writes the .drv of import <nix/fetchurl.nix>', () => {
  const cases: Array<[string, Parameters<typeof fetchurl>[1], string]> = [
    [
      'flat sha256',
      { url: 'http://example.org/dir/a.tar.gz', sha256: '0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59' },
      'url = "http://example.org/dir/a.tar.gz"; sha256 = "0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59";',
    ],
    [
      'SRI, named',
      { url: 'https://example.org/x', hash: 'sha256-qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=', name: 'x-1' },
      'url = "https://example.org/x"; hash = "sha256-qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc="; name = "x-1";',
    ],
    [
      'executable',
      { url: 'http://example.org/tool', executable: true, sha256: '0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59' },
      'url = "http://example.org/tool"; executable = true; sha256 = "0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59";',
    ],
    [
      'unpack, sha512, trailing slash',
      {
        url: 'file:///srv/tree.nar.xz/',
        unpack: true,
        sha512: 'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e',
      },
      'url = "file:///srv/tree.nar.xz/"; unpack = true; sha512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";',
    ],
    [
      'sha1 and md5 (sha1 wins)',
      { url: 'http://e.org/f', sha1: 'da39a3ee5e6b4b0d3255bfef95601890afd80709', md5: 'd41d8cd98f00b204e9800998ecf8427e' },
      'url = "http://e.org/f"; sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"; md5 = "d41d8cd98f00b204e9800998ecf8427e";',
    ],
  ];
  it.each(cases)('%s', async (_what, args, nixArgs) => {
    const root = tempDir('realise-fetchurl-drv-');
    try {
      const want = nix('nix-instantiate', ['--store', root, '-E', `import <nix/fetchurl.nix> { ${nixArgs} }`]);
      const store = new MemoryStore();
      const d = await fetchurl(store, args);
      expect(d.drvPath).toBe(want);
      expect(await store.readTextFile(d.drvPath)).toBe(await fsp.readFile(path.join(root, want), 'utf8'));
    } finally {
      await removeTree(root);
    }
  });
});

describe.skipIf(!nixOk() || !bwrapOk() || !busyboxOk())('builtin:buildenv and builtin:unpack-channel vs Nix 2.8 (twin chroot stores)', () => {
  let root: string;
  let N: string;
  let O: string;
  let drv: Record<string, string>;
  let outs: Record<string, string>;
  let store: LocalStore;
  const engines: BuildEngine[] = [];
  const engine = () => {
    const e = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir: root });
    engines.push(e);
    return e;
  };
  const nixArgs = () => [...nixSandboxArgs()];
  /** nix-env in N: install attributes into a fresh profile; the user environment's .drv (or the error). */
  const nixEnvInstall = (profile: string, attrs: string[]) => {
    const r = runNix('nix-env', [
      '--store',
      N,
      '-p',
      path.join(root, profile),
      '-f',
      path.join(root, 'pk.nix'),
      '-i',
      ...attrs.flatMap((a) => ['-A', a]),
      ...nixArgs(),
    ]);
    if (r.status !== 0) return { error: r.stderr };
    const out = readlinkSync(path.join(root, readlinkSync(path.join(root, profile))));
    return { out, drv: nix('nix-store', ['--store', N, '-q', '--deriver', out]) };
  };
  const pkg = (attr: string, meta?: UserEnvPackage['meta']): UserEnvPackage => ({
    name: drv[attr]!.slice(drv[attr]!.indexOf('-') + 1).replace(/\.drv$/, ''),
    outputs: { out: outs[attr]! },
    system: process.arch === 'x64' ? 'x86_64-linux' : `${process.arch}-linux`,
    ...(meta ? { meta } : {}),
  });

  beforeAll(async () => {
    root = tempDir('realise-buildenv-');
    chmodSync(root, 0o755);
    N = path.join(root, 'N');
    O = path.join(root, 'O');
    // A channel tarball (one top directory) and a bad one (two entries).
    const chan = path.join(root, 'chan');
    mkdirSync(path.join(chan, 'nixexprs-1.0', 'pkgs'), { recursive: true });
    writeFileSync(path.join(chan, 'nixexprs-1.0', 'default.nix'), '{ }: 42\n');
    writeFileSync(path.join(chan, 'nixexprs-1.0', 'pkgs', 'run'), '#!/bin/sh\n');
    chmodSync(path.join(chan, 'nixexprs-1.0', 'pkgs', 'run'), 0o755);
    execFileSync('ln', ['-s', '../default.nix', path.join(chan, 'nixexprs-1.0', 'pkgs', 'link')]);
    execFileSync('tar', ['-C', chan, '-cJf', path.join(root, 'chan.tar.xz'), 'nixexprs-1.0']);
    writeFileSync(path.join(chan, 'extra'), 'x');
    execFileSync('tar', ['-C', chan, '-czf', path.join(root, 'two.tar.gz'), 'nixexprs-1.0', 'extra']);
    writeFileSync(
      path.join(root, 'pk.nix'),
      `
      let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
          unpackChannel = { name, channelName, src }: derivation {
            builder = "builtin:unpack-channel"; system = "builtin"; inherit name channelName src; preferLocalBuild = true; };
      in rec {
        a = mk "a-1.0" "mkdir -p $out/bin $out/share/a; echo a > $out/bin/x; echo a > $out/share/a/f; ln -s a $out/share/link-a";
        b = (mk "b-2.0" "mkdir -p $out/bin $out/share/b; echo b > $out/bin/x; echo b > $out/share/b/f") // { meta = { priority = 3; description = "B \\\${x}\\n\\"q\\""; }; };
        c = mk "c-1.0" "mkdir -p $out/bin; echo c > $out/bin/x";
        q = mk "q-1.0" "mkdir -p $out/bin; echo q > $out/bin/q; echo q > $out/bin/x";
        p = mk "p-1.0" "mkdir -p $out/bin $out/nix-support; echo p > $out/bin/p; echo \${q} > $out/nix-support/propagated-user-env-packages";
        chan = unpackChannel { name = "chan"; channelName = "mychan"; src = ${path.join(root, 'chan.tar.xz')}; };
        two = unpackChannel { name = "two"; channelName = "mychan"; src = ${path.join(root, 'two.tar.gz')}; };
      }`,
    );
    drv = instantiateAttrs(N, path.join(root, 'pk.nix'));
    expect(instantiateAttrs(O, path.join(root, 'pk.nix'))).toEqual(drv);
    store = await LocalStore.open({ root: O });
    const built = await engine().buildPaths(['a', 'b', 'c', 'q', 'p'].map((k) => drv[k]!));
    outs = Object.fromEntries(['a', 'b', 'c', 'q', 'p'].map((k, i) => [k, built[i]!.result.builtOutputs!.out!]));
  }, 180_000);

  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
    if (root) await removeTree(root);
  });

  it('a profile with priorities, merged directories and a propagated package: the same .drv and tree as nix-env', async () => {
    const theirs = nixEnvInstall('prof1', ['a', 'b', 'p']);
    expect(theirs.error).toBeUndefined();
    const description = 'B ${x}\n"q"';
    const env = await buildEnv(store, [pkg('a'), pkg('b', { description, priority: 3 }), pkg('p')]);
    expect(env.derivation.drvPath).toBe(theirs.drv);
    const [r] = await engine().buildPaths([env.derivation.drvPath]);
    const out = r!.result.builtOutputs!.out!;
    expect(out).toBe(theirs.out);
    expect(pathFacts(O, [out, env.manifest])).toEqual(pathFacts(N, [out, env.manifest]));
    // b's bin/x (priority 3) won over a's and q's; q came along through p; share/ holds both packages.
    expect(await fsp.readlink(path.join(O, out, 'bin', 'x'))).toBe(`${outs.b}/bin/x`);
    expect(await fsp.readlink(path.join(O, out, 'bin', 'q'))).toBe(`${outs.q}/bin/q`);
    expect((await fsp.readdir(path.join(O, out, 'share'))).sort()).toEqual(['a', 'b', 'link-a']);
    expect(await fsp.readlink(path.join(O, out, 'manifest.nix'))).toBe(env.manifest);
    expect(nixVerify(O).status).toBe(0);
  }, 120_000);

  it('keep-env-derivations and an inactive package: the same manifest and .drv as nix-env', async () => {
    const r = runNix('nix-env', [
      '--store',
      N,
      '-p',
      path.join(root, 'prof3'),
      '-f',
      path.join(root, 'pk.nix'),
      '-i',
      '-A',
      'c',
      '--option',
      'keep-env-derivations',
      'true',
      ...nixArgs(),
    ]);
    expect(r.status, r.stderr).toBe(0);
    const out = readlinkSync(path.join(root, readlinkSync(path.join(root, 'prof3'))));
    const theirs = nix('nix-store', ['--store', N, '-q', '--deriver', out]);
    const env = await buildEnv(store, [{ ...pkg('c'), drvPath: drv.c! }], { keepDerivations: true });
    expect(env.derivation.drvPath).toBe(theirs);
    // An inactive package stays in the manifest but not in the tree.
    const off = await buildEnv(store, [pkg('a'), pkg('q', { active: 'false' })]);
    const [built] = await engine().buildPaths([off.derivation.drvPath]);
    const tree = built!.result.builtOutputs!.out!;
    expect(await fsp.readlink(path.join(O, tree, 'bin'))).toBe(`${outs.a}/bin`);
    expect(await fsp.readFile(path.join(O, off.manifest), 'utf8')).toContain('meta = { active = "false"; }');
  }, 120_000);

  it("two packages bringing the same file with the same priority: Nix's collision error", async () => {
    const theirs = nixEnvInstall('prof2', ['a', 'c']);
    expect(theirs.error).toMatch(/have the same priority 5/);
    const env = await buildEnv(store, [pkg('a'), pkg('c')]);
    const err = await engine()
      .buildPaths([env.derivation.drvPath])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(err).toBeInstanceOf(BuildFailedError);
    const nixMsg = /error: (packages '[^\n]*)/.exec(theirs.error!)![1]!;
    const tail = logTail((err as Error).message)
      .join('\n')
      .replace(/\x1b\[[0-9;]*m/g, '');
    expect(tail).toContain(`error: ${nixMsg}`);
  }, 120_000);

  it('unpack-channel: the same output as Nix; a tarball of two entries fails in both', async () => {
    const r = runNix('nix-store', ['--store', N, '--realise', drv.chan!, ...nixArgs()]);
    expect(r.status, r.stderr).toBe(0);
    const [ours] = await engine().buildPaths([drv.chan!]);
    const out = ours!.result.builtOutputs!.out!;
    expect(out).toBe(r.stdout.trim());
    expect(pathFacts(O, [out])).toEqual(pathFacts(N, [out]));
    expect(await fsp.readFile(path.join(O, out, 'mychan', 'default.nix'), 'utf8')).toBe('{ }: 42\n');

    const bad = runNix('nix-store', ['--store', N, '--realise', drv.two!, ...nixArgs()]);
    expect(bad.status).toBe(100);
    const err = await engine()
      .buildPaths([drv.two!])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(err).toBeInstanceOf(BuildFailedError);
    expect((err as BuildFailedError).exitStatus).toBe(100);
    const nixMsg = /error: (channel tarball [^\n]*)/.exec(bad.stderr)![1]!;
    expect(
      logTail((err as Error).message)
        .join('\n')
        .replace(/\x1b\[[0-9;]*m/g, ''),
    ).toContain(nixMsg);
    expect(nixVerify(O).status).toBe(0);
  }, 120_000);
});
