/**
 * Interrupting `realise build` as a user would (Ctrl-C, `kill`), side by side with `nix-store --realise`
 * on twin chroot stores: both end with "error: interrupted by the user" and exit status 1, the builder is
 * gone, and the output is not registered. Also an interrupt before any build started (while loading).
 */
import { spawn } from 'node:child_process';
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
function interrupt(cmd: string, args: string[], sig: NodeJS.Signals, when?: string, delayMs = 0, resendMs?: number): Promise<Ended> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: nixEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
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

  it('SIGINT before any build started (while loading): the same end, not a death by signal', async () => {
    const o = await interrupt(process.execPath, ourArgs(), 'SIGINT', undefined, 500);
    expect([o.status, o.signal, lastLine(o.stderr)], o.stderr).toEqual([1, null, 'error: interrupted by the user']);
    await sleep(200);
    expect(builderLeft()).toBe(false);
  }, 60_000);
});
