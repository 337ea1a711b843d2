/**
 * Remote builds: build a derivation on a machine that runs Nix (or Lix) and copy its outputs back.
 *
 * A `MachineBuilder` is one machine of the machines file. It keeps its connections open and reuses them
 * across builds (up to `maxJobs` at once, one build per connection), so a remote build costs a few round
 * trips instead of a new SSH session and handshake. For each build it asks the remote which inputs it
 * lacks, copies those (topological order, NARs from the local store), runs BuildDerivation with the log
 * streaming back, then copies the outputs the local store lacks (NAR hash verified) and registers them.
 */
import { printMethodAlgo, type Derivation, type DerivationOutput } from '../derivation/derivation.js';
import { RealiseError, StoreError, unreachable } from '../store/errors.js';
import { HashSink } from '../store/hash.js';
import type { NarSource, PathInfo, Store } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import { NoMachineError, RemoteBuildError, RemoteConnectionError, RemoteDaemonError, type RemoteBuildErrorKind } from './errors.js';
import { machine as makeMachine, parseMachines, parseStoreUri, selectMachine, type Machine, type MachineOptions, type MachineRequest } from './machines.js';
import { isSuccessStatus, topoSortPaths, type WireBuildResult, type WireDerivation, type WireDerivationOutput } from './protocol-common.js';
import { ServeConnection, type ServeBuildSettings } from './serve-protocol.js';
import { loadExeca, StdioTransport, type Transport } from './transport.js';
import { buildLogLine, ResultType, WorkerConnection, type OnRemoteLog, type RemoteLogEvent, type WorkerOptions } from './worker-protocol.js';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { getMaxListeners, setMaxListeners } from 'node:events';
import { tmpdir } from 'node:os';
import { performance } from 'node:perf_hooks';
import * as path from 'node:path';

export interface RemoteBuildOptions {
  /** The local store: inputs are read from it, outputs are added to it. */
  readonly store: Store;
  /**
   * Asked by buildOnRemote when every fitting machine is busy: true declines the build (it is built locally)
   * instead of waiting for a machine, as Nix's hook declines when this machine is willing (a local build
   * slot is free). @default never
   */
  readonly localSlotFree?: () => boolean;
  /**
   * buildOnRemote: every fitting machine is busy and the build waits for one of them. A promise returned
   * ends that wait early, and the machines (then `localSlotFree`) are asked again: Nix asks its hook again
   * when a build ends, so a local build slot freed meanwhile can take the build. @default none
   */
  readonly onBusy?: (signal: AbortSignal) => Promise<void> | undefined;
  /** Aborting stops the remote build (the connection is closed). */
  readonly signal?: AbortSignal;
  /** Each line of the build log as it arrives. */
  readonly onLog?: (line: string) => void;
  /**
   * The machine took the build: the connection is made and the build is handed to it (again on another one
   * after a lost connection), where Nix's hook answers "accept" and Nix says "building '…' on '…'".
   */
  readonly onStart?: (machine: string) => void;
  /** buildOnRemote: a machine could not be used (unreachable, connection lost); the next one is tried. */
  readonly onMachineFailed?: (error: RemoteBuildError) => void;
  /** Every log event of the remote (activities, phases, messages). */
  readonly onEvent?: (e: RemoteLogEvent) => void;
  /**
   * Each step of the build here, as Nix's build hook shows it: told at its start and its end (also when it
   * fails), with the machine's name (the connection step comes before `onStart`).
   */
  readonly onStep?: (step: RemoteStep, phase: 'start' | 'end', machine: string) => void;
  /**
   * What the ssh of an `ssh-ng://` machine wrote to its stderr while being connected to (whether that failed
   * or not), told before the connection step ends: Nix's ssh writes it to Nix's stderr itself, while Nix
   * still connects. (An `ssh://` machine's stderr is the build's log: `onLog` / `onEvent`.)
   */
  readonly onStderr?: (text: string) => void;
  /**
   * The input closure (input sources and input derivations' outputs, closed under references). When omitted
   * it is computed from `drv.inputSrcs` and the registered outputs of `drv.inputDrvs`.
   */
  readonly inputPaths?: Iterable<StorePath>;
  /** Have the remote substitute the inputs it lacks from its own binary caches first (Nix's `builders-use-substitutes`); the rest are copied. @default false */
  readonly useSubstitutes?: boolean;
  /** Outputs to copy back. @default all */
  readonly wantedOutputs?: readonly string[];
  /**
   * Limits for this build, as Nix's hook passes them: seconds of silence / total seconds (0 = none), log
   * bytes (0 = none). Sent with BuildDerivation (ssh://) or as SetOptions before it (ssh-ng://).
   * @default the builder's `workerOptions` / `serveBuildSettings`
   */
  readonly buildSettings?: RemoteBuildSettings;
}

/**
 * A step of a remote build on this side, as Nix's build hook shows it: getting a connection ("connecting
 * to"), waiting for the machine's upload lock, copying the inputs the machine lacks ("copying dependencies
 * to") and the outputs back ("copying outputs from", when some are missing here), each copy as its set of
 * paths ("copying N paths") and every path.
 */
