/**
 * The `realise` command as a process, with remote builders over a real OpenSSH server (127.0.0.1, the
 * system `ssh` client) to real Nix 2.8: it exits once its work is done (no ssh child left behind), and
 * SIGINT/SIGTERM/SIGHUP before, during and after a build end it as Nix ends ("error: interrupted by the
 * user", exit status 1), with the remote session gone and nothing registered that was not built.
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../../src/store/local-store.js';
import type { PathInfo } from '../../src/store/store-api.js';
import { topoSortPaths } from '../../src/remote/protocol-common.js';
import { nixEnv, nixOk, runNix } from '../helpers/nix.js';
import { interruptHandlersInstalled } from '../helpers/cli.js';
import { cloneLocal, makeFixture, type Fixture } from '../remote/fixture.js';
import { sshdOk, startSshd, type Sshd } from '../remote/sshd.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');

interface Ended {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Run `realise ARGS`; when `sig` is given, send it once stderr contains `when` (stdout `whenStdout`), or as
 * soon as the process handles interrupts when neither is given. Fails the test if the process has not ended after `limitMs`.
 */
function realise(
  args: string[],
  env: Record<string, string>,
  opts: { sig?: NodeJS.Signals; when?: string; whenStdout?: string; limitMs?: number } = {},
): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const child = spawn(process.execPath, [BIN, ...args], { env: nixEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    const send = () => {
      if (!sent && opts.sig) {
        sent = true;
        child.kill(opts.sig);
      }
    };
    const limit = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`realise ${args[0]} did not exit within ${opts.limitMs ?? 60_000} ms; stderr:\n${stderr}`));
    }, opts.limitMs ?? 60_000);
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
      if (opts.whenStdout && stdout.includes(opts.whenStdout)) send();
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
      if (opts.when && stderr.includes(opts.when)) send();
    });
    // "At once": as soon as the process handles the signal (before that, any process dies of it).
    if (opts.sig && opts.when === undefined && opts.whenStdout === undefined) child.once('spawn', () => void interruptHandlersInstalled(child.pid!).then(send));
    child.on('close', (status, signal) => {
      clearTimeout(limit);
      resolve({ status, signal, stdout, stderr, ms: Date.now() - start });
    });
  });
}

/** Processes whose command line contains `mark` (the remote store's path is on ssh's and nix-daemon's). */
function processesWith(mark: string): string[] {
  const r = runNix('pgrep', ['-af', mark]);
  return r.stdout.split('\n').filter((l) => l && !l.includes('pgrep'));
}

/** Wait until no process mentions `mark` (ssh and the remote nix-daemon end a moment after we close). */
async function gone(mark: string, ms = 5_000): Promise<string[]> {
  const until = Date.now() + ms;
  let left = processesWith(mark);
  while (left.length && Date.now() < until) {
    await sleep(100);
    left = processesWith(mark);
  }
  return left;
}

