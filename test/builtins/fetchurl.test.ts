/**
 * builtin:fetchurl against real Nix 2.8: `import <nix/fetchurl.nix>` derivations instantiated by
 * nix-instantiate into twin chroot stores, fetched from a real HTTP server on 127.0.0.1 by
 * `nix-store --realise` in one and by our engine in the other. Output paths, NAR hashes, references
 * and CA fields must be equal, failures must fail in both with Nix's words, and Nix must verify our store.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, promises as fsp, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildCancelledError, BuildFailedError } from '../../src/scheduler/errors.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { LocalStore } from '../../src/store/local-store.js';
import { bwrapOk, nix, nixOk, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { SANDBOX_PATHS, busyboxOk, instantiateAttrs, logTail, nixSandboxArgs, nixVerify, pathFacts, removeTree } from '../scheduler/helpers.js';
import { serveCache, type CacheServer } from '../substituter/http-server.js';

const hashOf = (args: string[]) => execFileSync('nix-hash', args, { encoding: 'utf8' }).trim();

describe.skipIf(!nixOk() || !bwrapOk() || !busyboxOk())('builtin:fetchurl vs Nix 2.8 (twin chroot stores, HTTP on 127.0.0.1)', () => {
  let root: string;
  let srv: string;
  let server: CacheServer;
  let N: string; // built by Nix
  let O: string; // built by us
  let drv: Record<string, string>;
  let store: LocalStore;
  let sandboxPaths: string[];
  const engines: BuildEngine[] = [];
  const engine = (o: BuildEngineOptions = {}) => {
    const e = new BuildEngine({ store, sandbox: true, sandboxPaths, maxJobs: 4, hashedMirrors: [`${server.url}/mirror`], buildDir: root, ...o });
    engines.push(e);
    return e;
  };
  // Asynchronously: the HTTP server Nix downloads from runs in this process.
  const nixBuild = (attrs: string[]) =>
    runNixAsync('nix-store', [
      '--store',
      N,
      '--realise',
      ...attrs.map((a) => drv[a]!),
      ...nixSandboxArgs(),
      '--option',
      'sandbox-paths',
      sandboxPaths.join(' '),
      '--option',
      'hashed-mirrors',
      `${server.url}/mirror`,
      '-j',
      '4',
    ]);

  beforeAll(async () => {
    root = tempDir('realise-fetchurl-');
    chmodSync(root, 0o755);
    srv = path.join(root, 'srv');
    mkdirSync(path.join(srv, 'tree', 'sub'), { recursive: true });
    writeFileSync(path.join(srv, 'a.txt'), 'hello from the loopback server\n');
    writeFileSync(path.join(srv, 'tool.sh'), '#!/bin/sh\necho tool\n');
    writeFileSync(path.join(srv, 'tree', 'x'), 'x in a NAR\n');
    writeFileSync(path.join(srv, 'tree', 'sub', 'run'), '#!/bin/sh\n');
    chmodSync(path.join(srv, 'tree', 'sub', 'run'), 0o755);
    execFileSync('sh', ['-c', `nix-store --dump ${srv}/tree | xz -c > ${srv}/tree.nar.xz`]);
    writeFileSync(path.join(srv, 'mirrored.txt'), 'only on the mirror\n');
    const mirroredHex = hashOf(['--type', 'sha256', '--flat', path.join(srv, 'mirrored.txt')]);
    mkdirSync(path.join(srv, 'mirror', 'sha256'), { recursive: true });
    await fsp.rename(path.join(srv, 'mirrored.txt'), path.join(srv, 'mirror', 'sha256', mirroredHex));
    mkdirSync(path.join(root, 'local'));
    writeFileSync(path.join(root, 'local', 'f.txt'), 'a local file\n');
    sandboxPaths = [...SANDBOX_PATHS, path.join(root, 'local')];
    server = await serveCache(srv);

    const flat = hashOf(['--type', 'sha256', '--flat', '--base32', path.join(srv, 'a.txt')]);
    const sri = 'sha256-' + Buffer.from(hashOf(['--type', 'sha256', '--flat', path.join(srv, 'a.txt')]), 'hex').toString('base64');
    chmodSync(path.join(srv, 'tool.sh'), 0o755);
    const exe = hashOf(['--type', 'sha256', '--base32', path.join(srv, 'tool.sh')]);
    chmodSync(path.join(srv, 'tool.sh'), 0o644);
    const tree = hashOf(['--type', 'sha256', '--base32', path.join(srv, 'tree')]);
    const local = hashOf(['--type', 'sha256', '--flat', '--base32', path.join(root, 'local', 'f.txt')]);
    const expr = path.join(root, 'e.nix');
    const u = server.url;
    writeFileSync(
      expr,
      `
      let fetchurl = import <nix/fetchurl.nix>; in rec {
        flat = fetchurl { url = "${u}/a.txt"; sha256 = "${flat}"; };
        sri = fetchurl { url = "${u}/a.txt"; hash = "${sri}"; name = "a-sri"; };
        exe = fetchurl { url = "${u}/tool.sh"; executable = true; sha256 = "${exe}"; };
        unpacked = fetchurl { url = "${u}/tree.nar.xz"; unpack = true; sha256 = "${tree}"; };
        mirrored = fetchurl { url = "${u}/gone/mirrored.txt"; sha256 = "${mirroredHex}"; };
        local = fetchurl { url = "file://${root}/local/f.txt"; sha256 = "${local}"; };
        wrong = fetchurl { url = "${u}/a.txt"; sha256 = "${tree}"; name = "wrong"; };
        missing = fetchurl { url = "${u}/missing.txt"; sha256 = "${flat}"; name = "missing"; };
        outside = fetchurl { url = "file://${srv}/a.txt"; sha256 = "${flat}"; name = "outside"; };
        hang1 = fetchurl { url = "${u}/a.txt?1"; sha256 = "${flat}"; name = "hang1"; };
        hang2 = fetchurl { url = "${u}/a.txt?2"; sha256 = "${flat}"; name = "hang2"; };
        hang3 = fetchurl { url = "${u}/a.txt?3"; sha256 = "${flat}"; name = "hang3"; };
        consumer = derivation {
          name = "consumer"; system = builtins.currentSystem; builder = "/bin/sh";
          args = [ "-c" "read l < \${flat}; echo \\"$l\\" > $out; cat \${unpacked}/x >> $out; \${exe} >> $out || echo not-run >> $out; echo \${unpacked} >> $out" ];
        };
      }`,
    );
    N = path.join(root, 'N');
    O = path.join(root, 'O');
    drv = instantiateAttrs(N, expr);
    expect(instantiateAttrs(O, expr)).toEqual(drv);
    store = await LocalStore.open({ root: O });
  }, 120_000);

  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
    await server?.close();
    if (root) await removeTree(root);
  });

  it('flat, SRI, executable, an xz NAR unpacked, a hashed mirror, file:// and a consumer: the same paths, hashes and references as Nix', async () => {
    const attrs = ['flat', 'sri', 'exe', 'unpacked', 'mirrored', 'local', 'consumer'];
    const r = await nixBuild(attrs);
    expect(r.status, r.stderr).toBe(0);
    const progress: number[] = [];
    const e = engine();
    e.on('progress', (p) => progress.push(p.download.done));
    const results = await e.buildPaths(attrs.map((a) => drv[a]!));
    const outs = results.map((x) => Object.values(x.result.builtOutputs ?? {})[0]!);
    const nixOuts = r.stdout.split('\n').filter(Boolean);
    expect(outs.sort()).toEqual([...nixOuts].sort());
    expect(pathFacts(O, outs)).toEqual(pathFacts(N, outs));
    // The executable came out executable, the NAR as the tree it holds.
    const exe = results[attrs.indexOf('exe')]!.result.builtOutputs!.out!;
    expect((await fsp.stat(path.join(O, exe))).mode & 0o111).not.toBe(0);
    const unpacked = results[attrs.indexOf('unpacked')]!.result.builtOutputs!.out!;
    expect(await fsp.readFile(path.join(O, unpacked, 'x'), 'utf8')).toBe('x in a NAR\n');
    const consumer = results[attrs.indexOf('consumer')]!.result.builtOutputs!.out!;
    expect(await fsp.readFile(path.join(O, consumer), 'utf8')).toBe(await fsp.readFile(path.join(N, consumer), 'utf8'));
    // The mirror was asked by hash before the (missing) URL was tried.
    expect(server.requests.some((q) => q.startsWith('mirror/sha256/'))).toBe(true);
    // Download progress came through the engine's events.
    expect(Math.max(...progress)).toBeGreaterThan(0);
    // The build log has Nix's activity lines: the mirror first, then the URL.
    const log = (await store.readBuildLog(drv.flat!))!;
    expect(log).toMatch(
      /^@nix \{"action":"start","fields":\["http:\/\/127\.0\.0\.1:\d+\/mirror\/sha256\/[0-9a-f]{64}"\],"id":\d+,"level":4,"text":"downloading '[^']*'","type":101\}\n/,
    );
    expect(log).toMatch(
      /\n@nix \{"action":"start","fields":\["http:\/\/127\.0\.0\.1:\d+\/a\.txt"\],"id":\d+,"level":4,"text":"downloading 'http:\/\/127\.0\.0\.1:\d+\/a\.txt'","type":101\}\n/,
    );
    expect(log).toMatch(/\n@nix \{"action":"result","fields":\[31,31,0,0\],"id":\d+,"type":105\}\n@nix \{"action":"stop","id":\d+\}\n$/);
    expect(nixVerify(O).status).toBe(0);
  }, 180_000);

  it('a wrong hash is a hash mismatch (exit 102) in both, and the content is registered under its true path', async () => {
    const r = await nixBuild(['wrong']);
    expect(r.status).toBe(102);
    const err = await engine()
      .buildPaths([drv.wrong!])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(err).toBeInstanceOf(BuildFailedError);
    expect((err as BuildFailedError).exitStatus).toBe(102);
    const nixMsg = /hash mismatch in fixed-output derivation[^\n]*\n\s*specified: *(\S+)\n\s*got: *(\S+)/.exec(r.stderr)!;
    expect((err as Error).message).toContain(`specified: ${nixMsg[1]}`);
    expect((err as Error).message).toContain(`got:    ${nixMsg[2]}`);
  }, 120_000);

  it("HTTP 404 and a file outside the sandbox fail in both, with Nix's message in the log", async () => {
    for (const attr of ['missing', 'outside']) {
      const r = await nixBuild([attr]);
      expect(r.status).toBe(1);
      const nixLine = /error: (unable to download [^\n]*)/.exec(r.stderr)![1]!;
      const err = await engine()
        .buildPaths([drv[attr]!])
        .then(
          () => undefined,
          (x: unknown) => x,
        );
      expect(err).toBeInstanceOf(BuildFailedError);
      expect((err as BuildFailedError).exitStatus).toBe(1);
      expect(logTail((err as Error).message).join('\n')).toContain(nixLine);
      expect((err as Error).message).toMatch(/builder for '.*' failed with exit code 1/);
      // Nix's log has the same error text as ours (both with Nix's colours).
      const ours = (await store.readBuildLog(drv[attr]!))!;
      const theirs = runNix('nix', ['--store', N, 'log', drv[attr]!]).stdout;
      const errorText = (s: string) => s.slice(s.indexOf('\x1b[31;1merror:'));
      expect(errorText(ours).trimEnd()).toBe(errorText(theirs).trimEnd());
    }
  }, 120_000);

  it('cancellation through the AbortSignal stops a download that hangs, and leaves nothing behind', async () => {
    server.fault(/^a\.txt$/, { kind: 'hang' }, 1);
    const ac = new AbortController();
    const e = engine();
    e.on('build-started', () => setTimeout(() => ac.abort(), 200));
    const t0 = Date.now();
    const err = await e.buildPaths([drv.hang1!], { signal: ac.signal }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(BuildCancelledError);
    expect(Date.now() - t0).toBeLessThan(10_000);
    server.clearFaults();
    const out = nix('nix-store', ['--store', O, '-q', '--outputs', drv.hang1!]);
    expect(await store.isValidPath(out)).toBe(false);
    await expect(fsp.lstat(path.join(O, out))).rejects.toThrow();
  }, 60_000);

  it('a download that hangs is killed by the build timeout, not by max-silent-time (its progress lines keep it alive), in both', async () => {
    server.fault(/^a\.txt$/, { kind: 'hang' }, 2);
    const r = await runNixAsync('nix-store', ['--store', N, '--realise', drv.hang3!, ...nixSandboxArgs(), '--max-silent-time', '2', '--timeout', '4']);
    expect(r.status).toBe(101);
    expect(r.stderr).toContain('timed out after 4 seconds');
    const err = await engine({ maxSilentTime: 2, buildTimeout: 4 })
      .buildPaths([drv.hang2!])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    server.clearFaults();
    expect(err).toBeInstanceOf(BuildFailedError);
    expect((err as BuildFailedError).results[0]!.status).toBe('timed-out');
    expect((err as Error).message).toContain('timed out after 4 seconds');
    expect((err as BuildFailedError).exitStatus).toBe(101);
  }, 60_000);

  it('check mode fetches again and compares (deterministic: passes); keepFailed keeps no build directory of a built-in', async () => {
    const [r] = await engine().buildPaths([drv.flat!], { mode: 'check' });
    expect(r!.result.status).toBe('built');
    const err = await engine({ keepFailed: true })
      .buildPaths([drv.missing!])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect((err as Error).message).not.toContain('keeping build directory');
    expect((await fsp.readdir(root)).filter((n) => n.startsWith('nix-build-missing'))).toEqual([]);
  }, 60_000);
});
