import { mkdirSync, writeFileSync, chmodSync, readFileSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { NoSandbox } from '../../src/platform/no-sandbox.js';
import type { SandboxRequest } from '../../src/platform/sandbox.js';
import { tempDir } from '../helpers/nix.js';

function request(dir: string, builder: string, args: string[], env: Record<string, string> = {}): SandboxRequest {
  const buildDir = path.join(dir, 'build');
  mkdirSync(buildDir, { recursive: true });
  return {
    drvPath: '/nix/store/00000000000000000000000000000000-test.drv',
    builder, args, env, buildDir, sandboxBuildDir: buildDir,
    storeDir: '/nix/store', realStoreDir: '/nix/store',
    inputPaths: [], outputPaths: [], network: false,
  };
}

async function collect(req: SandboxRequest, signal?: AbortSignal) {
  const chunks: Buffer[] = [];
  const exit = await new NoSandbox().run(req, { signal, onOutput: (c) => chunks.push(c) });
  return { exit, out: Buffer.concat(chunks).toString() };
}

describe('NoSandbox', () => {
  it('passes exactly the given env, cwd = buildDir, argv0 = basename, merges stdout and stderr in order', async () => {
    const dir = tempDir();
    const r = request(dir, '/bin/sh', ['-c', 'echo "argv0=$0"; echo one; echo two >&2; echo three; env | sort; pwd; exit 3'], { FOO: 'bar baz', PATH: '/usr/bin:/bin' });
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
    const [pgid, pidLine, stdin] = out.trim().split('\n').map((s) => s.trim());
    expect(pidLine).toBe(`pid=${pgid}`);
    expect(stdin).toBe('/dev/null');
    expect(Number(pgid)).not.toBe(process.pid);
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
    const p = new NoSandbox().run(request(dir, '/bin/sh', ['-c', script]), {
      signal: ac.signal,
      onOutput: (c) => { chunks.push(c); if (Buffer.concat(chunks).toString().includes('started')) ac.abort(); },
    });
    const t0 = Date.now();
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

  it('already-aborted signal does not start the builder', async () => {
    const dir = tempDir();
    const marker = path.join(dir, 'm');
    const ac = new AbortController(); ac.abort();
    expect((await collect(request(dir, '/bin/sh', ['-c', `touch ${marker}`]), ac.signal)).exit).toEqual({ kind: 'aborted' });
    expect(existsSync(marker)).toBe(false);
  });

  it('spawn errors are spawn-failed, not throws', async () => {
    const dir = tempDir();
    const missing = await collect(request(dir, path.join(dir, 'no-such-builder'), []));
    expect(missing.exit.kind).toBe('spawn-failed');
    expect((missing.exit as { message: string }).message).toContain('no-such-builder');
    const notExec = path.join(dir, 'not-exec');
    writeFileSync(notExec, '#!/bin/sh\n'); chmodSync(notExec, 0o644);
    expect((await collect(request(dir, notExec, []))).exit.kind).toBe('spawn-failed');
    expect((await collect(request(dir, 'builtin:fetchurl', []))).exit.kind).toBe('spawn-failed');
  });

  it('streams large output completely', async () => {
    const { exit, out } = await collect(request(tempDir(), '/bin/sh', ['-c', 'i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done']));
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const lines = out.trim().split('\n');
    expect(lines.length).toBe(20000);
    expect(lines.at(-1)).toBe('line19999');
    void readFileSync;
  });
});
