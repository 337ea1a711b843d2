/**
 * The configuration `realise` reads before its command line, as nix-store does: nix.conf files,
 * $NIX_CONFIG, $NIX_REMOTE. Unit checks of the reader, then the same environment given to nix-store and to
 * `realise build` (twin chroot stores).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../../src/cli/args.js';
import { applyNixConf, readNixConf } from '../../src/cli/nix-conf.js';
import { engineSettings } from '../../src/cli/settings.js';
import type { Store } from '../../src/index.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realiseWithEnv } from '../helpers/cli.js';

/**
 * A store dir with one instantiated derivation of `name` (in the chroot store R1 under a fresh dir), a
 * configuration dir, and a check that runs nix-store and realise (on R2) with each nix.conf text and
 * arguments ('build' for --realise) and compares their statuses and stderr (and `also`, on Nix's stderr).
 */
function confCases(name: string) {
  const dir = tempDir();
  const conf = path.join(dir, 'conf');
  mkdirSync(conf);
  const drv = nix('nix-instantiate', ['--store', path.join(dir, 'R1'), '-E', `derivation { name = "${name}"; system = "x86_64-linux"; builder = "/bin/sh"; }`]);
  const check = async (cases: [string, string[]][], also?: (nixStderr: string, text: string) => void) => {
    for (const [text, args] of cases) {
      writeFileSync(path.join(conf, 'nix.conf'), text);
      const env = { NIX_CONF_DIR: conf, NIX_USER_CONF_FILES: '/dev/null', NIX_REMOTE: path.join(dir, 'R1') };
      const nixArgs = args[0] === 'build' ? ['--realise', ...args.slice(1)] : args;
      const n = runNix('nix-store', nixArgs, { env });
      const o = await realiseWithEnv(args, { ...env, NIX_REMOTE: path.join(dir, 'R2') });
      expect(o.status, text).toBe(n.status);
      also?.(n.stderr, text);
      expect(o.stderr.replace("'realise --help'", "'nix-store --help'"), text).toBe(n.stderr);
    }
  };
  return { drv, check };
}

