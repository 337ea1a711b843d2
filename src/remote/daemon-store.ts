/**
 * A Store over the Nix daemon (`--store daemon`, `unix:///nix/var/nix/daemon-socket/socket`,
 * `NIX_REMOTE=daemon`): a multi-user Nix installation whose `nix-daemon` owns the store. Every operation is
 * a worker-protocol request on the daemon's Unix socket, so the daemon's rules apply (an untrusted user's
 * paths must be signed or content-addressed, repair needs trust, ...), and its errors come back as
 * RemoteDaemonError. Builds and substitutions run in the daemon (`buildPathsWithResults`); a BuildEngine
 * over this store hands its calls to the daemon and turns the daemon's log stream into its events.
 */
import { cpus } from 'node:os';
import { StoreError } from '../store/errors.js';
import { parseNar } from '../store/nar.js';
import type { AddToStoreOptions, NarSource, PathInfo, PathLocks, Store } from '../store/store-api.js';
import { DEFAULT_STORE_DIR, parseStorePath, type StorePath } from '../store/store-path.js';
import { RemoteConnectionError } from './errors.js';
import type { WireBuildResult } from './protocol-common.js';
import { SocketTransport } from './transport.js';
import { WorkerConnection, type OnRemoteLog, type WorkerOptions } from './worker-protocol.js';
import { DEFAULT_DAEMON_SOCKET } from './open-store.js';

export { DEFAULT_DAEMON_SOCKET, daemonSocketOfUri, openStore } from './open-store.js';

export interface DaemonStoreOptions {
  /** The daemon's socket. @default $NIX_DAEMON_SOCKET_PATH, else /nix/var/nix/daemon-socket/socket */
  readonly socketPath?: string;
  /** The daemon's logical store directory. @default $NIX_STORE_DIR, else /nix/store */
  readonly storeDir?: string;
  /**
   * Client settings sent to the daemon on each connection (Nix's SetOptions); an untrusted user's restricted
   * ones are ignored. `useSubstitutes` defaults to true here, as Nix's client sends its `substitute`.
   */
  readonly workerOptions?: WorkerOptions;
}

function unsupported(what: string): StoreError {
  return new StoreError('daemon-store-unsupported', `${what} is not possible through the Nix daemon`, {
    hint: 'the daemon owns its store: build with a BuildEngine over the DaemonStore, which asks the daemon to build',
  });
}

export class DaemonStore implements Store {
  readonly storeDir: string;
  /** The daemon's paths are not ours to read from disk: the real directory is the logical one. */
  readonly realStoreDir: string;
  readonly socketPath: string;
  private workerOptions: WorkerOptions;
  /** Bumped by setWorkerOptions; each connection's SetOptions is of the version it holds. */
  private optionsVersion = 0;
  private readonly connOptionsVersion = new WeakMap<WorkerConnection, number>();
  private readonly idle: WorkerConnection[] = [];
  private readonly all = new Set<WorkerConnection>();
  private closed = false;
  /** The first connection (made by `open`): the daemon's version and whether it trusts us. */
  private first!: WorkerConnection;

  private constructor(opts: DaemonStoreOptions) {
    this.socketPath = opts.socketPath ?? (process.env.NIX_DAEMON_SOCKET_PATH || DEFAULT_DAEMON_SOCKET);
    this.storeDir = opts.storeDir ?? (process.env.NIX_STORE_DIR || DEFAULT_STORE_DIR);
    this.realStoreDir = this.storeDir;
    // Nix's client: substitution on, NIX_BUILD_CORES the machine's CPUs (its `cores` default).
    this.workerOptions = { useSubstitutes: true, buildCores: cpus().length, ...opts.workerOptions };
  }

  /**
   * Change client settings (those given replace the current ones): each connection sends the daemon the new
   * settings before its next operation (a BuildEngine over this store sends the options it was given).
   */
  setWorkerOptions(o: WorkerOptions): void {
    // Overrides are merged by name, in Nix's order (a std::map: sorted).
    const merged = o.overrides && Object.entries({ ...this.workerOptions.overrides, ...o.overrides }).sort(([a], [b]) => (a < b ? -1 : 1));
    const overrides = merged ? Object.fromEntries(merged) : this.workerOptions.overrides;
    const next: WorkerOptions = { ...this.workerOptions, ...o, ...(overrides ? { overrides } : {}) };
    const same = (k: string, v: unknown): boolean =>
      k === 'overrides'
        ? Object.entries(v as Record<string, string>).every(([name, value]) => this.workerOptions.overrides?.[name] === value)
        : this.workerOptions[k as keyof WorkerOptions] === v;
    if (Object.entries(next).every(([k, v]) => same(k, v))) return;
    this.workerOptions = next;
    this.optionsVersion++;
  }

