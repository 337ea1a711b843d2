/**
 * One download as Nix 2.8's FileTransfer does it for builtin:fetchurl: http(s) through undici (redirects
 * followed, up to 10; no TLS verification, as Nix, since the fixed-output hash is checked anyway;
 * netrc credentials; the proxy variables of the build's environment), `file://` from the disk.
 * Transient failures (connection errors, most 5xx, 408, 429) are retried with Nix's backoff while
 * nothing has been consumed; errors are worded as Nix's, with a short response body appended.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Agent, Dispatcher } from 'undici';
import { undici } from '../substituter/undici.js';
import { curlWords, isAbortError, statusReason } from '../substituter/curl-words.js';
import { compressionOf, decompressStream, peek } from '../substituter/compression.js';
import { BuiltinFailure, errorShown, hintfmt, plainMessage, type NixMessage } from './log.js';
import { netrcCredentials, type NetrcEntry } from './netrc.js';

export interface DownloadOptions {
  readonly signal: AbortSignal;
  /** Connection pool for direct (unproxied) requests. */
  readonly agent: Dispatcher;
  /** The build's environment: `http_proxy`, `https_proxy`, `all_proxy`, `no_proxy` are honoured as curl does. */
  readonly env: Readonly<Record<string, string>>;
  readonly netrc: readonly NetrcEntry[];
  /** Nix's `download-attempts`. */
  readonly attempts: number;
  /** First retry delay in ms (Nix's 250). */
  readonly retryBaseMs?: number;
  /** Map a `file://` path to the file to read (the store's logical paths to physical ones). */
  readonly localPath: (p: string) => string;
  readonly onWarning: (message: NixMessage) => void;
  /** Bytes received so far and the total when known (else 0). */
  readonly onProgress: (done: number, expected: number) => void;
}

/** Thrown for an HTTP failure (so hashed mirrors can be skipped quietly). */
export class DownloadError extends BuiltinFailure {
  constructor(
    message: NixMessage,
    readonly transient: boolean,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
    this.name = 'DownloadError';
  }
}

const USER_AGENT = 'curl/7.88.1 Nix/2.8.0 realise';
/** Bytes of an error response kept for the message (Nix keeps all of it; it shows it when short or HTML). */
const ERROR_BODY_LIMIT = 1 << 16;

/** Nix's FileTransferError text: the response body shown when it is short or looks like HTML. */
function withBody(message: string, body: string | undefined): NixMessage {
  // An empty body is no body (curl never handed Nix any of it).
  if (!body || !(body.length < 1024 || body.includes('<html>'))) return plainMessage(message);
  const shown = body.replace(/[ \n\r\t]+$/, '');
  return { plain: `${message}\n\nresponse body:\n\n${shown}`, coloured: `${message}\n\nresponse body:\n\n\x1b[35;1m${shown}\x1b[0m` };
}

function proxyFor(url: URL, env: Readonly<Record<string, string>>): string | undefined {
  const noProxy = (env.no_proxy ?? env.NO_PROXY ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const host = url.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  if (noProxy.some((n) => n === '*' || host === n.replace(/^\./, '') || host.endsWith(n.startsWith('.') ? n : `.${n}`))) return undefined;
  const p = url.protocol === 'https:' ? env.https_proxy || env.HTTPS_PROXY : env.http_proxy;
  return p || env.all_proxy || env.ALL_PROXY || undefined;
}

type Attempt = { ok: true } | { ok: false; error: DownloadError };

/**
 * Download `url` and hand its body to `consume` (once per successful response; a retry after a failure
 * that happened before `consume` was called starts again). Throws DownloadError, or the consumer's error.
 */
export async function download(url: string, consume: (body: AsyncIterable<Uint8Array>) => Promise<void>, opts: DownloadOptions): Promise<void> {
  const base = opts.retryBaseMs ?? 250;
  for (let attempt = 1; ; attempt++) {
    const r = url.startsWith('file://') ? await fromFile(url, consume, opts) : await fromHttp(url, consume, opts);
    if (r.ok) return;
    if (!r.error.transient || attempt >= opts.attempts || opts.signal.aborted) throw r.error;
    const ms = Math.floor(base * 2 ** (attempt - 1 + Math.random() * 0.5));
    // Nix warns with the error as it shows it (`warning: error: …`, in the log with its later lines
    // indented; the plain text is the message's, which whoever prints the warning indents).
    const shown = errorShown(r.error.nixMessage);
    opts.onWarning({
      plain: `error: ${r.error.nixMessage.plain.replace(/\s+$/, '')}; retrying in ${ms} ms`,
      coloured: `${shown.coloured}; retrying in ${ms} ms`,
    });
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        opts.signal.removeEventListener('abort', done);
        resolve();
      }
      opts.signal.addEventListener('abort', done, { once: true });
    });
    if (opts.signal.aborted) throw interrupted(url);
  }
}

function interrupted(url: string): DownloadError {
  return new DownloadError(hintfmt("download of '%s' was interrupted", url), false);
}

