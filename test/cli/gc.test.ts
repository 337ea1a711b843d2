/**
 * `realise gc` and `realise store optimise` side by side with nix-store --gc / --delete / --optimise on
 * twin chroot stores (one made, then copied): the same stdout, the same deleted paths, the same errors.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { parseMaxFreed } from '../../src/cli/gc.js';

const nonce = `${process.pid}-${Date.now()}`;
const deleting = (stderr: string) =>
  stderr
    .split('\n')
    .filter((l) => l.startsWith("deleting '"))
    .sort();

describe.skipIf(!nixOk())('realise gc / store optimise vs nix-store', () => {
  let dir: string;
  let N: string;
  let O: string;
  const p: string[] = [];
  beforeAll(() => {
    dir = tempDir('realise-cli-gc-');
    N = path.join(dir, 'N');
    for (let i = 0; i < 6; i++) {
      const f = path.join(dir, `f${i}`);
      mkdirSync(f);
      writeFileSync(path.join(f, 'a'), `shared ${nonce}\n`.repeat(50));
      writeFileSync(path.join(f, 'b'), `${i} ${nonce}`);
      p.push(nix('nix-store', ['--store', N, '--add', f]));
    }
    symlinkSync(p[0]!, path.join(N, 'nix/var/nix/gcroots/zero'));
    symlinkSync(p[1]!, path.join(N, 'nix/var/nix/profiles/one'));
    O = path.join(dir, 'O');
    expect(spawnSync('cp', ['-a', N, O]).status).toBe(0);
    // The copied links point into the store (logical paths), so they are roots of O as well.
  });

  it('--print-dead and --print-live print what nix-store prints', async () => {
    for (const flag of ['--print-dead', '--print-live']) {
      const n = runNix('nix-store', ['--store', N, '--gc', flag]);
      const o = await realise(['gc', '--store', O, flag]);
      expect(o.status, o.stderr).toBe(0);
      expect(o.stdout).toBe(n.stdout);
    }
  });

  it('--print-roots lists the same links and targets', async () => {
    const n = runNix('nix-store', ['--store', N, '--gc', '--print-roots']);
    const o = await realise(['gc', '--store', O, '--print-roots']);
    expect(o.stdout.split(O).join('ROOT')).toBe(n.stdout.split(N).join('ROOT'));
    expect(o.stdout).toContain(`${O}/nix/var/nix/gcroots/zero -> ${p[0]}`);
  });

  it("--delete refuses a live path with Nix's error and deletes a dead one with Nix's summary", async () => {
    const nLive = runNix('nix-store', ['--store', N, '--delete', p[0]!]);
    const oLive = await realise(['gc', '--store', O, '--delete', p[0]!]);
    expect(oLive.status).toBe(nLive.status);
    expect(oLive.status).toBe(1);
    expect(oLive.stderr).toContain(`error: Cannot delete path '${p[0]}' since it is still alive. To find out why, use: nix-store --query --roots`);
    expect(nLive.stderr).toContain(`Cannot delete path '${p[0]}' since it is still alive.`);
    const n = runNix('nix-store', ['--store', N, '--delete', p[5]!]);
    const o = await realise(['gc', '--store', O, '--delete', p[5]!]);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    expect(o.stdout).toMatch(/^1 store paths deleted, 0\.00 MiB freed\n$/);
    // The same progress lines on stderr (no "deleting garbage...": Nix says that for --gc only).
    const lines = (e: string) => e.split('\n').filter((l) => !l.startsWith('note: currently hard linking saves'));
    expect(lines(o.stderr)).toEqual(lines(n.stderr.replaceAll(N, O)));
  });

  it('--delete takes the paths one by one in store path order: those before a live one are deleted, and the summary is printed with the error', async () => {
    // A dead path that sorts before the live root p[0] (added to both stores alike).
    const added: string[] = [];
    let dead = '';
    for (let i = 0; !dead || dead > p[0]!; i++) {
      const f = path.join(dir, `dead${i}`);
      writeFileSync(f, `dead ${i} ${nonce}`);
      dead = nix('nix-store', ['--store', N, '--add', f]);
      expect(nix('nix-store', ['--store', O, '--add', f])).toBe(dead);
      added.push(dead);
    }
    const n = runNix('nix-store', ['--store', N, '--delete', p[0]!, dead]);
    const o = await realise(['gc', '--store', O, '--delete', p[0]!, dead]);
    expect([o.status, o.stdout]).toEqual([n.status, n.stdout]);
    expect(o.status).toBe(1);
    expect(o.stdout).toBe('1 store paths deleted, 0.00 MiB freed\n');
    expect(o.stderr).toContain(`deleting '${dead}'\n`);
    expect(o.stderr).toContain(`error: Cannot delete path '${p[0]}' since it is still alive.`);
    expect(existsSync(path.join(O, dead))).toBe(false);
    expect(existsSync(path.join(O, p[0]!))).toBe(true);
    // The other paths added go (the collection below counts the ones the file started with).
    const others = added.filter((a) => a !== dead);
    if (others.length) for (const root of [N, O]) nix('nix-store', ['--store', root, '--delete', ...others]);
  });

  it("reads --gc's and --delete's flags as nix-store does (their errors, --max-freed's units, --print-roots first)", async () => {
    for (const flags of [
      ['--max-freed', 'abc'],
      ['--max-freed', '1x'],
      ['--max-freed', '1.5'],
      ['--max-freed', '-'],
      ['--max-freed'],
      ['--bogus'],
      ['--ignore-liveness'],
      ['--print-dead', 'extra-argument'],
      ['--delete', '--print-dead', p[2]!],
      ['--delete', '--max-freed', '1', p[2]!],
      ['--print-roots', '--print-dead'],
      ['--print-dead', '--print-live', '--max-freed', '+1k'],
    ]) {
      const n = runNix('nix-store', ['--store', N, ...(flags[0] === '--delete' ? flags : ['--gc', ...flags])]);
      const o = await realise(['gc', '--store', O, ...flags]);
      expect([o.status, o.stdout.split(O).join(N), o.stderr], flags.join(' ')).toEqual([
        n.status,
        n.stdout,
        n.stderr.replace("'nix-store --help'", "'realise --help'"),
      ]);
    }
  });

  it('store optimise reports what nix-store --optimise reports', async () => {
    const n = runNix('nix-store', ['--store', N, '--optimise']);
    const o = await realise(['store', 'optimise', '--store', O]);
    expect(o.status, o.stderr).toBe(0);
    const line = (s: string) => s.split('\n').find((l) => l.includes('freed by hard-linking'));
    expect(line(o.stderr)).toBe(line(n.stderr));
    expect(line(o.stderr)).toMatch(/hard-linking 4 files/);
  });

  it('gc deletes what nix-store --gc deletes, with the same summary', async () => {
    const n = runNix('nix-store', ['--store', N, '--gc']);
    const o = await realise(['gc', '--store', O]);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    expect(deleting(o.stderr)).toEqual(deleting(n.stderr));
    expect(deleting(o.stderr)).toHaveLength(3);
    expect(runNix('nix-store', ['--store', O, '--verify', '--check-contents']).status).toBe(0);
  });

  it('parses --max-freed as Nix does (K, M, G, T in either case, a sign; negative is 0)', () => {
    expect(parseMaxFreed('100')).toBe(100);
    expect(parseMaxFreed('2K')).toBe(2048);
    expect(parseMaxFreed('1G')).toBe(1024 ** 3);
    expect(parseMaxFreed('-5')).toBe(0);
    expect(parseMaxFreed('+3k')).toBe(3072);
    expect(() => parseMaxFreed('lots')).toThrow("invalid unit specifier 'S'");
    expect(() => parseMaxFreed('1.5')).toThrow("'1.5' is not an integer");
  });
});