describe('readNixConf / applyNixConf', () => {
  it("reads nix.conf, the user files (first wins) and $NIX_CONFIG in Nix's order, with includes and comments", () => {
    const d = tempDir();
    mkdirSync(path.join(d, 'etc'));
    writeFileSync(path.join(d, 'etc', 'nix.conf'), 'cores = 1 # a comment\n\ninclude more.conf\n!include absent.conf\n');
    writeFileSync(path.join(d, 'etc', 'more.conf'), 'timeout = 5\nextra-sandbox-paths = /a\n');
    writeFileSync(path.join(d, 'u1.conf'), 'cores = 3\n');
    writeFileSync(path.join(d, 'u2.conf'), 'cores = 2\nextra-sandbox-paths = /b\n');
    const env = {
      NIX_CONF_DIR: path.join(d, 'etc'),
      NIX_USER_CONF_FILES: `${path.join(d, 'u1.conf')}:${path.join(d, 'u2.conf')}`,
      NIX_CONFIG: 'max-jobs = 4\nbuild-max-silent-time = 7',
    };
    const settings = readNixConf(env);
    expect(settings.map((s) => `${s.name}=${s.value}`)).toEqual([
      'cores=1',
      'timeout=5',
      'extra-sandbox-paths=/a',
      'cores=2',
      'extra-sandbox-paths=/b',
      'cores=3',
      'max-jobs=4',
      'build-max-silent-time=7',
    ]);
    const args = parseArgs(['build', '--option', 'timeout', '9', '--extra-sandbox-paths', '/c', '/nix/store/x']);
    applyNixConf(args, settings, {});
    expect(Object.fromEntries(args.options)).toMatchObject({
      cores: '3',
      timeout: '9',
      'max-jobs': '4',
      'max-silent-time': '7',
      'extra-sandbox-paths': '/a /b /c',
    });
  });

  it("a plain NAME replaces what extra-NAME added before it, in the configuration and on the command line, as Nix's Config::set", () => {
    const ext = (argv: string[], conf: { name: string; value: string }[]) => {
      const a = parseArgs(['build', ...argv]);
      applyNixConf(a, conf, {});
      return [a.options.get('sandbox-paths'), a.options.get('extra-sandbox-paths')];
    };
    expect(ext(['--option', 'extra-sandbox-paths', '/opt', '--option', 'sandbox-paths', '/x'], [])).toEqual(['/x', undefined]);
    expect(ext(['--option', 'sandbox-paths', '/x', '--extra-sandbox-paths', '/opt'], [])).toEqual(['/x', '/opt']);
    expect(ext(['--option', 'sandbox-paths', '/x'], [{ name: 'extra-sandbox-paths', value: '/srv' }])).toEqual(['/x', undefined]);
    expect(
      ext(
        [],
        [
          { name: 'extra-sandbox-paths', value: '/srv' },
          { name: 'sandbox-paths', value: '/c' },
        ],
      ),
    ).toEqual(['/c', undefined]);
    expect(
      ext(
        ['--extra-sandbox-paths', '/opt'],
        [
          { name: 'sandbox-paths', value: '/c' },
          { name: 'extra-sandbox-paths', value: '/srv' },
        ],
      ),
    ).toEqual(['/c', '/srv /opt']);
  });

  it("malformed lines and missing includes are errors with Nix's words; the store comes from `store` or $NIX_REMOTE", () => {
    expect(() => readNixConf({ NIX_CONF_DIR: '/nonexistent', NIX_USER_CONF_FILES: '', NIX_CONFIG: 'foo' })).toThrow(
      "illegal configuration line 'foo' in 'NIX_CONFIG'",
    );
    expect(() => readNixConf({ NIX_CONF_DIR: '/nonexistent', NIX_USER_CONF_FILES: '', NIX_CONFIG: 'a b c' })).toThrow(
      "illegal configuration line 'a b c' in 'NIX_CONFIG'",
    );
    expect(() => readNixConf({ NIX_CONF_DIR: '/nonexistent', NIX_USER_CONF_FILES: '', NIX_CONFIG: 'include /nonexistent/x' })).toThrow(
      "file '/nonexistent/x' included from 'NIX_CONFIG' not found",
    );
    const a = parseArgs(['build', 'x']);
    applyNixConf(a, [], { NIX_REMOTE: '/tmp/r' });
    expect(a.store).toBe('/tmp/r');
    const b = parseArgs(['build', 'x']);
    applyNixConf(b, [{ name: 'store', value: '/tmp/s' }], { NIX_REMOTE: '/tmp/r' });
    expect(b.store).toBe('/tmp/s');
    const c = parseArgs(['build', '--store', '/tmp/t', 'x']);
    applyNixConf(c, [{ name: 'store', value: '/tmp/s' }], { NIX_REMOTE: 'daemon' });
    expect(c.store).toBe('/tmp/t');
    const d = parseArgs(['build', 'x']);
    applyNixConf(d, [], { NIX_REMOTE: 'daemon' });
    expect(d.store).toBe('daemon');
    const e = parseArgs(['build', 'x']);
    applyNixConf(e, [], { NIX_REMOTE: 'auto' });
    expect(e.store).toBeUndefined();
  });
});

