/**
 * How builtin:unpack-channel and builtin:buildenv fail, against real Nix 2.8 on twin chroot stores: bad
 * tarballs (libarchive's words: no tar header at all, a damaged or truncated member header, truncated member
 * data, a missing file), failing system calls (Nix's SysError wording, logical paths, strerror as a value)
 * and a C++ exception that is not a Nix error (`stoi`, written without `error:`). The build logs must be
 * the same bytes (colours included), the exit status the same, and nothing registered.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { nixVerify } from '../scheduler/helpers.js';

/** The one build log under a chroot store `root`, decompressed (Nix and we write it bzip2'd). */
function buildLog(root: string): string {
  const logs = path.join(root, 'nix/var/log/nix/drvs');
  const files = readdirSync(logs).flatMap((d) => readdirSync(path.join(logs, d)).map((f) => path.join(logs, d, f)));
  expect(files).toHaveLength(1);
  return execFileSync('bzip2', ['-dc', files[0]!], { encoding: 'utf8' });
}

describe.skipIf(!nixOk())('built-ins fail as in Nix 2.8: the same log bytes and exit status', () => {
  let root: string;
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
    ['a missing tarball', () => channel('missing', '"/nix/store/00000000000000000000000000000000-none.tar"'), /Failed to open '/],
    ['a channel name with a slash', (r) => channel('slash', `${r}/chan.tar`, 'a/b'), /renaming channel directory: .*No such file or directory/],
    ['an empty channel name', (r) => channel('noname', `${r}/chan.tar`, ''), /renaming channel directory: .*Directory not empty/],
    ['buildenv: a missing package', () => buildenv('benv-missing', 'true 5 1 /nix/store/00000000000000000000000000000000-none'), /opening directory '/],
    ['buildenv: an empty manifest', (r) => buildenv('benv-manifest', `true 5 1 \${${r}/pkg}`, ''), /creating symlink from '.*manifest.nix/],
    ['buildenv: a priority that is no number', (r) => buildenv('benv-stoi', `true x 1 \${${r}/pkg}`), /^stoi\n$/],
  ];

  it.each(cases)(
    '%s',
    async (_what, expr, logPattern) => {
      const dir = path.join(root, _what.replace(/\W+/g, '-'));
      mkdirSync(dir);
      const N = path.join(dir, 'N');
      const O = path.join(dir, 'O');
      writeFileSync(path.join(dir, 'e.nix'), expr(root));
      const drv = nix('nix-instantiate', ['--store', N, path.join(dir, 'e.nix')]);
      expect(nix('nix-instantiate', ['--store', O, path.join(dir, 'e.nix')])).toBe(drv);

      const theirs = runNix('nix-store', ['--store', N, '--realise', drv]);
      expect(theirs.status, theirs.stderr).toBe(100);
      const store = await LocalStore.open({ root: O });
      const engine = new BuildEngine({ store });
      try {
        const err = await engine.buildPaths([drv]).then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(err).toBeInstanceOf(BuildFailedError);
        expect((err as BuildFailedError).exitStatus).toBe(100);
      } finally {
        await engine.close();
        await store.close();
      }
      const log = buildLog(N);
      expect(log.replace(/\x1b\[[0-9;]*m/g, '')).toMatch(logPattern);
      expect(buildLog(O)).toBe(log);
      expect(nixVerify(O).status).toBe(0);
      expect(nix('nix-store', ['--store', O, '-q', '--outputs', drv])).not.toBe('');
      expect(runNix('nix-store', ['--store', O, '--check-validity', nix('nix-store', ['--store', O, '-q', '--outputs', drv])]).status).toBe(1);
    },
    60_000,
  );
});
