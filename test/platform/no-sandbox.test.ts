import { mkdirSync, writeFileSync, chmodSync, readFileSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { NoSandbox, type NoSandboxOptions } from '../../src/platform/no-sandbox.js';
import type { SandboxRequest } from '../../src/platform/sandbox.js';
import { tempDir } from '../helpers/nix.js';

function request(dir: string, builder: string, args: string[], env: Record<string, string> = {}): SandboxRequest {
  const buildDir = path.join(dir, 'build');
  mkdirSync(buildDir, { recursive: true });
  return {
    drvPath: '/nix/store/00000000000000000000000000000000-test.drv',
    builder,
    args,
    env,
    buildDir,
    sandboxBuildDir: buildDir,
    storeDir: '/nix/store',
    realStoreDir: '/nix/store',
    inputPaths: [],
    outputPaths: [],
    network: false,
  };
}

async function collectWith(sb: NoSandbox, req: SandboxRequest, signal?: AbortSignal) {
  const chunks: Buffer[] = [];
  const exit = await sb.run(req, { signal, onOutput: (c) => chunks.push(c) });
  return { exit, out: Buffer.concat(chunks).toString() };
}

// Both launchers must behave identically: the resident C helper (default when cc works) and Node's spawn.
describe.each(['helper', 'node'] as const)('NoSandbox (launcher %s)', (launcher) => {
  const sb = new NoSandbox({ launcher });
  const collect = (req: SandboxRequest, signal?: AbortSignal) => collectWith(sb, req, signal);

  it('uses the requested launcher', async () => {
    expect(await sb.launcher()).toBe(launcher);
  });

  it('passes exactly the given env, cwd = buildDir, argv0 = basename, merges stdout and stderr in order', async () => {
    const dir = tempDir();
    const r = request(dir, '/bin/sh', ['-c', 'echo "argv0=$0"; echo one; echo two >&2; echo three; env | sort; pwd; exit 3'], {
      FOO: 'bar baz',
      PATH: '/usr/bin:/bin',
    });
    const { exit, out } = await collect(r);
    expect(exit).toEqual({ kind: 'exited', code: 3 });
    const lines = out.trim().split('\n');
    expect(lines.slice(0, 4)).toEqual(['argv0=sh', 'one', 'two', 'three']);
    const envLines = lines.slice(4, -1).filter((l) => !/^(PWD|SHLVL|_)=/.test(l)); // set by sh itself
    expect(envLines).toEqual(['FOO=bar baz', 'PATH=/usr/bin:/bin']);
    expect(lines.at(-1)).toBe(r.buildDir);
  });

  it('runs in its own process group and stdin is /dev/null', async () => {
    const dir = tempDir();
    const { exit, out } = await collect(request(dir, '/bin/sh', ['-c', 'ps -o pgid= -p $$; echo pid=$$; readlink /proc/self/fd/0; cat']));
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const [pgid, pidLine, stdin] = out
      .trim()
      .split('\n')
      .map((s) => s.trim());
    expect(pidLine).toBe(`pid=${pgid}`);
    expect(stdin).toBe('/dev/null');
    expect(Number(pgid)).not.toBe(process.pid);
  });

  it('a builder that closes its stdout and stderr and runs on is killed, as Nix ends a build at the end of its output', async () => {
    const t = Date.now();
    const { exit, out } = await collect(request(tempDir(), '/bin/sh', ['-c', 'echo bye; exec >&- 2>&-; sleep 20; exit 0']));
    expect(out).toBe('bye\n');
    expect(exit).toEqual({ kind: 'signalled', signal: 'SIGKILL' });
    expect(Date.now() - t).toBeLessThan(10_000);
  });

  it('reports signals', async () => {
    const { exit } = await collect(request(tempDir(), '/bin/sh', ['-c', 'kill -TERM $$']));
    expect(exit).toEqual({ kind: 'signalled', signal: 'SIGTERM' });
  });

  it('abort kills the whole process group, including background children', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'marker');
    const ac = new AbortController();
    const script = `(sleep 1; echo survived > ${marker}) & echo started; sleep 30`;
    const chunks: Buffer[] = [];
    // Timed from the stop, not from the start (a spawn is slower on a loaded machine).
    let t0 = 0;
    const p = sb.run(request(dir, '/bin/sh', ['-c', script]), {
      signal: ac.signal,
      onOutput: (c) => {
        chunks.push(c);
        if (Buffer.concat(chunks).toString().includes('started') && !t0) {
          t0 = Date.now();
          ac.abort();
        }
      },
    });
    expect(await p).toEqual({ kind: 'aborted' });
    expect(Date.now() - t0).toBeLessThan(1000);
    await new Promise((r) => setTimeout(r, 1300));
    expect(existsSync(marker)).toBe(false);
  });

  it('kills stragglers of the process group when the builder exits', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'marker');
    const { exit } = await collect(request(dir, '/bin/sh', ['-c', `(sleep 0.5; echo survived > ${marker}) >/dev/null 2>&1 & exit 0`]));
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    await new Promise((r) => setTimeout(r, 800));
    expect(existsSync(marker)).toBe(false);
  });

  it('a background process that keeps the output open is waited for and logged; its group is killed when the output ends (as Nix)', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'marker');
    const script = `(sleep 0.6; echo late; exec >/dev/null 2>&1; sleep 0.5; echo survived > ${marker}) & echo early; exit 0`;
    const t0 = Date.now();
    const { exit, out } = await collect(request(dir, '/bin/sh', ['-c', script]));
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    expect(out).toBe('early\nlate\n');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    await new Promise((r) => setTimeout(r, 900));
    expect(existsSync(marker)).toBe(false);
  });

  it('already-aborted signal does not start the builder', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'm');
    const ac = new AbortController();
    ac.abort();
    expect((await collect(request(dir, '/bin/sh', ['-c', `touch ${marker}`]), ac.signal)).exit).toEqual({ kind: 'aborted' });
    expect(existsSync(marker)).toBe(false);
  });

  // (The helper only: Node's spawn has no start-up for a stop to land in; with it the builder may already run.)
  it.skipIf(launcher === 'node')('a stop while the launcher is still starting (the first build of a fresh engine) means the builder never runs', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'm');
    const ac = new AbortController();
    // Its own helper binary, compiled now, and its own server: the stop lands while the launcher starts. (The
    // server alone starts within one turn of the event loop: its spawn and listen report back on next ticks.)
    // The stop's answer waits for the helper's compilation (seconds on a loaded machine), not for the builder's sleep.
    const fresh = new NoSandbox({ launcher, helper: { cacheDir: tempDir() } });
    const run = collectWith(fresh, request(dir, '/bin/sh', ['-c', `touch ${marker}; sleep 30`]), ac.signal);
    setImmediate(() => ac.abort());
    const t0 = Date.now();
    expect((await run).exit).toEqual({ kind: 'aborted' });
    expect(Date.now() - t0).toBeLessThan(20_000);
    expect(existsSync(marker)).toBe(false);
  });

  it('spawn errors are spawn-failed, not throws', async () => {
    const dir = tempDir();
    const missing = await collect(request(dir, path.join(dir, 'no-such-builder'), []));
    expect(missing.exit.kind).toBe('spawn-failed');
    expect((missing.exit as { message: string }).message).toContain('no-such-builder');
    // Only the exec failed: marked so, in Nix's words (the scheduler turns it into exit code 1 and a log line).
    expect((missing.exit as { execError?: string }).execError).toBe(`executing '${path.join(dir, 'no-such-builder')}': No such file or directory`);
    const notExec = path.join(dir, 'not-exec');
    writeFileSync(notExec, '#!/bin/sh\n');
    chmodSync(notExec, 0o644);
    const denied = (await collect(request(dir, notExec, []))).exit;
    expect(denied.kind).toBe('spawn-failed');
    expect((denied as { execError?: string }).execError).toBe(`executing '${notExec}': Permission denied`);
    const builtin = (await collect(request(dir, 'builtin:fetchurl', []))).exit;
    expect(builtin.kind).toBe('spawn-failed');
    expect((builtin as { execError?: string }).execError).toBeUndefined();
  });

  it('streams large output completely', async () => {
    const { exit, out } = await collect(request(tempDir(), '/bin/sh', ['-c', 'i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done']));
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const lines = out.trim().split('\n');
    expect(lines.length).toBe(20000);
    expect(lines.at(-1)).toBe('line19999');
    void readFileSync;
  });

  it('a relative builder resolves against the build dir; argv[0] is its base name', async () => {
    const dir = tempDir();
    const r = request(dir, 'sub/b.sh', []);
    mkdirSync(path.join(r.buildDir, 'sub'));
    writeFileSync(path.join(r.buildDir, 'sub/b.sh'), '#!/bin/sh\necho "$0 $# $1"\n');
    chmodSync(path.join(r.buildDir, 'sub/b.sh'), 0o755);
    const { exit, out } = await collect({ ...r, args: ['x y'] });
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    expect(out).toBe(`${path.join(r.buildDir, 'sub/b.sh')} 1 x y\n`); // sh sets $0 to the script path it runs
    const { out: out2 } = await collect({ ...r, builder: '/bin/sh', args: ['-c', 'echo $0'] });
    expect(out2).toBe('sh\n');
  });

  it('a missing build dir is spawn-failed', async () => {
    const r = request(tempDir(), '/bin/sh', ['-c', 'true']);
    const { exit } = await collect({ ...r, buildDir: path.join(r.buildDir, 'missing') });
    expect(exit.kind).toBe('spawn-failed');
    // A set-up failure, not a failed exec of the builder (both are ENOENT for a Node spawn).
    expect((exit as { execError?: string }).execError).toBeUndefined();
  });

  it('one signal stops every build running with it (after one finished with it), and only those', async () => {
    const dir = tempDir();
    const ac = new AbortController();
    const other = new AbortController();
    // A build that finished with the signal, before the stop.
    expect((await collect(request(path.join(dir, 'done'), '/bin/sh', ['-c', 'exit 3']), ac.signal)).exit).toEqual({ kind: 'exited', code: 3 });
    const started: string[] = [];
    const run = (name: string, signal: AbortSignal) =>
      sb.run(request(path.join(dir, name), '/bin/sh', ['-c', `echo started; sleep ${name === 'spared' ? 1 : 30}; exit 5`]), {
        signal,
        onOutput: () => {
          started.push(name);
          if (started.length === 3) ac.abort();
        },
      });
    const t0 = Date.now();
    const exits = await Promise.all([run('a', ac.signal), run('b', ac.signal), run('spared', other.signal)]);
    expect(exits).toEqual([{ kind: 'aborted' }, { kind: 'aborted' }, { kind: 'exited', code: 5 }]);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('runs builds concurrently and keeps their output apart', async () => {
    const dir = tempDir();
    const runs = Array.from({ length: 6 }, (_, i) =>
      collect(request(path.join(dir, String(i)), '/bin/sh', ['-c', `for j in 1 2 3; do echo b${i}-$j; sleep 0.0$j; done; exit ${i}`])),
    );
    const res = await Promise.all(runs);
    res.forEach((r, i) => {
      expect(r.exit).toEqual({ kind: 'exited', code: i });
      expect(r.out).toBe(`b${i}-1\nb${i}-2\nb${i}-3\n`);
    });
  });

  it('concurrent builds with large binary output get their bytes exactly, whatever they look like', async () => {
    const dir = tempDir();
    // Every byte value, and text that looks like the server's own records and status lines.
    const block = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), Buffer.from('\n1 out 5\nhello2 exit 0\n3 pid 1\n')]);
    const payloads = Array.from({ length: 4 }, (_, i) => {
      const file = path.join(dir, `payload${i}`);
      const data = Buffer.concat([Buffer.from(`build ${i}\n`), ...Array.from<Buffer>({ length: 300_000 / block.length }).fill(block)]);
      writeFileSync(file, data);
      return { file, data };
    });
    const res = await Promise.all(
      payloads.map(async ({ file }, i) => {
        const chunks: Buffer[] = [];
        const exit = await sb.run(request(path.join(dir, String(i)), '/bin/sh', ['-c', `cat ${file}; cat ${file} >&2; exit ${i}`]), {
          onOutput: (c) => chunks.push(Buffer.from(c)),
        });
        return { exit, out: Buffer.concat(chunks) };
      }),
    );
    res.forEach((r, i) => {
      expect(r.exit).toEqual({ kind: 'exited', code: i });
      expect(r.out.equals(Buffer.concat([payloads[i]!.data, payloads[i]!.data]))).toBe(true);
    });
  });

  it('output arrives while the builder runs', async () => {
    const dir = tempDir();
    let firstAt = 0;
    const exit = await sb.run(request(dir, '/bin/sh', ['-c', 'echo early; sleep 1; echo late']), {
      onOutput: () => {
        firstAt ||= Date.now();
      },
    });
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    // The first line came while the builder slept (a margin for a loaded machine).
    expect(Date.now() - firstAt).toBeGreaterThanOrEqual(700);
  });
});

