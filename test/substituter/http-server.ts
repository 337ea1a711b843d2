/**
 * A real HTTP server (node:http on 127.0.0.1; node:https with `tls`) serving a binary cache directory, with
 * fault injection.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';

export type Fault = { kind: 'status'; status: number } | { kind: 'slow'; delayMs: number } | { kind: 'truncate'; bytes: number } | { kind: 'hang' };

export interface CacheServer {
  readonly url: string;
  /** Request paths in order of arrival. */
  readonly requests: string[];
  /** Number of TCP connections accepted. */
  connections(): number;
  /** Fault for request paths matching `re` (first matching rule wins; `times` limits how often). */
  fault(re: RegExp, fault: Fault, times?: number): void;
  clearFaults(): void;
  close(): Promise<void>;
}

/** `tls`: the server's key and certificate (PEM): the cache is served over https://127.0.0.1. */
export async function serveCache(dir: string, tls?: { key: string | Buffer; cert: string | Buffer }): Promise<CacheServer> {
  const requests: string[] = [];
  let connections = 0;
  const rules: { re: RegExp; fault: Fault; left: number }[] = [];

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '');
    requests.push(rel);
    const rule = rules.find((r) => r.left > 0 && r.re.test(rel));
    if (rule) rule.left--;
    const fault = rule?.fault;
    if (fault?.kind === 'status') {
      res.writeHead(fault.status, { 'content-type': 'text/plain' });
      res.end(`injected ${fault.status}\n`);
      return;
    }
    if (fault?.kind === 'hang') return; // never answer
    if (fault?.kind === 'slow') await new Promise((r) => setTimeout(r, fault.delayMs));
    const file = path.join(dir, rel);
    if (!file.startsWith(dir + path.sep)) {
      res.writeHead(403);
      res.end();
      return;
    }
    let st;
    try {
      st = await fsp.stat(file);
    } catch {
      st = undefined;
    }
    if (!st?.isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-length': String(st.size), 'content-type': 'application/octet-stream' });
    if (fault?.kind === 'truncate') {
      const data = await fsp.readFile(file);
      res.write(data.subarray(0, Math.min(fault.bytes, data.length)), () => res.socket?.destroy());
      return;
    }
    createReadStream(file).pipe(res);
  }

  const listener = (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch(() => res.destroy());
  };
  const server = tls ? createHttpsServer(tls, listener) : createServer(listener);
  server.keepAliveTimeout = 60_000;
  server.on('connection', () => {
    connections++;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    requests,
    connections: () => connections,
    fault(re, fault, times = Infinity) {
      rules.push({ re, fault, left: times });
    },
    clearFaults() {
      rules.length = 0;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