async function fromFile(url: string, consume: (body: AsyncIterable<Uint8Array>) => Promise<void>, opts: DownloadOptions): Promise<Attempt> {
  const unreadable = (cause: unknown) => new DownloadError(plainMessage(`unable to download '${url}': Couldn't read a file:// file (37)`), false, { cause });
  let file: string;
  try {
    file = fileURLToPath(url);
  } catch (e) {
    return {
      ok: false,
      error: new DownloadError(plainMessage(`unable to download '${url}': URL using bad/illegal format or missing URL (3)`), false, { cause: e }),
    };
  }
  try {
    file = opts.localPath(file);
  } catch (e) {
    return { ok: false, error: unreadable(e) };
  }
  // curl reads a directory as an empty file, and knows a file's size (the progress's expected bytes).
  const st = await fsp.stat(file).catch(() => undefined);
  if (st?.isDirectory()) {
    await consumeCounted(consume, (async function* () {})(), 0, url, opts, unreadable, () => {});
    return { ok: true };
  }
  const stream = createReadStream(file, { highWaterMark: 1 << 20, signal: opts.signal });
  // Opening fails before anything is consumed: curl's "Couldn't read a file:// file".
  const opened = await new Promise<Error | undefined>((resolve) => {
    stream.once('ready', () => resolve(undefined));
    stream.once('error', (e) => resolve(e));
  });
  if (opened) {
    stream.destroy();
    if (opts.signal.aborted) throw interrupted(url);
    return { ok: false, error: unreadable(opened) };
  }
  await consumeCounted(consume, stream, st?.size ?? 0, url, opts, unreadable, () => stream.destroy());
  return { ok: true };
}

/**
 * Hand `body` to `consume`, reporting the bytes read (of `expected`, 0 when unknown) as they pass and once
 * more at the end. A read failure is the download interrupted when aborted, else `failure(e, bytes read)`; `close`
 * releases the body however the consumer stops.
 */
async function consumeCounted(
  consume: (body: AsyncIterable<Uint8Array>) => Promise<void>,
  body: AsyncIterable<Buffer>,
  expected: number,
  url: string,
  opts: DownloadOptions,
  failure: (e: unknown, received: number) => Error,
  close: () => void,
): Promise<void> {
  let done = 0;
  await consume(
    (async function* () {
      try {
        for await (const chunk of body) {
          done += chunk.length;
          opts.onProgress(done, expected);
          yield chunk;
        }
      } catch (e) {
        if (opts.signal.aborted || isAbortError(e)) throw interrupted(url);
        throw failure(e, done);
      } finally {
        close();
      }
    })(),
  );
  opts.onProgress(done, expected || done);
}

/** Nix's classification of an HTTP status: whether a retry may help. */
function transientStatus(code: number): boolean {
  if (code === 404 || code === 410 || code === 401 || code === 403 || code === 407) return false;
  if (code >= 400 && code < 500) return code === 408 || code === 429;
  return !(code === 501 || code === 505 || code === 511);
}

/**
 * Where one hop of `url` goes, or why it cannot be fetched (curl's words; after a redirect, `redirected`,
 * Nix names the redirect's HTTP status first).
 */
function hopUrl(url: string, current: string, redirected?: Dispatcher.ResponseData): URL | Attempt {
  try {
    // curl refuses a URL with a space or a control character in it (a redirect's target it encodes).
    if (!redirected && /[\x00-\x20\x7f]/.test(current)) throw new Error('malformed URL');
    const u = new URL(current);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`unsupported protocol ${u.protocol}`);
    return u;
  } catch (e) {
    const unsupported = /^[a-z][a-z0-9+.-]*:/i.test(current) && !/^https?:/i.test(current);
    const words = unsupported ? 'Unsupported protocol' : 'URL using bad/illegal format or missing URL';
    const message = redirected ? `${httpError(url, redirected)} (curl error: ${words})` : `unable to download '${url}': ${words} (${unsupported ? 1 : 3})`;
    return { ok: false, error: new DownloadError(plainMessage(message), false, { cause: e }) };
  }
}

/** Nix's words for a response with HTTP status `res.statusCode` (curl's error, if any, follows them). */
function httpError(url: string, res: Dispatcher.ResponseData): string {
  return `unable to download '${url}': HTTP error ${res.statusCode} ('${res.statusText || statusReason(res.statusCode) || ''}')`;
}

/** The request headers for `u`: basic authentication from its user info or .netrc, which leaves `u`. */
function requestHeaders(u: URL, netrc: readonly NetrcEntry[]): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': USER_AGENT };
  const creds =
    u.username || u.password ? { login: decodeURIComponent(u.username), password: decodeURIComponent(u.password) } : netrcCredentials(netrc, u.hostname);
  if (creds) headers.authorization = 'Basic ' + Buffer.from(`${creds.login}:${creds.password}`).toString('base64');
  u.username = '';
  u.password = '';
  return headers;
}