describe.skipIf(!nixOk())('configuration vs Nix 2.8', () => {
  it("unknown settings: every nix-store operation names them (the configuration's and --option's, sorted, before anything else); path-info the configuration's only", async () => {
    const dir = tempDir();
    const conf = path.join(dir, 'conf');
    mkdirSync(conf);
    writeFileSync(path.join(conf, 'nix.conf'), 'zz-conf-unknown = 1\n');
    writeFileSync(path.join(dir, 'f.txt'), 'f\n');
    const p = nix('nix-store', ['--store', path.join(dir, 'R1'), '--add', path.join(dir, 'f.txt')]);
    nix('nix-store', ['--store', path.join(dir, 'R2'), '--add', path.join(dir, 'f.txt')]);
    const opts = ['--option', 'b-unknown', '1', '--option', 'a-unknown', '2'];
    const cases: [string, string[], string[]][] = [
      ['nix-store', ['--gc', '--print-roots', ...opts], ['gc', '--print-roots', ...opts]],
      ['nix-store', ['--optimise', ...opts], ['store', 'optimise', ...opts]],
      ['nix-store', ['--realise', ...opts, p], ['build', ...opts, p]],
      ['nix', ['path-info', '--extra-experimental-features', 'nix-command', ...opts, p], ['path-info', ...opts, p]],
    ];
    for (const [cmd, nixArgs, args] of cases) {
      const env = { NIX_CONF_DIR: conf, NIX_USER_CONF_FILES: '/dev/null' };
      const n = runNix(cmd, ['--store', path.join(dir, 'R1'), ...nixArgs], { env });
      const o = await realiseWithEnv([...args, '--store', path.join(dir, 'R2')], env);
      const warnings = (s: string) => s.split('\n').filter((l) => l.startsWith('warning: unknown'));
      expect([o.status, warnings(o.stderr)], args.join(' ')).toEqual([n.status, warnings(n.stderr)]);
      expect(o.stderr.startsWith(warnings(n.stderr).join('\n')), o.stderr).toBe(true);
    }
  });
  it("Nix's build hook warns about the configuration's unknown settings again before the first build it is asked about (not a preferLocalBuild one)", async () => {
    const dir = tempDir();
    const conf = path.join(dir, 'conf');
    mkdirSync(conf);
    writeFileSync(path.join(conf, 'nix.conf'), 'zz-conf-unknown = 1\nsubstituters =\n');
    const env = { NIX_CONF_DIR: conf, NIX_USER_CONF_FILES: '/dev/null', NIX_CONFIG: 'yy-env-unknown = 1' };
    // A preferLocalBuild derivation for another system cannot be built here: Nix offers it to its hook too.
    for (const [prefer, system] of [
      [false, 'x86_64-linux'],
      [true, 'x86_64-linux'],
      [true, 'aarch64-linux'],
    ] as const) {
      const name = `${prefer}-${system}`;
      const expr = `derivation { name = "hook-warn"; system = "${system}"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; preferLocalBuild = ${prefer}; }`;
      const drv = nix('nix-instantiate', ['--store', path.join(dir, `R1-${name}`), '-E', expr]);
      nix('nix-instantiate', ['--store', path.join(dir, `R2-${name}`), '-E', expr]);
      const args = ['--option', 'xx-option-unknown', '1', drv];
      const n = runNix('nix-store', ['--store', path.join(dir, `R1-${name}`), '--realise', ...args], { env });
      const o = await realiseWithEnv(['build', '--store', path.join(dir, `R2-${name}`), ...args], env);
      const lines = (s: string) => s.split('\n').filter((l) => /^warning: unknown|^building '|^error: a '/.test(l));
      expect([o.status, lines(o.stderr)], `preferLocalBuild ${prefer}, ${system}`).toEqual([n.status, lines(n.stderr)]);
      const local = prefer && system === 'x86_64-linux';
      expect(lines(n.stderr).filter((l) => l === "warning: unknown setting 'zz-conf-unknown'")).toHaveLength(local ? 1 : 2);
    }
  });
  it("--option values Nix cannot parse and unknown experimental features: Nix's warnings as it sets them, in order, the setting unchanged", async () => {
    const dir = tempDir();
    const conf = path.join(dir, 'conf');
    mkdirSync(conf);
    writeFileSync(path.join(conf, 'nix.conf'), 'experimental-features = nix-command conf-feature\n');
    const expr = 'derivation { name = "opt-warn"; system = "x86_64-linux"; builder = "/bin/sh"; }';
    const drv = nix('nix-instantiate', ['--store', path.join(dir, 'R1'), '-E', expr]);
    nix('nix-instantiate', ['--store', path.join(dir, 'R2'), '-E', expr]);
    const features = 'nix-command ca-derivations impure-derivations flakes recursive-nix no-url-literals fetch-closure zzz';
    const bad = ['--option', 'keep-going', 'maybe', '--option', 'http2', '2', '--option', 'cores', '+2', '--option', 'keep-outputs', '3'];
    const cases: [string[], string[]][] = [
      [
        ['--realise', '--option', 'foo', '1', ...bad, '--option', 'experimental-features', features, '--option', 'sandbox', 'maybe', drv],
        ['build', '--option', 'foo', '1', ...bad, '--option', 'experimental-features', features, '--option', 'sandbox', 'maybe', drv],
      ],
      [
        ['--version', ...bad],
        ['--version', ...bad],
      ],
      // A Boolean the collector reads: a warning, not an error.
      [
        ['--gc', '--print-dead', ...bad],
        ['gc', '--print-dead', ...bad],
      ],
    ];
    for (const [nixArgs, args] of cases) {
      const env = { NIX_CONF_DIR: conf, NIX_USER_CONF_FILES: '/dev/null', NIX_REMOTE: path.join(dir, 'R1') };
      const n = runNix('nix-store', nixArgs, { env });
      const o = await realiseWithEnv(args, { ...env, NIX_REMOTE: path.join(dir, 'R2') });
      expect(o.status, args.join(' ')).toBe(n.status);
      // (Before the build: Nix's build hook repeats the configuration's warnings as it starts, docs/cli.md.)
      const warnings = (s: string) =>
        s
          .split(/^this derivation will be built:$/m)[0]!
          .split('\n')
          .filter((l) => l.startsWith('warning: '));
      expect(warnings(o.stderr), args.join(' ')).toEqual(warnings(n.stderr));
      expect(warnings(n.stderr).length).toBeGreaterThan(3);
    }
  });
  it("nix.conf is read line by line before the command line: a bad value, a missing include, `extra-` of a setting that is no list, in Nix's order and words", async () => {
    const { drv, check } = confCases('conf-order');
    const cases: [string, string[]][] = [
      // The first bad line wins, whichever kind it is.
      ['keep-going = maybe\ninclude /nonexistent\n', ['build', drv]],
      ['include /nonexistent\nkeep-going = maybe\n', ['build', drv]],
      // Before the command line's own errors, and before --version.
      ['keep-going = maybe\n', ['build', '--no-such-flag', drv]],
      ['http2 = 2\n', ['--version']],
      // Aliases are named by their setting; integers take a '+', the signed ones a '-', nothing past 64 bits.
      ['build-repeat = x\n', ['build', drv]],
      ['build-use-sandbox = maybe\n', ['build', drv]],
      ['timeout = -1\ncores = +2\nmin-free = -5\n', ['build', drv]],
      ['max-jobs = 99999999999999999999\n', ['build', drv]],
      // extra- takes only the settings that are lists: the others are unknown (a warning, or no flag at all).
      ['extra-keep-going = true\nextra-cores = 3\nextra-substituters =\nsandbox = maybe\n', ['build', drv]],
      // sandbox is no Boolean: true, false or relaxed only.
      ['sandbox = 1\n', ['build', drv]],
      ['', ['--version', '--option', 'sandbox', 'yes', '--option', 'build-use-sandbox', 'no', '--option', 'sandbox', '1']],
      ['', ['build', '--extra-keep-going', 'true', drv]],
    ];
    await check(cases);
  });
  it("integer settings are read by their Nix type's sign and width, once: what the configuration and --option take is what the engine gets", async () => {
    // Signed 64 bits (time_t): Nix takes a negative timeout from nix.conf and from --option, silently.
    const fromConf = parseArgs(['build', '/nix/store/x']);
    applyNixConf(
      fromConf,
      readNixConf({ NIX_CONF_DIR: '/nonexistent', NIX_USER_CONF_FILES: '', NIX_CONFIG: 'timeout = -1\nmax-silent-time = -5\nmax-jobs = +3' }),
      {},
    );
    const fromOption = parseArgs(['build', '--option', 'timeout', '-1', '--option', 'max-silent-time', '-5', '--option', 'max-jobs', '+3', '/nix/store/x']);
    expect(fromOption.settingWarnings).toEqual([]);
    for (const args of [fromConf, fromOption]) {
      expect(engineSettings(args, {} as Store).options).toMatchObject({ buildTimeout: -1, maxSilentTime: -5, maxJobs: 3 });
    }
    // Unsigned 32 bits (unsigned int): cores and max-jobs stop below 2^32; log-lines (size_t) takes 64 bits.
    const big = parseArgs(['build', '--option', 'cores', '4294967296', '--option', 'max-jobs', '4294967296', '--option', 'cores', '4294967295']);
    expect(big.settingWarnings).toEqual([
      "error: setting 'cores' has invalid value '4294967296'",
      "error: configuration setting 'max-jobs' should be 'auto' or an integer",
    ]);
    expect(engineSettings(big, {} as Store).options).toMatchObject({ cores: 4294967295 });
    expect(big.options.has('max-jobs')).toBe(false);
    expect(parseArgs(['build', '--option', 'log-lines', '4294967296']).settingWarnings).toEqual([]);
    // Beside nix-store: a configuration's out-of-range cores is an error before anything; --option's a warning.
    const { drv, check } = confCases('int-width');
    const cases: [string, string[]][] = [
      ['cores = 4294967296\n', ['build', drv]],
      ['build-cores = 4294967296\n', ['build', drv]],
      ['', ['--version', '--option', 'cores', '4294967296', '--option', 'timeout', '-1', '--option', 'max-silent-time', '-5']],
    ];
    await check(cases, (nixStderr, text) => expect(nixStderr, text).toContain("invalid value '4294967296'"));
  });
  it('$NIX_CONFIG (sandbox-paths, sandbox) and $NIX_REMOTE act as on nix-store; a bad value is an error', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'a.nix');
    writeFileSync(
      file,
      `{
      good = derivation { name = "conf-good"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo good > $out"]; };
      noChroot = derivation { name = "conf-nochroot"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo > $out"]; __noChroot = true; };
    }`,
    );
    const R1 = path.join(dir, 'R1');
    const R2 = path.join(dir, 'R2');
    const drvs: string[] = [];
    for (const a of ['good', 'noChroot']) {
      drvs.push(nix('nix-instantiate', ['--store', R1, file, '-A', a]));
      nix('nix-instantiate', ['--store', R2, file, '-A', a]);
    }
    const base = 'build-users-group =\nsubstituters =\n';
    const cases: [string, string[]][] = [
      // The sandbox's shell only from the configuration; __noChroot is built (sandboxed: a chroot store) when sandbox = false.
      [`${base}sandbox = false\nextra-sandbox-paths = /bin/sh=/bin/busybox\nextra-sandbox-paths = /bin/busybox`, drvs],
      [`${base}keep-going = maybe`, [drvs[0]!]],
      [`${base}foo`, [drvs[0]!]],
    ];
    for (const [config, targets] of cases) {
      const n = runNix('nix-store', ['--realise', ...targets], { env: { NIX_REMOTE: R1, NIX_CONFIG: config } });
      const o = await realiseWithEnv(['build', ...targets], { NIX_REMOTE: R2, NIX_CONFIG: config, NIX_USER_CONF_FILES: '/dev/null' });
      expect(o.status, o.stderr + '\n---\n' + n.stderr).toBe(n.status);
      expect(o.stdout).toBe(n.stdout);
      const lines = (s: string) => s.split('\n').filter((l) => /^(error|warning): /.test(l));
      expect(lines(o.stderr)).toEqual(lines(n.stderr));
    }
  });
});