/** The remote programs started for this fixture (the wrapper writes its pid, then execs Nix). */
function remotePids(fx: Fixture): number[] {
  try {
    return readdirSync(path.join(fx.dir, 'pids')).map((f) => Number(readFileSync(path.join(fx.dir, 'pids', f), 'utf8')));
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const lastLine = (s: string) => s.trimEnd().split('\n').pop();

describe.skipIf(!nixOk() || !sshdOk())('the realise process with remote builders over a real sshd', () => {
  let fx: Fixture;
  let sshd: Sshd;
  let store: LocalStore;
  let n = 0;

  beforeAll(async () => {
    fx = makeFixture();
    sshd = await startSshd();
    store = await LocalStore.open({ root: fx.localRoot });
  }, 120_000);
  afterAll(async () => {
    await store?.close();
    await sshd?.stop();
  });

  /** A fresh local store with what building `top` needs, and a fresh remote store, for one run. */
  async function setup(scheme: 'ssh' | 'ssh-ng'): Promise<{ local: string; remote: string; builders: string; env: Record<string, string> }> {
    const name = `${scheme}-${n++}`;
    const clone = await cloneLocal(fx, store, `local-${name}`);
    // The slow derivation too (its .drv has no inputs but a source: copy its closure).
    for (const p of topoSortPaths(await infosOf([fx.drvs.slow]))) {
      if (!(await clone.isValidPath(p))) await clone.addToStore((await store.queryPathInfo(p))!, store.narFromPath(p));
    }
    await clone.close();
    const remote = path.join(fx.dir, `remote-${name}`);
    const program = fx.wrapper(name, scheme === 'ssh' ? 'nix-store' : 'nix-daemon');
    const uri = `${scheme}://${sshd.user}@127.0.0.1?remote-store=${encodeURIComponent(remote)}&remote-program=${encodeURIComponent(program)}`;
    return {
      local: path.join(fx.dir, `local-${name}`),
      remote,
      builders: `${uri} - ${sshd.clientKey} 2 1 - - ${sshd.hostKeyBase64}`,
      env: { NIX_SSHOPTS: sshd.sshOptions.join(' ') },
    };
  }

  async function infosOf(paths: string[]): Promise<Map<string, PathInfo>> {
    const infos = new Map<string, PathInfo>();
    for (const p of await store.computeClosure(paths)) infos.set(p, (await store.queryPathInfo(p))!);
    return infos;
  }

  const valid = (root: string, p: string) => runNix('nix-store', ['--store', root, '--check-validity', p]).status === 0;

  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    it(`${scheme}://: --max-jobs 0 builds remotely, prints the outputs and exits, no ssh child left`, async () => {
      const s = await setup(scheme);
      const r = await realise(['build', '--store', s.local, '--max-jobs', '0', '--builders', s.builders, fx.drvs.top], s.env);
      expect([r.status, r.signal], r.stderr).toEqual([0, null]);
      const outs = r.stdout.trim().split('\n');
      expect(outs).toHaveLength(2);
      for (const p of outs) expect(valid(s.local, p)).toBe(true);
      expect(r.stderr).toContain('building top');
      expect(await gone(s.remote)).toEqual([]);
      for (const pid of remotePids(fx)) expect(alive(pid)).toBe(false);
    }, 90_000);
  }

  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    it(`${sig} while a remote build runs: exit 1, "interrupted by the user", remote session gone, nothing registered`, async () => {
      const s = await setup('ssh-ng');
      const r = await realise(['build', '--store', s.local, '--max-jobs', '0', '--builders', s.builders, fx.drvs.slow], s.env, { sig, when: 'sleeping' });
      expect([r.status, r.signal, lastLine(r.stderr)], r.stderr).toEqual([1, null, 'error: interrupted by the user']);
      expect(r.stdout).toBe('');
      expect(await gone(s.remote)).toEqual([]);
      const out = runNix('nix-store', ['--store', s.local, '-q', '--outputs', fx.drvs.slow]).stdout.trim();
      expect(valid(s.local, out)).toBe(false);
      expect(runNix('nix-store', ['--store', s.local, '--verify', '--check-contents']).status).toBe(0);
    }, 90_000);
  }

  it('SIGTERM before any build started (while loading), with builders configured: the same end', async () => {
    const s = await setup('ssh-ng');
    const r = await realise(['build', '--store', s.local, '--max-jobs', '0', '--builders', s.builders, fx.drvs.slow], s.env, { sig: 'SIGTERM' });
    expect([r.status, r.signal, lastLine(r.stderr)], r.stderr).toEqual([1, null, 'error: interrupted by the user']);
    expect(await gone(s.remote)).toEqual([]);
  }, 90_000);

  it('SIGINT after the build (its outputs printed): the process ends at once, the outputs stay valid, no ssh child left', async () => {
    const s = await setup('ssh-ng');
    const r = await realise(['build', '--store', s.local, '--max-jobs', '0', '--builders', s.builders, fx.drvs.top], s.env, {
      sig: 'SIGINT',
      whenStdout: '\n',
    });
    // The signal lands while the command closes its connections, or just after it ended.
    if (r.status !== 0) expect([r.status, r.signal, lastLine(r.stderr)], r.stderr).toEqual([1, null, 'error: interrupted by the user']);
    const outs = r.stdout.trim().split('\n');
    expect(outs).toHaveLength(2);
    for (const p of outs) expect(valid(s.local, p)).toBe(true);
    expect(await gone(s.remote)).toEqual([]);
  }, 90_000);
});
