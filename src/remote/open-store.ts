/**
 * Opening the store a URI names, as Nix's `--store`: the Nix daemon (`daemon`, `unix://…`; its client,
 * daemon-store.ts, is loaded only then) or a local store (a root directory, `local?…`).
 */
import { openStore as openLocalStore } from '../store/store-uri.js';
import type { Store } from '../store/store-api.js';
import type { WorkerOptions } from './worker-protocol.js';

/** Where a system Nix installation's daemon listens (Nix's default `nix-daemon` socket). */
export const DEFAULT_DAEMON_SOCKET = '/nix/var/nix/daemon-socket/socket';

/** `daemon`, `unix://PATH` (with optional `?…` settings), or undefined when the URI is not the daemon's. */
export function daemonSocketOfUri(uri: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const head = uri.replace(/\?.*$/, '');
  if (head === 'daemon') return env.NIX_DAEMON_SOCKET_PATH || DEFAULT_DAEMON_SOCKET;
  if (head.startsWith('unix://')) return decodeURIComponent(head.slice('unix://'.length)) || env.NIX_DAEMON_SOCKET_PATH || DEFAULT_DAEMON_SOCKET;
  return undefined;
}

/**
 * Open the store a URI names: the Nix daemon's (DaemonStore, sent `workerOptions` as its client settings) or
 * a local store. Unknown parameters of a local store URI are reported through `warn`.
 */
export async function openStore(
  uri: string,
  opts: { signal?: AbortSignal; warn?: (message: string) => void; workerOptions?: WorkerOptions } = {},
): Promise<Store> {
  const socketPath = daemonSocketOfUri(uri);
  if (socketPath !== undefined) {
    const { DaemonStore } = await import('./daemon-store.js');
    return DaemonStore.open({ socketPath, ...(opts.workerOptions ? { workerOptions: opts.workerOptions } : {}) });
  }
  return openLocalStore(uri, opts);
}
