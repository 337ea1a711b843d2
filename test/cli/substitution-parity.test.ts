/**
 * Substitution from binary caches, `realise build` side by side with `nix-store --realise` of Nix 2.8 on
 * twin fresh chroot stores, with caches real Nix wrote (`nix copy --to file://…`, signed with
 * `nix store sign`), some of them damaged: the stderr lines a user reads, the exit status, and the path
 * infos that result.
 */
import { chmodSync, copyFileSync, cpSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveCache } from '../substituter/http-server.js';
import { nix, nixOk, removeTreeSync, runNix, runNixAsync, tempDir, type NixRunResult } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';
const EXPR = `{ prefix ? "sp" }:
let mk = name: script: derivation { name = "\${prefix}-\${name}"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" script]; };
in rec {
  a = mk "a" "echo a > $out";
  b = mk "b" "echo \${a} > $out";
  c = mk "c" "echo \${b} > $out";
  n = mk "n" "echo \${a} n > $out";
  top = mk "top" "echo \${c} \${big} \${n} > $out";
  big = mk "big" "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-$i; i=$((i+1)); done > $out";
}
`;

type Run = NixRunResult;

/** The stderr lines compared: errors with their continuation lines, warnings, the summary, copying/building. */
function keyLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /^(error|warning): |^ {7}|^these |^this |^don't know|^ {2}\/nix\/store\/|^copying path|^building /.test(l));
}

