/**
 * Argument handling of `realise` that needs no Nix: store path arguments read as nix-store reads them
 * (symlinks followed, sub-paths cut, Nix's messages), targets, flags and `--option` values.
 */
import { mkdirSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs, parseUnitPrefixed } from '../../src/cli/args.js';
import { followLinksToStorePath, parseTargetArg } from '../../src/cli/paths.js';
import { failureLines, formatError, missingLines, summariseFailures } from '../../src/cli/report.js';
import { failure } from '../../src/scheduler/results.js';
import { MemoryStore, type BuildResult, type TargetResult } from '../../src/index.js';
import { tempDir } from '../helpers/nix.js';

const P = '/nix/store/0ppwmlv9pjlqpn8k0fncmyaxzxilv2qm-hello';
const D = '/nix/store/1ppwmlv9pjlqpn8k0fncmyaxzxilv2qm-hello.drv';

describe('store path arguments', () => {
  it('follows symlinks into the store and cuts paths inside a store path', () => {
    const dir = tempDir();
    symlinkSync(`${P}/bin/hello`, path.join(dir, 'result'));
    symlinkSync('result', path.join(dir, 'link-to-link'));
    expect(followLinksToStorePath('/nix/store', path.join(dir, 'result'))).toBe(P);
    expect(followLinksToStorePath('/nix/store', path.join(dir, 'link-to-link'))).toBe(P);
    expect(followLinksToStorePath('/nix/store', `${P}/share/doc/`)).toBe(P);
  });

  it('absolute paths are taken as path.resolve leaves them (`//`, `.`, `..`, a trailing `/`), a normal one as it is', () => {
    const base = path.basename(P);
    for (const arg of [`/nix//store/${base}`, `/nix/./store/${base}/`, `/nix/x/../store/${base}/.`, `/nix/store/${base}/bin/..`, P, `${P}/..x`])
      expect(followLinksToStorePath('/nix/store', arg)).toBe(P);
    expect(() => followLinksToStorePath('/nix/store', '/nix/store/./abc')).toThrow("'abc' is too short to be a valid store path");
  });

  it("refuses bad arguments with Nix 2.8's messages", () => {
    const dir = tempDir();
    mkdirSync(path.join(dir, 'plain'));
    expect(() => followLinksToStorePath('/nix/store', path.join(dir, 'missing'))).toThrow(`getting status of '${dir}/missing': No such file or directory`);
    expect(() => followLinksToStorePath('/nix/store', path.join(dir, 'plain'))).toThrow(`path '${dir}/plain' is not in the Nix store`);
    expect(() => followLinksToStorePath('/nix/store', '/nix/store/abc')).toThrow("'abc' is too short to be a valid store path");
    expect(() => followLinksToStorePath('/nix/store', '/nix/store/eppwmlv9pjlqpn8k0fncmyaxzxilv2qm-x')).toThrow("contains illegal base-32 character 'e'");
    expect(() => followLinksToStorePath('/nix/store', '/nix/store/0ppwmlv9pjlqpn8k0fncmyaxzxilv2qm-a b')).toThrow("contains illegal character ' '");
  });

  it('takes every nixbase32 character in a hash part, and names the first other one, wherever it is', () => {
    const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
    for (let i = 0; i < alphabet.length; i++) {
      const hash = alphabet.slice(i) + alphabet.slice(0, i);
      expect(followLinksToStorePath('/nix/store', `/nix/store/${hash}-x`)).toBe(`/nix/store/${hash}-x`);
    }
    for (const bad of ['e', 'o', 't', 'u', 'A', 'Z', '-', '.', '_'])
      for (const at of [0, 17, 31]) {
        const hash = alphabet.slice(0, at) + bad + alphabet.slice(at + 1);
        expect(() => followLinksToStorePath('/nix/store', `/nix/store/${hash}-x`)).toThrow(`contains illegal base-32 character '${bad}'`);
      }
  });

  it('targets: DRV, DRV!out,dev, DRV^out, DRV^*, plain paths', () => {
    expect(parseTargetArg('/nix/store', D)).toEqual({ drvPath: D, outputs: '*' });
    expect(parseTargetArg('/nix/store', `${D}!out,dev`)).toEqual({ drvPath: D, outputs: ['out', 'dev'] });
    expect(parseTargetArg('/nix/store', `${D}^dev`)).toEqual({ drvPath: D, outputs: ['dev'] });
    expect(parseTargetArg('/nix/store', `${D}^*`)).toEqual({ drvPath: D, outputs: '*' });
    expect(parseTargetArg('/nix/store', P)).toEqual({ path: P });
  });
});