export type RemoteStep =
  | { readonly kind: 'connect' | 'upload-lock' | 'copy-inputs' | 'copy-outputs' }
  | { readonly kind: 'copy-paths'; readonly direction: 'to' | 'from'; readonly paths: readonly StorePath[] }
  | { readonly kind: 'copy-path'; readonly direction: 'to' | 'from'; readonly path: StorePath };

/** A build's options inside MachineBuilder, its steps told as this machine's. */
type BuildCalls = Omit<RemoteBuildOptions, 'onStep'> & { readonly onStep?: (step: RemoteStep, phase: 'start' | 'end') => void };

/** Run `fn` as a step told to `onStep` (its end told however it ends). */
async function asStep<T>(onStep: BuildCalls['onStep'], step: RemoteStep, fn: () => Promise<T>): Promise<T> {
  if (!onStep) return fn();
  onStep(step, 'start');
  try {
    return await fn();
  } finally {
    onStep(step, 'end');
  }
}

/** A NAR stream as a copy step: it starts when first read and ends when the stream does (or is abandoned). */
async function* narAsStep(nar: NarSource, onStep: NonNullable<BuildCalls['onStep']>, step: RemoteStep): AsyncGenerator<Uint8Array> {
  onStep(step, 'start');
  try {
    yield* nar;
  } finally {
    onStep(step, 'end');
  }
}

export interface RemoteBuildSettings {
  readonly maxSilentTime?: number;
  readonly buildTimeout?: number;
  readonly maxLogSize?: number;
  readonly keepFailed?: boolean;
}

/**
 * SetOptions for a build: the builder's worker options with the build's limits on top. A limit an earlier
 * build set on this connection and this one does not is reset to 0 (none): daemon settings persist.
 */
function workerOptionsFor(base: WorkerOptions, bs: RemoteBuildSettings | undefined, current: WorkerOptions): WorkerOptions {
  const overrides: Record<string, string> = { ...base.overrides };
  const limit = (key: string, v: number | undefined): void => {
    if (v !== undefined) overrides[key] = String(v);
    else if (overrides[key] === undefined && current.overrides?.[key] !== undefined) overrides[key] = '0';
  };
  limit('timeout', bs?.buildTimeout);
  limit('max-build-log-size', bs?.maxLogSize);
  const maxSilentTime = bs?.maxSilentTime ?? base.maxSilentTime ?? (current.maxSilentTime ? 0 : undefined);
  const keepFailed = bs?.keepFailed ?? base.keepFailed;
  const out: WorkerOptions = { ...base };
  return {
    ...out,
    ...(maxSilentTime !== undefined ? { maxSilentTime } : {}),
    ...(keepFailed !== undefined ? { keepFailed } : {}),
    ...(Object.keys(overrides).length ? { overrides } : {}),
  };
}

function sameOptions(a: WorkerOptions, b: WorkerOptions): boolean {
  const norm = (o: WorkerOptions): string =>
    JSON.stringify(
      Object.entries({ ...o, overrides: Object.entries(o.overrides ?? {}).sort() })
        .filter(([, v]) => v !== undefined)
        .sort(),
    );
  return norm(a) === norm(b);
}

/**
 * Outcome of a build the remote ran: its BuildResult as the remote sent it (the coloured error message may be
 * absent: `errorMsg` has no colours then), the outputs as paths here. Failures to reach or use the remote are
 * thrown as RemoteBuildError.
 */
export interface RemoteBuildResult extends Omit<WireBuildResult, 'builtOutputs' | 'colouredErrorMsg'>, Partial<Pick<WireBuildResult, 'colouredErrorMsg'>> {
  /** Store URI of the machine that ran the build. */
  readonly machine: string;
  /** Output name → path, for the outputs now valid in the local store (success only). */
  readonly builtOutputs: ReadonlyMap<string, StorePath>;
  /** Paths copied to the remote for this build. */
  readonly copiedInputs: readonly StorePath[];
  /** Outputs copied back. */
  readonly copiedOutputs: readonly StorePath[];
  /** Where the time went, in milliseconds: getting a connection, copying inputs, the remote build, copying outputs back. */
  readonly timings: { readonly connect: number; readonly upload: number; readonly build: number; readonly download: number };
}

/** A machine that builds derivations. The engine's derivation goal calls `build` when it chose this machine. */
export interface RemoteBuilder {
  /** The machine's store URI (for messages and events). */
  readonly name: string;
  readonly machine: Machine;
  /** Builds running now (counts against `machine.maxJobs`). */
  readonly load: number;
  /** Why the machine is out of use for now (e.g. it was unreachable a moment ago), or undefined. */
  disabledReason(): string | undefined;
  /** Resolves when a build slot frees up (or the builder is re-enabled). */
  waitForSlot(signal?: AbortSignal): Promise<void>;
  /**
   * Build `drv` (the parsed `drvPath`) on the machine. Resolves with the remote's result — a failed build is a
   * result, not an exception; throws RemoteBuildError (with `machine`) when the machine could not be used:
   * connection lost, build refused, copying failed, or aborted. Call `opts.onStart` once, as soon as the
   * machine is connected and takes the build (the engine's `build-started`); buildOnRemote tells it itself
   * before the first log line or event, or when build() resolves, if the builder did not.
   */
  build(drvPath: StorePath, drv: Derivation, opts: RemoteBuildOptions): Promise<RemoteBuildResult>;
  /** Close all connections. */
  close(): Promise<void>;
}