/** Our live child processes whose command line contains `needle`. */
function childrenMatching(needle: string): number[] {
  const pids: number[] = [];
  for (const tid of readdirSync('/proc/self/task')) {
    let kids = '';
    try {
      kids = readFileSync(`/proc/self/task/${tid}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const pid of kids.split(' ').filter(Boolean)) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle)) pids.push(Number(pid));
      } catch {
        /* gone */
      }
    }
  }
  return pids;
}

describe('NoSandbox launcher fallback', () => {
  it('REALISE_NOSANDBOX_LAUNCHER sets the default launcher (an explicit option wins)', async () => {
    const saved = process.env.REALISE_NOSANDBOX_LAUNCHER;
    process.env.REALISE_NOSANDBOX_LAUNCHER = 'node';
    try {
      expect(await new NoSandbox().launcher()).toBe('node');
      expect(await new NoSandbox({ launcher: 'helper' }).launcher()).toBe('helper');
    } finally {
      if (saved === undefined) delete process.env.REALISE_NOSANDBOX_LAUNCHER;
      else process.env.REALISE_NOSANDBOX_LAUNCHER = saved;
    }
    expect(await new NoSandbox().launcher()).toBe('helper');
  });

  it('without a C compiler, builds are spawned from Node', async () => {
    const opts: NoSandboxOptions = { helper: { cc: '/nonexistent/cc', cacheDir: tempDir() } };
    const sb = new NoSandbox(opts);
    expect(await sb.launcher()).toBe('node');
    const { exit, out } = await collectWith(sb, request(tempDir(), '/bin/sh', ['-c', 'echo ok; exit 4']));
    expect(exit).toEqual({ kind: 'exited', code: 4 });
    expect(out).toBe('ok\n');
    const forced = await new NoSandbox({ ...opts, launcher: 'helper' }).run(request(tempDir(), '/bin/sh', ['-c', 'true']));
    expect(forced.kind).toBe('spawn-failed');
  });

  it('when the helper server dies, running builds fail and later ones are spawned from Node', async () => {
    const cacheDir = tempDir(); // its own helper binary, so its own server
    const sb = new NoSandbox({ helper: { cacheDir } });
    expect(await sb.launcher()).toBe('helper');
    const dir = tempDir();
    const marker = path.join(dir, 'marker');
    let started!: () => void;
    const isStarted = new Promise<void>((r) => {
      started = r;
    });
    const running = sb.run(request(dir, '/bin/sh', ['-c', `echo started; sleep 1; touch ${marker}`]), { onOutput: () => started() });
    await isStarted;
    const servers = childrenMatching(cacheDir);
    expect(servers.length).toBe(1);
    process.kill(servers[0]!, 'SIGKILL');
    const exit = await running;
    expect(exit.kind).toBe('spawn-failed');
    expect(await sb.launcher()).toBe('node');
    const next = await collectWith(sb, request(tempDir(), '/bin/sh', ['-c', 'echo after']));
    expect(next).toEqual({ exit: { kind: 'exited', code: 0 }, out: 'after\n' });
    await new Promise((r) => setTimeout(r, 1200));
    expect(existsSync(marker)).toBe(false); // the orphaned builder's group was killed
  });
});
