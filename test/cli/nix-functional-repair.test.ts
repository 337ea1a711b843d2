/**
 * Nix 2.8's functional test of repairs (test/fixtures/nix-tests/repair.sh), run with real Nix
 * (`nix-store --realise --repair`, `--repair-path`, `--optimise`, `--delete`) and with realise (`realise build
 * --repair`, `realise repair`, `realise store optimise`, `realise gc --delete`) on twin stores
 * (test/helpers/twin-store.ts): exit status, stdout, key stderr lines and database rows compared at each
 * step, and the repaired path's contents checked on both.
 */
import { chmodSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { nixOk, runNix } from '../helpers/nix.js';
import { step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

describe.skipIf(!nixOk())('Nix 2.8 functional tests (repairs): realise vs nix-store on twin stores', () => {
  it('repair.sh: a corrupted input rebuilt by --repair (its deriver deleted and instantiated again), fetched again by --repair-path, and .links corruption repaired with auto-optimise-store', async () => {
    // Without ca-derivations, as Nix's suite runs it (with it, Nix 2.8 takes an output's realisation for
    // proof that it is valid, and --repair leaves a corrupted input-2 as it is).
    const t = new TwinStores('experimental-features = nix-command\n');
    const drvs = t.instantiate('dependencies.nix');
    const { nix: built } = await step(t, drvs, 0);
    const outPath = built.stdout.trim();
    const path2 = (t.rows('nix').validPaths as { path: string }[]).map((r) => r.path).find((p) => p.endsWith('-dependencies-input-2'))!;
    const hash = (side: Side) => (t.use(side), runNix('nix-hash', [path2]).stdout.trim());
    const good = hash('nix');
    const repaired = (extra?: () => void) => {
      for (const side of sides) {
        expect(hash(side), side).toBe(good);
        expect(statSync(path2).mode & 0o222, side).toBe(0);
        extra?.();
      }
    };
    const corrupt = (f: (side: Side) => void) => {
      for (const side of sides) {
        t.use(side);
        chmodSync(path2, 0o755);
        f(side);
      }
    };

    // Corrupted, then repaired by rebuilding (the script's `--verify --check-contents --repair`, which realise
    // does not have, is run as `--repair` of the derivation).
    corrupt(() => writeFileSync(`${path2}/bad`, ''));
    await step(t, [...drvs, '--repair'], 0);
    repaired();

    // Corrupted again and its deriver deleted with what refers to it: instantiated again, then --repair.
    corrupt(() => writeFileSync(`${path2}/bad`, ''));
    const deriver = (t.rows('nix').validPaths as { path: string; deriver: string }[]).find((r) => r.path === path2)!.deriver;
    const doomed = [deriver, drvs[0]!];
    await step(t, ['--delete'], 0, { run: (side) => t.command(side, ['nix-store', '--delete', ...doomed], ['gc', '--delete', ...doomed]) });
    await step(t, [...t.instantiate('dependencies.nix'), '--repair'], 0);
    repaired();

    // A substitute: removed, then fetched again by --repair-path.
    const cache = `file://${t.root}/binary-cache?store=${t.storeDir}`;
    t.use('nix');
    const copied = runNix('nix', ['--store', t.uri('nix'), 'copy', '--to', cache, outPath], { env: t.env });
    expect(copied.status, copied.stderr).toBe(0);
    const subst = ['--option', 'substituters', cache, '--option', 'require-sigs', 'false'];
    const repairPath = (extra: readonly string[]) =>
      step(t, ['--repair-path'], 0, {
        run: (side) => t.command(side, ['nix-store', '--repair-path', path2, ...extra], ['repair', path2, ...extra]),
      });
    corrupt(() => rmSync(path2, { recursive: true }));
    await repairPath(subst);
    repaired();

    // Optimised, then a file of the path (and so its .links entry) given other contents: --repair-path
    // with auto-optimise-store rebuilds it (another length), or fetches it (the same length).
    const auto = ['--option', 'auto-optimise-store', 'true'];
    const bar = () => expect(readFileSync(`${path2}/bar`, 'utf8')).toBe('BAR\n');
    for (const [contents, extra] of [
      ['rabrab\n', auto],
      ['XXX\n', [...subst, ...auto]],
    ] as const) {
      await step(t, ['--optimise'], 0, { run: (side) => t.command(side, ['nix-store', '--optimise'], ['store', 'optimise']) });
      corrupt(() => {
        chmodSync(`${path2}/bar`, 0o644);
        writeFileSync(`${path2}/bar`, contents);
      });
      await repairPath(extra);
      repaired(bar);
    }
    for (const side of sides) expect(execFileSync('cat', [(t.use(side), `${outPath}/foobar`)], { encoding: 'utf8' })).toBe('FOOBAR\n');
  }, 180_000);
});