export interface MachineBuilderOptions {
  /** Extra arguments to ssh before the host (also taken from NIX_SSHOPTS, as Nix does). @default [] */
  readonly sshOptions?: readonly string[];
  /** The ssh program. @default 'ssh' */
  readonly sshProgram?: string;
  /** Environment for the spawned commands (merged over process.env). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Settings sent to ssh-ng remotes (SetOptions), e.g. `{ overrides: { 'sandbox-paths': '/bin/sh=/bin/busybox' } }`. */
  readonly workerOptions?: WorkerOptions;
  /** Build settings sent to ssh:// remotes. */
  readonly serveBuildSettings?: ServeBuildSettings;
  /** Logical store dir of the remote. @default '/nix/store' */
  readonly storeDir?: string;
  /** How long a machine stays disabled after a failed connection, in ms. @default 60000 */
  readonly disableAfterFailureMs?: number;
  /** Open the transport yourself (tests, custom tunnels); default: from the store URI. */
  readonly openTransport?: (m: Machine, onStderr: (line: string) => void) => Transport;
}

type Client = WorkerConnection | ServeConnection;

interface PooledConnection {
  client: Client;
  /** Where to send stderr lines of the transport (ssh messages, serve build logs). */
  stderrTo: { fn: ((line: string) => void) | undefined };
  /** The stderr lines of a new connection until its first build takes them (see build). */
  early: string[] | undefined;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_\-./=:@%+,]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A machine whose URI names a store of this machine rather than a host (a path, `local`, `auto`, `daemon`,
 * `unix://…`, or those with `?params`): Nix's hook opens that store itself and builds there.
 */
export function isLocalStoreUri(uri: string): boolean {
  return !uri.includes('://') || uri.startsWith('unix://');
}

/**
 * The machine's store as Nix names it in its copies (`copying path '…' to 'ssh://host'`): its URI without the
 * parameters; a store of this machine by its kind (`local` for a path or `local`, `daemon` for `daemon` and
 * `unix://…`, as Nix's LocalStore and UDSRemoteStore name themselves).
 */
export function machineStoreName(uri: string): string {
  if (!isLocalStoreUri(uri)) return uri.replace(/\?.*$/, '');
  return /^(daemon|unix:\/\/)/.test(uri) ? 'daemon' : 'local';
}

/**
 * A local store machine's URI as Nix's hook opens it: with `system-features` set to the machine's supported
 * and mandatory features (which win over the URI's own, as Nix's Machine::openStore's parameters do).
 */
function withSystemFeatures(m: Machine): string {
  const q = m.storeUri.indexOf('?');
  const params = new URLSearchParams(q < 0 ? '' : m.storeUri.slice(q + 1));
  params.set('system-features', [...m.supportedFeatures, ...m.mandatoryFeatures].join(' '));
  return `${q < 0 ? m.storeUri : m.storeUri.slice(0, q)}?${params.toString().replace(/\+/g, '%20')}`;
}

/**
 * The command Nix would run for a machine: `ssh [opts] host 'nix-daemon --stdio [--store X]'` for ssh-ng://,
 * `... 'nix-store --serve --write ...'` for ssh://. As in Nix, the host `localhost` runs the command locally
 * through `bash -c` instead of ssh.
 */
