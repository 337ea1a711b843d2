/**
 * The `realise` command side by side with real Nix 2.8 (nix-store --realise, nix path-info) on twin chroot
 * stores: stdout byte for byte, exit statuses, and the lines of stderr a user reads (what will be built,
 * errors, warnings). Commands run in-process through src/cli/run.ts's main (one spawn checks bin/realise.js).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise, type CliRun } from '../helpers/cli.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';
/** The scenario derivations, shared with scripts/parity-audit.sh (names `cli-*`). */
const EXPR_FILE = fileURLToPath(new URL('../fixtures/cli/scenarios.nix', import.meta.url));
const ATTRS = ['ok', 'fail', 'fail2', 'good', 'dep', 'slow', 'fod', 'nondet', 'wrongsys', 'onWrongsys'] as const;
const MISSING = '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nothere';

/** The stderr lines a reader compares: errors (with their indented continuation lines), warnings, notes and the will-be-built summary. */
function keyLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /^(error|warning|note): |^ {7}|^these |^this |^don't know|^ {2}\/nix\/store\//.test(l));
}

describe.skipIf(!nixOk())('realise CLI vs Nix 2.8', () => {
  let R1: string;
  let R2: string;
  let dir: string;
  const drvs = {} as Record<(typeof ATTRS)[number], string>;
  beforeAll(() => {
    dir = tempDir();
    const file = path.join(dir, 'cli.nix');
    writeFileSync(file, readFileSync(EXPR_FILE));
    R1 = path.join(dir, 'R1');
    R2 = path.join(dir, 'R2');
    for (const a of ATTRS) {
      drvs[a] = nix('nix-instantiate', ['--store', R1, file, '-A', a]);
      expect(nix('nix-instantiate', ['--store', R2, file, '-A', a])).toBe(drvs[a]);
    }
  });
  const nixStore = (args: string[]) => runNix('nix-store', ['--store', R1, '--option', 'sandbox-paths', SANDBOX, ...args]);
  const ours = (args: string[]) => realise([args[0]!, '--store', R2, '--option', 'sandbox-paths', SANDBOX, ...args.slice(1)]);
  /** nix-store --realise and realise build with the same arguments: same stdout, status and key stderr lines. */
  async function same(nixArgs: string[], ourArgs: string[] = nixArgs): Promise<CliRun> {
    const n = nixStore(['--realise', ...nixArgs]);
    const o = await ours(['build', ...ourArgs]);
    expect(o.stdout, o.stderr).toBe(n.stdout);
    expect(keyLines(o.stderr), o.stderr).toEqual(keyLines(n.stderr));
    expect(o.status, o.stderr).toBe(n.status);
    return o;
  }

  it('build prints every output in Nix order (by path), the wanted ones with DRV!out or DRV^out', async () => {
    await same([drvs.ok!]);
    await same([`${drvs.ok}!dev,bin`]);
    await same([`${drvs.ok}!bin`], [`${drvs.ok}^bin`]);
    await same([drvs.good!, drvs.ok!]);
  });

  it('failures: the first error, the others logged, then "build of … failed"; dependencies logged as they fail', async () => {
    const o = await same([drvs.fail!, drvs.fail2!, drvs.good!]);
    expect(o.status).toBe(100);
    // Logs were shown as they came: the error does not repeat their tail (nix-store's simple logger).
    expect(o.stderr).toContain('about to fail\n');
    expect(o.stderr).not.toContain('last 1 log lines');
    await same([drvs.fail!, drvs.fail2!, '-k']);
    await same([drvs.dep!]);
    // A failed target stops the call before the dependents it woke run: `dep` (another target) is
    // stopped, not "1 dependencies … failed to build"; with -k it is that.
    const t = await same([drvs.fail!, drvs.dep!, drvs.good!]);
    expect(t.stderr).not.toContain('dependencies of derivation');
    await same([drvs.fail!, drvs.dep!, drvs.good!, '-k']);
    // A platform nobody can build for ends the call (once, even when a dependency hit it), exit 1.
    expect((await same([drvs.wrongsys!])).status).toBe(1);
    expect((await same([drvs.onWrongsys!, '-k'])).status).toBe(1);
    // -Q: no build output, so the error carries the tail, indented under `error: `.
    const q = await same(['-Q', drvs.fail!]);
    expect(q.stderr).toContain('\n       > about to fail\n');
  });

  it('exit statuses and messages: timeout 101, hash mismatch 102 (continuation lines indented)', async () => {
    expect((await same([drvs.slow!, '--timeout', '1'])).status).toBe(101);
    const f = await same([drvs.fod!]);
    expect(f.status).toBe(102);
    expect(f.stderr).toMatch(/\n {9}specified: sha256-/);
  });

  it('--check rebuilds and compares a valid output; outputs not valid end the call, -k or not', async () => {
    await same([drvs.good!]);
    expect((await same([drvs.good!, '--check'])).status).toBe(0);
    // A check that would find a difference (exit 104) does not get to run: the call ends first.
    await same([drvs.nondet!]);
    const o = await same([drvs.nondet!, drvs.fod!, '--check', '-k']);
    expect(o.status).toBe(1);
    expect(o.stderr).toContain(`error: some outputs of '${drvs.fod}' are not valid, so checking is not possible`);
    expect(o.stderr).not.toContain('build of');
    // Of two such targets, the first in Nix's goal order (by name) ends it, whatever the arguments' order.
    const two = await same([drvs.slow!, drvs.fod!, '--check']);
    expect(two.stderr).toContain(`error: some outputs of '${drvs.fod}' are not valid`);
  });

  it('arguments as nix-store reads them: missing files, paths outside the store, bad names, missing paths', async () => {
    const outside = path.join(dir, 'not-in-store');
    writeFileSync(outside, '');
    for (const arg of [path.join(dir, 'nonexistent'), outside, '/nix/store/foo', '/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x', MISSING, `${MISSING}.drv`]) {
      const o = await same([arg]);
      expect(o.status, arg).toBe(1);
      expect(o.stderr, arg).toMatch(/^error: /m);
    }
    // As Nix's parsePathWithOutputs, the first `!` ends the path, whatever it names: outputs of a path that
    // is no .drv ask for a build of it (a missing derivation), none (`PATH!`) the path itself.
    for (const arg of [`${MISSING}!out`, `${path.join(dir, 'nonexistent')}!out`, `${MISSING}!`]) expect((await same([arg])).status, arg).toBe(1);
    const good = (await same([drvs.good!])).stdout.trim();
    expect((await same([`${good}!`])).stdout).toBe(`${good}\n`);
    expect((await same([`${drvs.good}!,out,,out`])).stdout).toBe(`${good}\n`);
    // Nothing to do is success; --dry-run lists what would happen and builds nothing.
    await same([]);
    await same(['--dry-run', drvs.dep!, MISSING]);
    expect(existsSync(path.join(R2, 'nix/store', path.basename(drvs.dep!).replace(/\.drv$/, '')))).toBe(false);
  });

  it('--option: unknown names before the targets get a warning, after them none; bad values are a warning; the build goes on', async () => {
    const o = await same(['--option', 'frobnicate', '1', '--option', 'keep-going', 'maybe', '--option', 'max-jobs', 'x', drvs.good!]);
    expect(o.stderr).toContain("warning: unknown setting 'frobnicate'\n");
    const after = await same([drvs.good!, '--option', 'frobnicate', '1']);
    expect(after.stderr).not.toContain('unknown setting');
    // nix-store's integer flags take a unit (1K cores) and word a bad value its own way; exit 1.
    for (const bad of ['abc', '-1', '2x']) expect((await same([drvs.good!, '--cores', bad])).status).toBe(1);
    expect((await same([drvs.good!, '--timeout', '1k'])).status).toBe(0);
  });

  it('--add-root makes the same GC roots as nix-store (links, names, indirect roots) and prints them', async () => {
    const roots = path.join(dir, 'roots');
    mkdirSync(roots);
    const link = path.join(roots, 'result');
    const n = nixStore(['--realise', drvs.ok!, drvs.good!, '--add-root', link]);
    const nixLinks = readdirSync(roots)
      .sort()
      .map((f) => [f, readlinkSync(path.join(roots, f))]);
    const auto = (root: string) => readdirSync(path.join(root, 'nix/var/nix/gcroots/auto')).sort();
    const nixAuto = auto(R1);
    rmSync(roots, { recursive: true });
    mkdirSync(roots);
    const o = await ours(['build', drvs.ok!, drvs.good!, '--add-root', link]);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    expect(
      readdirSync(roots)
        .sort()
        .map((f) => [f, readlinkSync(path.join(roots, f))]),
    ).toEqual(nixLinks);
    expect(auto(R2)).toEqual(nixAuto);
  });

  it('path-info: a .drv means its outputs, sorted; --json like nix path-info (valid:false, no newline)', async () => {
    const nixPI = (args: string[]) => runNix('nix', ['path-info', '--store', R2, ...args]);
    const strip = (s: string) => JSON.parse(s).map(({ registrationTime: _, ...rest }: Record<string, unknown>) => rest);
    // Text: Nix's topological order (dependencies first), with the size, closure size and signature columns.
    for (const flags of [[], ['-s'], ['-S', '-h'], ['--sigs'], ['-r']]) {
      const n = nixPI([...flags, drvs.ok!, drvs.good!]);
      const o = await realise(['path-info', '--store', R2, ...flags, drvs.ok!, drvs.good!]);
      expect(o.stdout, flags.join(' ')).toBe(n.stdout);
      expect(o.status).toBe(0);
    }
    const nS = nixPI(['--json', '-S', drvs.ok!]);
    expect(strip((await realise(['path-info', '--store', R2, '--json', '-S', drvs.ok!])).stdout)).toEqual(strip(nS.stdout));
    const nj = nixPI(['--json', '-r', MISSING, drvs.good!]);
    const oj = await realise(['path-info', '--store', R2, '--json', MISSING, drvs.good!]);
    expect(nj.status).toBe(1);
    const nj2 = nixPI(['--json', MISSING, drvs.good!]);
    expect(oj.stdout.endsWith(']')).toBe(true);
    expect(strip(oj.stdout)).toEqual(strip(nj2.stdout));
    expect(keyLines(oj.stderr)).toEqual(keyLines(nj2.stderr));
    const oi = await realise(['path-info', '--store', R2, MISSING, drvs.good!]);
    const ni = nixPI([MISSING, drvs.good!]);
    expect([oi.stdout, oi.status, keyLines(oi.stderr)]).toEqual([ni.stdout, ni.status, keyLines(ni.stderr)]);
    const od = await realise(['path-info', '--store', R2, '--derivation', drvs.good!]);
    expect(od.stdout).toBe(nixPI(['--derivation', drvs.good!]).stdout);
  });

  it('--json lists the targets as nix build --json does: store paths first, then derivations, each by name', async () => {
    const good = (await same([drvs.good!])).stdout.trim();
    const okOut = (await same([`${drvs.ok}!out`])).stdout.trim();
    const args = [drvs.ok!, okOut, drvs.good!, good];
    const n = runNix('nix', ['build', '--store', R1, '--option', 'sandbox-paths', SANDBOX, '--json', '--no-link', ...args]);
    const o = await ours(['build', '--json', ...args]);
    expect([o.status, o.stdout]).toEqual([n.status, n.stdout]);
    expect((JSON.parse(o.stdout) as { drvPath?: string; path?: string }[]).map((e) => e.drvPath ?? e.path)).toEqual([good, okOut, drvs.good!, drvs.ok!]);
  });

  it('bin/realise.js: --version, and usage errors exit 1 with a hint', async () => {
    const r = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^realise \(realise\) \d+\.\d+\.\d+/);
    const u = await realise(['frobnicate']);
    expect(u.status).toBe(1);
    expect(u.stderr).toContain("unknown command 'frobnicate'");
    const m = await realise(['build', '--max-jobs']);
    expect(m.status).toBe(1);
    expect(m.stderr).toContain("error: flag '--max-jobs' requires 1 argument(s)");
  });
});