  /** Connect to the daemon (one handshake, so a missing or refusing daemon is an error here). */
  static async open(opts: DaemonStoreOptions = {}): Promise<DaemonStore> {
    const s = new DaemonStore(opts);
    s.first = await s.connect();
    s.idle.push(s.first);
    return s;
  }

  /** The daemon's Nix version (e.g. `2.8.0`), when its protocol says it. */
  get daemonNixVersion(): string | undefined {
    return this.first.daemonNixVersion;
  }

  /** Whether the daemon's builds for this store go on after one fails (the `keepGoing` this client sends it). */
  get keepGoing(): boolean {
    return this.workerOptions.keepGoing ?? false;
  }

  /** Whether the daemon trusts this user (undefined when its protocol does not say: Nix before 2.15). */
  get trusted(): boolean | undefined {
    return this.first.remoteTrustsUs;
  }

  private async connect(): Promise<WorkerConnection> {
    let transport: SocketTransport;
    try {
      transport = await SocketTransport.connect(this.socketPath);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why =
        code === 'ENOENT'
          ? 'No such file or directory'
          : code === 'EACCES'
            ? 'Permission denied'
            : code === 'ECONNREFUSED'
              ? 'Connection refused'
              : (e as Error).message;
      throw new RemoteConnectionError(`cannot connect to socket at '${this.socketPath}': ${why}`, {
        cause: e,
        hint: 'is the Nix daemon running (systemctl status nix-daemon)? Set NIX_DAEMON_SOCKET_PATH if it listens elsewhere',
      });
    }
    let c: WorkerConnection;
    try {
      c = await WorkerConnection.connect(transport, { ...this.workerOptions, storeDir: this.storeDir, name: `the Nix daemon at '${this.socketPath}'` });
    } catch (e) {
      if (!(e instanceof RemoteConnectionError)) throw e;
      // The daemon hangs up before its handshake on a user it does not allow.
      throw new RemoteConnectionError(`cannot open connection to the Nix daemon at '${this.socketPath}': it closed the connection`, {
        cause: e,
        hint: "the daemon refuses users that 'allowed-users' in its nix.conf does not name; its log says why",
      });
    }
    this.connOptionsVersion.set(c, this.optionsVersion);
    this.all.add(c);
    void transport.closed.then(() => {
      this.all.delete(c);
    });
    return c;
  }

  /** Run `fn` on an idle connection (or a new one); concurrent calls get their own connections. */
  private async with<T>(fn: (c: WorkerConnection) => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreError('store-closed', `the store over the daemon at '${this.socketPath}' is closed`);
    let c: WorkerConnection | undefined;
    while ((c = this.idle.pop()) && !c.usable);
    c ??= await this.connect();
    try {
      const version = this.optionsVersion;
      if (this.connOptionsVersion.get(c) !== version) {
        await c.setOptions(this.workerOptions);
        this.connOptionsVersion.set(c, version);
      }
      return await fn(c);
    } finally {
      if (c.usable && !this.closed) this.idle.push(c);
      else void c.close();
    }
  }

  toRealPath(p: string): string {
    return p;
  }

  isValidPath(p: StorePath): Promise<boolean> {
    return this.with((c) => c.isValidPath(p));
  }

  queryValidPaths(paths: Iterable<StorePath>): Promise<Set<StorePath>> {
    return this.with((c) => c.queryValidPaths(paths));
  }

  queryPathInfo(p: StorePath): Promise<PathInfo | undefined> {
    return this.with((c) => c.queryPathInfo(p));
  }

  queryReferrers(p: StorePath): Promise<StorePath[]> {
    return this.with(async (c) => (await c.queryReferrers(p)).sort());
  }

  async computeClosure(paths: Iterable<StorePath>): Promise<Set<StorePath>> {
    const out = new Set<StorePath>();
    let frontier = [...new Set(paths)];
    while (frontier.length) {
      const next: StorePath[] = [];
      for (const info of await Promise.all(frontier.map((p) => this.queryPathInfo(p)))) {
        if (!info || out.has(info.path)) continue;
        out.add(info.path);
        for (const r of info.references) if (!out.has(r)) next.push(r);
      }
      frontier = [...new Set(next)];
    }
    return out;
  }