export function remoteCommand(
  m: Machine,
  opts: { sshOptions?: readonly string[]; sshProgram?: string; env?: Readonly<Record<string, string | undefined>> } = {},
): { command: string; args: string[]; protocol: 'worker' | 'serve'; cleanup?: () => void } {
  if (isLocalStoreUri(m.storeUri)) return { command: 'nix-daemon', args: ['--stdio', '--store', withSystemFeatures(m)], protocol: 'worker' };
  const uri = parseStoreUri(m.storeUri);
  let protocol: 'worker' | 'serve';
  if (uri.scheme === 'ssh-ng') protocol = 'worker';
  else if (uri.scheme === 'ssh') protocol = 'serve';
  else
    throw new RemoteBuildError(m.storeUri, 'connection', `cannot build on '${m.storeUri}': only ssh:// and ssh-ng:// machines are supported`, {
      hint: "use 'ssh-ng://host' (Nix daemon protocol) or 'ssh://host' (nix-store --serve)",
    });
  const host = uri.authority;
  if (!host || host.startsWith('-')) throw new RemoteBuildError(m.storeUri, 'connection', `invalid SSH host name '${host}' in '${m.storeUri}'`);
  const program = uri.params.get('remote-program') ?? (protocol === 'worker' ? 'nix-daemon' : 'nix-store');
  const remoteStore = uri.params.get('remote-store') ?? '';
  let cmd = protocol === 'worker' ? `${program} --stdio` : `${program} --serve --write`;
  if (remoteStore) cmd += ` --store ${shellQuote(remoteStore)}`;
  if (host === 'localhost') return { command: 'bash', args: ['-c', cmd], protocol };
  const args = [host, '-x', '-a'];
  const envOpts = (opts.env?.NIX_SSHOPTS ?? process.env.NIX_SSHOPTS ?? '').split(/\s+/).filter(Boolean);
  args.push(...envOpts, ...(opts.sshOptions ?? []));
  const key = uri.params.get('ssh-key') || m.sshKey;
  if (key) args.push('-i', key);
  let cleanup: (() => void) | undefined;
  const hostKey = uri.params.get('base64-ssh-public-host-key') || m.sshPublicHostKey;
  if (hostKey) {
    const dir = mkdtempSync(path.join(tmpdir(), 'realise-ssh-'));
    const file = path.join(dir, 'known_hosts');
    const at = host.lastIndexOf('@');
    writeFileSync(file, `${at >= 0 ? host.slice(at + 1) : host} ${Buffer.from(hostKey, 'base64').toString('utf8').trim()}\n`);
    args.push(`-oUserKnownHostsFile=${file}`);
    cleanup = () => rmSync(dir, { recursive: true, force: true });
  }
  const compress = uri.params.get('compress');
  if (compress === 'true' || compress === '1') args.push('-C');
  args.push(cmd);
  return { command: opts.sshProgram ?? 'ssh', args, protocol, ...(cleanup ? { cleanup } : {}) };
}

/** Nix's BasicDerivation of `drv` for the wire; `inputSrcs` replaced by `inputs` when it has input derivations. */
export function toWireDerivation(drv: Derivation, inputs?: Iterable<StorePath>): WireDerivation {
  const outputs = new Map<string, WireDerivationOutput>();
  for (const [name, o] of drv.outputs) outputs.set(name, wireOutput(o));
  return {
    outputs,
    inputSrcs: drv.inputDrvs.size > 0 && inputs ? [...inputs] : drv.inputSrcs,
    platform: drv.platform,
    builder: drv.builder,
    args: drv.args,
    env: drv.env,
  };
}

function wireOutput(o: DerivationOutput): WireDerivationOutput {
  switch (o.type) {
    case 'input-addressed':
      return { path: o.path, hashAlgo: '', hash: '' };
    case 'fixed':
      return { path: o.path, hashAlgo: printMethodAlgo(o.method, o.hash.algorithm), hash: o.hash.base16 };
    case 'floating':
      return { path: '', hashAlgo: printMethodAlgo(o.method, o.algorithm), hash: '' };
    case 'deferred':
      return { path: '', hashAlgo: '', hash: '' };
    case 'impure':
      return { path: '', hashAlgo: printMethodAlgo(o.method, o.algorithm), hash: 'impure' };
    default:
      return unreachable(o);
  }
}

/** The input closure of a derivation in `store`: input sources plus the wanted outputs of input derivations. */
export async function inputClosure(store: Store, drv: Derivation): Promise<Set<StorePath>> {
  const roots = new Set<StorePath>(drv.inputSrcs);
  for (const [inDrv, outs] of drv.inputDrvs) {
    const known = await store.queryDerivationOutputs(inDrv);
    for (const o of outs) {
      const p = known.get(o);
      if (!p)
        throw new StoreError('remote-input-missing', `output '${o}' of input derivation '${inDrv}' is not known in the local store`, {
          hint: 'build the inputs before building remotely',
        });
      roots.add(p);
    }
  }
  return store.computeClosure(roots);
}

/** One machine: connections kept open and reused, up to maxJobs builds at once. */
export class MachineBuilder implements RemoteBuilder {
  readonly machine: Machine;
  readonly name: string;
  private readonly opts: MachineBuilderOptions;
  private running = 0;
  private readonly idle: PooledConnection[] = [];
  private readonly all = new Set<PooledConnection>();
  private disabledUntil = 0;
  private disabledWhy = '';
  private waiters: (() => void)[] = [];
  private closed = false;
  private uploads: Promise<unknown> = Promise.resolve();

  constructor(m: Machine, opts: MachineBuilderOptions = {}) {
    this.machine = m;
    this.name = m.storeUri;
    this.opts = opts;
  }

  get load(): number {
    return this.running;
  }

  /** Open connections (idle or in use). */
  get connectionCount(): number {
    return this.all.size;
  }

  disabledReason(): string | undefined {
    if (this.closed) return 'the builder was closed';
    if (Date.now() < this.disabledUntil) return this.disabledWhy;
    return undefined;
  }

