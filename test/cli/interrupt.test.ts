/**
 * Interrupting `realise build` as a user would (Ctrl-C, `kill`), side by side with `nix-store --realise`
 * on twin chroot stores: both end with "error: interrupted by the user" and exit status 1, the builder is
 * gone, and the output is not registered. Also an interrupt before any build started (while loading).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { interruptHandlersInstalled } from '../helpers/cli.js';
import { instantiateTwins, nix, nixEnv, nixOk, runNix, tempDir } from '../helpers/nix.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';

/**
 * Each test run gets its own marker, so a leftover builder is found by its command line (the shell's: the
 * marker is a no-op command of its script, as `sleep` takes numbers only).
 */
const MARK = `interrupt-${process.pid}`;
const EXPR = `{ mark }: derivation { name = "interrupt"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" "echo started; : \${mark}; /bin/busybox sleep 600; echo > $out"]; }`;

interface Ended {
  status: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Start COMMAND; once its stderr contains `when` (or at once if undefined), send `sig`; wait for it to end.
 * With `resendMs`, the signal is sent again each `resendMs` until the process ends: for Nix, the oracle,
 * which once in many CI runs went on running its builder after a SIGTERM (what is compared is how each
 * process ends, not whether Nix's signal handling ever misses).
 */
function interrupt(
  cmd: string,
  args: string[],
  sig: NodeJS.Signals,
  when?: string,
  delayMs = 0,
  resendMs?: number,
  env: Record<string, string> = {},
): Promise<Ended> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: nixEnv(env), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let sent = false;
    let resend: NodeJS.Timeout | undefined;
    const send = () => {
      if (!sent) {
        sent = true;
        child.kill(sig);
        if (resendMs) resend = setInterval(() => child.kill(sig), resendMs);
      }
    };
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
      if (when && stderr.includes(when)) send();
    });
    // Once the process handles the signal (before that, any process dies of it), and `delayMs` later.
    if (!when)
      child.once(
        'spawn',
        () =>
          void interruptHandlersInstalled(child.pid!)
            .then(() => sleep(delayMs))
            .then(send),
      );
    child.on('close', (status, signal) => {
      clearInterval(resend);
      resolve({ status, signal, stderr });
    });
  });
}

function builderLeft(): boolean {
  return runNix('pgrep', ['-f', MARK]).status === 0;
}

describe.skipIf(!nixOk())('interrupting a build, realise vs Nix 2.8', () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(dir, EXPR, ['--argstr', 'mark', MARK]);
  });
  const nixArgs = () => ['--store', path.join(dir, 'N'), '--option', 'sandbox-paths', SANDBOX, '--realise', drv];
  const ourArgs = () => [BIN, 'build', '--store', path.join(dir, 'O'), '--option', 'sandbox-paths', SANDBOX, drv];
  const lastLine = (s: string) => s.trimEnd().split('\n').pop();
  const valid = (root: string) =>
    runNix('nix-store', ['--store', root, '--check-validity', nix('nix-store', ['--store', root, '-q', '--outputs', drv])]).status === 0;

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`${sig} while the builder runs: exit 1, "interrupted by the user", builder gone, nothing registered`, async () => {
      const n = await interrupt('nix-store', nixArgs(), sig, 'started', 0, 10_000);
      const o = await interrupt(process.execPath, ourArgs(), sig, 'started');
      expect([n.status, n.signal, lastLine(n.stderr)]).toEqual([1, null, 'error: interrupted by the user']);
      expect([o.status, o.signal, lastLine(o.stderr)], o.stderr).toEqual([n.status, n.signal, lastLine(n.stderr)]);
      await sleep(200);
      expect(builderLeft()).toBe(false);
      expect(valid(path.join(dir, 'O'))).toBe(false);
      expect(valid(path.join(dir, 'N'))).toBe(false);
      // The store we left is one Nix accepts.
      expect(runNix('nix-store', ['--store', path.join(dir, 'O'), '--verify', '--check-contents']).status).toBe(0);
    }, 60_000);
  }

  it('SIGHUP with --keep-failed: the build directory kept, with its note before the error, as Nix', async () => {
    const tmp = { N: path.join(dir, 'tmpN'), O: path.join(dir, 'tmpO') };
    for (const t of Object.values(tmp)) mkdirSync(t);
    const n = await interrupt('nix-store', [...nixArgs(), '-K'], 'SIGHUP', 'started', 0, 10_000, { TMPDIR: tmp.N });
    const o = await interrupt(process.execPath, [...ourArgs(), '-K'], 'SIGHUP', 'started', 0, undefined, { TMPDIR: tmp.O });
    const tail = (s: string, t: string) => s.replaceAll(t, 'TMP').trimEnd().split('\n').slice(-2);
    expect(tail(n.stderr, tmp.N)).toEqual(["note: keeping build directory 'TMP/nix-build-interrupt.drv-0'", 'error: interrupted by the user']);
    expect([o.status, o.signal, tail(o.stderr, tmp.O)], o.stderr).toEqual([n.status, n.signal, tail(n.stderr, tmp.N)]);
    // (Build directories only: a run through tsx, from a checkout not built, leaves its cache in TMPDIR.)
    const builds = (t: string) => readdirSync(t).filter((e) => e.startsWith('nix-build-'));
    expect(builds(tmp.O)).toEqual(builds(tmp.N));
    await sleep(200);
    expect(builderLeft()).toBe(false);
  }, 60_000);

  it('SIGINT before any build started (while loading): the same end, not a death by signal', async () => {
    const o = await interrupt(process.execPath, ourArgs(), 'SIGINT', undefined, 500);
    expect([o.status, o.signal, lastLine(o.stderr)], o.stderr).toEqual([1, null, 'error: interrupted by the user']);
    await sleep(200);
    expect(builderLeft()).toBe(false);
  }, 60_000);
});

