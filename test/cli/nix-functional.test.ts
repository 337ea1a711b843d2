/**
 * Nix 2.8's own functional tests (test/fixtures/nix-tests, vendored from tag 2.8.0): the steps of their
 * scripts that build (`nix-store --realise`, `nix-build`) run with real Nix and with `realise build` on twin
 * stores of one store directory, unsandboxed as Nix's suite runs them (test/helpers/twin-store.ts). Each
 * step compares exit status, stdout, the key lines of stderr and every database row; what the script
 * itself asserts (an output's contents, three builds at once, …) is asserted for both.
 */
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nixOk, runNix } from '../helpers/nix.js';
import { keyLines, step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

describe.skipIf(!nixOk())('Nix 2.8 functional tests: realise vs nix-store on twin stores', () => {
  it('fixed.sh: bad hash (102, the good path as a side effect), good, --check with another content (102), good2, parallelSame, sameAsAdd', async () => {
    const t = new TwinStores();
    const [good0] = t.instantiate('fixed.nix', ['-A', 'good.0']);
    const [bad] = t.instantiate('fixed.nix', ['-A', 'bad']);
    await step(t, [bad!], 102);
    // The good path was produced by the bad build.
    t.use('nix');
    const goodOut = runNix('nix-store', ['--store', t.uri('nix'), '-q', good0!], { env: t.env }).stdout.trim();
    for (const side of sides) expect(t.rows(side).validPaths.some((r) => (r as { path: string }).path === goodOut)).toBe(true);

    await step(t, t.instantiate('fixed.nix', ['-A', 'good']), 0);
    const check = await step(t, [...t.instantiate('fixed.nix', ['-A', 'check']), '--check'], 102);
    expect(check.ours.stderr).toContain('hash mismatch in fixed-output derivation');
    await step(t, t.instantiate('fixed.nix', ['-A', 'good2']), 0);
    expect(t.instantiate('fixed.nix', ['-A', 'good.1'])).toHaveLength(1);

    t.clear();
    // Two derivations of one output path, two slots: one builds, the other waits for its lock and finds it valid.
    const same = await step(t, [...t.instantiate('fixed.nix', ['-A', 'parallelSame']), '-j2'], 0, { racing: true });
    expect(keyLines(same.ours.stderr).filter((l) => l.startsWith('building '))).toHaveLength(1);
    expect(keyLines(same.ours.stderr).filter((l) => l.startsWith('waiting for lock on '))).toHaveLength(1);
    // (Still racing as far as the rows go: parallelSame's output and its deriver are in them.)
    const { nix } = await step(t, t.instantiate('fixed.nix', ['-A', 'sameAsAdd']), 0, { racing: true });
    t.use('nix');
    const printed = runNix(
      'nix-store',
      ['--store', t.uri('nix'), '--print-fixed-path', '--recursive', 'sha256', '1ixr6yd3297ciyp9im522dfxpqbkhcw0pylkb2aab915278fqaik', 'fixed'],
      { env: t.env },
    );
    expect(nix.stdout.trim()).toBe(printed.stdout.trim());
  }, 120_000);

  it('simple.sh, dependencies.sh and check.sh: build, read-only output, directed delete, closure, referrers and derivers, --check, --repeat 3', async () => {
    const t = new TwinStores();
    const { nix } = await step(t, t.instantiate('simple.nix'), 0);
    const simple = nix.stdout.trim();
    for (const side of sides) {
      expect(t.read(side, `${simple}/hello`)).toBe('Hello World!\n');
      expect(statSync(simple).mode & 0o222).toBe(0); // (! [ -w $outPath ]), also for root
    }
    // Directed delete: nothing roots the output.
    await step(t, ['--delete', simple], 0, { run: (side) => t.command(side, ['nix-store', '--delete', simple], ['gc', '--delete', simple]) });
    for (const side of sides) expect((t.use(side), existsSync(simple))).toBe(false);

    const deps = t.instantiate('dependencies.nix');
    const built = await step(t, deps, 0);
    const out = built.nix.stdout.trim();
    for (const side of sides) expect(t.read(side, `${out}/foobar`)).toBe('FOOBAR\n');
    // nix-store -quR DRV (the outputs' closure): `realise path-info -r DRV`; then what the script greps in it.
    t.use('nix');
    const closure = runNix('nix-store', ['--store', t.uri('nix'), '-quR', deps[0]!], { env: t.env })
      .stdout.trim()
      .split('\n');
    const ours = await t.command('ours', [], ['path-info', '-r', deps[0]!]);
    expect(ours.stdout.trim().split('\n').sort()).toEqual([...closure].sort());
    expect(closure).toContain(out);
    expect(closure.some((p) => p.includes('dependencies-input-1'))).toBe(false);
    const input2 = closure.find((p) => p.includes('dependencies-input-2'))!;
    // The referrers of input-2 include the output, and the derivers are set (on the database rows).
    const rows = t.rows('ours');
    expect(rows.refs).toContainEqual({ referrer: out, reference: input2 });
    const deriver = (p: string) => (rows.validPaths as { path: string; deriver: string }[]).find((r) => r.path === p)?.deriver;
    expect(deriver(out)).toBe(deps[0]);
    expect(deriver(input2)).toMatch(/-input-2\.drv$/);
    await step(t, [...deps, '--check'], 0);
    t.clear();
    await step(t, [...t.instantiate('dependencies.nix'), '--repeat', '3'], 0);
  }, 120_000);

  it('signing.sh: secret-key-files signs what is built here (both keys), not what is not; nix store verify of both stores', async () => {
    const t = new TwinStores();
    t.use('nix');
    for (const n of [1, 2]) {
      const r = runNix('nix-store', ['--store', t.uri('nix'), '--generate-binary-cache-key', `cache${n}.example.org`, `${t.root}/sk${n}`, `${t.root}/pk${n}`], {
        env: t.env,
      });
      expect(r.status, r.stderr).toBe(0);
    }
    const pk = (n: number) => readFileSync(`${t.root}/pk${n}`, 'utf8').trim();
    const keys = ['--option', 'secret-key-files', `${t.root}/sk1 ${t.root}/sk2`];
    const info = (side: Side, p: string) => {
      t.use(side);
      const r = runNix('nix', ['path-info', '--store', t.uri(side), '--json', p], { env: t.env });
      expect(r.status, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as Record<string, unknown>[]).map(({ registrationTime: _, ...rest }) => rest);
    };
    const verify = (side: Side, p: string, args: string[]) => {
      t.use(side);
      return runNix('nix', ['store', 'verify', '--store', t.uri(side), '-r', p, ...args], { env: t.env }).status;
    };
    const { nix: built } = await step(t, [...t.instantiate('dependencies.nix'), ...keys], 0);
    const out = built.stdout.trim();
    const { nix: unsigned } = await step(t, t.instantiate('simple.nix'), 0);
    const out2 = unsigned.stdout.trim();
    for (const side of sides) {
      expect(info(side, out)).toEqual(info('nix', out));
      expect(info(side, out2)).toEqual(info('nix', out2));
      const [signedInfo] = info(side, out) as { ultimate: boolean; signatures: string[] }[];
      expect(signedInfo!.ultimate).toBe(true);
      expect(signedInfo!.signatures.map((sig) => sig.split(':')[0])).toEqual(['cache1.example.org', 'cache2.example.org']);
      expect(info(side, out2)[0]!.signatures).toBeUndefined();
      expect(verify(side, out, ['--sigs-needed', '2', '--trusted-public-keys', `${pk(1)} ${pk(2)}`])).toBe(0);
      expect(verify(side, out, ['--sigs-needed', '2', '--trusted-public-keys', pk(1)])).toBe(2);
      expect(verify(side, out2, ['--sigs-needed', '1', '--trusted-public-keys', pk(1)])).toBe(2);
    }
    // A fixed output built with the keys is signed too.
    const { nix: ca } = await step(t, [...t.instantiate('fixed.nix', ['-A', 'good.0']), ...keys], 0);
    for (const side of sides) expect(info(side, ca.stdout.trim())).toEqual(info('nix', ca.stdout.trim()));
  }, 120_000);

  it('post-hook.sh and ca/post-hook.sh: the hook runs after each build, and for a resolved derivation again with the original', async () => {
    const t = new TwinStores();
    const hook = `${t.root}/hook.sh`;
    writeFileSync(hook, `#!/bin/sh\necho "$DRV_PATH" >> ${t.root}/hook-$HOOK_SIDE\necho "ran for $DRV_PATH"\n`, { mode: 0o755 });
    const logOf = (side: Side) => readFileSync(`${t.root}/hook-${side}`, 'utf8');
    for (const ca of ['0', '1']) {
      t.clear();
      const deps = t.instantiate('dependencies.nix', [], { NIX_TESTS_CA_BY_DEFAULT: ca });
      const run = (side: Side) => {
        t.env.HOOK_SIDE = side;
        rmSync(`${t.root}/hook-${side}`, { force: true });
        return t.build(side, [...deps, '--option', 'post-build-hook', hook]);
      };
      const n = await run('nix');
      const o = await run('ours');
      expect([n.status, o.status]).toEqual([0, 0]);
      expect(keyLines(o.stderr)).toEqual(keyLines(n.stderr));
      expect(logOf('ours')).toBe(logOf('nix'));
      expect(t.rows('ours')).toEqual(t.rows('nix'));
      if (ca === '1') expect(o.stderr).toContain('resolved derivation: ');
    }
  }, 120_000);

  it('ca/build.sh: normalisation, deterministic CA, cut-off for CA, non-CA and fixed-output dependents (resolved; -j0 after)', async () => {
    const t = new TwinStores();
    const attr = (name: string, seed: number) => t.instantiate('ca/content-addressed.nix', ['-A', name, '--arg', 'seed', String(seed)]);
    // testNormalization
    const { nix: root1 } = await step(t, attr('rootCA', 1), 0);
    const rootOut = root1.stdout.trim().split('\n')[2]!;
    for (const side of sides) expect(t.mtime(side, rootOut)).toBe(1);
    // testDeterministicCA
    const { nix: root2 } = await step(t, attr('rootCA', 2), 0);
    expect(root2.stdout).toBe(root1.stdout);
    t.clear();
    // testCutoff
    for (const name of ['transitivelyDependentCA', 'dependentNonCA', 'dependentFixedOutput']) {
      const first = await step(t, attr(name, 1), 0);
      expect(first.ours.stderr).toContain("resolved derivation: '");
      await step(t, attr('rootCA', 2), 0);
      const again = await step(t, [...attr(name, 2), '-j0'], 0);
      expect(again.ours.stdout).toBe(first.ours.stdout);
    }
    // The fixed-output dependent read its input through the resolved derivation.
    expect(t.rows('ours').realisations.length).toBeGreaterThan(0);
  }, 180_000);

  it('ca/concurrent-builds.sh: six builds of racy.nix (content-addressed) at once all succeed, the others wait for the lock', async () => {
    const t = new TwinStores();
    const [drv] = t.instantiate('ca/racy.nix', [], { NIX_TESTS_CA_BY_DEFAULT: '1' });
    const outs: Record<Side, string[]> = { nix: [], ours: [] };
    for (const side of sides) {
      const runs = await t.buildConcurrently(side, 6, [drv!], `${drv}.out`);
      for (const r of runs) expect(r.status, `${side}:\n${r.stderr}`).toBe(0);
      outs[side] = runs.map((r) => r.stdout);
      // All six were running before the first build started (the gate): each waited for the lock once.
      for (const r of runs) expect(r.stderr.split(`waiting for lock on '${drv}.out'`)).toHaveLength(2);
    }
    expect(outs.ours).toEqual(outs.nix);
    expect(t.rows('ours')).toEqual(t.rows('nix'));
  }, 120_000);

  it('parallel.sh: -j10000 runs the three middle builds at once; four nix-store -j1 processes share the five builds (three at once)', async () => {
    const t = new TwinStores();
    const counts = (side: Side) => {
      t.use(side);
      return { cur: t.read(side, `${t.shared}.cur`).trim(), max: t.read(side, `${t.shared}.max`).trim() };
    };
    const reset = () => {
      for (const f of ['cur', 'max', 'lock']) rmSync(`${t.shared}.${f}`, { force: true });
    };
    const [drv] = t.instantiate('parallel.nix');
    for (const side of sides) {
      reset();
      const r = await t.build(side, [drv!, '-j10000']);
      expect(r.status, r.stderr).toBe(0);
      expect(t.read(side, r.stdout.trim())).toBe('abacade');
      expect(counts(side)).toEqual({ cur: '0', max: '3' });
    }
    expect(t.rows('ours')).toEqual(t.rows('nix'));

    t.clear();
    const [drv2] = t.instantiate('parallel.nix', ['--argstr', 'sleepTime', '3']);
    // `a`, the first build: its lock is the gate that lets the four processes start building together.
    t.use('nix');
    const graph = JSON.parse(runNix('nix', ['--store', t.uri('nix'), 'show-derivation', '-r', drv2!], { env: t.env }).stdout) as Record<
      string,
      { env: Record<string, string>; outputs: { out: { path: string } } }
    >;
    const a = Object.values(graph).find((d) => d.env.text === 'a')!.outputs.out.path;
    for (const side of sides) {
      reset();
      const runs = await t.buildConcurrently(side, 4, ['-j1', drv2!], a);
      for (const r of runs) expect(r.status, `${side}:\n${r.stderr}`).toBe(0);
      expect(counts(side)).toEqual({ cur: '0', max: '3' });
    }
    expect(t.rows('ours')).toEqual(t.rows('nix'));
  }, 180_000);
});
