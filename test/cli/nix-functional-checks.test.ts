/**
 * Nix 2.8's functional tests about what a build's outputs may be and what a builder sees
 * (test/fixtures/nix-tests: check-refs.sh, check-reqs.sh, export-graph.sh, structured-attrs.sh,
 * pass-as-file.sh, multiple-outputs.sh, secure-drv-outputs.sh), run with real Nix and with `realise build`
 * on twin stores (test/helpers/twin-store.ts): exit status, stdout, key stderr lines and database rows
 * compared at each step, and what the script asserts asserted for both.
 */
import { existsSync, lstatSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nixOk, runNix } from '../helpers/nix.js';
import { step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

/** The references of `path` registered in `side`'s database. */
function refsOf(t: TwinStores, side: Side, path: string): string[] {
  return (t.rows(side).refs as { referrer: string; reference: string }[]).filter((r) => r.referrer === path).map((r) => r.reference);
}

describe.skipIf(!nixOk())('Nix 2.8 functional tests (output checks): realise vs nix-store on twin stores', () => {
  it('check-refs.sh: allowedReferences (self as "out"), disallowedReferences', async () => {
    const t = new TwinStores();
    const build = async (attr: string, status: number) => (await step(t, t.instantiate('check-refs.nix', ['-A', attr]), status)).nix.stdout.trim();
    const dep = await build('dep', 0);
    const test1 = await build('test1', 0);
    const test2 = await build('test2', 0);
    for (const side of sides) {
      expect(refsOf(t, side, test1)).toEqual([dep]);
      expect(refsOf(t, side, test2)).toEqual([expect.stringMatching(/-aux-ref$/)]);
    }
    // test3, test6 and test9 are refused (an unallowed reference, an unallowed self-reference, a disallowed one).
    for (const [attr, status] of [
      ['test3', 1],
      ['test4', 0],
      ['test5', 0],
      ['test6', 1],
      ['test7', 0],
      ['test9', 1],
      ['test10', 0],
    ] as const)
      await build(attr, status);
    // test8 (toFile depending on a derivation's output) is refused by the evaluator, before any build.
    expect(() => t.instantiate('check-refs.nix', ['-A', 'test8'])).toThrow(
      /in 'toFile': the file named 'builder.sh' must not contain a reference to a derivation/,
    );
  }, 120_000);

  it('check-reqs.sh: allowedRequisites, disallowedRequisites', async () => {
    const t = new TwinStores();
    const build = (attr: string, status: number) => step(t, t.instantiate('check-reqs.nix', ['-A', attr]), status);
    await build('test1', 0);
    for (const attr of ['test2', 'test3', 'test5', 'test6']) await build(attr, 1);
    const { ours } = await build('test4', 1);
    for (const dep of ['check-reqs-dep1', 'check-reqs-dep2']) expect(ours.stderr).toContain(dep);
    await build('test7', 0);
  }, 120_000);

  it('export-graph.sh: the runtime and the build-time graph of exportReferencesGraph (a collection in between)', async () => {
    const t = new TwinStores();
    const result = `${t.root}/result`;
    const build = async (attr: string) => {
      const { nix } = await step(t, [...t.instantiate('export-graph.nix', ['-A', attr]), '--add-root', result], 0);
      expect(nix.stdout.trim()).toBe(result);
      return runNix('readlink', [result]).stdout.trim();
    };
    const runtime = await build('foo."bar.runtimeGraph"');
    for (const side of sides) {
      const refs = refsOf(t, side, runtime);
      expect(refs).toHaveLength(3);
      expect(refs.some((r) => r.endsWith('-input-2'))).toBe(true);
      for (const p of t.read(side, runtime).trim().split('\n')) expect(refs).toContain(p);
    }
    await step(t, ['--gc'], 0, { run: (side) => t.command(side, ['nix-store', '--gc'], ['gc']) });
    const buildTime = await build('foo."bar.buildGraph"');
    for (const side of sides) {
      const refs = refsOf(t, side, buildTime);
      for (const name of ['-input-1', '-input-1.drv', '-input-2', '-input-2.drv']) expect(refs.some((r) => r.endsWith(name))).toBe(true);
      for (const p of t.read(side, buildTime).trim().split('\n')) expect(refs).toContain(p);
    }
  }, 120_000);

  it('structured-attrs.sh, pass-as-file.sh and placeholders.sh: what the builder is given', async () => {
    const t = new TwinStores();
    const { nix } = await step(t, t.instantiate('structured-attrs.nix', ['-A', 'all']), 0);
    const outs = nix.stdout.trim().split('\n');
    const [out, dev] = [outs.find((o) => o.endsWith('-structured')), outs.find((o) => o.endsWith('-structured-dev'))];
    for (const side of sides) {
      expect(t.read(side, `${out}/foo`)).toBe('bar\n');
      expect(t.read(side, `${dev}/foo`)).toBe('foo\n');
    }
    const passAsFile = readFileSync(`${t.tests}/pass-as-file.sh`, 'utf8');
    const expr = /nix-build --no-out-link -E "\n([^]*)\n"\)/.exec(passAsFile)![1]!.replace(/\\(["$])/g, '$1');
    await step(t, t.instantiateExpr(expr), 0);
    // placeholders.sh: each output's placeholder stands for its path.
    const placeholders = readFileSync(`${t.tests}/placeholders.sh`, 'utf8');
    await step(t, t.instantiateExpr(/nix-build --no-out-link -E '\n([^]*)\n'\n/.exec(placeholders)![1]!), 0);
  }, 120_000);
  it('multiple-outputs.sh: dependents of several outputs, an output deleted and rebuilt (hash rewriting), cyclic outputs, a collection keeping nothing', async () => {
    const t = new TwinStores();
    const drv = (attr: string) => t.instantiate('multiple-outputs.nix', ['-A', attr]);
    const c = t.read('nix', drv('c')[0]!);
    expect(c).toContain('multiple-outputs-a.drv",["first","second"]');
    expect(c).toContain('multiple-outputs-b.drv",["out"]');
    const { nix: d } = await step(t, drv('d'), 0);
    const bDrv = t.read('nix', `${d.stdout.trim()}/drv`).trim();
    for (const side of sides) expect(t.rows(side).validPaths.filter((r) => (r as { deriver: string }).deriver === bDrv)).toEqual([]);
    const { nix: b } = await step(t, drv('b'), 0);
    for (const side of sides) expect(t.read(side, `${b.stdout.trim()}/file`)).toBe('success\n');
    // nix-instantiate -A a prints `DRV!first` (a's default output).
    const [aFirst] = drv('a');
    const a = aFirst!.split('!')[0]!;
    const { nix: first } = await step(t, [aFirst!], 0);
    const { nix: all } = await step(t, [a], 0);
    const outs = all.stdout.trim().split('\n');
    const [outFirst, outSecond] = ['-first', '-second'].map((n) => outs.find((o) => o.endsWith(n)));
    expect(first.stdout.trim()).toBe(outFirst);
    for (const side of sides) {
      expect(t.read(side, `${outSecond}/file`)).toBe('second\n');
      expect(t.read(side, `${outSecond}/link/file`)).toBe('first\n');
    }
    const hash1 = t.rows('nix').validPaths.find((r) => (r as { path: string }).path === outSecond);
    // Delete one of the outputs and build again: the other one is valid, so the build's output is rewritten.
    await step(t, ['--delete'], 0, {
      run: (side) => t.command(side, ['nix-store', '--delete', '--ignore-liveness', outSecond!], ['gc', '--delete', '--ignore-liveness', outSecond!]),
    });
    await step(t, [a], 0);
    expect(t.rows('ours').validPaths.find((r) => (r as { path: string }).path === outSecond)).toEqual(hash1);
    for (const side of sides) expect(t.read(side, `${outSecond}/link/file`)).toBe('first\n');
    // Cyclic outputs are refused.
    await step(t, drv('cyclic'), 1);
    // What is left to collect, the same but for what realise does not leave behind (docs/scheduler.md, docs/store.md):
    // the outputs of the refused build and, once the store is opened again, their lock files.
    const dead = async (side: Side) =>
      (await t.command(side, ['nix-store', '--gc', '--print-dead'], ['gc', '--print-dead'])).stdout
        .split('\n')
        .filter((p) => !/-cyclic-outputs-[abc](\.lock)?$/.test(p));
    expect(await dead('ours')).toEqual(await dead('nix'));
    const gc = ['--gc', '--option', 'keep-derivations', 'true', '--option', 'keep-outputs', 'true'];
    for (const side of sides) expect((await t.command(side, ['nix-store', ...gc], ['gc', ...gc.slice(1)])).status).toBe(0);
    expect(t.rows('ours')).toEqual(t.rows('nix'));
    expect(t.rows('ours').validPaths).toEqual([]);
  }, 120_000);

  it("secure-drv-outputs.sh: a .drv that claims another derivation's output path is refused, added by hand or substituted", async () => {
    const t = new TwinStores();
    const [goodDrv] = t.instantiate('secure-drv-outputs.nix', ['-A', 'good']);
    const [badDrv] = t.instantiate('secure-drv-outputs.nix', ['-A', 'bad']);
    t.use('nix');
    const q = (p: string) => runNix('nix-store', ['--store', t.uri('nix'), '-q', p], { env: t.env }).stdout.trim();
    const [goodOut, badOut] = [q(goodDrv!), q(badDrv!)];
    writeFileSync(`${t.root}/bad.drv`, t.read('nix', badDrv!).replaceAll(badOut, goodOut));
    // Nix's own `nix-store --add` refuses it on both stores.
    for (const side of sides) {
      t.use(side);
      const r = runNix('nix-store', ['--store', t.uri(side), '--add', `${t.root}/bad.drv`], { env: t.env });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`has incorrect output '${goodOut}', should be '`);
    }
    // The same .drv served by a binary cache (Nix's `nix store add-file` into it, which checks nothing): both
    // stores refuse to register it when it is substituted, so nothing builds it.
    const cache = `file://${t.root}/cache?store=${t.storeDir}`;
    const added = runNix('nix', ['--store', cache, 'store', 'add-file', `${t.root}/bad.drv`], { env: t.env });
    expect(added.status, added.stderr).toBe(0);
    const refused = await step(t, [added.stdout.trim(), '--option', 'substituters', cache], 1);
    expect(refused.ours.stderr).toContain(`has incorrect output '${goodOut}', should be '`);
    const { nix } = await step(t, [goodDrv!], 0);
    expect(nix.stdout.trim()).toBe(goodOut);
    for (const side of sides) expect(existsSync(`${goodOut}/good`) && (t.use(side), lstatSync(`${goodOut}/good`).isFile())).toBe(true);
  }, 120_000);
});