describe('flags', () => {
  it('records unknown --option names only before the first target, through aliases', () => {
    const a = parseArgs([
      'build',
      '--option',
      'frob',
      '1',
      '--option',
      'build-max-jobs',
      '2',
      '--option',
      'extra-sandbox-paths',
      '/x',
      D,
      '--option',
      'late',
      '1',
    ]);
    expect(a.unknownSettings).toEqual(['frob']);
    expect(a.options.get('max-jobs')).toBe('2');
    expect(a.options.get('late')).toBe('1');
  });

  it('every Nix setting is a flag too: --NAME VALUE, --extra-NAME VALUE, --BOOL, --no-BOOL, -jN', () => {
    const a = parseArgs([
      'build',
      '--max-build-log-size',
      '1000',
      '--no-keep-going',
      '--fallback',
      '--extra-sandbox-paths',
      '/x',
      '--build-repeat',
      '1',
      '-j0',
      D,
    ]);
    expect(Object.fromEntries(a.options)).toEqual({
      'max-build-log-size': '1000',
      'keep-going': 'false',
      fallback: 'true',
      'extra-sandbox-paths': '/x',
      'build-repeat': '1',
      'max-jobs': '0',
    });
    expect(a.positional).toEqual([D]);
  });

  it('compound short flags as Nix expands them: -rsS is -r -s -S, -kj2 is -k -j 2, nothing after --', () => {
    const p = parseArgs(['path-info', '-rsSh', D]);
    expect([p.recursive, p.size, p.closureSize, p.humanReadable, p.positional]).toEqual([true, true, true, true, [D]]);
    const b = parseArgs(['build', '-kKQj2', D]);
    expect(Object.fromEntries(b.options)).toEqual({ 'keep-going': 'true', 'keep-failed': 'true', 'max-jobs': '2' });
    expect(b.noBuildOutput).toBe(true);
    expect(parseArgs(['build', '-j', '3', '--', '-kK']).positional).toEqual(['-kK']);
    // nix-store hands the flags it does not know to the operation (which names the first: src/cli/build.ts).
    expect(parseArgs(['build', '-kZ', D]).opFlags).toEqual(['-Z']);
    expect(() => parseArgs(['path-info', '-rZ', D])).toThrow("unrecognised flag '-Z'");
  });

  it('of --check and --repair the last one wins, as nix-store --realise sets its build mode', () => {
    const mode = (...flags: string[]) => {
      const a = parseArgs(['build', ...flags, D]);
      return [a.check, a.repair];
    };
    expect(mode('--check', '--repair')).toEqual([false, true]);
    expect(mode('--repair', '--check')).toEqual([true, false]);
    expect(mode('--check')).toEqual([true, false]);
  });

  it("--quiet and -v count as Nix's verbosity: quiet only below the default level", () => {
    const q = (...flags: string[]) => parseArgs(['build', ...flags, '/nix/store/x']).quiet;
    expect([q(), q('--quiet'), q('--quiet', '-v'), q('--quiet', '--quiet', '-v'), q('-v', '--quiet'), q('--quiet', '-vv')]).toEqual([
      false,
      true,
      false,
      true,
      false,
      false,
    ]);
  });

  it("usage errors in nix-store's words", () => {
    expect(() => parseArgs(['build', '--max-jobs'])).toThrow("flag '--max-jobs' requires 1 argument(s)");
    expect(() => parseArgs(['build', '--option', 'x'])).toThrow("flag '--option' requires 2 argument(s)");
    expect(parseArgs(['build', '--frob', '--derivation']).opFlags).toEqual(['--frob', '--derivation']);
    expect(parseArgs(['repair', '--dry-run', '--json', '-L', D]).opFlags).toEqual(['--dry-run', '--json', '-L']);
    expect(() => parseArgs(['copy', '--frob'])).toThrow("unrecognised flag '--frob'");
    // nix-store reads --add-root itself, in other words than its option parser's.
    expect(() => parseArgs(['build', D, '--add-root'])).toThrow("'--add-root' requires an argument");
    // A flag's setting is checked as it is read, whatever the command; what --option warned before stays.
    expect(() => parseArgs(['gc', '--option', 'max-jobs', 'y', '--max-jobs', 'x'])).toThrow(
      expect.objectContaining({
        message: "configuration setting 'max-jobs' should be 'auto' or an integer",
        warnings: ["error: configuration setting 'max-jobs' should be 'auto' or an integer"],
      }),
    );
    expect(() => parseArgs(['store', 'optimise', '--cores', '4294967296'])).toThrow("setting 'cores' has invalid value '4294967296'");
    // --cores, --timeout, --max-silent-time as nix-store reads them (a unit letter, then an unsigned integer).
    expect([parseUnitPrefixed('3'), parseUnitPrefixed('2K'), parseUnitPrefixed('1m')]).toEqual([3, 2048, 1 << 20]);
    expect(() => parseUnitPrefixed('abc')).toThrow("invalid unit specifier 'C'");
    expect(() => parseUnitPrefixed('-1')).toThrow("'-1' is not an integer");
    expect(() => parseUnitPrefixed('xK')).toThrow("'x' is not an integer");
    expect(parseArgs(['build', '--cores', '1K', D]).options.get('cores')).toBe('1024');
    // path-info and copy mirror the nix command, which says "unrecognised" (nix-store: "unknown").
    expect(() => parseArgs(['path-info', '-q', D])).toThrow("unrecognised flag '-q'");
    expect(() => parseArgs(['copy', '--frob'])).toThrow("unrecognised flag '--frob'");
  });
});

