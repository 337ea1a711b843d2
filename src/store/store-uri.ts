/**
 * Store URIs for local stores, as Nix's `--store` takes them:
 *   - a path (`/var/lib/ci/root`, `./root`, `ci/root`: anything without `://` that has a `/`): a chroot
 *     store with that root (logical `/nix/store`);
 *   - `local` or `local?root=…&store=…&state=…&log=…&real=…` (values percent-decoded).
 * Other schemes (`daemon`, `ssh://`, `file://` binary caches, …) are not local stores and are refused here
 * (the daemon's URIs are opened by src/remote/daemon-store.ts's openStore).
 */
import * as path from 'node:path';
import { StoreError } from './errors.js';
import { LocalStore, type LocalStoreOptions } from './local-store.js';

/**
 * Nix 2.8's local store settings that are accepted in a local store URI and ignored here (newer Nix's
 * `read-only` is none of them: Nix 2.8 warns about it as about any name it does not know).
 */
const IGNORED_PARAMS = new Set(['require-sigs', 'trusted', 'priority', 'want-mass-query', 'path-info-cache-size', 'system-features']);

export interface ParsedStoreUri {
  readonly options: LocalStoreOptions;
  /** Parameters Nix knows but a LocalStore here does not use. */
  readonly ignored: readonly string[];
  /** Parameters no local store knows: Nix warns "unknown setting 'NAME'" for each and opens the store. */
  readonly unknown: readonly string[];
}

/** Store types Nix 2.8 has that are not local stores (refused with a message saying so). */
const OTHER_STORE_SCHEMES = ['ssh', 'ssh-ng', 'file', 'http', 'https', 's3', 'dummy'];

const LOCAL_STORE_HINT = "use a root directory (chroot store) or 'local?root=DIR' or 'local?store=DIR&state=DIR&log=DIR'";

function badUri(uri: string, why: string, hint?: string): StoreError {
  return new StoreError('bad-store-uri', `cannot open store '${uri}': ${why}`, {
    hint: hint ?? LOCAL_STORE_HINT,
  });
}

/**
 * Parse a local store URI into LocalStore options (a bare relative root resolves against `cwd`; a path
 * parameter that is not absolute is refused in Nix's words, "not an absolute path: 'P'"). As Nix's settings,
 * the environment gives what the URI leaves out: `NIX_STORE_DIR` (else `NIX_STORE`) the logical store
 * directory, and for a store without a root `NIX_STATE_DIR` and `NIX_LOG_DIR` its state and log directories.
 */
export function parseStoreUri(uri: string, cwd: string = process.cwd(), env: NodeJS.ProcessEnv = process.env): ParsedStoreUri {
  if (uri === '') throw badUri(uri, 'the store URI is empty');
  const q = uri.indexOf('?');
  const head = q < 0 ? uri : uri.slice(0, q);
  const query = q < 0 ? '' : uri.slice(q + 1);
  // A path parameter must be absolute, as Nix's path settings (normalised: '..', '.', '//', a trailing '/').
  const absolute = (what: string, v: string) => {
    // Nix's path settings other than the root cannot be empty (its words).
    if (v === '')
      throw new StoreError('bad-store-uri', `setting '${what}' cannot be empty`, { hint: `give store '${uri}' a '${what}' or leave the parameter out` });
    if (!path.isAbsolute(v)) {
      throw new StoreError('bad-store-uri', `not an absolute path: '${v}'`, {
        hint: `the '${what}' parameter of store '${uri}' must be an absolute path (only a bare store root may be relative)`,
      });
    }
    return path.resolve(v);
  };
  let root: string | undefined;
  // As Nix's isNonUriPath: no scheme and a '/' somewhere (`a/b` too; `.` or `x` name no store).
  if (!head.includes('://') && head.includes('/')) {
    root = path.resolve(cwd, head);
  } else if (head !== 'local' && head !== 'local://') {
    if (head === 'auto' || head === 'daemon' || head.startsWith('unix://'))
      throw badUri(uri, 'the Nix daemon is not a local store', "open it with openStore() or DaemonStore.open() from 'realise'");
    const scheme = head.includes('://') ? head.slice(0, head.indexOf('://')) : head;
    if (OTHER_STORE_SCHEMES.includes(scheme)) throw badUri(uri, `'${head}' is not a local store`);
    throw new StoreError('bad-store-uri', `don't know how to open Nix store '${uri}'`, {
      hint: LOCAL_STORE_HINT,
    });
  }
  const opts: { root?: string; storeDir?: string; stateDir?: string; logDir?: string; realStoreDir?: string } = {};
  if (root !== undefined) opts.root = root;
  const ignored: string[] = [];
  const unknown: string[] = [];
  if (query) {
    for (const part of query.split('&')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      if (eq < 0) throw badUri(uri, `parameter '${part}' has no value`);
      const key = part.slice(0, eq);
      let value: string;
      try {
        value = decodeURIComponent(part.slice(eq + 1).replace(/\+/g, ' '));
      } catch {
        throw badUri(uri, `parameter '${key}' is not properly percent-encoded`);
      }
      switch (key) {
        case 'root':
          // Nix's root setting may be empty: no root, as without the parameter.
          if (value === '') delete opts.root;
          else opts.root = absolute(key, value);
          break;
        case 'store':
          opts.storeDir = absolute(key, value);
          break;
        case 'state':
          opts.stateDir = absolute(key, value);
          break;
        case 'log':
          opts.logDir = absolute(key, value);
          break;
        case 'real':
          opts.realStoreDir = absolute(key, value);
          break;
        default:
          if (IGNORED_PARAMS.has(key)) ignored.push(key);
          else unknown.push(key);
      }
    }
  }
  const fromEnv = (name: string) => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    if (!path.isAbsolute(v)) throw badUri(uri, `$${name} '${v}' is not an absolute path`, `set ${name} to an absolute path, or unset it`);
    return path.normalize(v);
  };
  opts.storeDir ??= fromEnv('NIX_STORE_DIR') ?? fromEnv('NIX_STORE');
  if (opts.root === undefined) {
    opts.stateDir ??= fromEnv('NIX_STATE_DIR');
    opts.logDir ??= fromEnv('NIX_LOG_DIR');
  }
  for (const k of ['storeDir', 'stateDir', 'logDir'] as const) if (opts[k] === undefined) delete opts[k];
  return { options: opts, ignored, unknown };
}

/**
 * Open the local store a URI names. Parameters no local store knows are ignored, as Nix ignores them,
 * each reported through `warn` in Nix's words ("unknown setting 'NAME'").
 */
export function openStore(uri: string, opts: { signal?: AbortSignal; warn?: (message: string) => void } = {}): Promise<LocalStore> {
  const { options, unknown } = parseStoreUri(uri);
  for (const key of unknown) opts.warn?.(`unknown setting '${key}'`);
  return LocalStore.open({ ...options, signal: opts.signal });
}
