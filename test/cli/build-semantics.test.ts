/**
 * Build-semantics edge cases side by side with real Nix 2.8 (nix-store --realise vs `realise build`) on twin
 * chroot stores: stdout and stderr byte for byte, exit statuses, and what the stores registered.
 * Scenarios: test/fixtures/cli/semantics.nix.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { filterLogMessage } from '../../src/cli/report.js';
import { LogCollector } from '../../src/scheduler/log-collector.js';
import { AS_ROOT, nix, nixEnv, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess } from '../helpers/cli.js';

const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';
const EXPR_FILE = fileURLToPath(new URL('../fixtures/cli/semantics.nix', import.meta.url));

interface Run {
  stdout: Buffer;
  stderr: Buffer;
  status: number;
}

/** `realise ARGS` in this process; output as bytes (builder output that is not UTF-8 passes through). */
async function realise(args: string[]): Promise<Run> {
  const r = await realiseInProcess(args);
  return { stdout: r.stdoutBytes, stderr: r.stderrBytes, status: r.status };
}

describe('Nix logger filtering and log lines (no Nix needed)', () => {
  it('filterLogMessage: tabs to 8-column stops counted in UTF-8 characters, escapes, \\r and BEL dropped', () => {
    const f = (s: string | Buffer, tty = false) => filterLogMessage(s, tty).toString('latin1');
    expect(f('a\tb')).toBe('a       b');
    expect(f('\u2713\tz')).toBe(Buffer.from('\u2713       z').toString('latin1'));
    // Columns count from the start of the whole message, across its lines.
    expect(f('abc\nd\te')).toBe('abc\nd   e');
    expect(f('\x1b[31mred\x1b[0m \x1b]0;t\x07 x\x1b(B y\r')).toBe('red 0;t x(B y');
    // On a terminal colour (SGR) sequences stay, others go.
    expect(f('\x1b[1mb\x1b[0m\x1b[2K', true)).toBe('\x1b[1mb\x1b[0m');
    // Stray bytes are one column each and pass through unchanged.
    expect(f(Buffer.from([0x71, 0x9c, 0x93, 9, 0x7a]))).toBe('q\x9c\x93     z');
  });

  it('LogCollector: \\r overwrites the line byte by byte, lines keep their bytes', () => {
    const lines: [string, Buffer][] = [];
    const c = new LogCollector({ logLines: 2, onLine: (l, b) => lines.push([l, b]) });
    c.push(Buffer.from('\u2713\tz\rq\nab'));
    c.push(Buffer.from([0xe9, 0x0a]));
    c.push(Buffer.from('tail\r'));
    c.end();
    expect(lines.map(([, b]) => [...b])).toEqual([[0x71, 0x9c, 0x93, 9, 0x7a], [0x61, 0x62, 0xe9], [...Buffer.from('tail')]]);
    expect(lines[1]![0]).toBe('ab\ufffd');
    expect(c.tail()).toEqual(['ab\ufffd', 'tail']);
  });
});