  waitForSlot(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(wake);
    });
  }

  private wakeWaiters(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  private uploadLock<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.uploads.then(fn, fn);
    this.uploads = p.catch(() => {});
    return p;
  }

  /** Open a new connection (handshake included). */
  private async connect(signal?: AbortSignal): Promise<PooledConnection> {
    // Kept until the first build takes them: what the machine's ssh (or program) says while connecting.
    const early: string[] = [];
    const stderrTo: PooledConnection['stderrTo'] = { fn: (line) => early.push(line) };
    const onStderr = (line: string): void => stderrTo.fn?.(line);
    let transport: Transport;
    let protocol: 'worker' | 'serve';
    let cleanup: (() => void) | undefined;
    if (this.opts.openTransport) {
      transport = this.opts.openTransport(this.machine, onStderr);
      protocol = !isLocalStoreUri(this.machine.storeUri) && parseStoreUri(this.machine.storeUri).scheme === 'ssh' ? 'serve' : 'worker';
    } else {
      const c = remoteCommand(this.machine, this.opts);
      protocol = c.protocol;
      cleanup = c.cleanup;
      await loadExeca();
      transport = StdioTransport.spawn(c.command, c.args, { env: this.opts.env, onStderr });
    }
    if (cleanup) void transport.closed.finally(cleanup);
    const common = { name: this.name, storeDir: this.opts.storeDir, signal };
    let client: Client;
    if (protocol === 'worker') {
      client = await WorkerConnection.connect(transport, { ...this.opts.workerOptions, ...common });
    } else {
      client = await ServeConnection.connect(transport, common);
    }
    const pc = { client, stderrTo, early };
    this.all.add(pc);
    void transport.closed.then(() => {
      this.all.delete(pc);
    });
    return pc;
  }

  private async acquire(signal?: AbortSignal): Promise<PooledConnection> {
    while (this.idle.length) {
      const pc = this.idle.pop()!;
      if (pc.client.usable) return pc;
    }
    try {
      const pc = await this.connect(signal);
      this.disabledUntil = 0;
      return pc;
    } catch (e) {
      if (signal?.aborted) throw e;
      this.disabledUntil = Date.now() + (this.opts.disableAfterFailureMs ?? 60_000);
      this.disabledWhy = `unreachable: ${(e as Error).message.split('\n')[0]}`;
      throw e;
    }
  }

  private release(pc: PooledConnection): void {
    if (pc.client.usable && !this.closed) this.idle.push(pc);
    else void pc.client.close();
  }

  async build(drvPath: StorePath, drv: Derivation, given: RemoteBuildOptions): Promise<RemoteBuildResult> {
    this.running++;
    let pc: PooledConnection | undefined;
    let stage: RemoteBuildErrorKind = 'connection';
    const told = given.onStep;
    const opts: BuildCalls = { ...given, onStep: told && ((step, phase) => told(step, phase, this.name)) };
    const { store, signal } = opts;
    const onEvent = logForwarder(opts);
    try {
      if (this.closed) throw new RemoteConnectionError(`the builder for '${this.name}' was closed`);
      signal?.throwIfAborted();
      const tStart = performance.now();
      pc = await asStep(opts.onStep, { kind: 'connect' }, async () => {
        const c = await this.acquire(signal).catch((e: unknown) => {
          if (e instanceof RemoteConnectionError && e.remoteStderr) opts.onStderr?.(e.remoteStderr);
          throw e;
        });
        // An ssh-ng:// machine's ssh writes to Nix's stderr while Nix connects (onStderr); once its hook has
        // accepted the build, Nix drops such lines of the hook's stderr.
        if (c.client instanceof WorkerConnection && c.early) {
          if (c.early.length) opts.onStderr?.(c.early.join('\n'));
          c.early = undefined;
          c.stderrTo.fn = undefined;
        }
        return c;
      });
      const tConnected = performance.now();
      // Connected: the machine takes the build (Nix's hook accepts it only once it has connected).
      opts.onStart?.(this.name);
      // An ssh:// machine's stderr is the build's log (Nix gives its ssh the log's fd): what it said while
      // connecting comes first, once the build is announced.
      if (pc.client instanceof ServeConnection) {
        const logLine = (line: string) => onEvent({ type: 'result', id: 0n, resultType: ResultType.BuildLogLine, fields: [line] });
        for (const line of pc.early ?? []) logLine(line);
        pc.early = undefined;
        pc.stderrTo.fn = logLine;
      }
      stage = 'copy';
      const inputs = opts.inputPaths ? new Set(opts.inputPaths) : await inputClosure(store, drv);
      const order = await this.uploadInputs(pc.client, store, drvPath, inputs, signal, onEvent, opts);
      stage = 'refused';
      const tUploaded = performance.now();
      const res = await this.runBuild(pc, drvPath, toWireDerivation(drv, inputs), opts, onEvent);
      const tBuilt = performance.now();
      const timings = (tDone: number) => ({
        connect: tConnected - tStart,
        upload: tUploaded - tConnected,
        build: tBuilt - tUploaded,
        download: tDone - tBuilt,
      });
      const base = {
        status: res.status,
        errorMsg: res.errorMsg,
        colouredErrorMsg: res.colouredErrorMsg,
        machine: this.name,
        timesBuilt: res.timesBuilt,
        isNonDeterministic: res.isNonDeterministic,
        startTime: res.startTime,
        stopTime: res.stopTime,
        copiedInputs: order,
      };
      if (!isSuccessStatus(res.status)) return { ...base, builtOutputs: new Map(), copiedOutputs: [], timings: timings(performance.now()) };
      stage = 'copy';
      const { outPaths, fetched } = await this.copyOutputsBack(pc.client, store, drvPath, drv, res, opts);
      return { ...base, builtOutputs: outPaths, copiedOutputs: fetched, timings: timings(performance.now()) };
    } catch (e) {
      throw this.buildFailure(e, drvPath, stage, pc, signal);
    } finally {
      if (pc) {
        pc.stderrTo.fn = undefined;
        this.release(pc);
      }
      this.running--;
      this.wakeWaiters();
    }
  }

  /**
   * Step 1 of a build: the inputs the remote lacks, with their closure, copied in topological order
   * (returned). As Nix's upload lock: one copy to a machine at a time, so builds sharing inputs send them once.
   */
  private uploadInputs(
    client: ServeConnection | WorkerConnection,
    store: Store,
    drvPath: StorePath,
    inputs: ReadonlySet<StorePath>,
    signal: AbortSignal | undefined,
    onEvent: OnRemoteLog,
    opts: Pick<BuildCalls, 'onStep' | 'useSubstitutes'>,
  ): Promise<StorePath[]> {
    const { onStep } = opts;
    onStep?.({ kind: 'upload-lock' }, 'start');
    return this.uploadLock(async () => {
      onStep?.({ kind: 'upload-lock' }, 'end');
      return asStep(onStep, { kind: 'copy-inputs' }, async () => {
        // With useSubstitutes the remote first substitutes what it lacks (Nix's builders-use-substitutes); a
        // daemon does only with its `substitute` setting on, which Nix's hook sends (on by default).
        const substitute = opts.useSubstitutes === true && inputs.size > 0;
        if (substitute && client instanceof WorkerConnection && !client.options.useSubstitutes)
          await client.setOptions({ ...client.options, useSubstitutes: true }, { signal });
        const present = inputs.size ? await client.queryValidPaths(inputs, { signal, substitute }) : new Set<StorePath>();
        const infos = new Map<StorePath, PathInfo>();
        for (const p of inputs) {
          if (present.has(p)) continue;
          const info = await store.queryPathInfo(p);
          if (!info)
            throw new RemoteBuildError(this.name, 'copy', `input '${p}' of '${drvPath}' is not valid in the local store`, {
              hint: 'build or substitute the inputs before building remotely',
            });
          // Not ultimate there (trusted only by signatures), as Nix's copyStorePath sends it.
          infos.set(p, { ...info, ultimate: false });
        }
        const sorted = topoSortPaths(infos);
        const nar = (p: StorePath) =>
          onStep ? narAsStep(store.narFromPath(p), onStep, { kind: 'copy-path', direction: 'to', path: p }) : store.narFromPath(p);
        await asStep(onStep, { kind: 'copy-paths', direction: 'to', paths: sorted }, async () => {
          if (sorted.length)
            await client.addMultipleToStore(
              sorted.map((p) => ({ info: infos.get(p)!, nar: nar(p) })),
              { signal, onLog: onEvent },
            );
        });
        return sorted;
      });
    });
  }

  /** Step 2: the build on the remote, with the settings of this build (a failed build is a result). */
  private async runBuild(pc: PooledConnection, drvPath: StorePath, wire: WireDerivation, opts: BuildCalls, onEvent: OnRemoteLog): Promise<WireBuildResult> {
    const { client } = pc;
    const { signal } = opts;
    pc.stderrTo.fn = client instanceof ServeConnection ? (l) => client.stderrLine(l) : undefined;
    if (client instanceof ServeConnection)
      return client.buildDerivation(drvPath, wire, { ...this.opts.serveBuildSettings, ...opts.buildSettings, signal, onLog: onEvent });
    // (A `substitute` turned on for the inputs stays on: it does not change how the build runs.)
    const wanted = {
      ...workerOptionsFor(this.opts.workerOptions ?? {}, opts.buildSettings, client.options),
      ...(client.options.useSubstitutes ? { useSubstitutes: true } : {}),
    };
    if (!sameOptions(wanted, client.options)) await client.setOptions(wanted, { signal });
    return client.buildDerivation(drvPath, wire, { signal, onLog: onEvent });
  }

  /** Step 3: the wanted outputs' paths, and those not yet valid locally copied back (verified) in topological order. */
  private async copyOutputsBack(
    client: ServeConnection | WorkerConnection,
    store: Store,
    drvPath: StorePath,
    drv: Derivation,
    res: WireBuildResult,
    opts: BuildCalls,
  ): Promise<{ outPaths: Map<string, StorePath>; fetched: StorePath[] }> {
    const { signal } = opts;
    const outPaths = new Map<string, StorePath>();
    for (const name of opts.wantedOutputs ?? [...drv.outputs.keys()]) {
      const o = drv.outputs.get(name);
      const p = o && (o.type === 'input-addressed' || o.type === 'fixed') ? o.path : res.builtOutputs.get(name)?.outPath;
      if (!p) throw new RemoteBuildError(this.name, 'copy', `'${this.name}' built '${drvPath}' but did not report the path of output '${name}'`);
      outPaths.set(name, p);
    }
    const localValid = await store.queryValidPaths(outPaths.values());
    const toFetch = new Map<StorePath, PathInfo>();
    for (const p of outPaths.values()) {
      if (localValid.has(p) || toFetch.has(p)) continue;
      const info = await client.queryPathInfo(p, { signal });
      if (!info) throw new RemoteBuildError(this.name, 'copy', `'${this.name}' built '${drvPath}' but its output '${p}' is not valid there`);
      toFetch.set(p, info);
    }
    const fetched: StorePath[] = [];
    const sorted = topoSortPaths(toFetch);
    const fetchOne = async (p: StorePath): Promise<void> => {
      const info = toFetch.get(p)!;
      // Not ultimate here: built elsewhere, as Nix's copyStorePath registers it.
      await store.addToStore({ ...info, ultimate: false, registrationTime: undefined }, verifiedNar(client.narFromPath(p, { signal }), info, this.name), {
        signal,
      });
      fetched.push(p);
    };
    // As Nix's hook, which copies outputs back only when some are missing here.
    if (sorted.length) {
      const { onStep } = opts;
      await asStep(onStep, { kind: 'copy-outputs' }, () =>
        asStep(onStep, { kind: 'copy-paths', direction: 'from', paths: sorted }, async () => {
          for (const p of sorted) await asStep(onStep, { kind: 'copy-path', direction: 'from', path: p }, () => fetchOne(p));
        }),
      );
    }
    return { outPaths, fetched };
  }

  /** A build's failure as a RemoteBuildError of its kind; a lost connection also disables the machine for a while. */
  private buildFailure(
    e: unknown,
    drvPath: StorePath,
    stage: RemoteBuildErrorKind,
    pc: PooledConnection | undefined,
    signal: AbortSignal | undefined,
  ): RemoteBuildError {
    if (signal?.aborted) {
      return new RemoteBuildError(this.name, 'aborted', `remote build of '${drvPath}' on '${this.name}' was cancelled`, { cause: signal.reason });
    }
    if (e instanceof RemoteBuildError) return e;
    const kind: RemoteBuildErrorKind = e instanceof RemoteConnectionError || (pc && !pc.client.usable) ? 'connection' : stage;
    if (kind === 'connection' && pc) {
      this.disabledUntil = Date.now() + (this.opts.disableAfterFailureMs ?? 60_000);
      this.disabledWhy = `lost the connection during a build: ${(e as Error).message.split('\n')[0]}`;
    }
    const what = kind === 'connection' ? 'lost the connection' : kind === 'refused' ? 'the remote refused the build' : 'copying failed';
    const msg = e instanceof RealiseError ? e.shortMessage : (e as Error).message;
    // What ssh said, which an ssh-ng:// connection's error keeps beside its message (Nix's words).
    const said = e instanceof RemoteConnectionError && e.remoteStderr ? `\n${e.remoteStderr}` : '';
    return new RemoteBuildError(this.name, kind, `cannot build '${drvPath}' on '${this.name}': ${what}: ${msg}${said}`, {
      cause: e,
      hint:
        kind === 'connection'
          ? 'the build can be retried on another machine or locally (fallback)'
          : e instanceof RemoteDaemonError
            ? 'the remote Nix refused the operation; the local user may need to be in its trusted-users'
            : undefined,
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.idle.length = 0;
    await Promise.all([...this.all].map((pc) => pc.client.close()));
    this.wakeWaiters();
  }
}

/** Hash the NAR while it streams; throw before its end if the hash or size differs from `info`. */
async function* verifiedNar(source: NarSource, info: PathInfo, machine: string): AsyncGenerator<Uint8Array> {
  const h = new HashSink(info.narHash.algorithm);
  const it = source[Symbol.asyncIterator]();
  let done = false;
  try {
    let prev: Uint8Array | undefined;
    // Hold back the last chunk until the hash is checked, so a bad NAR never completes.
    for (;;) {
      const n = await it.next();
      if (n.done) {
        done = true;
        break;
      }
      h.update(n.value);
      if (prev) yield prev;
      prev = n.value;
    }
    const { hash, size } = h.finish();
    if (!hash.equals(info.narHash) || size !== info.narSize) {
      throw new RemoteBuildError(
        machine,
        'copy',
        `NAR of '${info.path}' from '${machine}' does not match its hash: expected ${info.narHash.toString('base32')} (${info.narSize} bytes), got ${hash.toString('base32')} (${size} bytes)`,
      );
    }
    if (prev) yield prev;
  } finally {
    // The consumer stopped early (e.g. the store failed): let the source finish its transfer.
    if (!done) await it.return?.();
  }
}

/**
 * Whether `signal` already takes 10,000 listeners or has no limit (0). Node 20's getMaxListeners throws for
 * a signal whose limit was set to 0 (the engine's worker signal): that is no limit.
 */
function unlimitedListeners(signal: AbortSignal): boolean {
  let limit: number;
  try {
    limit = getMaxListeners(signal);
  } catch {
    return true;
  }
  return limit === 0 || limit >= 10_000;
}

/** Machines as builders: from a `builders` string / machines file text, or typed machines. */
export function createRemoteBuilders(
  spec: string | readonly (Machine | MachineOptions)[],
  opts: MachineBuilderOptions & { thisSystem?: string } = {},
): MachineBuilder[] {
  const machines =
    typeof spec === 'string' ? parseMachines(spec, { thisSystem: opts.thisSystem }) : spec.map((m) => makeMachine(m, { thisSystem: opts.thisSystem }));
  return machines.map((m) => new MachineBuilder(m, opts));
}

export type RemoteDispatch =
  | { readonly kind: 'built'; readonly result: RemoteBuildResult }
  /** No machine can take it (or preferLocalBuild): build locally if possible; `error` explains each machine. */
  | { readonly kind: 'declined'; readonly error: NoMachineError };

/**
 * The build hook, improved: choose the least loaded fitting machine (waiting for a slot when all are busy),
 * build there, and when a machine is unreachable or drops the connection, redo the build on another one.
 * Build failures are results; a cancelled build throws RemoteBuildError('aborted').
 */
export async function buildOnRemote(
  builders: readonly RemoteBuilder[],
  drvPath: StorePath,
  drv: Derivation,
  req: Omit<MachineRequest, 'drvPath' | 'system'> & { system?: string },
  opts: RemoteBuildOptions,
): Promise<RemoteDispatch> {
  const failedNames = new Set<string>();
  // Every waiting or running remote build listens on the caller's signal: a DAG puts hundreds on one.
  if (opts.signal && !unlimitedListeners(opts.signal)) setMaxListeners(10_000, opts.signal);
  const request: MachineRequest = { ...req, system: req.system ?? drv.platform, drvPath };
  for (;;) {
    opts.signal?.throwIfAborted();
    const choice = selectMachine(
      builders.map((b) => Object.assign(Object.create(b.machine) as Machine, { builder: b })) as (Machine & { builder: RemoteBuilder })[],
      request,
      (m) => m.builder.load,
      (m) => (failedNames.has(m.builder.name) ? 'failed during this build' : m.builder.disabledReason()),
    );
    if (choice.kind === 'declined') return { kind: 'declined', error: choice.error };
    if (choice.kind === 'busy') {
      if (opts.localSlotFree?.())
        return {
          kind: 'declined',
          error: new NoMachineError(`every machine that can build '${drvPath}' is busy`, []),
        };
      const ac = new AbortController();
      const onAbort = (): void => ac.abort(opts.signal!.reason);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const askAgain = opts.onBusy?.(ac.signal);
        await Promise.race([...choice.candidates.map((m) => m.builder.waitForSlot(ac.signal)), ...(askAgain ? [askAgain] : [])]);
      } finally {
        ac.abort();
        opts.signal?.removeEventListener('abort', onAbort);
      }
      continue;
    }
    const b = choice.machine.builder;
    const taken = takenBy(b.name, opts);
    try {
      const result = await b.build(drvPath, drv, taken.opts);
      taken.start();
      return { kind: 'built', result };
    } catch (e) {
      if (e instanceof RemoteBuildError && e.kind === 'connection') {
        failedNames.add(b.name);
        opts.onMachineFailed?.(e);
        continue;
      }
      throw e;
    }
  }
}

