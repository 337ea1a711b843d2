/**
 * The BuildEngine against real Nix 2.8: the same .drv files (nix-instantiate into two chroot stores, which
 * gives the same logical paths), built sandboxed by `nix-store --realise` in one and by us in the other.
 * Output paths, NAR hashes, references, CA fields, exit statuses and error shapes must match, and real Nix
 * must verify our store afterwards. A last block does the same on plain stores without a sandbox.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { BuildFailedError, BuildSetupError } from '../../src/scheduler/errors.js';
import type { BuildTarget, TargetResult } from '../../src/scheduler/results.js';
import { LocalStore } from '../../src/store/local-store.js';
import { bwrapOk, nix, nixOk, tempDir, runNix } from '../helpers/nix.js';
import {
  FIXTURES,
  SANDBOX_PATHS,
  busyboxOk,
  closureIn,
  drvOutputs,
  instantiateAttrs,
  logTail,
  nixClosure,
  nixOutputs,
  nixRealise,
  nixSandboxArgs,
  nixVerify,
  pathFacts,
  removeTree,
  type PathFacts,
} from './helpers.js';

const CORES = 3;

/** Nix's error text: everything after `error: `. */
function nixError(stderr: string): string {
  const i = stderr.indexOf('error: ');
  return i < 0 ? '' : stderr.slice(i + 'error: '.length);
}

/** The `error: ...` blocks of Nix's stderr (a block goes on while lines are indented). */
function nixErrors(stderr: string): string[] {
  const blocks: string[] = [];
  let cur: string[] | undefined;
  for (const line of stderr.split('\n')) {
    if (line.startsWith('error: ')) {
      if (cur) blocks.push(cur.join('\n'));
      cur = [line.slice('error: '.length)];
    } else if (cur && /^\s/.test(line)) {
      cur.push(line);
    } else if (cur) {
      blocks.push(cur.join('\n'));
      cur = undefined;
    }
  }
  if (cur) blocks.push(cur.join('\n'));
  return blocks;
}