describe.skipIf(!nixOk())('build semantics vs Nix 2.8', () => {
  let R1: string;
  let R2: string;
  const drvs: Record<string, string> = {};
  beforeAll(() => {
    const dir = tempDir();
    const file = path.join(dir, 'semantics.nix');
    writeFileSync(file, readFileSync(EXPR_FILE));
    R1 = path.join(dir, 'R1');
    R2 = path.join(dir, 'R2');
    for (const a of [
      'fodRefs',
      'logs',
      'logsFail',
      'nums',
      'chatty',
      'fodBad',
      'slow',
      'nondet',
      'features',
      'dagTop',
      'leaves',
      'dagD1',
      'dagD2',
      'dagGood',
      'fifo',
      'fifoTop',
      'good',
      'ordTop',
      'ergOdd',
      'ergNonStore',
      'ergBadName',
      'ergSaNum',
      'ergSaSub',
      'ergBadNameTop',
      'cycleTop',
      'noPermsTop',
    ]) {
      drvs[a] = nix('nix-instantiate', ['--store', R1, file, '-A', a]);
      expect(nix('nix-instantiate', ['--store', R2, file, '-A', a])).toBe(drvs[a]);
    }
  });
  const nixRealise = (args: string[]) => {
    const r = runNix('nix-store', ['--store', R1, '--option', 'sandbox-paths', SANDBOX, '--realise', ...args]);
    return { stdout: Buffer.from(r.stdout, 'latin1'), stderr: r.stderr, status: r.status };
  };
  const ours = (args: string[]) => realise(['build', '--store', R2, '--option', 'sandbox-paths', SANDBOX, ...args]);
  const pathInfo = (root: string, p: string) =>
    JSON.parse(runNix('nix', ['path-info', '--store', root, '--json', p]).stdout).map(({ registrationTime: _, ...rest }: Record<string, unknown>) => rest);

  it("a fixed-output derivation with references: the .drv's output path is printed, the same path registered", async () => {
    const n = nixRealise([drvs.fodRefs!]);
    const o = await ours([drvs.fodRefs!]);
    expect(o.status, o.stderr.toString()).toBe(n.status);
    expect(o.stdout.toString()).toBe(n.stdout.toString());
    const printed = n.stdout.toString().trim();
    // What nix-store prints is the .drv's path; what it registered is another one (its references are in it).
    expect(pathInfo(R1, printed)).toEqual([{ path: printed, valid: false }]);
    const all = (root: string) =>
      JSON.parse(runNix('nix', ['path-info', '--store', root, '--json', '--all']).stdout).map(
        ({ registrationTime: _, ...rest }: Record<string, unknown>) => rest,
      );
    expect(all(R2)).toEqual(all(R1));
  });

  it("builder output is filtered as Nix's logger does (tabs, escapes, \\r, BEL, non-UTF-8 bytes), byte for byte", async () => {
    const text = (b: Buffer) => b.toString('latin1');
    // -Q first: a failed build is not cached, so the failing one builds again without it.
    for (const args of [['-Q', drvs.logsFail!], [drvs.logsFail!], [drvs.logs!]]) {
      const n = spawnSync('nix-store', ['--store', R1, '--option', 'sandbox-paths', SANDBOX, '--realise', ...args], { env: nixEnv() });
      const o = await ours(args);
      expect(o.status, text(o.stderr)).toBe(n.status);
      expect(text(o.stderr)).toBe(text(n.stderr));
    }
  });

  it('structured attrs: numbers in .attrs.json and .attrs.sh as Nix writes them (exact 64-bit integers, nlohmann doubles)', async () => {
    const n = spawnSync('nix-store', ['--store', R1, '--option', 'sandbox-paths', SANDBOX, '--realise', drvs.nums!], { env: nixEnv() });
    const o = await ours([drvs.nums!]);
    expect(o.status, o.stderr.toString()).toBe(0);
    expect(n.status).toBe(0);
    expect(o.stderr.toString()).toBe(n.stderr.toString());
    expect(o.stderr.toString()).toContain('"big":9007199254740993,');
    expect(o.stdout.toString()).toBe(n.stdout.toString());
  });

  it('max-build-log-size: the lines that fit are logged before the builder is killed (exit 1)', async () => {
    const args = ['--option', 'max-build-log-size', '100', drvs.chatty!];
    const n = nixRealise(args);
    const o = await ours(args);
    expect([o.status, n.status]).toEqual([1, 1]);
    const lines = (s: string) => s.split('\n').filter((l) => l.startsWith('line '));
    const want = Array.from({ length: 13 }, (_, i) => `line ${i}`);
    expect(lines(o.stderr.toString())).toEqual(want);
    // Nix reads a line at a time unless it falls behind the builder; then it logs fewer.
    expect(want.slice(0, lines(n.stderr).length)).toEqual(lines(n.stderr));
    const err = (s: string) => s.split('\n').filter((l) => l.startsWith('error: '));
    expect(err(o.stderr.toString())).toEqual(err(n.stderr));
    // In internal-json, where colours show: the build's name and the limit are values in Nix's colour.
    const json = ['--log-format', 'internal-json', ...args];
    const [nj, oj] = [nixRealise(json), await ours(json)];
    expect([oj.status, nj.status]).toEqual([1, 1]);
    const killed = (s: string) => s.split('\n').filter((l) => l.startsWith('@nix {') && l.includes('killed after writing more than'));
    expect(killed(nj.stderr)).toHaveLength(1);
    expect(killed(nj.stderr)[0]).toContain('more than \\u001b[35;1m100\\u001b[0m bytes');
    expect(killed(oj.stderr.toString())).toEqual(killed(nj.stderr));
  });

  it('-K: a hash mismatch or a timeout keeps the build directory and prints the note before the error, as Nix', async () => {
    const dirOf = (s: string) => /^note: keeping build directory '([^']*)'$/m.exec(s)?.[1];
    for (const args of [
      ['-K', drvs.fodBad!],
      ['-K', '--timeout', '1', drvs.slow!],
    ]) {
      const n = nixRealise(args);
      const o = await ours(args);
      const err = o.stderr.toString();
      expect(o.status, err).toBe(n.status);
      const shape = (s: string) =>
        s
          .split('\n')
          .filter((l) => /^(note|error): /.test(l))
          .map((l) => l.replace(/'[^']*\/nix-build-[^']*'/, 'DIR'));
      expect(shape(err)).toEqual(shape(n.stderr));
      const kept = dirOf(err);
      expect(kept, err).toBeDefined();
      expect(existsSync(kept!)).toBe(true);
      rmSync(kept!, { recursive: true, force: true });
      rmSync(dirOf(n.stderr)!, { recursive: true, force: true });
    }
  });

  it('build-repeat without enforce-determinism: the difference is printed without a prefix, as Nix logs it', async () => {
    const args = ['--option', 'build-repeat', '1', '--option', 'enforce-determinism', 'false', drvs.nondet!];
    const n = nixRealise(args);
    const o = await ours(args);
    expect([o.status, n.status]).toEqual([0, 0]);
    expect(o.stdout.toString()).toBe(n.stdout.toString());
    expect(o.stderr.toString()).toBe(n.stderr);
    expect(n.stderr).toMatch(/^output '[^']*' of '[^']*' differs from previous round$/m);
  });

  it('requiredSystemFeatures missing here: the features are named as a sorted set, exit 1', async () => {
    const args = ['--option', 'system-features', 'foo', drvs.features!];
    const n = nixRealise(args);
    const o = await ours(args);
    expect([o.status, n.status]).toEqual([1, 1]);
    expect(o.stderr.toString()).toBe(n.stderr);
    expect(n.stderr).toContain('with features {bar, foo} is required to build');
  });

  it("one build slot: builds start in Nix's goal order (by name) and failures are reported before the next build", async () => {
    // Targets at different depths: Nix reaches the shallower builds first (dag-good before the failing ones).
    // (ordTop after good: a build whose input derivations are valid is reached later.)
    const cases = [[drvs.leaves!], ['-k', drvs.dagTop!], [drvs.dagTop!], ['-k', drvs.dagD1!, drvs.dagD2!, drvs.dagGood!], [drvs.good!], [drvs.ordTop!]];
    for (const args of cases) {
      const n = nixRealise(args);
      const o = await ours(args);
      expect(o.status, o.stderr.toString()).toBe(n.status);
      const lines = (s: string) => s.split('\n').filter((l) => /^(building|error: builder|failing)/.test(l));
      expect(lines(o.stderr.toString())).toEqual(lines(n.stderr));
    }
  });

  it("an output holding a FIFO: Nix's error naming the file inside the build's chroot, exit 1", async () => {
    for (const d of [drvs.fifo!, drvs.fifoTop!]) {
      const n = nixRealise([d]);
      const o = await ours([d]);
      expect([o.status, n.status]).toEqual([1, 1]);
      const err = (s: string, root: string) =>
        s
          .split('\n')
          .filter((l) => l.startsWith('error: '))
          .map((l) => l.split(root).join('ROOT'));
      expect(err(o.stderr.toString(), R2)).toEqual(err(n.stderr, R1));
      expect(err(n.stderr, R1)[0]).toMatch(/^error: file 'ROOT\/nix\/store\/[^']*\.drv\.chroot\/nix\/store\/[^']*' has an unsupported type$/);
    }
  });

  it('DRV!NAME with an output the derivation lacks: nothing "will be built", the error alone, exit 1', async () => {
    const n = nixRealise([`${drvs.dagGood!}!nosuch`]);
    const o = await ours([`${drvs.dagGood!}!nosuch`]);
    expect([o.status, n.status]).toEqual([1, 1]);
    expect(o.stderr.toString()).toBe(n.stderr);
    expect(n.stderr).toBe(`error: derivation '${drvs.dagGood}' does not have wanted outputs 'nosuch'\n`);
  });

  it('a malformed exportReferencesGraph: a failed build (100) or an error that ends the call (1, also with -k), as Nix', async () => {
    const cases: [string[], number][] = [
      [[drvs.ergOdd!], 100],
      [[drvs.ergNonStore!], 100],
      [[drvs.ergBadName!], 1],
      [[drvs.ergSaNum!], 1],
      [[drvs.ergSaSub!], 1],
      [['-k', drvs.ergBadNameTop!], 1],
    ];
    for (const [args, status] of cases) {
      const n = nixRealise(args);
      const o = await ours(args);
      expect([o.status, n.status]).toEqual([status, status]);
      const key = (s: string) => s.split('\n').filter((l) => /^(building|error)/.test(l));
      expect(key(o.stderr.toString())).toEqual(key(n.stderr));
    }
  });

  const endsCall = async (args: string[]) => {
    const n = nixRealise(args);
    const o = await ours(args);
    expect([o.status, n.status]).toEqual([1, 1]);
    const key = (s: string) => s.split('\n').filter((l) => /^(building|error)/.test(l));
    expect(key(o.stderr.toString().split(R2).join('ROOT'))).toEqual(key(n.stderr.split(R1).join('ROOT')));
    return n.stderr.split(R1).join('ROOT');
  };

  it('a cycle between outputs ends the call, also with -k: its dependent is neither built nor reported, as Nix', async () => {
    for (const k of [[], ['-k']]) expect(await endsCall([...k, drvs.cycleTop!])).toContain('error: cycle detected in build of');
  });

  it.skipIf(AS_ROOT)("(ordinary user) an output directory without permissions: Nix's SysError, naming it in the chroot, ends the call", async () => {
    expect(await endsCall(['-k', drvs.noPermsTop!])).toMatch(
      /error: getting status of 'ROOT\/nix\/store\/[^']*\.drv\.chroot\/nix\/store\/[^']*-sem-no-perms\/a\/f': Permission denied/,
    );
  });

  it("a failed build leaves its outputs' lock files in the store dir, a successful one removes them, as Nix", async () => {
    const out = nix('nix-store', ['--store', R1, '-q', '--outputs', drvs.logsFail!]);
    const lockIn = (root: string) => existsSync(path.join(root, `${out}.lock`));
    rmSync(path.join(R1, `${out}.lock`), { force: true });
    expect(nixRealise([drvs.logsFail!]).status).toBe(100);
    expect((await ours([drvs.logsFail!])).status).toBe(100);
    expect([lockIn(R1), lockIn(R2)]).toEqual([true, true]);
    const good = nix('nix-store', ['--store', R1, '-q', '--outputs', drvs.dagGood!]);
    expect(nixRealise([drvs.dagGood!]).status).toBe(0);
    expect((await ours([drvs.dagGood!])).status).toBe(0);
    expect([existsSync(path.join(R1, `${good}.lock`)), existsSync(path.join(R2, `${good}.lock`))]).toEqual([false, false]);
  });
});
