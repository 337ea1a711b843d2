/**
 * An output lock held by another process: `realise build` and `nix-store --realise` both say what they
 * wait for ("waiting for lock on '<physical output path>'..."), then build once the holder lets go.
 * The holder is util-linux `flock` on the output's `.lock` file, the lock Nix and we both take.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { instantiateTwins, nix, nixOk, runNixAsync, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const EXPR = `{ }: derivation { name = "lock-held"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo locked > $out"]; }`;

/** Hold `<file>.lock` (flock, exclusive) until the returned function is called. */
async function holdLock(file: string): Promise<() => Promise<void>> {
  const ready = `${file}.held`;
  const child: ChildProcess = spawn('flock', ['-o', `${file}.lock`, '-c', `touch '${ready}'; exec sleep 60`], { stdio: 'ignore', detached: true });
  while (!existsSync(ready)) await sleep(10);
  return async () => {
    const gone = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGKILL'); // flock and its sleep
    await gone;
  };
}

describe.skipIf(!nixOk())('a held output lock, realise vs Nix 2.8', () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(dir, EXPR);
  });

  /** Build with the output's lock held for `holdMs`; returns the run and the physical output path. */
  async function withLockHeld<T>(root: string, holdMs: number, run: () => Promise<T>): Promise<{ r: T; real: string }> {
    const out = nix('nix-store', ['--store', root, '-q', '--outputs', drv]);
    const real = path.join(root, out);
    const release = await holdLock(real);
    const pending = run();
    await sleep(holdMs);
    await release();
    return { r: await pending, real };
  }

  it('both print the waiting line with the physical path, then build', async () => {
    // Nix polls a lock it waits for every build-poll-interval seconds (5 by default; realise is woken by its
    // release): 1 on both sides keeps the wait short.
    const opts = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox', '--option', 'build-poll-interval', '1'];
    const n = await withLockHeld(path.join(dir, 'N'), 500, () => runNixAsync('nix-store', ['--store', path.join(dir, 'N'), ...opts, '--realise', drv]));
    const o = await withLockHeld(path.join(dir, 'O'), 500, () => realise(['build', '--store', path.join(dir, 'O'), ...opts, drv]));
    const waitLine = (stderr: string, real: string) =>
      stderr
        .split('\n')
        .filter((l) => l.startsWith('waiting for lock'))
        .map((l) => l.replace(real, 'OUT'));
    expect(n.r.status, n.r.stderr).toBe(0);
    expect(o.r.status, o.r.stderr).toBe(0);
    expect(waitLine(n.r.stderr, n.real)).toEqual(["waiting for lock on 'OUT'..."]);
    expect(waitLine(o.r.stderr, o.real)).toEqual(waitLine(n.r.stderr, n.real));
    expect(o.r.stdout).toBe(n.r.stdout);
    // Both built it after the wait (the holder built nothing).
    expect(o.r.stderr).toContain(`building '${drv}'...`);
    expect(n.r.stderr).toContain(`building '${drv}'...`);
  }, 30_000);
});
