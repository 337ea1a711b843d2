/**
 * Nix 2.8's functional tests about how a build ends (test/fixtures/nix-tests: timeout.sh, check.sh),
 * run with real Nix and with `realise build` on twin stores (test/helpers/twin-store.ts): exit status,
 * stdout, key stderr lines and database rows compared at each step, and what the script asserts asserted
 * for both.
 */
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { bwrapOk, nixOk, removeTreeSync, runNix } from '../helpers/nix.js';
import { realiseInProcess } from '../helpers/cli.js';
import { keyLines, step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

describe.skipIf(!nixOk())('Nix 2.8 functional tests (how builds end): realise vs nix-store on twin stores', () => {
  it('timeout.sh: --timeout (101), --max-build-log-size, --max-silent-time, a builder that closes its log', async () => {
    const t = new TwinStores();
    const drv = (attr: string) => t.instantiate('timeout.nix', ['-A', attr]);
    const infinite = drv('infiniteLoop');
    const timedOut = await step(t, [...infinite, '-Q', '--timeout', '2'], 101);
    for (const r of [timedOut.nix, timedOut.ours]) expect(r.stderr).toContain('timed out');
    await step(t, [...infinite, '-Q', '--max-build-log-size', '100'], 1);
    await step(t, [...drv('silent'), '--max-silent-time', '2'], 101);
    // The builder closes its stdout and stderr and sleeps: the build ends there, the builder killed.
    const closed = await step(t, drv('closeLog'), 100);
    expect(closed.ours.stderr).toContain('failed due to signal 9 (Killed)');
  }, 120_000);

  it('check.sh: build directories kept only with --keep-failed, --check of a non-deterministic build (104), --repeat (1), fixed outputs checked and repaired, hash mismatch (102), both with --keep-going (110)', async () => {
    // Without ca-derivations, as Nix's suite runs it (with it, Nix 2.8 takes the fixed output's realisation
    // for proof that it is valid, and --repair leaves it corrupted).
    const t = new TwinStores('experimental-features = nix-command\n');
    const id = String(process.hrtime.bigint());
    const env = { TMPDIR: t.root };
    const drv = (attr: string) => t.instantiate('check.nix', ['-A', attr, '--argstr', 'checkBuildId', id], env);
    const nondet = /-nondeterministic$/;
    const kept: string[] = [];
    /** The build directory each side's builder reported, and whether it is still there. */
    const buildDirs = (r: { nix: { stderr: string }; ours: { stderr: string } }, keptThere: boolean) => {
      for (const side of sides) {
        const dir = /CHECK_TMPDIR=(.*)/.exec(r[side].stderr)![1]!;
        const there = existsSync(`${dir}/checkBuildId`) && readFileSync(`${dir}/checkBuildId`, 'utf8').trim() === id;
        expect(there, `${side}: ${dir}`).toBe(keptThere);
        if (there) kept.push(dir);
      }
    };
    try {
      const failed = drv('failed');
      buildDirs(await step(t, failed, 100), false);
      buildDirs(await step(t, [...failed, '--keep-failed'], 100), true);
      const det = drv('deterministic');
      buildDirs(await step(t, det, 0), false);
      const detCheck = await step(t, [...det, '--check', '--keep-failed'], 0);
      expect(detCheck.ours.stderr).not.toContain('may not be deterministic');
      buildDirs(detCheck, false);
      const nd = drv('nondeterministic');
      buildDirs(await step(t, nd, 0, { differ: nondet }), false);
      const ndCheck = await step(t, [...nd, '--check'], 104, { differ: nondet });
      expect(ndCheck.ours.stderr).toContain('may not be deterministic');
      buildDirs(ndCheck, false);
      buildDirs(await step(t, [...nd, '--check', '--keep-failed'], 104, { differ: nondet }), true);

      t.clear();
      const repeat = await step(t, [...drv('nondeterministic'), '--repeat', '1'], 1, { differ: nondet });
      expect(repeat.ours.stderr).toContain('differs from previous round');

      // A fixed output changed behind the store's back: --check compares with the registered hash and leaves it; --repair fetches it again.
      const fetchurl = drv('fetchurl');
      const { nix: f } = await step(t, fetchurl, 0);
      const path = f.stdout.trim();
      for (const side of sides) {
        t.use(side);
        chmodSync(path, 0o644);
        writeFileSync(path, 'foo\n');
        chmodSync(path, 0o444);
      }
      await step(t, [...fetchurl, '--check'], 0);
      for (const side of sides) expect(t.read(side, path)).toBe('foo\n');
      await step(t, [...fetchurl, '--repair'], 0);
      for (const side of sides) expect(t.read(side, path)).not.toBe('foo\n');

      writeFileSync(`${t.root}/dummy`, 'Hello World\n');
      const mismatch = drv('hashmismatch');
      await step(t, mismatch, 102);
      writeFileSync(`${t.root}/dummy`, '');
      await step(t, mismatch, 0);
      writeFileSync(`${t.root}/dummy`, 'Hello World\n');
      await step(t, [...mismatch, '--check'], 102);

      await step(t, drv('nondeterministic'), 0, { differ: nondet });
      await step(t, [...drv('nondeterministic'), ...mismatch, '--check', '--keep-going'], 110, { differ: nondet });
    } finally {
      for (const dir of kept) rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  it.skipIf(!bwrapOk())(
    'linux-sandbox.sh: sandboxed builds in a chroot store whose store dir is /my/store, --check, --check -K of a build that is not deterministic',
    async () => {
      const t = new TwinStores();
      // Each side its own chroot store of the logical store dir /my/store (its contents in ROOT/nix/store, as Nix).
      const uri = (side: Side) => `local?root=${t.root}/${side}-root&store=/my/store`;
      // (bash and its libraries come from the host: Nix's script binds /nix/store, where its $SHELL lives.)
      const sandbox = ['--option', 'sandbox', 'true', '--option', 'sandbox-paths', '/bin /usr /lib /lib64'];
      const instantiate = (file: string, args: string[] = []) => {
        let drvs = '';
        for (const side of sides) {
          const r = runNix('nix-instantiate', ['--store', uri(side), `${t.tests}/${file}`, ...args], { env: t.env, cwd: t.tests });
          expect(r.status, r.stderr).toBe(0);
          drvs = r.stdout.trim();
        }
        return drvs.split('\n');
      };
      const build = async (args: string[], status: number) => {
        const nix = runNix('nix-store', ['--store', uri('nix'), '--realise', ...args, ...sandbox], { env: t.env, cwd: t.tests });
        const ours = await realiseInProcess(['build', '--store', uri('ours'), ...args, ...sandbox], t.env);
        expect(nix.status, nix.stderr).toBe(status);
        expect(ours.status, ours.stderr).toBe(status);
        expect(ours.stdout).toBe(nix.stdout);
        const lines = (side: Side, stderr: string) => keyLines(stderr.replaceAll(`${t.root}/${side}-root`, 'ROOT'));
        expect(lines('ours', ours.stderr)).toEqual(lines('nix', nix.stderr));
        return { nix, ours };
      };
      const deps = instantiate('dependencies.nix');
      const { nix: built } = await build(deps, 0);
      const out = built.stdout.trim();
      expect(out).toMatch(/^\/my\/store\/.*-dependencies/);
      for (const side of sides) expect(readFileSync(`${t.root}/${side}-root/nix/store/${out.slice('/my/store/'.length)}/foobar`, 'utf8')).toBe('FOOBAR\n');
      await build([...deps, '--check'], 0);
      const nd = instantiate('check.nix', ['-A', 'nondeterministic']);
      await build(nd, 0);
      const { nix, ours } = await build([...nd, '--check', '-K'], 104);
      for (const r of [nix, ours]) {
        expect(r.stderr).not.toContain('error: renaming');
        expect(r.stderr).toContain('may not be deterministic');
        const kept = /note: keeping build directory '([^']*)'/.exec(r.stderr)?.[1];
        if (kept) removeTreeSync(kept);
      }
    },
    120_000,
  );

  it('ca/build-with-garbage-path.sh: garbage where a content-addressed output goes is replaced; a rebuild that gives the same path leaves it in place', async () => {
    const t = new TwinStores();
    const root = (seed: number) => t.instantiate('ca/content-addressed.nix', ['-A', 'rootCA', '--arg', 'seed', String(seed)]);
    const { nix } = await step(t, root(1), 0);
    const out = nix.stdout
      .trim()
      .split('\n')
      .find((p) => p.endsWith('-rootCA'))!;
    for (const side of sides) {
      const rows = t.rows(side).refs as { referrer: string; reference: string }[];
      const referrers = rows.filter((r) => r.reference === out).map((r) => r.referrer);
      const del = await t.command(side, ['nix-store', '--delete', ...referrers, out], ['gc', '--delete', ...referrers, out]);
      expect(del.status, del.stderr).toBe(0);
      t.use(side);
      writeFileSync(out, '');
    }
    await step(t, root(1), 0);
    const inode = (side: Side) => (t.use(side), statSync(out).ino);
    const before = sides.map(inode);
    await step(t, root(2), 0);
    expect(sides.map(inode)).toEqual(before);
  }, 120_000);
  it('logging.sh and build-dry.sh: build logs where Nix keeps them (bzip2 or plain, an empty one), --dry-run with --add-root makes no link', async () => {
    const t = new TwinStores();
    /** Each side's log directory: file name → the log's text. */
    const logs = (side: Side) => {
      const dir = `${t.root}/${side}/log/drvs`;
      const out: Record<string, string> = {};
      for (const sub of existsSync(dir) ? readdirSync(dir) : [])
        for (const f of readdirSync(`${dir}/${sub}`)) {
          const file = `${dir}/${sub}/${f}`;
          out[`${sub}/${f}`] = f.endsWith('.bz2') ? execFileSync('bzip2', ['-dc', file], { encoding: 'utf8' }) : readFileSync(file, 'utf8');
        }
      return out;
    };
    const drvs = t.instantiate('dependencies.nix');
    // build-dry.sh: nix-build -o RESULT --dry-run creates no link and builds nothing.
    const result = `${t.root}/result-link`;
    await step(t, [...drvs, '--add-root', result, '--dry-run'], 0);
    expect(existsSync(result)).toBe(false);
    expect(logs('ours')).toEqual({});

    await step(t, drvs, 0);
    const top = `${drvs[0]!.slice(t.storeDir.length + 1, t.storeDir.length + 3)}/${drvs[0]!.slice(t.storeDir.length + 3)}.bz2`;
    expect(logs('nix')[top]).toBe('FOO\n');
    expect(logs('ours')).toEqual(logs('nix'));

    t.clear();
    await step(t, [...t.instantiate('dependencies.nix'), '--option', 'compress-build-log', 'false'], 0);
    expect(logs('nix')[top.replace(/\.bz2$/, '')]).toBe('FOO\n');
    expect(logs('ours')).toEqual(logs('nix'));

    // A builder that prints nothing: an empty log.
    const builder = `${t.root}/empty-builder.sh`;
    writeFileSync(builder, '#!/bin/sh\nmkdir $out\n', { mode: 0o755 });
    await step(t, t.instantiateExpr(`with import ./config.nix; mkDerivation { name = "fnord"; builder = ${builder}; }`), 0);
    expect(Object.values(logs('nix'))).toContain('');
    expect(logs('ours')).toEqual(logs('nix'));
  }, 120_000);
});