/**
 * The build's callbacks for one machine, with `onStart` told once: by the builder (MachineBuilder tells it once
 * connected), else before the first log line or event it passes on, else when its build() resolves — a
 * RemoteBuilder written by a user may never tell it, and the engine's build-started and remote-log need it.
 */
function takenBy(name: string, opts: RemoteBuildOptions): { opts: RemoteBuildOptions; start: () => void } {
  let started = false;
  const start = (): void => {
    if (started) return;
    started = true;
    opts.onStart?.(name);
  };
  const { onStart, onEvent, onLog } = opts;
  return {
    opts: {
      ...opts,
      onStart: (machine) => {
        started = true;
        onStart?.(machine);
      },
      onEvent:
        onEvent &&
        ((e) => {
          start();
          onEvent(e);
        }),
      onLog:
        onLog &&
        ((line) => {
          start();
          onLog(line);
        }),
    },
    start,
  };
}

/** The log events of a build to its callbacks; a throwing callback must not break the protocol stream, so its errors are ignored. */
function logForwarder(opts: Pick<RemoteBuildOptions, 'onEvent' | 'onLog'>): OnRemoteLog {
  return (e: RemoteLogEvent): void => {
    try {
      opts.onEvent?.(e);
      if (opts.onLog) {
        const line = buildLogLine(e);
        if (line !== undefined) opts.onLog(line);
      }
    } catch {
      /* ignored */
    }
  };
}
