/**
 * Nix 2.8's functional tests of substitution from binary caches (test/fixtures/nix-tests: binary-cache.sh,
 * substitute-with-invalid-ca.sh, ca/substitute.sh, ca/signatures.sh): the caches are written by Nix
 * (`nix copy --to file://…` from Nix's twin store), then `nix-store --realise` and `realise build` fetch from
 * them into twin stores (test/helpers/twin-store.ts): exit status, stdout, key stderr lines and database rows
 * compared at each step.
 */
import { cpSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { nixOk, removeTreeSync, runNix } from '../helpers/nix.js';
import { step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

/** A file:// binary cache of the twins' store directory under the test's root. */
function cacheUri(t: TwinStores, name: string, params = ''): string {
  return `file://${t.root}/${name}?store=${t.storeDir}${params}`;
}

/** `nix copy --to URI PATHS` (or other `nix` arguments) from Nix's twin store. */
function nixCopy(t: TwinStores, args: string[]): void {
  t.use('nix');
  const r = runNix('nix', ['--store', t.uri('nix'), 'copy', ...args], { env: t.env, cwd: t.tests });
  if (r.status !== 0) throw new Error(`nix copy ${args.join(' ')} failed:\n${r.stderr}`);
}

function nixKey(t: TwinStores, name: string, file: string): { secret: string; pub: string } {
  const secret = `${t.root}/${file}`;
  writeFileSync(secret, runNix('nix', ['key', 'generate-secret', '--key-name', name], { env: t.env }).stdout);
  const pub = runNix('nix', ['key', 'convert-secret-to-public'], { env: t.env, input: readFileSync(secret, 'utf8') }).stdout.trim();
  return { secret, pub };
}

const subst = (uri: string, ...more: string[]) => ['--option', 'substituters', uri, ...more];
const noSigs = ['--option', 'require-sigs', 'false'];

describe.skipIf(!nixOk())('Nix 2.8 functional tests (binary caches): realise vs nix-store on twin stores', () => {
  it('binary-cache.sh: fetched from a cache; a NAR of other contents, unsigned, missing and empty NARs (--fallback), an incomplete closure; signed caches', async () => {
    const t = new TwinStores();
    const { nix: built } = await step(t, t.instantiate('dependencies.nix'), 0);
    const outPath = built.stdout.trim();
    const cacheDir = `${t.root}/binary-cache`;
    const cache = cacheUri(t, 'binary-cache');
    nixCopy(t, ['--to', cache, outPath]);

    // basicDownloadTests (a file:// cache, as LocalBinaryCacheStore)
    t.clear();
    await step(t, [outPath, ...subst(cache), ...noSigs], 0);
    for (const side of sides) expect((t.use(side), statSync(`${outPath}/program`).mode & 0o111)).toBe(0o111);

    // A NAR whose contents are not those of its narinfo: "hash mismatch", and without --fallback nothing is built.
    t.clear();
    const nar = `${cacheDir}/nar/${readdirSync(`${cacheDir}/nar`).filter((n) => n.endsWith('.nar.xz'))[0]!}`;
    renameSync(nar, `${nar}.good`);
    mkdirSync(`${t.root}/empty`);
    writeFileSync(nar, execFileSync('xz', [], { input: execFileSync('nix-store', ['--dump', `${t.root}/empty`]) }));
    const mismatch = await step(t, [...t.instantiate('dependencies.nix'), ...subst(cache), ...noSigs], 1);
    expect(mismatch.ours.stderr).toContain('hash mismatch');
    renameSync(`${nar}.good`, nar);

    // An unsigned cache is refused when signatures are required.
    t.clear();
    await step(t, [outPath, ...subst(cache)], 1);

    // NARs gone: the derivations are built (no --fallback needed).
    t.clear();
    renameSync(`${cacheDir}/nar`, `${cacheDir}/nar2`);
    await step(t, [...t.instantiate('dependencies.nix'), ...subst(cache), ...noSigs], 0, { unordered: true });
    // Empty NAR files: an error, unless --fallback.
    t.clear();
    rmSync(`${cacheDir}/nar`, { recursive: true, force: true }); // (Nix made it again when it opened the cache)
    mkdirSync(`${cacheDir}/nar`);
    for (const n of readdirSync(`${cacheDir}/nar2`)) writeFileSync(`${cacheDir}/nar/${n}`, '');
    const drvs = t.instantiate('dependencies.nix');
    await step(t, [...drvs, ...subst(cache), ...noSigs], 1);
    t.clear();
    await step(t, [...t.instantiate('dependencies.nix'), ...subst(cache), ...noSigs, '--fallback'], 0, { unordered: true });
    rmSync(`${cacheDir}/nar`, { recursive: true });
    renameSync(`${cacheDir}/nar2`, `${cacheDir}/nar`);

    // An incomplete closure (input-2's narinfo gone): input-2 and what needs it are built, the rest fetched.
    t.clear();
    for (const n of readdirSync(cacheDir).filter((f) => f.endsWith('.narinfo')))
      if (/StorePath:.*dependencies-input-2/.test(readFileSync(`${cacheDir}/${n}`, 'utf8'))) rmSync(`${cacheDir}/${n}`);
    const incomplete = await step(t, [...t.instantiate('dependencies.nix'), ...subst(cache), ...noSigs], 0, { unordered: true });
    for (const re of [/don't know how to build/, /building.*input-1/, /building.*input-2/, /copying path.*input-0/, /copying path.*top/])
      expect(incomplete.ours.stderr).toMatch(re);

    // A signed cache.
    rmSync(cacheDir, { recursive: true });
    const [k1, k2, k3] = [nixKey(t, 'test.nixos.org-1', 'sk1'), nixKey(t, 'test.nixos.org-1', 'sk2'), nixKey(t, 'foo.nixos.org-1', 'sk3')];
    nixCopy(t, ['--to', cacheUri(t, 'binary-cache', `&secret-key=${k1.secret}`), outPath]);
    t.clear();
    await step(t, [outPath, ...subst(cache)], 1);
    t.clear();
    await step(t, [outPath, ...subst(cache), '--option', 'trusted-public-keys', k2.pub], 1);
    await step(t, [outPath, ...subst(cache), '--option', 'trusted-public-keys', `${k3.pub} ${k1.pub}`], 0);
    // A narinfo without its References line does not match its signature.
    t.clear();
    const cacheDir2 = `${t.root}/binary-cache-2`;
    cpSync(cacheDir, cacheDir2, { recursive: true });
    for (const n of readdirSync(cacheDir2).filter((f) => f.endsWith('.narinfo'))) {
      const f = `${cacheDir2}/${n}`;
      writeFileSync(f, readFileSync(f, 'utf8').replace(/^References:.*\n/m, ''));
    }
    const cache2 = cacheUri(t, 'binary-cache-2');
    await step(t, [outPath, ...subst(cache2), '--option', 'trusted-public-keys', k1.pub], 1);
    await step(t, [outPath, ...subst(`${cache2} ${cache}`), '--option', 'trusted-public-keys', k1.pub], 0);
  }, 180_000);

  it("substitute-with-invalid-ca.sh: a narinfo whose NAR is another path's (its content address does not match) is refused", async () => {
    const t = new TwinStores();
    writeFileSync(`${t.root}/good.txt`, 'I’m a good path\n');
    writeFileSync(`${t.root}/bad.txt`, 'I’m a bad path\n');
    t.use('nix');
    const add = (f: string) => runNix('nix-store', ['--store', t.uri('nix'), '--add', `${t.root}/${f}`], { env: t.env }).stdout.trim();
    const [good, bad] = [add('good.txt'), add('bad.txt')];
    const cacheDir = `${t.root}/binary-cache`;
    const cache = cacheUri(t, 'binary-cache');
    nixCopy(t, ['--to', cache, good, bad]);
    const info = (p: string) => `${cacheDir}/${p.slice(t.storeDir.length + 1, t.storeDir.length + 33)}.narinfo`;
    const fields = ['URL', 'FileHash', 'FileSize', 'NarHash', 'NarSize'];
    const kept = readFileSync(info(good), 'utf8')
      .split('\n')
      .filter((l) => l && !fields.some((f) => l.startsWith(`${f}:`)));
    const taken = readFileSync(info(bad), 'utf8')
      .split('\n')
      .filter((l) => fields.some((f) => l.startsWith(`${f}:`)));
    writeFileSync(info(good), [...kept, ...taken, ''].join('\n'));
    t.clear();
    const r = await step(t, [good, ...subst(cache), ...noSigs], 1);
    expect(r.nix.stderr).toContain(good);
  }, 120_000);
  it('ca/substitute.sh: a content-addressed closure substituted with -j0, realisations with it; input-addressed outputs substituted without realisations in the cache get theirs', async () => {
    const t = new TwinStores();
    const cache = cacheUri(t, 'binary_cache');
    const attr = (name: string) => t.instantiate('ca/content-addressed.nix', ['-A', name]);
    const [top] = attr('transitivelyDependentCA');
    await step(t, [top!], 0);
    nixCopy(t, ['--to', cache, '--file', 'ca/content-addressed.nix', 'transitivelyDependentCA']);
    expect(readdirSync(`${t.root}/binary_cache/realisations`).length).toBeGreaterThan(0);
    t.clear();
    await step(t, [...attr('transitivelyDependentCA'), ...subst(cache), ...noSigs, '-j0'], 0);
    for (const side of sides) expect(t.rows(side).realisations).toHaveLength(4);

    // simple.nix, its realisations erased from the cache.
    t.clear();
    const [simple] = t.instantiate('simple.nix');
    await step(t, [simple!], 0);
    nixCopy(t, ['--to', cache, '--file', 'simple.nix', '']);
    rmSync(`${t.root}/binary_cache/realisations`, { recursive: true });
    t.clear();
    await step(t, [...t.instantiate('simple.nix'), ...subst(cache), ...noSigs, '-j0'], 0);
    for (const side of sides) expect(t.rows(side).realisations).toHaveLength(1);
  }, 120_000);

  it('ca/signatures.sh: content-addressed outputs copied to a signed cache, substituted back with its key', async () => {
    const t = new TwinStores();
    const k1 = nixKey(t, 'cache1.example.org', 'sk1');
    const cache = cacheUri(t, 'remote_store');
    for (const name of ['rootCA', 'dependentCA', 'transitivelyDependentCA', 'dependentNonCA', 'dependentFixedOutput']) {
      t.clear();
      rmSync(`${t.root}/remote_store`, { recursive: true, force: true });
      const drvs = t.instantiate('ca/content-addressed.nix', ['-A', name]);
      const { nix: built } = await step(t, drvs, 0);
      // (The input-addressed outputs signed as Nix's store signs what it builds with secret-key-files.)
      const signed = runNix('nix', ['--store', t.uri('nix'), 'store', 'sign', '-k', k1.secret, '-r', ...built.stdout.trim().split('\n')], { env: t.env });
      expect(signed.status, signed.stderr).toBe(0);
      nixCopy(t, [
        '--to',
        cache,
        '--secret-key-files',
        k1.secret,
        '--file',
        'ca/content-addressed.nix',
        ...(name === 'rootCA' ? ['rootCA.out', 'rootCA.dev', 'rootCA.foo'] : [name]),
      ]);
      t.clear();
      await step(t, [...t.instantiate('ca/content-addressed.nix', ['-A', name]), ...subst(cache), '--option', 'trusted-public-keys', k1.pub, '-j0'], 0);
    }
  }, 180_000);
  it("ca/duplicate-realisation-in-closure.sh: a cached realisation whose dependency differs from the store's is skipped (Nix's warning), so the closure holds one current-time", async () => {
    const t = new TwinStores();
    const cache = cacheUri(t, 'remote_store');
    const attr = (a: string) => t.instantiate('ca/nondeterministic.nix', ['-A', a]);
    const built = async (args: string[]) => {
      const r = await t.build('nix', args);
      expect(r.status, r.stderr).toBe(0);
    };
    await built(attr('dep1'));
    nixCopy(t, ['--to', cache, '--file', 'ca/nondeterministic.nix', 'dep1']);
    t.clear();
    const dep2 = attr('dep2');
    // Another second, so that current-time is built with other contents than the cache's.
    await new Promise((r) => setTimeout(r, 1100));
    await built(dep2);
    // Ours starts as a copy of Nix's store (current-time is not deterministic).
    t.use('ours');
    t.use('nix');
    for (const d of ['ours-store', 'ours']) removeTreeSync(`${t.root}/${d}`);
    execFileSync('cp', ['-a', t.storeDir, `${t.root}/ours-store`]);
    execFileSync('cp', ['-a', `${t.root}/nix`, `${t.root}/ours`]);
    const r = await step(t, [...attr('toplevel'), ...subst(cache), ...noSigs], 0);
    const warnings = (stderr: string) => stderr.match(/^warning: substituter .*\nLocal: .*\nRemote: .*$/gm);
    expect(warnings(r.nix.stderr)?.[0]).toContain(`substituter '${cache.split('?')[0]!}' has an incompatible realisation for '`);
    expect(warnings(r.ours.stderr)).toEqual(warnings(r.nix.stderr));
  }, 120_000);
  it.each([
    ['zstd.sh', 'zstd', '.nar.zst'],
    ['brotli.sh', 'br', '.nar.br'],
  ])(
    '%s: a cache compressed with %s, written by Nix and by realise copy, substituted by both',
    async (_script, compression, ext) => {
      const t = new TwinStores();
      const { nix: built } = await step(t, t.instantiate('dependencies.nix'), 0);
      const outPath = built.stdout.trim();
      const hash = (side: Side) => (t.use(side), runNix('nix', ['hash', 'path', outPath], { env: t.env }).stdout.trim());
      const want = hash('nix');
      const cacheN = cacheUri(t, 'cache-nix', `&compression=${compression}`);
      nixCopy(t, ['--to', cacheN, outPath]);
      // realise copy writes the other one, from our store.
      const cacheO = cacheUri(t, 'cache-ours', `&compression=${compression}`);
      const copied = await t.command('ours', ['nix', 'copy'], ['copy', '--to', cacheO, outPath]);
      expect(copied.status, copied.stderr).toBe(0);
      for (const dir of ['cache-nix', 'cache-ours']) {
        expect(readdirSync(`${t.root}/${dir}/nar`).every((n) => n.endsWith(ext))).toBe(true);
        const narinfos = (d: string) => readdirSync(`${t.root}/${d}`).filter((n) => n.endsWith('.narinfo'));
        expect(narinfos(dir)).toEqual(narinfos('cache-nix'));
      }
      for (const cache of [cacheN, cacheO]) {
        t.clear();
        await step(t, [outPath, ...subst(cache), ...noSigs], 0);
        for (const side of sides) expect(hash(side)).toBe(want);
      }
    },
    120_000,
  );

  it('compression-levels.sh: realise copy with xz compression-level 0 writes larger NAR files than with level 5', async () => {
    const t = new TwinStores();
    const { ours: built } = await step(t, t.instantiate('dependencies.nix'), 0);
    const outPath = built.stdout.trim();
    const fileSizes = async (level: number) => {
      const name = `cache-${level}`;
      const r = await t.command('ours', ['nix', 'copy'], ['copy', '--to', cacheUri(t, name, `&compression=xz&compression-level=${level}`), outPath]);
      expect(r.status, r.stderr).toBe(0);
      let sum = 0;
      for (const n of readdirSync(`${t.root}/${name}`).filter((f) => f.endsWith('.narinfo')))
        sum += Number(/^FileSize: (\d+)$/m.exec(readFileSync(`${t.root}/${name}/${n}`, 'utf8'))![1]);
      return sum;
    };
    expect(await fileSizes(0)).toBeGreaterThan(await fileSizes(5));
  }, 120_000);
});
