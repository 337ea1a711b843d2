/**
 * `realise copy --to URL` against `nix copy --to URL` (Nix 2.8) with the cache's settings in the URL's
 * query, as Nix takes them: compression, secret-key (a key file); priority is for readers and not written. The narinfos must agree on
 * everything but the compressed bytes (FileHash, FileSize, URL: encoders differ), the signature must be
 * there and valid for Nix, and the progress lines name the cache without its settings.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

/** narinfo fields without the ones that depend on the compressor's exact output. */
function narinfos(cache: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(cache)
    .filter((n) => n.endsWith('.narinfo'))
    .sort()) {
    out[f] = readFileSync(path.join(cache, f), 'utf8')
      .split('\n')
      .filter((l) => !/^(URL|FileHash|FileSize): /.test(l))
      .join('\n');
  }
  return out;
}

describe.skipIf(!nixOk())('realise copy vs nix copy, settings in the URL', () => {
  let dir: string;
  let out: string;
  let keyFile: string;
  let publicKey: string;
  beforeAll(() => {
    dir = tempDir();
    writeFileSync(
      path.join(dir, 'e.nix'),
      `rec {
      a = derivation { name = "cp-a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; };
      b = derivation { name = "cp-b"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo \${a} > $out"]; }; }`,
    );
    const drv = nix('nix-instantiate', ['--store', path.join(dir, 'S'), path.join(dir, 'e.nix'), '-A', 'b']);
    out = nix('nix-store', ['--store', path.join(dir, 'S'), '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', '--realise', drv]);
    keyFile = path.join(dir, 'sk');
    writeFileSync(keyFile, nix('nix', ['key', 'generate-secret', '--key-name', 'copy-test-1']));
    publicKey = nix('nix', ['key', 'convert-secret-to-public'], { input: readFileSync(keyFile, 'utf8') });
  });
  /** Nix 2.8 realising `out` into a new store `name` from the cache `cache`, with one more setting. */
  const nixSubstitutes = (name: string, cache: string, setting: string, value: string) =>
    runNix('nix-store', ['--store', path.join(dir, name), '--realise', out, '--option', 'substituters', `file://${cache}`, '--option', setting, value]);

  for (const compression of ['zstd', 'none', 'xz']) {
    it(`compression=${compression}&secret-key=FILE&priority=30`, async () => {
      const settings = `?compression=${compression}&secret-key=${keyFile}&priority=30`;
      const [N, O] = [path.join(dir, `N-${compression}`), path.join(dir, `O-${compression}`)];
      const n = runNix('nix', ['copy', '--store', path.join(dir, 'S'), '--to', `file://${N}${settings}`, out]);
      expect(n.status, n.stderr).toBe(0);
      const o = await realise(['copy', '--store', path.join(dir, 'S'), '--to', `file://${O}${settings}`, out]);
      expect(o.status, o.stderr).toBe(0);
      const copying = (s: string, d: string) =>
        s
          .split('\n')
          .filter((l) => l.startsWith('copying path'))
          .map((l) => l.replace(d, 'CACHE'));
      expect(copying(o.stderr, O)).toEqual(copying(n.stderr, N));
      expect(Object.values(narinfos(O)).join('\n')).toContain(`Compression: ${compression}`);
      expect(Object.values(narinfos(O)).join('\n')).toContain('Sig: copy-test-1:');
      expect(narinfos(O)).toEqual(narinfos(N));
      expect(readFileSync(path.join(O, 'nix-cache-info'), 'utf8')).toBe(readFileSync(path.join(N, 'nix-cache-info'), 'utf8'));
      // Nix substitutes from it, checking our signature.
      const r = nixSubstitutes(`R-${compression}`, O, 'trusted-public-keys', publicKey);
      expect(r.status, r.stderr).toBe(0);
    });
  }

  it('compression=bzip2: the same narinfos but for the compressed file (our encoder, not libbz2), and Nix substitutes from it', async () => {
    const settings = `?compression=bzip2&secret-key=${keyFile}`;
    const [N, O] = [path.join(dir, 'N-bzip2'), path.join(dir, 'O-bzip2')];
    const n = runNix('nix', ['copy', '--store', path.join(dir, 'S'), '--to', `file://${N}${settings}`, out]);
    expect(n.status, n.stderr).toBe(0);
    const o = await realise(['copy', '--store', path.join(dir, 'S'), '--to', `file://${O}${settings}`, out]);
    expect(o.status, o.stderr).toBe(0);
    const withoutFile = (m: Record<string, string>) =>
      Object.fromEntries(
        Object.entries(m).map(([k, v]) => [
          k,
          v
            .split('\n')
            .filter((l) => !/^(URL|FileHash|FileSize): /.test(l))
            .join('\n'),
        ]),
      );
    expect(Object.values(narinfos(O)).join('\n')).toContain('Compression: bzip2');
    const nars = readdirSync(path.join(O, 'nar'));
    expect(nars.length).toBe(2);
    for (const f of nars)
      expect(
        readFileSync(path.join(O, 'nar', f))
          .subarray(0, 3)
          .toString(),
      ).toBe('BZh');
    expect(nars.every((f) => f.endsWith('.nar.bz2'))).toBe(true);
    expect(withoutFile(narinfos(O))).toEqual(withoutFile(narinfos(N)));
    const r = nixSubstitutes('R-bzip2', O, 'trusted-public-keys', publicKey);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('copying path');
  });

  it('compression=gzip: NAR files named as Nix 2.8 names them (no extension), gzip data, and Nix substitutes from it', async () => {
    const [N, O] = [path.join(dir, 'N-gzip'), path.join(dir, 'O-gzip')];
    expect(runNix('nix', ['copy', '--store', path.join(dir, 'S'), '--to', `file://${N}?compression=gzip`, out]).status).toBe(0);
    const o = await realise(['copy', '--store', path.join(dir, 'S'), '--to', `file://${O}?compression=gzip`, out]);
    expect(o.status, o.stderr).toBe(0);
    const urls = (cache: string) =>
      Object.keys(narinfos(cache)).map((f) => /^URL: nar\/[0-9a-z]{52}(\.nar.*)$/m.exec(readFileSync(path.join(cache, f), 'utf8'))?.[1]);
    expect(urls(O)).toEqual(urls(N));
    expect(urls(O)).toEqual(['.nar', '.nar']);
    for (const f of readdirSync(path.join(O, 'nar'))) expect(readFileSync(path.join(O, 'nar', f)).subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    expect(narinfos(O)).toEqual(narinfos(N));
    const r = nixSubstitutes('R-gzip', O, 'require-sigs', 'false');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('copying path');
  });

  it('a bad setting value is refused before anything is written', async () => {
    const o = await realise(['copy', '--store', path.join(dir, 'S'), '--to', `file://${path.join(dir, 'bad')}?compression=lz4`, out]);
    expect(o.status).toBe(1);
    expect(o.stderr).toContain("setting 'compression' has invalid value 'lz4'");
  });
});