/** Whitespace collapsed (Nix indents continuation lines of its messages). */
function squash(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

// Needs bubblewrap (our sandbox) and a static /bin/busybox (the builders' shell in both sandboxes).
describe.skipIf(!nixOk() || !bwrapOk() || !busyboxOk())('BuildEngine vs Nix 2.8, sandboxed builds in chroot stores', () => {
  let root: string;
  let R1: string; // built by Nix
  let R2: string; // built by us
  let tmp: string; // TMPDIR of both (Nix names build dirs `<TMPDIR>/nix-build-<drv name>-<n>`)
  let drv: Record<string, string>;
  let store: LocalStore;

  // Fixed-output builders get the `impureEnvVars` they name from the caller's environment.
  const IMPURE = { REALISE_TEST_IMPURE: 'from the caller' };
  // Closed in afterAll: a sandboxing engine may be preparing its next chroot when a test ends.
  const engines: BuildEngine[] = [];
  const engine = (o: BuildEngineOptions = {}) => {
    const e = new BuildEngine({
      store,
      sandbox: true,
      sandboxPaths: SANDBOX_PATHS,
      cores: CORES,
      maxJobs: 2,
      buildDir: tmp,
      environment: IMPURE,
      ...o,
    });
    engines.push(e);
    return e;
  };
  const nixBuild = (args: string[]) => nixRealise(R1, [...args, ...nixSandboxArgs(), '--cores', String(CORES), '-j', '2'], { env: { TMPDIR: tmp, ...IMPURE } });
  const ourFailure = async (targets: (string | BuildTarget)[], o: BuildEngineOptions = {}, mode?: 'check'): Promise<BuildFailedError> => {
    const e = await engine(o)
      .buildPaths(targets, mode ? { mode } : {})
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(e).toBeInstanceOf(BuildFailedError);
    return e as BuildFailedError;
  };
  /**
   * Every path of the closure of the outputs of `attrs`, as Nix has them in R1, must be the same in R2.
   * Facts come from one `nix path-info --all` per store (`snap`), taken after the builds of a block.
   */
  let snap: { nix: Map<string, PathFacts>; ours: Map<string, PathFacts>; outputs: Map<string, Record<string, string>> };
  const takeSnapshot = () => {
    snap = { nix: pathFacts(R1, 'all'), ours: pathFacts(R2, 'all'), outputs: drvOutputs(R1, Object.values(drv)) };
  };
  const outputsOf = (attr: string): string[] => Object.values(snap.outputs.get(drv[attr]!)!).sort();
  const expectSameClosure = (attrs: string[]): string[] => {
    const outs = attrs.flatMap(outputsOf);
    const closure = closureIn(snap.nix, outs);
    for (const p of closure) {
      expect(snap.nix.get(p)?.valid, p).toBe(true);
      expect(snap.ours.get(p), p).toEqual(snap.nix.get(p));
    }
    return outs;
  };
  const readBoth = async (p: string) => [await fsp.readFile(path.join(R1, p), 'utf8'), await fsp.readFile(path.join(R2, p), 'utf8')] as const;

  beforeAll(async () => {
    root = tempDir('realise-sched-cmp-');
    R1 = path.join(root, 'nix');
    R2 = path.join(root, 'ours');
    tmp = path.join(root, 'tmp');
    await fsp.mkdir(tmp);
    const file = path.join(FIXTURES, 'compare.nix');
    drv = instantiateAttrs(R1, file);
    expect(instantiateAttrs(R2, file)).toEqual(drv);
    store = await LocalStore.open({ root: R2 });
  });

  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
    if (root) await removeTree(root);
  });

  describe('successful builds', () => {
    let results: TargetResult[];
    let okAttrs: string[];

    beforeAll(async () => {
      okAttrs = Object.keys(drv)
        .filter((k) => k.startsWith('ok-'))
        .sort();
      const r = nixBuild(okAttrs.map((a) => drv[a]!));
      expect(r.status, r.stderr).toBe(0);
      // Every target form: a plain .drv path, `DRV^*`, `DRV^out,dev,lib` and `{ drvPath, outputs }`.
      const targets = okAttrs.map((a, i): string | BuildTarget => {
        if (a === 'ok-multi') return `${drv[a]}^dev,lib,out`;
        if (a === 'ok-env') return { drvPath: drv[a]!, outputs: ['out', 'doc'] };
        return i % 2 ? `${drv[a]}^*` : drv[a]!;
      });
      results = await engine().buildPaths(targets);
      takeSnapshot();
    }, 120_000);

    it('builds every target and reports the output paths Nix has', () => {
      expect(results.map((r) => r.result.status)).toEqual(okAttrs.map(() => 'built'));
      for (const [i, a] of okAttrs.entries()) {
        expect(Object.values(results[i]!.result.builtOutputs).sort(), a).toEqual(outputsOf(a));
        expect(results[i]!.result.timesBuilt, a).toBe(1);
      }
    });

    it('simple, chain and diamond: same NAR hashes and references', () => {
      expectSameClosure(['ok-simple', 'ok-chain', 'ok-diamond']);
    });

    it('multiple outputs with cross references (out -> lib, dev -> out, lib), and a user of only `dev`', () => {
      const outs = expectSameClosure(['ok-multi', 'ok-multi-user']);
      const dev = outs.find((o) => o.endsWith('-multi-dev'))!;
      expect(snap.ours.get(dev)!.references).toEqual(outs.filter((o) => o.endsWith('-multi') || o.endsWith('-multi-lib')).sort());
    });

    it('self references (a file, a symlink and an executable naming the output)', () => {
      const [out] = expectSameClosure(['ok-self-ref']);
      expect(snap.ours.get(out!)!.references).toEqual([out]);
    });

    it('fixed-output flat and recursive, and a user of them: same paths and CA fields', () => {
      const outs = expectSameClosure(['ok-fo-flat', 'ok-fo-rec', 'ok-fo-user']);
      const facts = snap.ours;
      expect(facts.get(outs.find((o) => o.endsWith('-fo-flat'))!)!.ca).toBe('fixed:sha256:0d75vbn546fz9d9ip0f03daqhpm99h3fv14ci4afcmk3ir0p2c0c');
      expect(facts.get(outs.find((o) => o.endsWith('-fo-rec'))!)!.ca).toBe('fixed:r:sha256:1y5krc39drzbjnab9b2anbxkpfk379ccsycfyksfxwbid8h4266a');
    });

    it('structured attrs: .attrs.json, .attrs.sh and the environment are byte-identical', async () => {
      const [out] = expectSameClosure(['ok-structured']);
      for (const f of ['.attrs.json', '.attrs.sh', 'env']) {
        const [a, b] = await readBoth(path.join(out!, f));
        expect(b, f).toBe(a);
      }
    });

    it('passAsFile', async () => {
      const [out] = expectSameClosure(['ok-pass-as-file']);
      const [a, b] = await readBoth(out!);
      expect(a).toContain('/build/.attr-');
      expect(b).toBe(a);
    });

    it('exportReferencesGraph, legacy and structured', async () => {
      const outs = expectSameClosure(['ok-erg-legacy', 'ok-erg-structured']);
      const legacy = outs.find((o) => o.endsWith('-erg-legacy'))!;
      const structured = outs.find((o) => o.endsWith('-erg-structured'))!;
      for (const f of [`${legacy}/graph`, `${legacy}/graph2`, `${structured}/attrs.json`, `${structured}/attrs.sh`]) {
        const [a, b] = await readBoth(f);
        expect(b, f).toBe(a);
      }
    });

    it('exportReferencesGraph of a .drv (its closure, plus the outputs of its derivations that are valid)', async () => {
      const [out] = expectSameClosure(['ok-erg-drv']);
      const [a, b] = await readBoth(out!);
      expect(a).toContain('-chain-b.drv\n');
      expect(a).toMatch(/-chain-a\n\n0\n/);
      expect(b).toBe(a);
    });

    it('allowed/disallowed references and allowed requisites that hold', () => {
      expectSameClosure(['ok-refs']);
    });

    it("the builder's environment is byte-identical to Nix's (env | sort)", async () => {
      const { out, doc } = snap.outputs.get(drv['ok-env']!)!;
      expectSameClosure(['ok-env']);
      const [a, b] = await readBoth(out!);
      expect(a).toContain(`NIX_BUILD_CORES=${CORES}\n`);
      expect(a).toContain(`doc=${doc}\n`);
      expect(b).toBe(a);
      expectSameClosure(['ok-env-user']);
    });

    it('input sources (builtins.toFile, a sourced script) are in the sandbox', async () => {
      const [out] = expectSameClosure(['ok-input-src']);
      const [a, b] = await readBoth(out!);
      expect(a).toMatch(/^some data \/nix\/store\/[a-z0-9]{32}-inner.txt\nhelper from \.\nargs: \n$/);
      expect(b).toBe(a);
    });

    it('a symlink as output, and a directory with a mode-700 subdirectory and an empty file', () => {
      const outs = expectSameClosure(['ok-symlink', 'ok-empty-dir']);
      expect(outs).toHaveLength(2);
    });

    it('an already valid target is not rebuilt', async () => {
      const r = await engine().buildPaths([drv['ok-diamond']!]);
      expect(r[0]!.result.status).toBe('already-valid');
    });
  });

  describe('failures', () => {
    it.each(['fo-mismatch', 'fo-rec-mismatch', 'fo-env'])('%s: exit 102 in both, content registered under its true path', async (attr) => {
      const d = drv[attr]!;
      const r = nixBuild([d]);
      expect(r.status).toBe(102);
      const e = await ourFailure([d]);
      expect(e.exitStatus).toBe(102);
      expect(e.failures).toHaveLength(1);
      expect(e.failures[0]!.result.status).toBe('output-rejected');
      expect(e.failures[0]!.result.hashMismatch).toBe(true);
      const hashes = (s: string) => [...s.matchAll(/(specified|got):\s+(sha256-[A-Za-z0-9+/=]+)/g)].map((m) => `${m[1]} ${m[2]}`);
      expect(hashes(e.message)).toHaveLength(2);
      expect(hashes(e.message)).toEqual(hashes(r.stderr));
      expect(squash(e.message)).toBe(squash(nixError(r.stderr)));
      // The wanted path is invalid in both; the content is valid under its true path in both.
      const [wanted] = nixOutputs(R1, [d]);
      expect(pathFacts(R2, [wanted!]).get(wanted!)?.valid).toBe(false);
      const suffix = `-${attr}`;
      const nixHas = [...pathFacts(R1, 'all')].filter(([p]) => p.endsWith(suffix));
      expect(nixHas).toHaveLength(1);
      expect(nixHas[0]![0]).not.toBe(wanted);
      expect(pathFacts(R2, [nixHas[0]![0]]).get(nixHas[0]![0])).toEqual(nixHas[0]![1]);
      // ... and what is on disk there is what was registered.
      const v = runNix('nix-store', ['--store', R2, '--verify-path', nixHas[0]![0]]);
      expect(v.status, v.stderr).toBe(0);
    });

    describe('rejected outputs, all built in one keep-going call', () => {
      const CASES: [attr: string, status: string, shape: RegExp | 'same'][] = [
        ['bad-allowed-refs', 'output-rejected', 'same'],
        ['bad-disallowed-refs', 'output-rejected', 'same'],
        ['bad-allowed-requisites', 'output-rejected', 'same'],
        ['bad-structured-checks', 'output-rejected', 'same'],
        ['bad-max-size', 'output-rejected', 'same'],
        // Nix names the output inside its chroot build dir; we name the store path: compare shapes.
        ['bad-perms', 'output-rejected', /^suspicious ownership or permission on '.*-bad-perms' for output 'out'; rejecting this build output$/],
        // The builder is PID 1 of its PID namespace in both: `kill -9 $$` does nothing, the output is missing.
        ['killed', 'misc-failure', /^builder for '.*-killed.drv' failed to produce output path for output 'out' at '.*-killed'$/],
      ];
      let nixStatus: number;
      let nixBlocks: string[];
      let ours: BuildFailedError;
      /** Output path → valid in either store. */
      let validAfter: Map<string, boolean>;
      /** Output path → [on disk in Nix's store, on disk in ours]. */
      let onDisk: Map<string, readonly [boolean, boolean]>;

      beforeAll(async () => {
        const drvs = CASES.map(([a]) => drv[a]!);
        const r = nixBuild(['--keep-going', ...drvs]);
        nixStatus = r.status;
        nixBlocks = nixErrors(r.stderr).filter((b) => !b.startsWith('build of '));
        ours = await ourFailure(drvs, { keepGoing: true });
        const outs = nixOutputs(R1, drvs);
        const [f1, f2] = [pathFacts(R1, outs), pathFacts(R2, outs)];
        validAfter = new Map(outs.map((p) => [p, !!(f1.get(p)?.valid || f2.get(p)?.valid)]));
        const exists = (root: string, p: string) =>
          fsp.lstat(path.join(root, p)).then(
            () => true,
            () => false,
          );
        onDisk = new Map(await Promise.all(outs.map(async (p) => [p, [await exists(R1, p), await exists(R2, p)]] as const)));
      }, 120_000);

      it('the same exit status (1: no build failure bits) and one failure per derivation', () => {
        expect(nixStatus).toBe(1);
        expect(ours.exitStatus).toBe(1);
        expect(nixBlocks).toHaveLength(CASES.length);
        expect(ours.failures.map((f) => f.path).sort()).toEqual(CASES.map(([a]) => drv[a]!).sort());
      });

      it.each(CASES)('%s: %s, same message', (attr, status, shape) => {
        const mine = ours.failures.find((f) => f.path === drv[attr])!.result;
        const theirs = nixBlocks.find((b) => b.includes(`-${attr}'`) || b.includes(`-${attr}.drv'`));
        expect(theirs, nixBlocks.join('\n---\n')).toBeDefined();
        expect(mine.status).toBe(status);
        if (shape === 'same') {
          expect(squash(mine.errorMsg!)).toBe(squash(theirs!));
        } else {
          expect(squash(theirs!)).toMatch(shape);
          expect(squash(mine.errorMsg!)).toMatch(shape);
        }
        const out = [...validAfter.keys()].find((p) => p.endsWith(`-${attr}`));
        expect(out).toBeDefined();
        expect(validAfter.get(out!)).toBe(false);
        // An output rejected by its checks stays in the store (invalid), as Nix moved it there before checking.
        expect(onDisk.get(out!)).toEqual(attr === 'bad-perms' || attr === 'killed' ? [false, false] : [true, true]);
      });
    });

    // Alone, not in the keep-going batch: Nix 2.8 throws the cycle error as a plain Error (sliced from
    // BuildError), which ends the whole call even with --keep-going; so do we (next test).
    it('a cycle between outputs: exit 1 in both, same message', async () => {
      const d = drv['bad-cycle']!;
      const r = nixBuild([d]);
      expect(r.status).toBe(1);
      const e = await ourFailure([d]);
      expect(e.exitStatus).toBe(1);
      expect(e.failures[0]!.result.status).toBe('output-rejected');
      expect(squash(e.message)).toBe(squash(nixError(r.stderr)));
      expect(e.message).toMatch(/^cycle detected in build of '.*-bad-cycle.drv' in the references of output 'dev' from output 'out'$/);
    });

    it('a cycle between outputs ends the whole call even with keepGoing, in both: the other build is not finished', async () => {
      const d = drv['bad-cycle']!;
      const slowDrv = drv['kg-slow']!;
      const r = nixBuild(['--keep-going', d, slowDrv]);
      expect(r.status).toBe(1);
      const e = await ourFailure([d, slowDrv], { keepGoing: true });
      expect(e.exitStatus).toBe(1);
      expect(e.failures[0]!.path).toBe(d);
      expect(e.failures.map((f) => f.path)).not.toContain(slowDrv);
      const [slow] = nixOutputs(R1, [slowDrv]);
      expect(pathFacts(R1, [slow!]).get(slow!)?.valid).toBe(false);
      expect(pathFacts(R2, [slow!]).get(slow!)?.valid).toBe(false);
    });

    it('a builder that does not exist: exit 100 in both, naming it; the same build log, byte for byte', async () => {
      const d = drv['no-builder']!;
      const r = nixBuild([d]);
      expect(r.status).toBe(100);
      expect(r.stderr).toContain("executing '/no/such/builder': No such file or directory");
      const e = await ourFailure([d]);
      expect(e.exitStatus).toBe(100);
      expect(e.message).toContain(`builder for '${d}'`);
      expect(e.message).toContain("executing '\x1b[35;1m/no/such/builder\x1b[0m': \x1b[35;1mNo such file or directory\x1b[0m");
      // Nix's child writes "\1", a newline and the serialised error into the log (read back by Nix from both stores).
      const readLog = (root: string) => runNix('nix-store', ['--store', root, '--read-log', d]);
      const nixLog = readLog(R1);
      expect(nixLog.stdout.startsWith('\x01\n\x05\0\0\0\0\0\0\0Error\0\0\0')).toBe(true);
      expect(readLog(R2).stdout).toBe(nixLog.stdout);
    });

    it('a failing builder: exit 100 in both, the message ends with the same last log lines', async () => {
      const d = drv.failing!;
      const r = nixBuild(['-Q', d]);
      expect(r.status).toBe(100);
      const e = await ourFailure([d]);
      expect(e.exitStatus).toBe(100);
      const res = e.failures[0]!.result;
      expect(res.status).toBe('permanent-failure');
      expect(res.timesBuilt).toBe(1);
      expect(squash(e.message)).toBe(squash(nixError(r.stderr)));
      expect(logTail(r.stderr)).toEqual(['22', '23', '24', '25', '26', '27', '28', '29', '30', 'something went wrong']);
      expect(logTail(e.message)).toEqual(logTail(r.stderr));
      // The whole log is in the store's log dir.
      expect(await store.readBuildLog(d)).toContain('1\n2\n3\n');
    });

    it('keepFailed: both keep the build directory under the same name', async () => {
      const d = drv.failing!;
      const [kA, kB] = [path.join(root, 'kept-nix'), path.join(root, 'kept-ours')];
      await fsp.mkdir(kA);
      await fsp.mkdir(kB);
      const r = nixRealise(R1, ['--keep-failed', d, ...nixSandboxArgs()], { env: { TMPDIR: kA } });
      expect(r.status).toBe(100);
      expect(r.stderr).toContain(`note: keeping build directory '${kA}/nix-build-failing.drv-0'`);
      const e = await ourFailure([d], { keepFailed: true, buildDir: kB });
      expect(e.exitStatus).toBe(100);
      expect(await fsp.readdir(kA)).toEqual(['nix-build-failing.drv-0']);
      expect(await fsp.readdir(kB)).toEqual(['nix-build-failing.drv-0']);
      expect(e.message).toContain(`${kB}/nix-build-failing.drv-0`);
    });

    it('a builder that writes no output: exit 1 in both', async () => {
      const d = drv['no-output']!;
      const r = nixBuild([d]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("failed to produce output path for output 'out'");
      const e = await ourFailure([d]);
      expect(e.exitStatus).toBe(1);
      expect(e.message).toContain(`builder for '${d}' failed to produce output path for output 'out'`);
    });
  });

  describe('limits and setup errors', () => {
    it.each([
      ['silent', { maxSilentTime: 1 }, ['--max-silent-time', '1'], 101, 'timed-out'],
      ['talker', { buildTimeout: 1 }, ['--timeout', '1'], 101, 'timed-out'],
      ['chatty', { maxLogSize: 1000 }, ['--option', 'max-build-log-size', '1000'], 1, 'log-limit-exceeded'],
    ] as const)('%s: killed in both, same exit status and message', async (attr, opts, nixArgs, exit, status) => {
      const d = drv[attr]!;
      const r = nixBuild([...nixArgs, d]);
      expect(r.status).toBe(exit);
      const e = await ourFailure([d], opts);
      expect(e.exitStatus).toBe(exit);
      expect(e.failures[0]!.result.status).toBe(status);
      expect(squash(e.message)).toBe(squash(nixError(r.stderr)));
    });

    it('__noChroot under sandbox = true: refused by both, same message; it ends the call (Nix throws it out of the build)', async () => {
      const d = drv['no-chroot']!;
      const r = nixBuild([d]);
      expect(r.status).toBe(1);
      const e = await engine()
        .buildPaths([d])
        .then(
          () => undefined,
          (x: unknown) => x,
        );
      expect(e).toBeInstanceOf(BuildSetupError);
      expect((e as BuildSetupError).shortMessage).toBe(nixError(r.stderr).split('\n')[0]);
    });

    it.each(['needs-feature', 'other-platform'])('%s: no machine can build it, same message; nothing else runs', async (attr) => {
      const d = drv[attr]!;
      const r = nixBuild([d]); // both with the machine's default features ('kvm' where /dev/kvm is usable)
      expect(r.status).toBe(1);
      const e = await engine()
        .buildPaths([d])
        .then(
          () => undefined,
          (x: unknown) => x,
        );
      expect(e).toBeInstanceOf(BuildSetupError);
      expect((e as BuildSetupError).message.split('\n')[0]).toBe(nixError(r.stderr).split('\n')[0]);
    });
  });

  describe('check mode', () => {
    it('a nondeterministic builder: exit 104 in both; a deterministic one passes', async () => {
      const nd = drv.nondeterministic!;
      const det = drv['ok-deterministic']!;
      expect(nixBuild([nd]).status).toBe(0);
      await engine().buildPaths([nd]);
      const [out] = nixOutputs(R1, [nd]);
      const before = pathFacts(R2, [out!]).get(out!);
      // With keepFailed, both keep the differing output next to the registered one as `<out>.check`.
      const rk = nixBuild(['--check', '--keep-failed', nd]);
      expect(rk.status).toBe(104);
      const ek = await ourFailure([nd], { keepFailed: true, buildDir: tempDir('realise-cmp-kept-') }, 'check');
      expect(ek.exitStatus).toBe(104);
      for (const R of [R1, R2]) {
        const kept = await fsp.readFile(path.join(R, out! + '.check'), 'utf8');
        expect(kept).toMatch(/^[0-9a-f-]{36}\n$/);
        expect(kept).not.toBe(await fsp.readFile(path.join(R, out!), 'utf8'));
        await removeTree(path.join(R, out! + '.check'));
      }
      expect(before?.valid).toBe(true);

      const r = nixBuild(['--check', nd]);
      expect(r.status).toBe(104);
      expect(r.stderr).toContain('may not be deterministic');
      const e = await ourFailure([nd], {}, 'check');
      expect(e.exitStatus).toBe(104);
      expect(e.failures[0]!.result.status).toBe('not-deterministic');
      expect(e.message).toContain(`derivation '${nd}' may not be deterministic: output '`);
      // The registered output is untouched and no `.check` path was kept.
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(before);
      await expect(fsp.stat(path.join(R2, out! + '.check'))).rejects.toThrow();

      expect(nixBuild(['--check', det]).status).toBe(0);
      const ok = await engine().buildPaths([det], { mode: 'check' });
      expect(ok[0]!.result.status).toBe('built');
    });
  });

  describe('buildRepeat', () => {
    it('rounds that differ fail in both with exit 1, and the output stays invalid', async () => {
      const d = drv['repeat-nondeterministic']!;
      const r = nixBuild(['--option', 'repeat', '1', d]);
      expect(r.status).toBe(1);
      const e = await ourFailure([d], { buildRepeat: 1 });
      expect(e.exitStatus).toBe(1);
      expect(e.failures[0]!.result.status).toBe('not-deterministic');
      expect(e.failures[0]!.result.timesBuilt).toBe(2);
      expect(squash(e.message)).toBe(squash(nixError(r.stderr)));
      const [out] = nixOutputs(R1, [d]);
      expect(pathFacts(R1, [out!]).get(out!)?.valid).toBe(false);
      expect(pathFacts(R2, [out!]).get(out!)?.valid).toBe(false);
    });

    it('rounds that agree: built twice, registered once, the same as Nix', async () => {
      const d = drv['repeat-deterministic']!;
      const r = nixBuild(['--option', 'repeat', '1', d]);
      expect(r.status, r.stderr).toBe(0);
      const [res] = await engine({ buildRepeat: 1 }).buildPaths([d]);
      expect(res!.result.status).toBe('built');
      expect(res!.result.timesBuilt).toBe(2);
      const [out] = nixOutputs(R1, [d]);
      const facts = pathFacts(R1, [out!]).get(out!);
      expect(facts?.valid).toBe(true);
      expect(pathFacts(R2, [out!]).get(out!)).toEqual(facts);
    });
  });

  describe('targets that cannot be built', () => {
    it('a missing derivation, a missing opaque path and an unknown output: exit 1 in both, same messages', async () => {
      const missingDrv = '/nix/store/00000000000000000000000000000000-missing.drv';
      const r1 = nixBuild([missingDrv]);
      expect(r1.status).toBe(1);
      const e1 = await ourFailure([missingDrv]);
      expect(e1.exitStatus).toBe(1);
      expect(squash(e1.message)).toBe(squash(nixError(r1.stderr)));

      const missing = '/nix/store/00000000000000000000000000000000-missing';
      const r2 = nixBuild([missing]);
      expect(r2.status).toBe(1);
      expect(r2.stderr).toContain(`don't know how to build these paths:\n  ${missing}`);
      const e2 = await ourFailure([missing]);
      expect(e2.exitStatus).toBe(1);
      expect(e2.message).toContain(missing);

      const d = drv['ok-simple']!;
      const r3 = nixBuild([`${d}!nope`]);
      expect(r3.status).toBe(1);
      const e3 = await ourFailure([`${d}!nope`]);
      expect(e3.exitStatus).toBe(1);
      expect(squash(e3.message)).toBe(squash(nixError(r3.stderr)));
    });
  });

  describe('some outputs valid', () => {
    it('building `!dev` while `out` is valid keeps the registered `out` and gives the same `dev` as Nix', async () => {
      const d = drv['ok-partial']!;
      const { out, dev } = snap.outputs.get(d)!;
      const before = pathFacts(R1, [out!, dev!]);
      expect(before.get(dev!)!.references).toEqual([out, dev].sort());
      // This process holds temporary GC roots on what it built (as Nix would) while the store is open.
      await store.close();
      store = await LocalStore.open({ root: R2 });
      for (const R of [R1, R2]) {
        const del = runNix('nix-store', ['--store', R, '--delete', dev!]);
        expect(del.status, del.stderr).toBe(0);
      }
      expect(pathFacts(R2, [dev!]).get(dev!)?.valid).toBe(false);
      const r = nixBuild([`${d}!dev`]);
      expect(r.status, r.stderr).toBe(0);
      const [res] = await engine().buildPaths([`${d}^dev`]);
      expect(res!.result.status).toBe('built');
      const nixAfter = pathFacts(R1, [out!, dev!]);
      const ours = pathFacts(R2, [out!, dev!]);
      expect(nixAfter.get(dev!)).toEqual({ ...before.get(dev!) });
      expect(ours.get(dev!)).toEqual(nixAfter.get(dev!));
      expect(ours.get(out!)).toEqual(nixAfter.get(out!));
      const [a, b] = await readBoth(path.join(dev!, 'refs'));
      expect(b).toBe(a);
    });
  });

  describe('repair', () => {
    /** Change a file inside a (read-only) store path of a chroot store. */
    const corrupt = async (rootDir: string, p: string, file: string) => {
      const real = path.join(rootDir, p);
      await fsp.chmod(real, 0o755);
      await fsp.chmod(path.join(real, file), 0o644);
      await fsp.writeFile(path.join(real, file), 'corrupted\n');
    };

    it('a corrupted output with self-references is rebuilt (at a scratch path, rewritten) as Nix does', async () => {
      const d = drv['ok-self-ref']!;
      const [out] = nixOutputs(R1, [d]);
      const before = pathFacts(R1, [out!]).get(out!);
      expect(before?.valid).toBe(true);
      await corrupt(R1, out!, 'me');
      await corrupt(R2, out!, 'me');
      expect(nixVerify(R2).stderr).toContain(`path '${out}' was modified!`);

      const r = nixBuild(['--repair', d]);
      expect(r.status, r.stderr).toBe(0);
      const [res] = await engine().buildPaths([d], { mode: 'repair' });
      expect(res!.result.status).toBe('built');
      expect(pathFacts(R2, [out!]).get(out!)!.narHash).toBe(before!.narHash);
      const [a, b] = await readBoth(path.join(out!, 'me'));
      expect(a).toBe(`${out}\n`);
      expect(b).toBe(a);
      for (const R of [R1, R2]) {
        const v = runNix('nix-store', ['--store', R, '--verify-path', out!]);
        expect(v.status, v.stderr).toBe(0);
      }
    });

    it('repairPath of an output without substitutes rebuilds its deriver', async () => {
      const d = drv['ok-chain']!;
      const [out] = nixOutputs(R1, [d]);
      await corrupt(R2, out!, 'b');
      await engine().repairPath(out!);
      const v = runNix('nix-store', ['--store', R2, '--verify-path', out!]);
      expect(v.status, v.stderr).toBe(0);
      const [a, b] = await readBoth(path.join(out!, 'b'));
      expect(b).toBe(a);
    });
  });

  describe('keepGoing', () => {
    it('without it, the first failure stops the call: the slow sibling is not built, in both', async () => {
      const top = drv['kg-top']!;
      const r = nixBuild([top]);
      expect(r.status).toBe(100);
      const e = await ourFailure([top]);
      expect(e.exitStatus).toBe(100);
      const [slow] = nixOutputs(R1, [drv['kg-slow']!]);
      expect(pathFacts(R1, [slow!]).get(slow!)?.valid).toBe(false);
      expect(pathFacts(R2, [slow!]).get(slow!)?.valid).toBe(false);
      expect(e.failures.map((f) => f.path)).toContain(drv['kg-bad']);
      expect(e.failures.find((f) => f.path === top)?.result.status).toBe('dependency-failed');
    });

    it('with it, the independent branch is built, in both', async () => {
      const top = drv['kg-top']!;
      const r = nixBuild(['--keep-going', '-Q', top]);
      expect(r.status).toBe(100);
      const e = await ourFailure([top], { keepGoing: true });
      expect(e.exitStatus).toBe(100);
      // The same two messages: the builder's failure (with its log tail) and the dependency failure.
      const blocks = nixErrors(r.stderr)
        .map(squash)
        .filter((b) => !b.startsWith('build of '));
      expect(e.failures.map((f) => squash(f.result.errorMsg!)).sort()).toEqual(blocks.sort());
      expect(e.failures.find((f) => f.path === top)?.result.status).toBe('dependency-failed');
      expect(e.failures.find((f) => f.path === drv['kg-bad'])?.result.status).toBe('permanent-failure');
      const [slow] = nixOutputs(R1, [drv['kg-slow']!]);
      const facts = pathFacts(R1, [slow!]).get(slow!);
      expect(facts?.valid).toBe(true);
      expect(pathFacts(R2, [slow!]).get(slow!)).toEqual(facts);
    });
  });

  it('in the end, both stores hold the same valid paths, and Nix verifies ours', () => {
    const nixAll = pathFacts(R1, 'all');
    const ours = pathFacts(R2, 'all');
    expect([...ours.keys()].sort()).toEqual([...nixAll.keys()].sort());
    for (const [p, f] of nixAll) {
      if (p.endsWith('-nondeterministic')) continue;
      expect(ours.get(p), p).toEqual(f);
    }
    const v = nixVerify(R2);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stderr).not.toMatch(/error|modified|corrupt/i);
  });
});