describe.skipIf(!nixOk())('--keep-failed when a failure stops another build, realise vs Nix 2.8', () => {
  /** nix-store --realise (on `dir`/N) and realise build (on `dir`/O) of `drvs` with -K -j2, each with a TMPDIR of its own. */
  const both = (dir: string, drvs: string[]) => {
    const run = (cmd: string, args: string[], tmp: string) => {
      mkdirSync(tmp);
      const r = spawnSync(cmd, [...args, '-K', '-j2', '--option', 'sandbox-paths', SANDBOX, ...drvs], { env: nixEnv({ TMPDIR: tmp }), encoding: 'utf8' });
      return {
        status: r.status,
        stderr: r.stderr.replaceAll(tmp, 'TMP'),
        kept: readdirSync(tmp)
          .filter((e) => e.startsWith('nix-build-'))
          .sort(),
      };
    };
    return {
      n: run('nix-store', ['--store', path.join(dir, 'N'), '--realise'], path.join(dir, 'tmpN')),
      o: run(process.execPath, [BIN, 'build', '--store', path.join(dir, 'O')], path.join(dir, 'tmpO')),
    };
  };
  const notesAndErrors = (s: string) => s.split('\n').filter((l) => /^(note|error): /.test(l));

  it("both build directories kept; the stopped build's note after the failure's error, before the summary", () => {
    const dir = tempDir();
    const drvs = ['fail', 'slow'].map((a) =>
      instantiateTwins(
        dir,
        `{ mark }: {
          fail = derivation { name = "kf-fail"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "/bin/busybox sleep 1; echo failing; exit 1"]; };
          slow = derivation { name = "kf-slow"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo started; : \${mark}; /bin/busybox sleep 600; echo > $out"]; };
        }`,
        ['--argstr', 'mark', MARK, '-A', a],
      ),
    );
    const { n, o } = both(dir, drvs);
    expect(notesAndErrors(n.stderr)).toEqual([
      "note: keeping build directory 'TMP/nix-build-kf-fail.drv-0'",
      expect.stringMatching(/^error: builder for '.*-kf-fail.drv' failed with exit code 1$/),
      "note: keeping build directory 'TMP/nix-build-kf-slow.drv-0'",
      expect.stringMatching(/^error: build of '.*', '.*' failed$/),
    ]);
    expect([o.status, notesAndErrors(o.stderr), o.kept], o.stderr).toEqual([n.status, notesAndErrors(n.stderr), n.kept]);
    expect(builderLeft()).toBe(false);
  }, 60_000);

  it("a dependency's failure that ends the call (an output cycle): the stopped build's note still printed, with no error left for the end", () => {
    const dir = tempDir();
    const drvs = ['top', 'slow'].map((a) =>
      instantiateTwins(
        dir,
        `{ mark }: rec {
          cyc = derivation { name = "kf-cyc"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = [ "out" "dev" ]; args = ["-c" "/bin/busybox sleep 1; echo $dev > $out; echo $out > $dev"]; };
          top = derivation { name = "kf-top"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo \${cyc} > $out"]; };
          slow = derivation { name = "kf-slow2"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo started; : \${mark}; /bin/busybox sleep 600; echo > $out"]; };
        }`,
        ['--argstr', 'mark', MARK, '-A', a],
      ),
    );
    const { n, o } = both(dir, drvs);
    expect(notesAndErrors(n.stderr)).toContain("note: keeping build directory 'TMP/nix-build-kf-slow2.drv-0'");
    expect([o.status, notesAndErrors(o.stderr)], o.stderr).toEqual([n.status, notesAndErrors(n.stderr)]);
    expect(builderLeft()).toBe(false);
  }, 60_000);
});