describe.skipIf(!nixOk())('substitution: realise CLI vs Nix 2.8', () => {
  let dir: string;
  let file: string;
  let pub: string;
  const drv: Record<'a' | 'b' | 'big' | 'top', string> = { a: '', b: '', big: '', top: '' };
  const out: Record<'a' | 'b' | 'big' | 'top', string> = { a: '', b: '', big: '', top: '' };
  /** The signed cache Nix wrote, per compression. */
  const cache: Record<'xz' | 'none', string> = { xz: '', none: '' };
  let n = 0;

  beforeAll(() => {
    dir = tempDir('realise-subparity-');
    file = path.join(dir, 'd.nix');
    writeFileSync(file, EXPR);
    const src = path.join(dir, 'S');
    for (const k of ['a', 'b', 'big', 'top'] as const) drv[k] = nix('nix-instantiate', ['--store', src, file, '-A', k]);
    nix('nix-store', ['--store', src, '--option', 'sandbox-paths', SANDBOX, '--realise', drv.b, drv.big, drv.top]);
    for (const k of ['a', 'b', 'big', 'top'] as const) out[k] = nix('nix-store', ['--store', src, '-q', '--outputs', drv[k]]);
    const sk = path.join(dir, 'sk');
    writeFileSync(sk, nix('nix', ['key', 'generate-secret', '--key-name', 'parity-1']));
    pub = nix('nix', ['key', 'convert-secret-to-public'], { input: readFileSync(sk, 'utf8') });
    nix('nix', ['store', 'sign', '--store', src, '-k', sk, '-r', out.top]);
    nix('nix', ['store', 'sign', '--store', src, '-k', sk, '--derivation', '-r', drv.b]);
    for (const c of ['xz', 'none'] as const) {
      cache[c] = path.join(dir, `cache-${c}`);
      nix('nix', ['copy', '--store', src, '--to', `file://${cache[c]}?compression=${c}`, out.top]);
      nix('nix', ['copy', '--store', src, '--derivation', '--to', `file://${cache[c]}?compression=${c}`, drv.b]);
    }
  }, 60_000);

  // Every fixture's stores and cache copies (some 400 MB in all): removed after the file's tests.
  afterAll(() => {
    if (dir) removeTreeSync(dir);
  });

  /** Twin fresh stores with the .drv files, and a copy of the cache to damage. */
  function fresh(
    compression: 'xz' | 'none',
    withDrvs = true,
  ): { N: string; O: string; cacheDir: string; narOf: (p: string) => string; niOf: (p: string) => string; env: Record<string, string> } {
    const d = path.join(dir, `run${++n}`);
    const N = path.join(d, 'N');
    const O = path.join(d, 'O');
    if (withDrvs) for (const root of [N, O]) for (const k of ['a', 'b', 'top'] as const) nix('nix-instantiate', ['--store', root, file, '-A', k]);
    const cacheDir = path.join(d, 'cache');
    cpSync(cache[compression], cacheDir, { recursive: true });
    const niOf = (p: string) => path.join(cacheDir, `${path.basename(p).slice(0, 32)}.narinfo`);
    const narOf = (p: string) => path.join(cacheDir, /^URL: (.*)$/m.exec(readFileSync(niOf(p), 'utf8'))![1]!);
    // Nix's narinfo disk cache ($XDG_CACHE_HOME/nix) and ours ($XDG_CACHE_HOME/realise) are per fixture, so
    // no fixture sees another's lookups.
    return { N, O, cacheDir, narOf, niOf, env: { XDG_CACHE_HOME: path.join(d, 'xdg') } };
  }

  async function both(N: string, O: string, url: string, env: Record<string, string>, args: string[]): Promise<{ nix: Run; ours: Run }> {
    const opts = ['--option', 'substituters', url, '--option', 'trusted-public-keys', pub, '--option', 'sandbox-paths', SANDBOX];
    const nixRun = await runNixAsync('nix-store', ['--store', N, '--realise', ...args, ...opts], { env });
    const ours = await realise(['build', '--store', O, ...args, ...opts], env);
    return { nix: nixRun, ours };
  }

  /** As both, with the two runs at the same time: for caches that fail every request, where each side mostly
   * sleeps between download retries (separate stores, and a server whose requests no assertion counts). */
  async function bothAtOnce(N: string, O: string, url: string, env: Record<string, string>, args: string[]): Promise<{ nix: Run; ours: Run }> {
    const opts = ['--option', 'substituters', url, '--option', 'trusted-public-keys', pub, '--option', 'sandbox-paths', SANDBOX];
    const [nixRun, ours] = await Promise.all([
      runNixAsync('nix-store', ['--store', N, '--realise', ...args, ...opts], { env }),
      realise(['build', '--store', O, ...args, ...opts], env),
    ]);
    return { nix: nixRun, ours };
  }

  function pathInfos(root: string, drvsToo = false): Record<string, unknown>[] {
    const infos = JSON.parse(nix('nix', ['path-info', '--store', root, '--json', '--all'])) as Record<string, unknown>[];
    return infos
      .filter((i) => drvsToo || !String(i.path).endsWith('.drv'))
      .map(({ registrationTime, ...rest }): Record<string, unknown> => ({ ...rest, hasRegistrationTime: registrationTime !== undefined }))
      .sort((x, y) => String(x.path).localeCompare(String(y.path)));
  }

  function expectSame(r: { nix: Run; ours: Run }): void {
    expect(keyLines(r.ours.stderr)).toEqual(keyLines(r.nix.stderr));
    expect(r.ours.stdout).toBe(r.nix.stdout);
    expect(r.ours.status).toBe(r.nix.status);
  }

  it('a NAR file gone from a file:// cache: Nix\'s "does not exist in binary cache" error, then the build', async () => {
    const f = fresh('xz');
    rmSync(f.narOf(out.b));
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(r.nix.stderr).toContain('does not exist in binary cache');
    expectSame(r);
    expect(pathInfos(f.O)).toEqual(pathInfos(f.N));
  }, 60_000);

  it('a NAR file gone from an HTTP cache: the message names the cache', async () => {
    const f = fresh('xz');
    rmSync(f.narOf(out.b));
    const server = await serveCache(f.cacheDir);
    try {
      const r = await both(f.N, f.O, server.url, f.env, [drv.b]);
      expect(r.nix.stderr).toContain(`does not exist in binary cache '${server.url}'`);
      expectSame(r);
    } finally {
      await server.close();
    }
  }, 60_000);

  it("a NAR with other contents (hash mismatch): Nix's message with both hashes; no build without --fallback", async () => {
    const f = fresh('xz');
    // b's NAR file replaced by a's: valid xz of another size, so FileSize is wrong too (Nix does not check it).
    copyFileSync(f.narOf(out.a), f.narOf(out.b));
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(r.nix.stderr).toMatch(/hash mismatch importing path/);
    expect(r.nix.status).toBe(1);
    expectSame(r);
  }, 60_000);

  it('a truncated uncompressed NAR of a reference: "is incomplete", and the failure is the top derivation\'s (Nix\'s ecFailed)', async () => {
    const f = fresh('none');
    truncateSync(f.narOf(out.a), 60);
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(r.nix.stderr).toContain('is incomplete');
    expectSame(r);
    // With --fallback both build (after trying the substitute again, as Nix's new goal does).
    const g = fresh('none');
    truncateSync(g.narOf(out.a), 60);
    const fb = await both(g.N, g.O, `file://${g.cacheDir}`, g.env, [drv.b, '--fallback']);
    expect(fb.nix.status).toBe(0);
    expectSame(fb);
    expect(pathInfos(g.O)).toEqual(pathInfos(g.N));
  }, 60_000);

  it('a reference missing from the cache: "don\'t know how to build" it, it is built, then the output substituted', async () => {
    const f = fresh('xz');
    rmSync(f.niOf(out.a));
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(r.nix.stderr).toContain(`copying path '${out.b}'`);
    expectSame(r);
    // b came from the cache in both: its signature, not ultimate.
    const infos = pathInfos(f.O);
    expect(infos).toEqual(pathInfos(f.N));
    expect(infos.find((i) => i.path === out.b)).toMatchObject({ signatures: [expect.stringMatching(/^parity-1:/)] });
  }, 60_000);

  it("a cache for another store dir: Nix's warning, and the derivation is built", async () => {
    const f = fresh('xz');
    writeFileSync(path.join(f.cacheDir, 'nix-cache-info'), 'StoreDir: /other/store\n');
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.a]);
    expect(r.nix.stderr).toContain("is for Nix stores with prefix '/other/store', not '/nix/store'");
    expectSame(r);
  }, 60_000);

  it("a malformed trusted public key: Nix's error once a substitute is tried (its words per flaw), exit 1, nothing built or fetched; not read with require-sigs off", async () => {
    const f = fresh('none');
    const url = `file://${f.cacheDir}`;
    const run = async (key: string, root: string, extra: string[] = []) => {
      const opts = ['--option', 'substituters', url, '--option', 'trusted-public-keys', `${pub} ${key}`, '--option', 'sandbox-paths', SANDBOX, ...extra];
      const nixRun = await runNixAsync('nix-store', ['--store', `${f.N}${root}`, '--realise', drv.a, '--keep-going', '--fallback', ...opts], { env: f.env });
      const ours = await realise(['build', '--store', `${f.O}${root}`, drv.a, '--keep-going', '--fallback', ...opts], f.env);
      return { nix: nixRun, ours };
    };
    for (const [key, message] of [
      ['k:YmFy', 'public key is not valid'],
      ['k', 'secret key is corrupt'],
    ] as const) {
      for (const root of [f.N, f.O]) nix('nix-instantiate', ['--store', `${root}-${key}`, file, '-A', 'a']);
      const r = await run(key, `-${key}`);
      expect(keyLines(r.nix.stderr).at(-1)).toBe(`error: ${message}`);
      expectSame(r);
      expect(runNix('nix-store', ['--store', `${f.O}-${key}`, '--check-validity', out.a]).status).not.toBe(0);
    }
    // Nix's own message names no character there (a bug of its formatting); ours names it.
    const bad = await realise(['build', '--store', `${f.O}-b64`, out.a, '--option', 'substituters', url, '--option', 'trusted-public-keys', 'k:ba!r']);
    expect([bad.status, keyLines(bad.stderr).at(-1)]).toEqual([1, "error: invalid character in Base64 string: '!'"]);
    // With require-sigs off the keys are never read: substituted.
    const off = await run('k', '', ['--option', 'require-sigs', 'false']);
    expectSame(off);
    expect(off.ours.stdout.trim()).toBe(out.a);
  }, 60_000);

  it("a file:// cache directory that does not exist: made as Nix makes it (nar, realisations, log, nix-cache-info), or Nix's warning when it cannot be; the derivation built", async () => {
    const f = fresh('none');
    const missing = (side: string) => path.join(f.cacheDir, '..', `missing-${side}`);
    const r = await both(f.N, f.O, `file://${missing('N')}`, f.env, [drv.a]);
    expectSame(r);
    const listing = (d: string) =>
      (readdirSync(d, { recursive: true }) as string[]).sort().map((e) => [e, e === 'nix-cache-info' ? readFileSync(path.join(d, e), 'utf8') : '']);
    for (const root of [`${f.O}-2`, `${f.N}-3`, `${f.O}-3`]) nix('nix-instantiate', ['--store', root, file, '-A', 'a']);
    // (Ours on its own twin: the same URL would find Nix's directory made already.)
    const o = await realise(
      ['build', '--store', `${f.O}-2`, drv.a, '--option', 'substituters', `file://${missing('O')}`, '--option', 'sandbox-paths', SANDBOX],
      f.env,
    );
    expect(o.status, o.stderr).toBe(0);
    expect(listing(missing('O'))).toEqual(listing(missing('N')));
    expect(listing(missing('N'))).toEqual([
      ['log', ''],
      ['nar', ''],
      ['nix-cache-info', 'StoreDir: /nix/store\n'],
      ['realisations', ''],
    ]);
    const p = await both(`${f.N}-3`, `${f.O}-3`, 'file:///proc/realise-no-cache', f.env, [drv.a]);
    expect(keyLines(p.nix.stderr)[0]).toBe("warning: creating directory '/proc/realise-no-cache': No such file or directory");
    expectSame(p);
  }, 60_000);

  it("-v and -vv: nix-store's queries, downloads and 'substitution of path … succeeded' lines, file:// and HTTP, in its order", async () => {
    for (const http of [false, true]) {
      for (const v of ['-v', '-vv']) {
        const f = fresh('xz');
        const server = http ? await serveCache(f.cacheDir) : undefined;
        try {
          const r = await both(f.N, f.O, server ? server.url : `file://${f.cacheDir}`, f.env, [v, drv.b]);
          expect(r.nix.status, r.nix.stderr).toBe(0);
          expect(r.nix.stderr).toContain('querying info about');
          if (v === '-vv') expect(r.nix.stderr).toContain(`substitution of path '${out.b}' succeeded`);
          expect(r.ours.stderr, `${v} ${http ? 'http' : 'file'}`).toBe(r.nix.stderr);
        } finally {
          await server?.close();
        }
      }
    }
  });

  it("an HTTP cache's nix-cache-info and lookups are remembered across runs, as in Nix's disk cache (its TTLs)", async () => {
    const f = fresh('xz');
    // A derivation the cache does not have (negative lookups), in fresh twin stores per run.
    let k = 0;
    const twins = (attr: string, prefix?: string) => {
      const d = path.join(f.cacheDir, '..', `twins${++k}`);
      const args = [file, '-A', attr, ...(prefix ? ['--argstr', 'prefix', prefix] : [])];
      const [N, O] = [path.join(d, 'N'), path.join(d, 'O')];
      const p = nix('nix-instantiate', ['--store', N, ...args]);
      nix('nix-instantiate', ['--store', O, ...args]);
      return { N, O, drv: p };
    };
    const server = await serveCache(f.cacheDir);
    try {
      /**
       * What each of Nix's run and ours asks the server for (sorted, each file once: within a run Nix asks
       * again for a narinfo the cache lacks, where we remember the first answer).
       */
      const requests = async (attr: string, prefix?: string, extra: string[] = []) => {
        const t = twins(attr, prefix);
        const at = server.requests.length;
        const opts = ['--option', 'substituters', server.url, '--option', 'trusted-public-keys', pub, '--option', 'sandbox-paths', SANDBOX, ...extra];
        const n = await runNixAsync('nix-store', ['--store', t.N, '--realise', t.drv, ...opts], { env: f.env });
        const mid = server.requests.length;
        const o = await realise(['build', '--store', t.O, t.drv, ...opts], f.env);
        expectSame({ nix: n, ours: o });
        expect(n.status, n.stderr).toBe(0);
        const [ofNix, ofOurs] = [[...new Set(server.requests.slice(at, mid))].sort(), [...new Set(server.requests.slice(mid))].sort()];
        expect(ofOurs).toEqual(ofNix);
        return ofNix.map((r) => (r.endsWith('.narinfo') ? 'narinfo' : r.startsWith('nar/') ? 'nar' : r)).sort();
      };
      expect(await requests('b')).toEqual(['nar', 'nar', 'narinfo', 'narinfo', 'nix-cache-info']);
      // Fresh stores, the same cache: its nix-cache-info and narinfos are remembered, only the NARs are fetched.
      expect(await requests('b')).toEqual(['nar', 'nar']);
      // Not in the cache: asked once, then remembered as absent for narinfo-cache-negative-ttl (an hour).
      expect(await requests('a', 'neg')).toEqual(['narinfo']);
      expect(await requests('a', 'neg')).toEqual([]);
      expect(await requests('a', 'neg', ['--option', 'narinfo-cache-negative-ttl', '0'])).toEqual(['narinfo']);
    } finally {
      await server.close();
    }
  }, 90_000);

  it("an HTTP cache that refuses connections: Nix's last warning (curl's words), and the derivation is built", async () => {
    const f = fresh('xz');
    const server = await serveCache(f.cacheDir);
    const url = server.url;
    await server.close(); // nothing listens on its port any more
    const r = await bothAtOnce(f.N, f.O, url, f.env, [drv.a]);
    // Both retry 4 times, warning with random delays: compared without the numbers.
    for (const run of [r.nix, r.ours]) run.stderr = run.stderr.replace(/retrying in \d+ ms/g, 'retrying in N ms');
    expect(r.nix.stderr).toContain(`warning: unable to download '${url}/nix-cache-info': Couldn't connect to server (7)`);
    expect(r.ours.stderr.match(/^warning: error: unable to download .*; retrying in N ms$/gm)).toHaveLength(4);
    expectSame(r);
  }, 60_000);

  it("several caches: a cache whose nix-cache-info states no Priority comes first (Nix 2.8's default priority 0), before one given ?priority=1; nix-cache-info's Priority loses to ?priority=", async () => {
    for (const [info1, param2, want] of [
      ['', '?priority=1', 1],
      ['Priority: 30\n', '?priority=10', 2],
      ['', '', 1],
    ] as const) {
      const f = fresh('none');
      cpSync(f.cacheDir, `${f.cacheDir}2`, { recursive: true });
      writeFileSync(path.join(f.cacheDir, 'nix-cache-info'), `StoreDir: /nix/store\n${info1}`);
      const urls = [`file://${f.cacheDir}`, `file://${f.cacheDir}2`];
      const r = await both(f.N, f.O, `${urls[0]} ${urls[1]}${param2}`, f.env, [drv.b]);
      const from = (stderr: string) => /^copying path '.*-sp-b' from '(.*)'\.\.\.$/m.exec(stderr)?.[1];
      expect(from(r.nix.stderr)).toBe(urls[want - 1]);
      expectSame(r);
    }
  }, 60_000);

  it("with --fallback, an HTTP cache whose request fails is disabled for 60 s (Nix's line), and not asked again meanwhile", async () => {
    // A NAR that fails on the first of two caches: the next path's NAR is not asked of it ("is disabled").
    const f = fresh('xz');
    const [first, second] = [await serveCache(f.cacheDir), await serveCache(f.cacheDir)];
    try {
      const run = async (cmd: () => Promise<Run>): Promise<{ run: Run; asked: string[][] }> => {
        first.clearFaults();
        first.fault(/^nar\//, { kind: 'status', status: 500 });
        const [n1, n2] = [first.requests.length, second.requests.length];
        const r = await cmd();
        return { run: r, asked: [first.requests.slice(n1), second.requests.slice(n2)] };
      };
      const opts = ['--fallback', '--option', 'download-attempts', '1', '--option', 'substituters', `${first.url} ${second.url}`];
      const common = ['--option', 'trusted-public-keys', pub, '--option', 'sandbox-paths', SANDBOX, ...opts];
      const theirs = await run(() => runNixAsync('nix-store', ['--store', f.N, '--realise', drv.b, ...common], { env: f.env }));
      const ours = await run(() => realise(['build', '--store', f.O, drv.b, ...common], f.env));
      expect(theirs.run.stderr.split('\n')).toContain(`disabling binary cache '${first.url}' for 60 seconds`);
      expect(theirs.run.stderr.split('\n')).toContain(`error: substituter '${first.url}' is disabled`);
      expect(ours.run.stderr).toBe(theirs.run.stderr);
      expect(ours.run.stdout).toBe(theirs.run.stdout);
      expect(ours.run.status).toBe(theirs.run.status);
      // One NAR asked of the first cache (its failure), the other fetched from the second.
      expect(ours.asked).toEqual(theirs.asked);
      expect(ours.asked[0]!.filter((r) => r.startsWith('nar/'))).toHaveLength(1);
      expect(pathInfos(f.O)).toEqual(pathInfos(f.N));
    } finally {
      await first.close();
      await second.close();
    }
    // A cache that refuses connections: disabled too (the line before the warning), and the derivation built.
    const g = fresh('xz');
    const server = await serveCache(g.cacheDir);
    const url = server.url;
    await server.close();
    const r = await both(g.N, g.O, url, g.env, [drv.a, '--fallback', '--option', 'download-attempts', '1']);
    expect(r.nix.stderr.split('\n').slice(0, 2)).toEqual([
      `disabling binary cache '${url}' for 60 seconds`,
      `warning: unable to download '${url}/nix-cache-info': Couldn't connect to server (7)`,
    ]);
    expect(r.ours.stderr).toBe(r.nix.stderr);
    expect(r.ours.status).toBe(r.nix.status);
  }, 60_000);

  it('a corrupt narinfo: Nix\'s "NAR info file … is corrupt"; the command stops, or with --fallback builds', async () => {
    const f = fresh('xz');
    writeFileSync(f.niOf(out.b), readFileSync(f.niOf(out.b), 'utf8').replace(/^NarSize: .*$/m, 'NarSize: bogus'));
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(keyLines(r.nix.stderr)).toEqual([`error: NAR info file '${path.basename(f.niOf(out.b))}' is corrupt`]);
    expectSame(r);
    const g = fresh('xz');
    writeFileSync(g.niOf(out.b), readFileSync(g.niOf(out.b), 'utf8').replace(/^NarSize: .*$/m, 'NarSize: bogus'));
    const fb = await both(g.N, g.O, `file://${g.cacheDir}`, g.env, [drv.b, '--fallback']);
    // The error is logged three times in both: the summary's query, the worker's (Nix's primeCache), the goal's.
    expect(fb.nix.stderr.match(/is corrupt$/gm)).toHaveLength(3);
    expectSame(fb);
    expect(fb.nix.status).toBe(0);
    expect(pathInfos(g.O)).toEqual(pathInfos(g.N));
  }, 60_000);

  it('--repair of a derivation whose outputs are good but a reference is corrupt: the reference is fetched again', async () => {
    const f = fresh('xz');
    const url = `file://${f.cacheDir}`;
    const first = await both(f.N, f.O, url, f.env, [drv.b]);
    expectSame(first);
    for (const root of [f.N, f.O]) {
      chmodSync(root + out.a, 0o644);
      writeFileSync(root + out.a, 'corrupted\n');
    }
    const r = await both(f.N, f.O, url, f.env, [drv.b, '--repair']);
    expect(r.nix.status).toBe(0);
    expect(r.ours.status).toBe(0);
    expect(r.ours.stdout).toBe(r.nix.stdout);
    expect(r.nix.stderr).toContain(`found corrupted or missing path '${out.a}' in the output closure of '${drv.b}'`);
    // Nix's lines, without a prefix (in a chroot store Nix also finds b "missing": it looks on the host).
    for (const line of [
      `checking path '${out.a}'...`,
      `path '${out.a}' is corrupted or missing!`,
      `found corrupted or missing path '${out.a}' in the output closure of '${drv.b}'`,
    ]) {
      expect(r.nix.stderr.split('\n')).toContain(line);
      expect(r.ours.stderr.split('\n')).toContain(line);
    }
    expect(r.ours.stderr).toContain(`copying path '${out.a}' from '${url}'...`);
    for (const root of [f.N, f.O]) expect(readFileSync(root + out.a, 'utf8')).toBe('a\n');
    expect(runNix('nix-store', ['--store', f.O, '--verify', '--check-contents']).status).toBe(0);
    expect(pathInfos(f.O)).toEqual(pathInfos(f.N));
    // --quiet hides the "checking path" lines (Nix's info level), not the errors.
    for (const root of [f.N, f.O]) {
      chmodSync(root + out.a, 0o644);
      writeFileSync(root + out.a, 'corrupted\n');
    }
    const q = await both(f.N, f.O, url, f.env, [drv.b, '--repair', '--quiet']);
    for (const run of [q.nix, q.ours]) {
      expect(run.stderr).not.toContain('checking path');
      expect(run.stderr.split('\n')).toContain(`path '${out.a}' is corrupted or missing!`);
    }
  }, 60_000);

  it('a .drv only the cache has: unknown to the "will be fetched" summary (as Nix 2.8), substituted with its outputs', async () => {
    const f = fresh('xz', false);
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b]);
    expect(r.nix.status).toBe(0);
    expect(r.nix.stderr).toContain(`copying path '${drv.b}'`);
    expectSame(r);
    expect(pathInfos(f.O, true)).toEqual(pathInfos(f.N, true));
  }, 60_000);

  it("NAR files that do not decompress: libarchive's words as Nix prints them (open vs read, truncated vs corrupt, not compressed)", async () => {
    const damage: [string, string, (file: string) => void][] = [
      ['truncated early', 'a', (f) => truncateSync(f, 60)],
      ['truncated late', 'big', (f) => truncateSync(f, 2000)],
      [
        'corrupt early',
        'big',
        (f) => {
          const b = readFileSync(f);
          b[40]! ^= 0x55;
          writeFileSync(f, b);
        },
      ],
      [
        'corrupt late',
        'big',
        (f) => {
          const b = readFileSync(f);
          b[b.length >> 1]! ^= 0x55;
          writeFileSync(f, b);
        },
      ],
      ['not compressed', 'a', (f) => writeFileSync(f, Buffer.alloc(124, 0x41))],
    ];
    for (const [what, k, hurt] of damage) {
      const f = fresh('xz');
      hurt(f.narOf(out[k as 'a' | 'big']));
      const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [out[k as 'a' | 'big']]);
      expect(r.nix.status, what).toBe(1);
      expect(keyLines(r.ours.stderr), what).toEqual(keyLines(r.nix.stderr));
      expect(r.ours.status, what).toBe(r.nix.status);
    }
  }, 120_000);

  it("an HTTP cache that answers 500 (narinfo, NAR): Nix's message with the reason and the response body; no build without --fallback", async () => {
    for (const re of [/\.narinfo$/, /^nar\//]) {
      const f = fresh('xz');
      const server = await serveCache(f.cacheDir);
      server.fault(re, { kind: 'status', status: 500 });
      try {
        // download-attempts 3 on both sides (the default 5 is checked by the refused-connection test above).
        const r = await bothAtOnce(f.N, f.O, server.url, f.env, [drv.a, '--option', 'download-attempts', '3']);
        // Both retry twice, warning with random delays: compared without the numbers.
        for (const run of [r.nix, r.ours]) run.stderr = run.stderr.replace(/retrying in \d+ ms/g, 'retrying in N ms');
        expect(r.ours.stderr.match(/; retrying in N ms$/gm)).toHaveLength(2);
        expect(r.nix.stderr).toContain("HTTP error 500 ('Internal Server Error')\n\n       response body:\n\n       injected 500\n");
        expect(r.ours.stderr).toBe(r.nix.stderr);
        expect(r.ours.status).toBe(r.nix.status);
        expect(r.nix.status).toBe(1);
      } finally {
        await server.close();
      }
    }
  }, 60_000);

  it('path-info of paths the cache has but the store does not: the same "will be fetched" lines, then "is not valid"', async () => {
    const f = fresh('xz');
    const opts = ['--option', 'substituters', `file://${f.cacheDir}`, '--option', 'trusted-public-keys', pub];
    for (const p of [out.b, drv.b]) {
      const n = runNix('nix', ['path-info', '--store', f.N, ...opts, p], { env: f.env });
      const o = await realise(['path-info', '--store', f.O, ...opts, p]);
      expect(n.stderr).toContain('these 2 paths will be fetched');
      expect(o.stderr).toBe(n.stderr);
      expect(o.stdout).toBe(n.stdout);
      expect(o.status).toBe(n.status);
    }
  }, 60_000);

  it('--dry-run with narinfos that have no FileSize: "0.00 MiB download", as Nix counts them', async () => {
    const f = fresh('none');
    for (const p of [out.big]) writeFileSync(f.niOf(p), readFileSync(f.niOf(p), 'utf8').replace(/^FileSize: .*\n/m, ''));
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [out.big, '--dry-run']);
    expect(r.nix.stderr).toContain('(0.00 MiB download, 0.26 MiB unpacked)');
    expectSame(r);
  }, 60_000);

  it("a closure with branches: the paths are fetched in Nix's order (its worker's rounds, by name within one)", async () => {
    for (const target of [out.top, drv.top]) {
      const f = fresh('xz');
      const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [target]);
      expect(r.nix.stderr.match(/^copying path/gm), r.nix.stderr).toHaveLength(6);
      expectSame(r);
    }
  }, 60_000);

  it('an HTTP cache without nix-cache-info: "does not appear to be a binary cache", left out, the derivation built', async () => {
    const f = fresh('xz');
    rmSync(path.join(f.cacheDir, 'nix-cache-info'));
    const server = await serveCache(f.cacheDir);
    try {
      const r = await both(f.N, f.O, server.url, f.env, [drv.a]);
      expect(r.nix.stderr).toContain(`warning: '${server.url}' does not appear to be a binary cache`);
      expectSame(r);
      expect(pathInfos(f.O)).toEqual(pathInfos(f.N));
    } finally {
      await server.close();
    }
  }, 60_000);

  it('--check of a derivation whose outputs only the cache has: substituted, then checked, and ultimate as in Nix', async () => {
    const f = fresh('xz');
    const r = await both(f.N, f.O, `file://${f.cacheDir}`, f.env, [drv.b, '--check']);
    expect(r.nix.status).toBe(0);
    expect(r.nix.stderr).toContain(`checking outputs of '${drv.b}'...`);
    expectSame(r);
    const infos = pathInfos(f.O);
    expect(infos).toEqual(pathInfos(f.N));
    expect(infos.find((i) => i.path === out.b)).toMatchObject({ ultimate: true });
  }, 60_000);
});