describe.skipIf(!nixOk() || !busyboxOk())('BuildEngine vs Nix 2.8, unsandboxed builds in plain stores', () => {
  it('the same store dir, state copied before Nix builds: identical outputs', async () => {
    const root = tempDir('realise-sched-plain-');
    try {
      const storeDir = path.join(root, 'store');
      const stateA = path.join(root, 'state-a');
      const stateB = path.join(root, 'state-b');
      const logA = path.join(root, 'log-a');
      const logB = path.join(root, 'log-b');
      const tmp = path.join(root, 'tmp');
      await fsp.mkdir(tmp);
      const uriA = `local?store=${storeDir}&state=${stateA}&log=${logA}`;
      const uriB = `local?store=${storeDir}&state=${stateB}&log=${logB}`;
      const drvs = instantiateAttrs(uriA, path.join(FIXTURES, 'plain.nix'));
      await fsp.cp(stateA, stateB, { recursive: true, verbatimSymlinks: true });

      // A post-build hook recording what it is told (it inherits the caller's environment).
      const hook = path.join(root, 'hook.sh');
      await fsp.writeFile(hook, '#!/bin/sh\necho "$DRV_PATH|$OUT_PATHS" >> "$HOOK_LOG"\necho hook ran\n', { mode: 0o755 });
      const hookLogA = path.join(root, 'hook-a.log');
      const hookLogB = path.join(root, 'hook-b.log');

      const all = Object.values(drvs);
      const r = nixRealise(
        uriA,
        [
          ...all,
          '--option',
          'sandbox',
          'false',
          '--option',
          'build-users-group',
          '',
          '--option',
          'substituters',
          '',
          '--cores',
          String(CORES),
          '--option',
          'post-build-hook',
          hook,
        ],
        { env: { TMPDIR: tmp, HOOK_LOG: hookLogA } },
      );
      expect(r.status, r.stderr).toBe(0);
      const outs = nixOutputs(uriA, all);
      const closure = nixClosure(uriA, outs);
      const nixFacts = pathFacts(uriA, closure);
      const envOut = outs.find((o) => o.endsWith('-plain-env'))!;
      const nixEnvText = await fsp.readFile(envOut, 'utf8');

      // Remove Nix's outputs from the shared store dir; state B never knew them.
      for (const o of outs) await removeTree(o);

      const store = await LocalStore.open({ storeDir, stateDir: stateB, logDir: logB });
      try {
        const engine = new BuildEngine({
          store,
          sandbox: false,
          cores: CORES,
          buildDir: tmp,
          postBuildHook: hook,
          environment: { ...process.env, HOOK_LOG: hookLogB },
        });
        const hookLines: string[] = [];
        engine.on('post-build-hook-log', (e) => hookLines.push(e.line));
        const res = await engine.buildPaths(all);
        expect(res.map((x) => x.result.status)).toEqual(all.map(() => 'built'));
        expect(hookLines).toContain('hook ran');
      } finally {
        await store.close();
      }
      const ours = pathFacts(uriB, closure);
      for (const p of closure) expect(ours.get(p), p).toEqual(nixFacts.get(p));
      const ourEnvText = await fsp.readFile(envOut, 'utf8');
      expect(nixEnvText).toContain(`NIX_BUILD_TOP=${tmp}/nix-build-plain-env.drv-0\n`);
      expect(ourEnvText).toBe(nixEnvText);
      const lines = async (f: string) => (await fsp.readFile(f, 'utf8')).split('\n').filter(Boolean).sort();
      const hookA = await lines(hookLogA);
      expect(hookA.length).toBeGreaterThanOrEqual(all.length);
      // Nix 2.8.0 runs the hook with DRV_PATH but an empty OUT_PATHS (NixOS/nix#6446, a regression of
      // 2.8.0); we give the documented value: the derivation's output paths, sorted, space-separated.
      const hookB = await lines(hookLogB);
      expect(hookB.map((l) => l.split('|')[0])).toEqual(hookA.map((l) => l.split('|')[0]));
      expect(hookA.every((l) => l.endsWith('|'))).toBe(true);
      for (const d of all) {
        const line = hookB.find((l) => l.startsWith(`${d}|`));
        expect(line, d).toBe(`${d}|${nixOutputs(uriA, [d]).sort().join(' ')}`);
      }
      const v = runNix('nix-store', ['--store', uriB, '--verify', '--check-contents']);
      expect(v.status, v.stderr).toBe(0);

      // Without a sandbox, check and repair build at scratch paths with hash rewriting (the real paths
      // are taken): deterministic builders with self-references must come out identical.
      const nixCheck = nixRealise(
        uriA,
        ['--check', ...all, '--option', 'sandbox', 'false', '--option', 'build-users-group', '', '--option', 'substituters', '', '--cores', String(CORES)],
        { env: { TMPDIR: tmp } },
      );
      expect(nixCheck.status, nixCheck.stderr).toBe(0);
      const multiDev = closure.find((o) => o.endsWith('-plain-multi-dev'))!;
      await fsp.chmod(multiDev, 0o755);
      await fsp.chmod(path.join(multiDev, 'self'), 0o644);
      await fsp.writeFile(path.join(multiDev, 'self'), 'corrupted\n');
      const store2 = await LocalStore.open({ storeDir, stateDir: stateB, logDir: logB });
      try {
        const engine = new BuildEngine({ store: store2, sandbox: false, cores: CORES, buildDir: tmp });
        const checked = await engine.buildPaths(all, { mode: 'check' });
        expect(checked.map((x) => x.result.status)).toEqual(all.map(() => 'built'));
        const multiDrv = nix('nix-store', ['--store', uriA, '-qd', multiDev]);
        const [repaired] = await engine.buildPaths([multiDrv], { mode: 'repair' });
        expect(repaired!.result.status).toBe('built');
      } finally {
        await store2.close();
      }
      expect(await fsp.readFile(path.join(multiDev, 'self'), 'utf8')).toBe(`${multiDev}\n`);
      const v2 = runNix('nix-store', ['--store', uriB, '--verify', '--check-contents']);
      expect(v2.status, v2.stderr).toBe(0);
      const after = pathFacts(uriB, closure);
      for (const p of closure) expect(after.get(p), p).toEqual(nixFacts.get(p));
    } finally {
      await removeTree(root);
    }
  });
});