describe('messages', () => {
  it('indents continuation lines under "error: "; a failure prints without its hint, its log tail goes when logs were shown, its note is a line before it', () => {
    expect(formatError('a\nb')).toBe('error: a\n       b\n');
    const tail = "builder for 'x' failed with exit code 1;\nlast 1 log lines:\n> y\nFor full logs, run 'nix log x'.";
    const r = {
      path: 'x',
      result: failure('permanent-failure', {
        message: "builder for 'x' failed with exit code 1",
        logTail: { drvPath: 'x', lines: ['y'] },
        keptBuildDir: '/tmp/d',
        hint: 'h',
      }),
    };
    expect(r.result.errorMsg).toBe(`${tail}\nnote: keeping build directory '/tmp/d'\n  hint: h`);
    expect(failureLines(r, false)).toEqual({ message: "builder for 'x' failed with exit code 1", note: "note: keeping build directory '/tmp/d'" });
    expect(failureLines(r, true).message).toBe(tail);
    // With the message's coloured form (the values in Nix's colour), the CLI prints that one; errorMsg stays plain.
    const coloured = failure('permanent-failure', { ...r.result.failure!, colouredMessage: "builder for '\x1b[35;1mx\x1b[0m' failed with exit code 1" });
    expect(coloured.errorMsg).toBe(r.result.errorMsg);
    expect(failureLines({ path: 'x', result: coloured }, true).message).toBe(tail.replace("'x' failed", "'\x1b[35;1mx\x1b[0m' failed"));
  });

  it("summarises failed targets as Nix's buildPaths: one error, or the first error and 'build of … failed'", () => {
    const fail = (path: string, errorMsg: string, extra: Partial<BuildResult> = {}): TargetResult => ({
      target: { drvPath: path },
      path,
      result: { status: 'permanent-failure', errorMsg, timesBuilt: 1, isNonDeterministic: false, startTime: 0, stopTime: 0, builtOutputs: {}, ...extra },
    });
    const a = fail('/nix/store/b0000000000000000000000000000000-a.drv', 'A failed');
    const b = fail('/nix/store/a0000000000000000000000000000000-b.drv', 'B failed');
    const stopped = fail('/nix/store/c0000000000000000000000000000000-c.drv', 'stopped', { status: 'stopped' });
    expect(summariseFailures([a], [a.result], true)).toEqual({ notes: [], messages: ['A failed'], exitStatus: 100 });
    // Goals in key order (by name: a before b); the first error is kept for last; paths sorted in the summary.
    expect(summariseFailures([b, a, stopped], [a.result, b.result], true)!.messages).toEqual([
      'B failed',
      'A failed',
      "build of '/nix/store/a0000000000000000000000000000000-b.drv', '/nix/store/b0000000000000000000000000000000-a.drv', '/nix/store/c0000000000000000000000000000000-c.drv' failed",
    ]);
  });

  it('lists derivations to build dependencies first, as printMissing', async () => {
    const store = new MemoryStore();
    const leaf = await store.addTextToStore('z-leaf.drv', 'Derive()');
    // A top that sorts before its dependency, so that plain sorting would get the order wrong.
    let top = '';
    for (let i = 0; !top || top > leaf; i++) top = await store.addTextToStore(`top-${i}.drv`, 'Derive()', [leaf]);
    const lines = await missingLines(store, { willBuild: [top, leaf], willSubstitute: [], unknown: [P], downloadSize: 0, narSize: 0 });
    expect(lines).toEqual(['these 2 derivations will be built:', `  ${leaf}`, `  ${top}`, "don't know how to build these paths:", `  ${P}`]);
  });
});
