/**
 * undici, the HTTP client of binary caches and builtin:fetchurl, loaded on first use: importing it costs
 * tens of ms of start-up that commands without an HTTP cache or download never need. And the trust of the
 * clients that verify certificates (binary caches): Node's, plus the certificates of NODE_EXTRA_CA_CERTS when
 * Node did not read that file itself (the `realise` launcher hides the variable from Node's start, which would
 * otherwise parse the file and Node's whole root store in every process; see trustExtraCaCerts).
 */
import { readFileSync } from 'node:fs';
import { Module, createRequire } from 'node:module';
import type { SecureContext } from 'node:tls';
import type { buildConnector } from 'undici';

/** The parts of undici that binary caches and builtin:fetchurl use. */
export type Undici = Pick<typeof import('undici'), 'Agent' | 'ProxyAgent' | 'buildConnector' | 'request'>;

let undiciModule: Undici | undefined;

export function undici(): Undici {
  return (undiciModule ??= loadUndici());
}

/**
 * The `realise` process (bin/realise.js) keeps WebAssembly in V8's first tier: undici's HTTP parser is the
 * only WebAssembly it runs, and V8 would otherwise optimise it on background threads that the process
 * waits for at exit. It sets that V8 flag here, before undici's parser is compiled, not at its start (a V8
 * flag makes Node reject its code cache of its own modules). Elsewhere (a program using the SDK) nothing.
 */
function beforeHttpParser(): void {
  (globalThis as Record<symbol, (() => void) | undefined>)[Symbol.for('realise.cli.firstTierWasm')]?.();
}

/**
 * undici's dispatchers, connector and `request`, loaded from their own modules: undici's index requires
 * every part of it (fetch, WebSocket, caches, cookies, mocks, ...), about 130 modules and 80 ms, where these
 * take 30. As the index does, the API methods (`request`, `connect`, ...) are put on Dispatcher's prototype,
 * which a ProxyAgent's CONNECT uses; and `request(url, options)` is the index's: the API's request called on
 * the options' dispatcher (else the global one) with the URL's origin and path.
 */
function loadUndici(): Undici {
  const require = createRequire(import.meta.url);
  const lib = <T>(m: string): T => require(`undici/lib/${m}`) as T;
  beforeHttpParser();
  deferHttp2Client(require);
  const api = lib<{ request: (this: unknown, opts: object) => ReturnType<Undici['request']> }>('api');
  Object.assign(lib<{ prototype: object }>('dispatcher/dispatcher').prototype, api);
  const request = ((url: string | URL, opts: { dispatcher?: unknown; method?: string } = {}) => {
    const u = new URL(url);
    const path = u.search ? `${u.pathname}${u.search}` : u.pathname;
    const dispatcher = opts.dispatcher ?? lib<{ getGlobalDispatcher: () => unknown }>('global').getGlobalDispatcher();
    return api.request.call(dispatcher, { ...opts, origin: u.origin, path, method: opts.method ?? 'GET' });
  }) as Undici['request'];
  return {
    Agent: lib<Undici['Agent']>('dispatcher/agent'),
    ProxyAgent: lib<Undici['ProxyAgent']>('dispatcher/proxy-agent'),
    buildConnector: lib<Undici['buildConnector']>('core/connect'),
    request,
  };
}

/**
 * undici's client requires its HTTP/2 half (client-h2.js) as it loads, and that requires `node:http2` (about
 * 18 ms, with `node:tls`), which our clients never use: they do not offer h2 (undici's `allowH2` is off), so
 * a connection is always HTTP/1.1 and undici never calls it. In its place in the module cache goes a function
 * that loads the real one when it is called.
 */
function deferHttp2Client(require: NodeJS.Require): void {
  const file = require.resolve('undici/lib/dispatcher/client-h2.js');
  if (require.cache[file]) return;
  const real = (): ((...args: unknown[]) => unknown) => {
    delete require.cache[file];
    return require(file) as (...args: unknown[]) => unknown;
  };
  const stub = new Module(file);
  stub.filename = file;
  stub.loaded = true;
  stub.exports = function connectH2(...args: unknown[]): unknown {
    return real()(...args);
  };
  require.cache[file] = stub;
}

/** The file trustExtraCaCerts named, and what to do when it cannot be read. */
let extraCa: { file: string; warn: (message: string) => void } | undefined;
/** Node's roots plus the extra certificates, made on the first https connection that needs it. */
let extraCaContext: SecureContext | undefined;

/**
 * Trust the CA certificates of the PEM file `file` in this process's verifying HTTPS connections (binary
 * caches), on top of Node's own roots: what NODE_EXTRA_CA_CERTS=FILE does for a process whose start saw it.
 * For a process started without it (the `realise` launcher moves it aside; the CLI puts it back into
 * process.env for children and calls this). The file is read at the first https connection; when it cannot
 * be read, `warn` is told Node's words and only Node's roots are trusted, as Node does.
 */
export function trustExtraCaCerts(file: string, warn: (message: string) => void = (m) => process.emitWarning(m)): void {
  extraCa = { file, warn };
  extraCaContext = undefined;
}

/** The certificates (`-----BEGIN CERTIFICATE-----` blocks) of a PEM text, as OpenSSL reads a CA file. */
export function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

function extraCaSecureContext(file: string, warn: (message: string) => void): SecureContext {
  if (extraCaContext) return extraCaContext;
  // Loaded here, not at the top: node:tls (and OpenSSL's root store) is for the commands that use https.
  const tls = createRequire(import.meta.url)('node:tls') as typeof import('node:tls');
  let extra: string[] = [];
  try {
    extra = pemCertificates(readFileSync(file, 'latin1'));
  } catch (e) {
    warn(`Ignoring extra certs from \`${file}\`, load failed: ${(e as Error).message}`);
  }
  return (extraCaContext = tls.createSecureContext({ ca: [...tls.rootCertificates, ...extra] }));
}

/**
 * The `connect` option of an undici Agent that verifies certificates: undefined (undici's own, Node's trust)
 * unless trustExtraCaCerts named a file; else a connector whose https connections trust it as well.
 * `timeoutMs` is the connect timeout (undici's default is 10 s).
 */
export function verifyingConnector(timeoutMs = 10_000): buildConnector.connector | undefined {
  const trust = extraCa;
  if (trust === undefined) return undefined;
  let plain: buildConnector.connector | undefined;
  let secure: buildConnector.connector | undefined;
  return (opts, callback) => {
    if (opts.protocol !== 'https:') return (plain ??= undici().buildConnector({ timeout: timeoutMs }))(opts, callback);
    secure ??= undici().buildConnector({ timeout: timeoutMs, secureContext: extraCaSecureContext(trust.file, trust.warn) });
    return secure(opts, callback);
  };
}
