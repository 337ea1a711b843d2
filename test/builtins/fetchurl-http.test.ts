/**
 * builtin:fetchurl's HTTP behaviour against real Nix 2.8, over a real server on 127.0.0.1 that is also a
 * forward proxy: netrc credentials (`netrc-file`), the proxy variables of impureEnvVars, a transient 503
 * retried, a 401 without credentials. Plus the pieces on their own: netrc parsing, Nix's error layout,
 * and the tar reader of unpack-channel (GNU long names, pax, `..`, entries below a symlink).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, promises as fsp, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLogText, hintfmt } from '../../src/builtins/log.js';
import { netrcCredentials, parseNetrc } from '../../src/builtins/netrc.js';
import { unpackTarfile } from '../../src/builtins/tar.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nixOk, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { tarEntry } from '../helpers/tar.js';
import { instantiateAttrs, logTail, nixSandboxArgs, pathFacts, removeTree } from '../scheduler/helpers.js';

const BODY = 'secret contents\n';
const AUTH = 'Basic ' + Buffer.from('alice:s3cret').toString('base64');

describe.skipIf(!nixOk())('builtin:fetchurl over HTTP vs Nix 2.8: netrc, proxy, retries', () => {
  let root: string;
  let server: Server;
  let tlsServer: Server;
  let port: number;
  let N: string;
  let O: string;
  let drv: Record<string, string>;
  let store: LocalStore;
  const proxied: string[] = [];
  const flaky = new Map<string, number>();
  const engines: BuildEngine[] = [];
  const engine = (o: BuildEngineOptions = {}) => {
    const e = new BuildEngine({ store, sandbox: true, buildDir: root, ...o });
    engines.push(e);
    return e;
  };
  const nixBuild = (attr: string, options: string[] = [], env: Record<string, string> = {}) =>
    runNixAsync('nix-store', ['--store', N, '--realise', drv[attr]!, ...nixSandboxArgs(), ...options], { env });

  beforeAll(async () => {
    root = tempDir('realise-fetchurl-http-');
    chmodSync(root, 0o755);
    server = createServer((req, res) => {
      // A forward proxy gets the absolute URL; an origin server the path.
      const url = new URL(req.url ?? '/', 'http://origin');
      if (req.url?.startsWith('http://')) proxied.push(req.url);
      const name = url.pathname.slice(1);
      if (name === 'secret.txt' && req.headers.authorization !== AUTH) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-type': 'text/plain' }).end('who are you?\n');
        return;
      }
      if (name.startsWith('flaky')) {
        const n = (flaky.get(`${req.headers['user-agent']}${name}`) ?? 0) + 1;
        flaky.set(`${req.headers['user-agent']}${name}`, n);
        if (n === 1) {
          res.writeHead(503, { 'content-type': 'text/plain' }).end('busy\n');
          return;
        }
      }
      if (name === 'gzipped.txt') {
        res.writeHead(200, { 'content-encoding': 'gzip' }).end(gzipSync(BODY));
        return;
      }
      if (name.startsWith('loop')) {
        res.writeHead(302, { location: `/loop${Number(name.slice(4) || 0) + 1}`, 'content-length': 0 }).end();
        return;
      }
      if (name === 'to-file') {
        res.writeHead(302, { location: 'file:///etc/hostname', 'content-length': 0 }).end();
        return;
      }
      if (name === 'short.txt') {
        res.writeHead(200, { 'content-length': 100 }).write('only this\n');
        res.socket?.end();
        return;
      }
      if (name === 'teapot') {
        res.writeHead(418, { 'content-length': 0 }).end();
        return;
      }
      res.writeHead(200, { 'content-length': Buffer.byteLength(BODY) }).end(BODY);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
    // https with a self-signed certificate nobody trusts: Nix 2.8 does not verify TLS for builtin:fetchurl.
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-subj',
        '/CN=127.0.0.1',
        '-days',
        '2',
        '-keyout',
        path.join(root, 'key.pem'),
        '-out',
        path.join(root, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    tlsServer = createHttpsServer(
      { key: await fsp.readFile(path.join(root, 'key.pem')), cert: await fsp.readFile(path.join(root, 'cert.pem')) },
      (_req, res) => {
        res.writeHead(200, { 'content-length': Buffer.byteLength(BODY) }).end(BODY);
      },
    ) as unknown as Server;
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
    const tlsPort = (tlsServer.address() as AddressInfo).port;
    const hash = createHash('sha256').update(BODY).digest('hex');
    const u = `http://127.0.0.1:${port}`;
    writeFileSync(path.join(root, 'netrc'), `machine 127.0.0.1\n  login alice\n  password s3cret\n`);
    writeFileSync(
      path.join(root, 'e.nix'),
      `
      let fetchurl = import <nix/fetchurl.nix>; in {
        secret = fetchurl { url = "${u}/secret.txt"; sha256 = "${hash}"; name = "secret"; };
        denied = fetchurl { url = "${u}/secret.txt"; sha256 = "${hash}"; name = "denied"; };
        viaProxy = fetchurl { url = "http://origin.invalid/proxied.txt"; sha256 = "${hash}"; };
        flaky = fetchurl { url = "${u}/flaky.txt"; sha256 = "${hash}"; };
        tls = fetchurl { url = "https://127.0.0.1:${tlsPort}/tls.txt"; sha256 = "${hash}"; };
        gzipped = fetchurl { url = "${u}/gzipped.txt"; sha256 = "${hash}"; };
        loop = fetchurl { url = "${u}/loop"; sha256 = "${hash}"; };
        toFile = fetchurl { url = "${u}/to-file"; sha256 = "${hash}"; };
        short = fetchurl { url = "${u}/short.txt"; sha256 = "${hash}"; };
        teapot = fetchurl { url = "${u}/teapot"; sha256 = "${hash}"; };
        spaced = fetchurl { url = "${u}/a b"; sha256 = "${hash}"; name = "spaced"; };
      }`,
    );
    N = path.join(root, 'N');
    O = path.join(root, 'O');
    drv = instantiateAttrs(N, path.join(root, 'e.nix'));
    expect(instantiateAttrs(O, path.join(root, 'e.nix'))).toEqual(drv);
    store = await LocalStore.open({ root: O });
  }, 60_000);

  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
    await new Promise<void>((r) => server?.close(() => r()));
    await new Promise<void>((r) => tlsServer?.close(() => r()));
    if (root) await removeTree(root);
  });

  it("netrc-file credentials: fetched by both; without them, HTTP 401 in both with Nix's words", async () => {
    const netrc = path.join(root, 'netrc');
    const r = await nixBuild('secret', ['--option', 'netrc-file', netrc]);
    expect(r.status, r.stderr).toBe(0);
    const [ours] = await engine({ netrcFile: netrc }).buildPaths([drv.secret!]);
    const out = ours!.result.builtOutputs!.out!;
    expect(pathFacts(O, [out])).toEqual(pathFacts(N, [out]));

    const bad = await nixBuild('denied', ['--option', 'netrc-file', path.join(root, 'none')]);
    expect(bad.status).toBe(1);
    const nixLine = /error: (unable to download [^\n]*)/.exec(bad.stderr)![1]!;
    expect(nixLine).toContain("HTTP error 401 ('Unauthorized')");
    const err = await engine({ netrcFile: path.join(root, 'none') })
      .buildPaths([drv.denied!])
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    expect(err).toBeInstanceOf(BuildFailedError);
    const tail = logTail((err as Error).message)
      .join('\n')
      .replace(/\x1b\[[0-9;]*m/g, '');
    expect(tail).toContain(nixLine);
    expect(tail).toContain('who are you?');
  }, 60_000);

  it('http_proxy from the environment (impureEnvVars) carries the request, in both', async () => {
    const proxy = { http_proxy: `http://127.0.0.1:${port}` };
    proxied.length = 0;
    const r = await nixBuild('viaProxy', [], proxy);
    expect(r.status, r.stderr).toBe(0);
    expect(proxied).toEqual(['http://origin.invalid/proxied.txt']);
    proxied.length = 0;
    const [ours] = await engine({ environment: proxy }).buildPaths([drv.viaProxy!]);
    expect(proxied).toEqual(['http://origin.invalid/proxied.txt']);
    const out = ours!.result.builtOutputs!.out!;
    expect(pathFacts(O, [out])).toEqual(pathFacts(N, [out]));
  }, 60_000);

  it('https from a server with a self-signed certificate: fetched by both (no TLS verification, as Nix 2.8)', async () => {
    const r = await nixBuild('tls');
    expect(r.status, r.stderr).toBe(0);
    const [ours] = await engine().buildPaths([drv.tls!]);
    const out = ours!.result.builtOutputs!.out!;
    expect(pathFacts(O, [out])).toEqual(pathFacts(N, [out]));
  }, 60_000);

  it('a 503 is retried after a warning, in both', async () => {
    const r = await nixBuild('flaky');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/HTTP error 503 \('Service Unavailable'\)[\s\S]*retrying in \d+ ms/);
    const warnings: string[] = [];
    const e = engine();
    e.on('warning', (w) => warnings.push(w.message));
    const [ours] = await e.buildPaths([drv.flaky!]);
    expect(ours!.result.status).toBe('built');
    expect(warnings.join('\n')).toMatch(/unable to download '[^']*flaky\.txt': HTTP error 503 \('Service Unavailable'\)[\s\S]*; retrying in \d+ ms/);
    // The warning in the log is Nix's: the error as Nix shows it (`warning: error: …`), body indented.
    const warningIn = (log: string) =>
      log
        .split('\n')
        .find((l) => l.includes('"action":"msg"'))!
        .replace(/retrying in \d+ ms/, 'retrying');
    expect(warningIn((await store.readBuildLog(drv.flaky!))!)).toBe(warningIn(runNix('nix-store', ['--store', N, '--read-log', drv.flaky!]).stdout));
  }, 60_000);

  /** A build log without the download's progress lines, its activity ids and retry delays made equal. */
  const comparable = (log: string) =>
    log
      .split('\n')
      .filter((l) => !l.includes('"action":"result"'))
      .map((l) => l.replace(/"id":\d+/, '"id":0').replace(/retrying in \d+ ms/, 'retrying'))
      .join('\n');

  it.each([
    ['gzipped', 'a gzip Content-Encoding is decoded', 0],
    ['loop', "too many redirects: the last status and curl's words, not retried", 1],
    ['toFile', "a redirect to file://: the status and curl's words", 1],
    ['short', 'a body shorter than its Content-Length: a partial file, not retried once data came', 1],
    ['teapot', 'an error status with an empty body: no "response body" section', 1],
    ['spaced', 'a URL with a space: curl refuses it, not retried', 1],
  ])(
    '%s: %s, as in Nix',
    async (attr, _what, status) => {
      const r = await nixBuild(attr);
      expect(r.status, r.stderr).toBe(status);
      const result = await engine()
        .buildPaths([drv[attr]!])
        .then(
          (x) => x,
          (x: unknown) => x,
        );
      if (status === 0) {
        const out = (result as Awaited<ReturnType<BuildEngine['buildPaths']>>)[0]!.result.builtOutputs!.out!;
        expect(pathFacts(O, [out])).toEqual(pathFacts(N, [out]));
      } else {
        expect(result).toBeInstanceOf(BuildFailedError);
        expect((result as BuildFailedError).exitStatus).toBe(status);
        const theirs = runNix('nix-store', ['--store', N, '--read-log', drv[attr]!]).stdout;
        expect(comparable((await store.readBuildLog(drv[attr]!))!)).toBe(comparable(theirs));
      }
    },
    60_000,
  );
});

