/**
 * How builtin:unpack-channel and builtin:buildenv fail, against real Nix 2.8 on twin chroot stores: bad
 * tarballs (libarchive's words: no tar header at all, a damaged or truncated member header, truncated member
 * data, a missing file), failing system calls (Nix's SysError wording, logical paths, strerror as a value)
 * and a C++ exception that is not a Nix error (`stoi`, written without `error:`). The build logs must be
 * the same bytes (colours included), the exit status the same, and nothing registered.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, rootOnly, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { nixVerify } from '../scheduler/helpers.js';
import { tarEntry } from '../helpers/tar.js';

/** The one build log under a chroot store `root`, decompressed (Nix and we write it bzip2'd). */
function buildLog(root: string): string {
  const logs = path.join(root, 'nix/var/log/nix/drvs');
  const files = readdirSync(logs).flatMap((d) => readdirSync(path.join(logs, d)).map((f) => path.join(logs, d, f)));
  expect(files).toHaveLength(1);
  return execFileSync('bzip2', ['-dc', files[0]!], { encoding: 'utf8' });
}

describe.skipIf(!nixOk())('built-ins fail as in Nix 2.8: the same log bytes and exit status', () => {
  let root: string;
  let treeHash: string;
  beforeAll(() => {
    root = tempDir('realise-builtin-errors-');
    chmodSync(root, 0o755);
    const chan = path.join(root, 'chan');
    mkdirSync(path.join(chan, 'c'), { recursive: true });
    writeFileSync(path.join(chan, 'c', 'default.nix'), 'x\n');
    // Two headers (c/, c/default.nix) at 0 and 512, the data at 1024, the end at 1536.
    execFileSync('tar', ['--format=ustar', '-C', chan, '-cf', path.join(root, 'chan.tar'), 'c']);
    const tar = readFileSync(path.join(root, 'chan.tar'));
    writeFileSync(path.join(root, 'junk.tar'), Buffer.alloc(1024, 7));
    writeFileSync(path.join(root, 'short.tar'), 'f\n');
    writeFileSync(path.join(root, 'empty.tar'), '');
    writeFileSync(path.join(root, 'midjunk.tar'), Buffer.concat([tar.subarray(0, 512), Buffer.alloc(1024, 7)]));
    writeFileSync(path.join(root, 'cuthdr.tar'), tar.subarray(0, 612));
    writeFileSync(path.join(root, 'cutdata.tar'), tar.subarray(0, 1024));
    writeFileSync(path.join(root, 'cutend.tar'), tar.subarray(0, 1700));
    // A NAR of a small tree: bzip2'd (not decoded by fetchurl), cut short, with bytes after its end.
    mkdirSync(path.join(root, 'tree', 'sub'), { recursive: true });
    writeFileSync(path.join(root, 'tree', 'sub', 'f'), 't\n');
    const nar = execFileSync('nix-store', ['--dump', path.join(root, 'tree')]);
    writeFileSync(path.join(root, 'tree.nar.bz2'), execFileSync('bzip2', ['-c'], { input: nar }));
    writeFileSync(path.join(root, 'cut.nar'), nar.subarray(0, 100));
    writeFileSync(path.join(root, 'trail.nar'), Buffer.concat([nar, Buffer.from('garbage!')]));
    writeFileSync(path.join(root, 'plain.txt'), 'hello\n');
    treeHash = nix('nix-hash', ['--type', 'sha256', '--base32', path.join(root, 'tree')]);
    // Members libarchive refuses: below a symlink, a hard link to nothing, below a file.
    const dirC = tarEntry('c', '5', '');
    const end = Buffer.alloc(1024);
    writeFileSync(path.join(root, 'through.tar'), Buffer.concat([dirC, tarEntry('c/l', '2', '', '/tmp'), tarEntry('c/l/x', '0', 'x'), end]));
    writeFileSync(path.join(root, 'hardmiss.tar'), Buffer.concat([dirC, tarEntry('c/h', '1', '', 'c/missing'), end]));
    writeFileSync(path.join(root, 'fileparent.tar'), Buffer.concat([dirC, tarEntry('c/f', '0', 'x'), tarEntry('c/f/g', '0', 'y'), end]));
    mkdirSync(path.join(root, 'pkg', 'bin'), { recursive: true });
    writeFileSync(path.join(root, 'pkg', 'bin', 'p'), 'p\n');
  });
  afterAll(() => execFileSync('chmod', ['-R', 'u+w', root]));

  const channel = (name: string, src: string, channelName = 'a') =>
    `derivation { name = "${name}"; system = "builtin"; builder = "builtin:unpack-channel"; channelName = "${channelName}"; src = ${src}; }`;
  const buildenv = (name: string, derivations: string, manifest = '/x') =>
    `derivation { name = "${name}"; system = "builtin"; builder = "builtin:buildenv"; manifest = "${manifest}"; derivations = "${derivations}"; }`;
  const cases: Array<[string, (r: string) => string, RegExp]> = [
    ['no tar header (junk)', (r) => channel('junk', `${r}/junk.tar`), /failed to open archive: .*Unrecognized archive format/],
    ['shorter than a header', (r) => channel('short', `${r}/short.tar`), /failed to open archive: .*Unrecognized archive format/],
    ['an empty file is an empty archive', (r) => channel('empty', `${r}/empty.tar`), /contains more than one file/],
    ['a damaged second header', (r) => channel('midjunk', `${r}/midjunk.tar`), /cannot get archive member name: .*Damaged tar archive/],
    ['a truncated header', (r) => channel('cuthdr', `${r}/cuthdr.tar`), /cannot get archive member name: .*Truncated tar archive/],
    ['truncated member data', (r) => channel('cutdata', `${r}/cutdata.tar`), /failed to extract archive \(.*Truncated tar archive/],
    ['a truncated end block', (r) => channel('cutend', `${r}/cutend.tar`), /cannot get archive member name: .*Truncated tar archive/],
    ['a member below a symlink', (r) => channel('through', `${r}/through.tar`), /Cannot extract through symlink \/nix\/store\/.*-through\/c\/l\/x/],
    ['a hard link to nothing', (r) => channel('hardmiss', `${r}/hardmiss.tar`), /Hard-link target '\/nix\/store\/.*-hardmiss\/c\/missing' does not exist\./],
    ['a member below a file', (r) => channel('fileparent', `${r}/fileparent.tar`), /Could not stat \/nix\/store\/.*-fileparent\/c\/f\/g/],
    ['a missing tarball', () => channel('missing', '"/nix/store/00000000000000000000000000000000-none.tar"'), /Failed to open '/],
    ['a channel name with a slash', (r) => channel('slash', `${r}/chan.tar`, 'a/b'), /renaming channel directory: .*No such file or directory/],
    ['an empty channel name', (r) => channel('noname', `${r}/chan.tar`, ''), /renaming channel directory: .*Directory not empty/],
    ['buildenv: a missing package', () => buildenv('benv-missing', 'true 5 1 /nix/store/00000000000000000000000000000000-none'), /opening directory '/],
    ['buildenv: an empty manifest', (r) => buildenv('benv-manifest', `true 5 1 \${${r}/pkg}`, ''), /creating symlink from '.*manifest.nix/],
    ['buildenv: a priority that is no number', (r) => buildenv('benv-stoi', `true x 1 \${${r}/pkg}`), /^stoi\n$/],
  ];

  /**
   * Instantiate `expr` into twin chroot stores under `root/<what>`, build it with Nix (N) and with our
   * engine (O); Nix's status, what our engine returned or threw, and the store roots.
   */
  async function buildBoth(what: string, expr: string) {
    const dir = path.join(root, what.replace(/\W+/g, '-'));
    mkdirSync(dir);
    const N = path.join(dir, 'N');
    const O = path.join(dir, 'O');
    writeFileSync(path.join(dir, 'e.nix'), expr);
    const drv = nix('nix-instantiate', ['--store', N, path.join(dir, 'e.nix')]);
    expect(nix('nix-instantiate', ['--store', O, path.join(dir, 'e.nix')])).toBe(drv);
    const theirs = runNix('nix-store', ['--store', N, '--realise', drv]);
    const store = await LocalStore.open({ root: O });
    const engine = new BuildEngine({ store });
    try {
      const ours = await engine.buildPaths([drv]).then(
        (r) => r,
        (x: unknown) => x,
      );
      return { drv, N, O, theirs, ours };
    } finally {
      await engine.close();
      await store.close();
    }
  }

  /** A failure with Nix's exit status; nothing of it registered, the store verifies. */
  function expectFailed(b: Awaited<ReturnType<typeof buildBoth>>, status: number): void {
    expect(b.theirs.status, b.theirs.stderr).toBe(status);
    expect(b.ours).toBeInstanceOf(BuildFailedError);
    expect((b.ours as BuildFailedError).exitStatus).toBe(status);
    expect(nixVerify(b.O).status).toBe(0);
    const outs = nix('nix-store', ['--store', b.O, '-q', '--outputs', b.drv]);
    expect(runNix('nix-store', ['--store', b.O, '--check-validity', outs]).status).toBe(1);
  }

  const uncoloured = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');

  it.each(cases)(
    '%s',
    async (what, expr, logPattern) => {
      const b = await buildBoth(what, expr(root));
      expectFailed(b, 100);
      const log = buildLog(b.N);
      expect(uncoloured(log)).toMatch(logPattern);
      expect(buildLog(b.O)).toBe(log);
    },
    60_000,
  );

  /** builtin:fetchurl of `file://<src>` (a path copied into the store: the input closure has it). */
  const fetch = (src: string, attrs: string) =>
    `derivation ({ name = "f"; system = "x86_64-linux"; builder = "builtin:fetchurl"; url = "file://\${${src}}"; outputHashAlgo = "sha256"; } // { ${attrs} })`;
  const unpack = (src: string) => fetch(src, `unpack = "1"; outputHashMode = "recursive"; outputHash = "${treeHash}";`);
  const fetchCases: Array<[string, (r: string) => string, number, RegExp]> = [
    ['unpack: a file shorter than the version string', (r) => unpack(`${r}/plain.txt`), 1, /^error: coroutine has finished$/m],
    ['unpack: a compressed NAR (not .xz)', (r) => unpack(`${r}/tree.nar.bz2`), 1, /^error: bad archive: input doesn't look like a Nix archive$/m],
    ['unpack: a NAR cut short', (r) => unpack(`${r}/cut.nar`), 1, /^error: coroutine has finished$/m],
    ['unpack: a directory (read as an empty file)', (r) => unpack(`${r}/tree`), 1, /^error: coroutine has finished$/m],
    ['flat: a directory is an empty file', (r) => fetch(`${r}/tree`, `outputHashMode = "flat"; outputHash = "${treeHash}";`), 102, /^$/],
  ];

  it.each(fetchCases)(
    'fetchurl %s',
    async (what, expr, status, logPattern) => {
      const b = await buildBoth(what, expr(root));
      expectFailed(b, status);
      // The same lines but the download's activity lines (their ids and progress counts differ).
      const lines = (log: string) =>
        uncoloured(
          log
            .split('\n')
            .filter((l) => !l.startsWith('@nix '))
            .join('\n'),
        );
      expect(lines(buildLog(b.N))).toMatch(logPattern);
      expect(lines(buildLog(b.O))).toBe(lines(buildLog(b.N)));
    },
    60_000,
  );

  it('fetchurl unpack: bytes after the NAR are not read (the same output as Nix)', async () => {
    const b = await buildBoth('trail', unpack(`${root}/trail.nar`));
    expect(b.theirs.status, b.theirs.stderr).toBe(0);
    expect(b.ours).not.toBeInstanceOf(Error);
    const out = b.theirs.stdout.trim();
    const narHash = (store: string) => nix('nix-store', ['--store', store, '-q', '--hash', out]);
    expect(narHash(b.O)).toBe(narHash(b.N));
    expect(nixVerify(b.O).status).toBe(0);
  }, 60_000);
});

describe.skipIf(!rootOnly('a full disk is a small tmpfs, which only root may mount') || !nixOk())('(root only) builtin:fetchurl on a full disk', () => {
  it("the download's failed write is Nix's 'writing to file: No space left on device'; nothing registered", async () => {
    const root = tempDir('realise-builtin-full-');
    const body = Buffer.alloc(3_000_000, 'z');
    const server = createServer((_req, res) => res.writeHead(200, { 'content-length': body.length }).end(body));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const mounts: string[] = [];
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/big`;
      const expr = `derivation { name = "big"; system = "x86_64-linux"; builder = "builtin:fetchurl"; url = "${url}";
        outputHashAlgo = "sha256"; outputHashMode = "flat"; outputHash = "${'0'.repeat(52)}"; }`;
      writeFileSync(path.join(root, 'e.nix'), expr);
      const [N, O] = ['N', 'O'].map((s) => {
        const d = path.join(root, s);
        mkdirSync(d);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'realise-full', d]);
        mounts.push(d);
        return d;
      }) as [string, string];
      const drv = nix('nix-instantiate', ['--store', N, path.join(root, 'e.nix')]);
      expect(nix('nix-instantiate', ['--store', O, path.join(root, 'e.nix')])).toBe(drv);
      const theirs = await runNixAsync('nix-store', ['--store', N, '--realise', drv]);
      expect(theirs.status).toBe(1);
      expect(theirs.stderr).toContain('error: writing to file: No space left on device\n');
      const store = await LocalStore.open({ root: O });
      const engine = new BuildEngine({ store });
      try {
        const err = await engine.buildPaths([drv]).then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(err).toBeInstanceOf(BuildFailedError);
        expect((err as BuildFailedError).exitStatus).toBe(1);
      } finally {
        await engine.close();
        await store.close();
      }
      const log = buildLog(O)
        .split('\n')
        .filter((l) => !l.startsWith('@nix '));
      expect(log.map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''))).toContain('error: writing to file: No space left on device');
      expect(nixVerify(O).status).toBe(0);
    } finally {
      for (const d of mounts) execFileSync('umount', ['-l', d]);
      await new Promise<void>((r) => server.close(() => r()));
    }
  }, 60_000);
});