  async queryAllValidPaths(): Promise<Set<StorePath>> {
    return new Set(await this.with((c) => c.queryAllValidPaths()));
  }

  async queryValidDerivers(outPath: StorePath): Promise<StorePath[]> {
    return (await this.with((c) => c.queryValidDerivers(outPath))).sort();
  }

  async queryDerivationOutputs(drvPath: StorePath): Promise<Map<string, StorePath>> {
    const m = await this.with((c) => c.queryDerivationOutputMap(drvPath));
    const out = new Map<string, StorePath>();
    for (const [name, p] of m) if (p) out.set(name, p);
    return out;
  }

  async registerDerivationOutputs(): Promise<void> {
    throw unsupported('registering derivation outputs');
  }

  async addToStore(info: PathInfo, nar: NarSource, opts: AddToStoreOptions = {}): Promise<PathInfo> {
    // An untrusted user's path must be signed by a key the daemon trusts or be content-addressed: the
    // daemon checks (dontCheckSigs is honoured only for trusted users).
    await this.with((c) => c.addToStoreNar(info, nar, { repair: opts.repair, dontCheckSigs: false, signal: opts.signal }));
    return (await this.queryPathInfo(info.path)) ?? info;
  }

  async addTextToStore(name: string, text: string, references: Iterable<StorePath> = []): Promise<StorePath> {
    return this.with((c) => c.addTextToStore(name, text, [...references]));
  }

  async registerValidPaths(): Promise<void> {
    throw unsupported('registering paths built elsewhere');
  }

  narFromPath(p: StorePath): NarSource {
    const self = this;
    return (async function* () {
      let c: WorkerConnection | undefined;
      while ((c = self.idle.pop()) && !c.usable);
      c ??= await self.connect();
      try {
        yield* c.narFromPath(p);
      } finally {
        if (c.usable && !self.closed) self.idle.push(c);
        else void c.close();
      }
    })();
  }

  async readTextFile(p: StorePath): Promise<string> {
    parseStorePath(p, this.storeDir);
    const chunks: Buffer[] = [];
    let regular = false;
    await parseNar(this.narFromPath(p), {
      createDirectory: () => {},
      createSymlink: () => {},
      createFile: (rel) => {
        regular = rel === '';
        return {
          write: (b) => {
            if (regular) chunks.push(b);
          },
          close: () => {},
        };
      },
    });
    if (!regular) throw new StoreError('not-a-regular-file', `store path '${p}' is not a regular file`);
    return Buffer.concat(chunks).toString('utf8');
  }

  async deletePath(): Promise<void> {
    throw unsupported('deleting a store path');
  }

  async addTempRoot(p: StorePath): Promise<void> {
    // A temporary root lives as long as the connection that made it: the first one, kept open.
    await this.first.addTempRoot(p);
  }

  /** Register `link`, a symlink to a store path, as an indirect GC root (Nix's addIndirectRoot; `--add-root`). */
  addIndirectRoot(link: string): Promise<void> {
    return this.with((c) => c.addIndirectRoot(link));
  }

  async lockPaths(): Promise<PathLocks> {
    throw unsupported('locking store paths');
  }

  async tryLockPaths(): Promise<PathLocks | undefined> {
    throw unsupported('locking store paths');
  }

  logPath(): string {
    throw unsupported('reading build logs from disk');
  }

  async addBuildLog(): Promise<void> {
    throw unsupported('adding a build log');
  }

  async readBuildLog(): Promise<string | undefined> {
    return undefined;
  }

  /** What the daemon would build, substitute, or cannot make (targets as `DRV!out1,out2` or paths). */
  queryMissing(targets: readonly string[], opts: { signal?: AbortSignal } = {}): ReturnType<WorkerConnection['queryMissing']> {
    return this.with((c) => c.queryMissing(targets, opts));
  }

  /**
   * Have the daemon realise `targets` (`DRV!out1,out2`, or store paths), with its log stream to `onLog`.
   * One result per target, in order. Aborting closes the connection, which stops the daemon's work.
   */
  buildPathsWithResults(
    targets: readonly string[],
    opts: { mode?: 'normal' | 'repair' | 'check'; signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<{ path: string; result: WireBuildResult }[] | undefined> {
    // A connection of its own, so queries made meanwhile (by event listeners) are not queued behind it.
    return this.with((c) => c.buildPathsWithResults(targets, { buildMode: opts.mode, signal: opts.signal, onLog: opts.onLog }));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.idle.length = 0;
    await Promise.all([...this.all].map((c) => c.close()));
  }
}