describe("builtins: netrc, Nix's error layout, the tar reader", () => {
  it('netrc: machine entries, default, quoted tokens, macdef skipped', () => {
    const e = parseNetrc(
      'machine a.org login u1 password p1\nmacdef init\nmachine evil login x password y\n\nmachine "b.org" login "u 2" password p2\ndefault login anon password guest\n',
    );
    expect(netrcCredentials(e, 'A.ORG')).toEqual({ login: 'u1', password: 'p1' });
    expect(netrcCredentials(e, 'b.org')).toEqual({ login: 'u 2', password: 'p2' });
    expect(netrcCredentials(e, 'evil')).toEqual({ login: 'anon', password: 'guest' });
    expect(netrcCredentials(parseNetrc('machine x login a password b'), 'y')).toBeUndefined();
  });

  it('errors are laid out as Nix prints them: red prefix, values coloured, later lines indented, blank lines bare', () => {
    expect(errorLogText(hintfmt("a '%1%' and %2%\n\nmore\n", '/x', 5))).toBe(
      "\x1b[31;1merror:\x1b[0m a '\x1b[35;1m/x\x1b[0m' and \x1b[35;1m5\x1b[0m\n\n       more\n",
    );
    expect(hintfmt("attribute '%s' missing", 'out').plain).toBe("attribute 'out' missing");
  });

  describe('tar', () => {
    let dir: string;
    beforeAll(() => {
      dir = tempDir('realise-tar-');
    });
    afterAll(() => removeTree(dir));
    const tar = (name: string, args: string[]) => {
      execFileSync('tar', [...args, '-f', path.join(dir, name)], { cwd: path.join(dir, 'src') });
      return path.join(dir, name);
    };

    it('GNU long names, pax headers, symlinks, hard links, modes; gzip, bzip2, zstd and plain', async () => {
      const long = 'd'.repeat(120);
      mkdirSync(path.join(dir, 'src', 'top', long), { recursive: true });
      writeFileSync(path.join(dir, 'src', 'top', long, 'f'.repeat(110)), 'deep\n');
      writeFileSync(path.join(dir, 'src', 'top', 'run'), '#!/bin/sh\n');
      chmodSync(path.join(dir, 'src', 'top', 'run'), 0o755);
      symlinkSync('run', path.join(dir, 'src', 'top', 'link'));
      execFileSync('ln', [path.join(dir, 'src', 'top', 'run'), path.join(dir, 'src', 'top', 'hard')]);
      const files = [
        tar('gnu.tar.gz', ['--format=gnu', '-cz', 'top']),
        tar('pax.tar.bz2', ['--format=pax', '-cj', 'top']),
        tar('plain.tar', ['--format=gnu', '-c', 'top']),
        tar('z.tar.zst', ['--format=pax', '--zstd', '-c', 'top']),
      ];
      for (const f of files) {
        const out = path.join(dir, `out-${path.basename(f)}`);
        await unpackTarfile(f, out);
        expect(await fsp.readFile(path.join(out, 'top', long, 'f'.repeat(110)), 'utf8')).toBe('deep\n');
        expect((await fsp.stat(path.join(out, 'top', 'run'))).mode & 0o777).toBe(0o755);
        expect(await fsp.readlink(path.join(out, 'top', 'link'))).toBe('run');
        expect((await fsp.stat(path.join(out, 'top', 'hard'))).ino).toBe((await fsp.stat(path.join(out, 'top', 'run'))).ino);
      }
    });

    it("refuses '..' and entries below a symlink; reports data that is no tar archive as libarchive does", async () => {
      writeFileSync(path.join(dir, 'dotdot.tar'), Buffer.concat([tarEntry('a/../../escape', '0', 'x'), Buffer.alloc(1024)]));
      writeFileSync(path.join(dir, 'through.tar'), Buffer.concat([tarEntry('l', '2', '', '/tmp'), tarEntry('l/x', '0', 'x'), Buffer.alloc(1024)]));
      await expect(unpackTarfile(path.join(dir, 'dotdot.tar'), path.join(dir, 'o1'))).rejects.toThrow(/Path contains '\.\.'/);
      await expect(unpackTarfile(path.join(dir, 'through.tar'), path.join(dir, 'o2'))).rejects.toThrow(/Cannot extract through symlink .*\/o2\/l\/x\)$/);
      writeFileSync(path.join(dir, 'junk.tar'), Buffer.alloc(1024, 7));
      await expect(unpackTarfile(path.join(dir, 'junk.tar'), path.join(dir, 'o3'))).rejects.toThrow(/^failed to open archive: Unrecognized archive format$/);
    });
  });
});
