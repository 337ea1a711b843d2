/**
 * The `realise` launcher, bin/realise (the package's bin: a /bin/sh script that is also the JavaScript Node
 * runs), run as npm installs it: through a symlink on PATH. It moves NODE_EXTRA_CA_CERTS aside so that Node's
 * start does not read it, and the command puts it back: an https:// binary cache whose certificate only that
 * file's CA vouches for still works (and fails as Nix 2.8 fails, with a typed error, without it), the
 * processes the command starts see the variable as it was, and the exit status and signals are the command's
 * own (the shell execs Node: the process is Node's).
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readlinkSync, realpathSync, symlinkSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCacheSubstituter, SubstituterError, trustExtraCaCerts, type StorePath } from '../../src/index.js';
import { interruptHandlersInstalled } from '../helpers/cli.js';
import { nix, nixEnv, nixOk, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { serveCache, type CacheServer } from '../substituter/http-server.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';
const MARK = `launcher-${process.pid}`;
const EXPR = `{ mark ? "" }:
let mk = name: script: derivation { name = "launcher-\${name}"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" script]; };
in {
  cached = mk "cached" "echo cached > $out";
  a = mk "a" "echo a > $out";
  b = mk "b" "echo b > $out";
  c = mk "c" "echo c > $out";
  fails = mk "fails" "echo failing; exit 3";
  sleeps = mk "sleeps" "echo started; : \${mark}; /bin/busybox sleep 600; echo > $out";
}
`;

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A CA, and a certificate for 127.0.0.1 that it signed (EC keys: quick to make). */
function makeCertificates(dir: string): { ca: string; key: string; cert: string } {
  const f = (n: string) => path.join(dir, n);
  const openssl = (args: string[]) => {
    const r = spawnSync('openssl', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed:\n${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-subj', '/CN=realise launcher test CA', '-days', '2', '-keyout', f('ca.key'), '-out', f('ca.pem')]);
  openssl(['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', f('srv.key'), '-out', f('srv.csr')]);
  writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl([
    'x509',
    '-req',
    '-in',
    f('srv.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    f('ext'),
    '-out',
    f('srv.pem'),
  ]);
  return { ca: f('ca.pem'), key: readFileSync(f('srv.key'), 'utf8'), cert: readFileSync(f('srv.pem'), 'utf8') };
}

/** The stderr lines compared with Nix's (a retry's delay is random). */
const keyLines = (stderr: string) =>
  stderr
    .split('\n')
    .filter((l) => /^(error|warning): |^ {2}\/nix\/store\/|^don't know|^copying path/.test(l))
    .map((l) => l.replace(/retrying in \d+ ms/, 'retrying in N ms'));

describe.skipIf(!nixOk())('the realise launcher (bin/realise through a symlink on PATH, as npm links it)', () => {
  let dir: string;
  let bin: string;
  let ca: string;
  let server: CacheServer;
  const drv: Record<string, string> = {};
  let cachedOut = '';
  let n = 0;

  beforeAll(async () => {
    dir = tempDir('realise-launcher-');
    // npm's link of a package's bin: a symlink, in another directory, to the file in the package.
    bin = path.join(dir, 'bin');
    mkdirSync(bin);
    symlinkSync(path.join(REPO, 'bin/realise'), path.join(bin, 'realise'));
    const certs = makeCertificates(dir);
    ca = certs.ca;
    const file = path.join(dir, 'e.nix');
    writeFileSync(file, EXPR);
    const src = path.join(dir, 'S');
    for (const a of ['cached', 'a', 'b', 'c', 'fails', 'sleeps']) drv[a] = nix('nix-instantiate', ['--store', src, file, '-A', a, '--argstr', 'mark', MARK]);
    nix('nix-store', ['--store', src, '--option', 'sandbox-paths', SANDBOX, '--realise', drv.cached!]);
    cachedOut = nix('nix-store', ['--store', src, '-q', '--outputs', drv.cached!]);
    const cache = path.join(dir, 'cache');
    nix('nix', ['copy', '--store', src, '--to', `file://${cache}`, cachedOut]);
    server = await serveCache(cache, { key: certs.key, cert: certs.cert });
  }, 60_000);

  afterAll(async () => {
    await server?.close();
  });

  /**
   * `realise ARGS` found on PATH, with `env` changed (undefined removes a variable) and a fresh cache dir (Nix
   * too is given one: neither remembers the cache's answers from an earlier test).
   */
  function realise(args: string[], env: Record<string, string | undefined>): Promise<Run & { pid: number }> {
    const e: NodeJS.ProcessEnv = { ...nixEnv(), PATH: `${bin}:${process.env.PATH ?? ''}`, XDG_CACHE_HOME: path.join(dir, `xdg${++n}`) };
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete e[k];
      else e[k] = v;
    }
    return new Promise((resolve) => {
      const child = spawn('realise', args, { env: e, stdio: ['ignore', 'pipe', 'pipe'] });
      let [stdout, stderr] = ['', ''];
      child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
      child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr, pid: child.pid! }));
    });
  }
  const store = () => path.join(dir, `store${++n}`);
  const fromCache = (root: string) => ['--store', root, '--option', 'substituters', server.url, '--option', 'require-sigs', 'false'];

  it("Node's start does not read NODE_EXTRA_CA_CERTS (no warning of Node's for a missing file), unlike `node bin/realise.js`", async () => {
    const env = { NODE_EXTRA_CA_CERTS: path.join(dir, 'no-such-file.pem') };
    const viaLauncher = await realise(['--version'], env);
    expect([viaLauncher.status, viaLauncher.stderr, viaLauncher.stdout]).toEqual([0, '', 'realise (realise) 0.1.0, mirroring nix-store (Nix) 2.8.0\n']);
    const direct = spawnSync(process.execPath, [path.join(REPO, 'bin/realise.js'), '--version'], { env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(direct.stderr).toContain(`Warning: Ignoring extra certs from \`${env.NODE_EXTRA_CA_CERTS}\``);
    expect(direct.stdout).toBe(viaLauncher.stdout);
  });

  it("starts Node with no V8 flag (one would make Node reject its code cache of its own modules); a command that reaches an HTTP cache sets V8's --liftoff-only (loading node:v8) before it loads undici", async () => {
    const hook = path.join(dir, 'loaded-v8.cjs');
    const log = path.join(dir, 'loaded-v8.txt');
    writeFileSync(
      hook,
      `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, JSON.stringify({ v8: process.moduleLoadList.includes('NativeModule v8'), argv: process.execArgv })));`,
    );
    const seen = () => JSON.parse(readFileSync(log, 'utf8')) as { v8: boolean; argv: string[] };
    const env = { NODE_OPTIONS: `--require ${hook}`, NODE_EXTRA_CA_CERTS: ca };
    expect((await realise(['--version'], env)).status).toBe(0);
    expect(seen()).toEqual({ v8: false, argv: [] });
    const ours = await realise(['ensure', ...fromCache(store()), cachedOut], env);
    expect([ours.status, ours.stdout]).toEqual([0, `${cachedOut}\n`]);
    expect(seen()).toEqual({ v8: true, argv: [] });
  });

  it('an https:// cache signed by a CA only NODE_EXTRA_CA_CERTS names: substituted, as Nix 2.8 does with that CA in its ssl-cert-file', async () => {
    const [N, O] = [store(), store()];
    // Asynchronously: the cache is served by this process.
    const theirs = await runNixAsync('nix-store', [...fromCache(N), '--realise', cachedOut], {
      env: { NIX_SSL_CERT_FILE: ca, XDG_CACHE_HOME: path.join(dir, `xdg${++n}`) },
    });
    const ours = await realise(['ensure', ...fromCache(O), cachedOut], { NODE_EXTRA_CA_CERTS: ca });
    expect([ours.status, ours.stdout]).toEqual([0, `${cachedOut}\n`]);
    expect([ours.status, ours.stdout]).toEqual([theirs.status, theirs.stdout]);
    expect(keyLines(ours.stderr)).toEqual(keyLines(theirs.stderr));
    expect(nix('nix-store', ['--store', O, '--check-validity', '--print-invalid', cachedOut])).toBe('');
  });

  it("without it: the certificate is refused, with Nix 2.8's words and exit status (download-attempts 2)", async () => {
    const [N, O] = [store(), store()];
    const args = [...fromCache(N), '--option', 'download-attempts', '2', '--realise', cachedOut];
    const theirs = await runNixAsync('nix-store', args, { env: { XDG_CACHE_HOME: path.join(dir, `xdg${++n}`) } });
    const ours = await realise(['ensure', ...fromCache(O), '--option', 'download-attempts', '2', cachedOut], { NODE_EXTRA_CA_CERTS: undefined });
    expect(theirs.status).toBe(1);
    expect(ours.status).toBe(theirs.status);
    expect(keyLines(ours.stderr)).toEqual(keyLines(theirs.stderr));
    expect(ours.stderr).toContain(`unable to download '${server.url}/nix-cache-info': SSL peer certificate or SSH remote key was not OK (60)`);
  });

  it("in process: a SubstituterError 'tls' until trustExtraCaCerts names the CA's file", async () => {
    const hash = path.basename(cachedOut).slice(0, 32);
    const query = async () => {
      const s = new BinaryCacheSubstituter(server.url, { retries: 0, requireSigs: false });
      try {
        return await s.queryPathInfos([cachedOut as StorePath]);
      } finally {
        await s.close();
      }
    };
    const refused = await query().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SubstituterError);
    expect((refused as SubstituterError).code).toBe('tls');
    expect((refused as SubstituterError).hint).toMatch(/NODE_EXTRA_CA_CERTS/);
    trustExtraCaCerts(ca);
    const found = await query();
    expect([...found.keys()]).toEqual([cachedOut]);
    expect(server.requests).toContain(`${hash}.narinfo`);
  });

  it('the processes the command starts (a post-build hook) see NODE_EXTRA_CA_CERTS as it was: set, empty, unset', async () => {
    const hook = path.join(dir, 'hook.sh');
    writeFileSync(hook, '#!/bin/sh\nprintf "%s|%s\\n" "${NODE_EXTRA_CA_CERTS-unset}" "${REALISE_NODE_EXTRA_CA_CERTS-unset}" > "$HOOK_SAW"\n');
    chmodSync(hook, 0o755);
    const cases: [string, string | undefined, string][] = [
      ['a', ca, `${ca}|unset`],
      ['b', '', '|unset'],
      ['c', undefined, 'unset|unset'],
    ];
    const root = path.join(dir, 'S');
    for (const [attr, value, expected] of cases) {
      const saw = path.join(dir, `hook-${attr}`);
      const r = await realise(['build', '--store', root, '--option', 'sandbox-paths', SANDBOX, '--option', 'post-build-hook', hook, drv[attr]!], {
        NODE_EXTRA_CA_CERTS: value,
        HOOK_SAW: saw,
      });
      expect(r.status, r.stderr).toBe(0);
      expect(readFileSync(saw, 'utf8')).toBe(`${expected}\n`);
    }
  });

  it("exit status: the command's own (a failed build: 1, as `node bin/realise.js` and Nix 2.8; a usage error: 1; --help: 0)", async () => {
    const root = path.join(dir, 'S');
    const args = ['build', '--store', root, '--option', 'sandbox-paths', SANDBOX, drv.fails!];
    const ours = await realise(args, {});
    const direct = spawnSync(process.execPath, [path.join(REPO, 'bin/realise.js'), ...args], { env: nixEnv(), encoding: 'utf8' });
    const theirs = runNix('nix-store', ['--store', root, '--option', 'sandbox-paths', SANDBOX, '--realise', drv.fails!]);
    expect([ours.status, direct.status]).toEqual([theirs.status, theirs.status]);
    expect(ours.stderr).toContain('failing');
    expect((await realise(['--no-such-flag'], {})).status).toBe(1);
    expect((await realise(['--help'], {})).status).toBe(0);
  });

  it("signals reach the command itself: the launcher's process is Node (exec), which answers SIGTERM as the command does", async () => {
    const root = path.join(dir, 'S');
    const e: NodeJS.ProcessEnv = { ...nixEnv(), PATH: `${bin}:${process.env.PATH ?? ''}` };
    const ended = await new Promise<Run & { exe: string }>((resolve, reject) => {
      const child = spawn('realise', ['build', '--store', root, '--option', 'sandbox-paths', SANDBOX, drv.sleeps!], {
        env: e,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let [stdout, stderr, exe] = ['', '', ''];
      child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
      child.stderr.setEncoding('utf8').on('data', (c: string) => {
        stderr += c;
        if (!exe && stderr.includes('started')) {
          // The builder runs, so the command's process has long been exec'd: the spawned pid is Node's.
          exe = readlinkSync(`/proc/${child.pid}/exe`);
          interruptHandlersInstalled(child.pid!).then(() => child.kill('SIGTERM'), reject);
        }
      });
      child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr, exe }));
    });
    expect(ended.exe).toBe(realpathSync(process.execPath));
    expect([ended.status, ended.signal, ended.stderr.trimEnd().split('\n').pop()]).toEqual([1, null, 'error: interrupted by the user']);
    expect(runNix('pgrep', ['-f', MARK]).status).not.toBe(0);
  });

  it('`npm pack` ships bin/realise as the executable bin, beside bin/realise.js', () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    expect(pkg.bin).toEqual({ realise: './bin/realise' });
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: REPO, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const [packed] = JSON.parse(r.stdout) as [{ files: { path: string; mode: number }[] }];
    const mode = (f: string) => packed.files.find((x) => x.path === f)?.mode;
    expect([mode('bin/realise'), mode('bin/realise.js'), mode('bin/package.json')]).toEqual([0o755, 0o755, 0o644]);
  });
});