/** The dispatcher for `u`: the shared agent, or a proxy of the environment (added to `proxies`, to close). */
function dispatcherFor(u: URL, opts: DownloadOptions, proxies: Dispatcher[]): Dispatcher {
  const proxy = proxyFor(u, opts.env);
  if (!proxy) return opts.agent;
  // As curl: http:// goes to the proxy as a plain request with the absolute URL, https:// through CONNECT.
  const dispatcher = new (undici().ProxyAgent)({
    uri: proxy,
    proxyTunnel: u.protocol === 'https:',
    requestTls: { rejectUnauthorized: false },
    proxyTls: { rejectUnauthorized: false },
  });
  proxies.push(dispatcher);
  return dispatcher;
}

/** GET `url`, following up to 10 redirects as curl does; the final response, or why there is none. */
async function requestFollowingRedirects(url: string, opts: DownloadOptions, proxies: Dispatcher[]): Promise<Dispatcher.ResponseData | Attempt> {
  let current = url;
  let redirected: Dispatcher.ResponseData | undefined;
  for (let hop = 0; ; hop++) {
    const u = hopUrl(url, current, redirected);
    if (!(u instanceof URL)) return u;
    const headers = requestHeaders(u, opts.netrc);
    let res: Dispatcher.ResponseData;
    try {
      res = await undici().request(u.toString(), { method: 'GET', dispatcher: dispatcherFor(u, opts, proxies), headers, signal: opts.signal });
    } catch (e) {
      if (opts.signal.aborted || isAbortError(e)) throw interrupted(url);
      return { ok: false, error: new DownloadError(plainMessage(`unable to download '${url}': ${curlWords(e)}`), true, { cause: e }) };
    }
    const location = res.headers.location;
    if (![301, 302, 303, 307, 308].includes(res.statusCode) || typeof location !== 'string') return res;
    await res.body.dump().catch(() => undefined);
    // curl follows 10 (Nix's CURLOPT_MAXREDIRS); the next one is an error that is not retried.
    if (hop >= 10)
      return { ok: false, error: new DownloadError(plainMessage(`${httpError(url, res)} (curl error: Number of redirects hit maximum amount)`), false) };
    redirected = res;
    current = new URL(location, u).toString();
  }
}

async function fromHttp(url: string, consume: (body: AsyncIterable<Uint8Array>) => Promise<void>, opts: DownloadOptions): Promise<Attempt> {
  const proxies: Dispatcher[] = [];
  try {
    const res = await requestFollowingRedirects(url, opts, proxies);
    if ('ok' in res) return res;
    const status = res.statusCode;
    if (!(status === 200 || status === 201 || status === 204 || status === 206 || status === 304)) {
      const body = await readSome(res.body);
      return { ok: false, error: new DownloadError(withBody(httpError(url, res), body), transientStatus(status)) };
    }
    const lengthHeader = res.headers['content-length'];
    const expected = typeof lengthHeader === 'string' && /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : 0;
    const body = res.body;
    const failure = (e: unknown, received: number) =>
      // The connection ended before the announced length: curl's "partial file", after the status.
      expected > 0 && received < expected && (e as { code?: string }).code !== 'UND_ERR_BODY_TIMEOUT'
        ? new DownloadError(plainMessage(`${httpError(url, res)} (curl error: Transferred a partial file)`), false, { cause: e })
        : new DownloadError(plainMessage(`unable to download '${url}': ${curlWords(e)}`), false, { cause: e });
    const encoding = res.headers['content-encoding'];
    await consumeCounted(
      (raw) => consume(contentDecoded(typeof encoding === 'string' ? encoding.trim() : '', raw)),
      body as AsyncIterable<Buffer>,
      expected,
      url,
      opts,
      failure,
      () => {
        if (!body.destroyed) body.destroy();
      },
    );
    return { ok: true };
  } finally {
    for (const p of proxies) void p.close().catch(() => undefined);
  }
}

/**
 * The body decoded by its `Content-Encoding`, as Nix's transfers do (builtin:fetchurl too): none for
 * `none` or no header, xz, bzip2 and br by name; any other name is left to libarchive, which decodes what
 * it recognises from the first bytes (gzip, xz, bzip2, zstd) and passes anything else through.
 */
async function* contentDecoded(encoding: string, body: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  if (encoding === '' || encoding === 'none') return yield* body;
  if (encoding === 'xz' || encoding === 'bzip2' || encoding === 'br') return yield* decompressStream(encoding, body);
  const { head, rest } = await peek(body, 6);
  const found = compressionOf(head);
  yield* found ? decompressStream(found, rest) : rest;
}

/** The start of an error response's body (as text), or undefined when it cannot be read. */
async function readSome(body: Dispatcher.ResponseData['body']): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= ERROR_BODY_LIMIT) break;
    }
  } catch {
    return undefined;
  } finally {
    if (!body.destroyed) body.destroy();
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The connection pool builtin:fetchurl uses for direct requests: Nix does not verify TLS for it. */
export function fetchurlAgent(): Agent {
  return new (undici().Agent)({ connections: 8, keepAliveTimeout: 10_000, connect: { rejectUnauthorized: false } });
}
