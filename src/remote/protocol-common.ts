/**
 * What both remote protocols share: the connection itself (one transport, operations serialised on it, the
 * handshake's failure explained, NARs streamed out of it), and the values they send alike: the
 * BasicDerivation as it travels on the wire, build results, realisations (`DrvOutputs`), and path infos.
 */
import { Hash } from '../store/hash.js';
import type { NarSource, PathInfo } from '../store/store-api.js';
import { DEFAULT_STORE_DIR, parseStorePath, type StorePath } from '../store/store-path.js';
import { RemoteConnectionError, RemoteProtocolError } from './errors.js';
import { parseStoreUri, type StoreUri } from './machines.js';
import { connectionLost, type Transport } from './transport.js';
import { WireReader, WireWriter, type WireEncoder } from './wire.js';
import type { OnRemoteLog } from './worker-protocol.js';

/** One output as written in a .drv: path (may be empty for floating CA), hash algorithm (`r:sha256`), hash (base16). */
export interface WireDerivationOutput {
  readonly path: string;
  readonly hashAlgo: string;
  readonly hash: string;
}

/**
 * Nix's BasicDerivation: a derivation without `inputDrvs` (their outputs are folded into `inputSrcs`), as the
 * remote builds it. Outputs are written sorted by name, env sorted by key (Nix's std::map order).
 */
export interface WireDerivation {
  readonly outputs: ReadonlyMap<string, WireDerivationOutput> | Readonly<Record<string, WireDerivationOutput>>;
  readonly inputSrcs: Iterable<StorePath>;
  readonly platform: string;
  readonly builder: string;
  readonly args: readonly string[];
  readonly env: ReadonlyMap<string, string> | Readonly<Record<string, string>>;
}

function entries<V>(m: ReadonlyMap<string, V> | Readonly<Record<string, V>>): [string, V][] {
  const list = m instanceof Map ? [...(m as ReadonlyMap<string, V>).entries()] : Object.entries(m as Record<string, V>);
  return list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Nix's `writeDerivation(Sink, Store, BasicDerivation)`. */
export function writeBasicDerivation(w: WireEncoder, drv: WireDerivation): void {
  const outs = entries(drv.outputs);
  w.u64(outs.length);
  for (const [name, o] of outs) w.string(name).string(o.path).string(o.hashAlgo).string(o.hash);
  w.strings([...new Set(drv.inputSrcs)].sort());
  w.string(drv.platform).string(drv.builder).strings(drv.args);
  w.stringMap(entries(drv.env));
}

/** Output names of a wire derivation, with their paths (empty string for floating outputs). */
export function wireOutputPaths(drv: WireDerivation): Map<string, string> {
  return new Map(entries(drv.outputs).map(([name, o]) => [name, o.path]));
}

/** Nix's BuildResult::Status, as strings (ARCHITECTURE.md naming). */
export type WireBuildStatus =
  | 'built'
  | 'substituted'
  | 'already-valid'
  | 'permanent-failure'
  | 'input-rejected'
  | 'output-rejected'
  | 'transient-failure'
  | 'cached-failure'
  | 'timed-out'
  | 'misc-failure'
  | 'dependency-failed'
  | 'log-limit-exceeded'
  | 'not-deterministic'
  | 'resolves-to-already-valid'
  | 'no-substituters';

const STATUSES: readonly WireBuildStatus[] = [
  'built',
  'substituted',
  'already-valid',
  'permanent-failure',
  'input-rejected',
  'output-rejected',
  'transient-failure',
  'cached-failure',
  'timed-out',
  'misc-failure',
  'dependency-failed',
  'log-limit-exceeded',
  'not-deterministic',
  'resolves-to-already-valid',
  'no-substituters',
];

export function buildStatusFromWire(n: number): WireBuildStatus {
  const s = STATUSES[n];
  if (!s) throw new RemoteProtocolError(`remote sent unknown build status ${n}`);
  return s;
}

export function isSuccessStatus(s: WireBuildStatus): boolean {
  return s === 'built' || s === 'substituted' || s === 'already-valid' || s === 'resolves-to-already-valid';
}

/** A realisation as the remote reports it: which path an output of a derivation (by hash modulo) got. */
export interface WireRealisation {
  /** `sha256:<hash modulo>!<output>` */
  readonly id: string;
  readonly outputName: string;
  readonly outPath: StorePath;
  readonly signatures: readonly string[];
}

/** The result of BuildDerivation on the remote. */
export interface WireBuildResult {
  /** Nix's BuildResult status as the remote reports it. */
  readonly status: WireBuildStatus;
  /** The remote's error message without Nix's colours ('' on success). */
  readonly errorMsg: string;
  /** The error message as the remote sent it, in its Nix's colours. */
  readonly colouredErrorMsg: string;
  readonly timesBuilt: number;
  readonly isNonDeterministic: boolean;
  /** Seconds since the epoch (0 when unknown). */
  readonly startTime: number;
  readonly stopTime: number;
  /** Output name → realisation, when the remote reports them. */
  readonly builtOutputs: ReadonlyMap<string, WireRealisation>;
}

/** A message without the terminal colours Nix puts in it. */
export function stripAnsi(s: string): string {
  return s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

/**
 * A BuildResult as both protocols send it: the status, the error message (with and without Nix's colours), then,
 * when the peer's protocol version has them, the times and the realisations of the built outputs.
 */
export async function readBuildResult(r: WireReader, storeDir: string, has: { times: boolean; builtOutputs: boolean }): Promise<WireBuildResult> {
  const status = buildStatusFromWire(await r.u64());
  const colouredErrorMsg = await r.string();
  const errorMsg = stripAnsi(colouredErrorMsg);
  let timesBuilt = 0,
    isNonDeterministic = false,
    startTime = 0,
    stopTime = 0;
  if (has.times) {
    timesBuilt = await r.u64();
    isNonDeterministic = await r.bool();
    startTime = await r.u64();
    stopTime = await r.u64();
  }
  const builtOutputs = has.builtOutputs ? await readDrvOutputs(r, storeDir) : new Map<string, WireRealisation>();
  return { status, errorMsg, colouredErrorMsg, timesBuilt, isNonDeterministic, startTime, stopTime, builtOutputs };
}

/** Read a `DrvOutputs` map (DrvOutput id → Realisation JSON). */
export async function readDrvOutputs(r: WireReader, storeDir: string): Promise<Map<string, WireRealisation>> {
  const n = await r.u64();
  const out = new Map<string, WireRealisation>();
  for (let i = 0; i < n; i++) {
    const id = await r.string();
    const json = await r.string();
    let parsed: { id?: string; outPath?: string; signatures?: string[] };
    try {
      parsed = JSON.parse(json) as typeof parsed;
    } catch (e) {
      throw new RemoteProtocolError(`remote sent a realisation that is not JSON: '${json.slice(0, 100)}'`, { cause: e });
    }
    const outputName = id.slice(id.lastIndexOf('!') + 1);
    const p = parsed.outPath ?? '';
    out.set(outputName, {
      id,
      outputName,
      outPath: p.startsWith('/') ? p : `${storeDir}/${p}`,
      signatures: parsed.signatures ?? [],
    });
  }
  return out;
}

/**
 * A ValidPathInfo as both protocols send it with a NAR (AddToStoreNar of either, and each entry of the
 * worker protocol's AddMultipleToStore): path, deriver, NAR hash (base16), references, registration time,
 * NAR size, ultimate, signatures, content address.
 */
export function writePathInfo<W extends WireEncoder>(w: W, info: PathInfo): W {
  w.string(info.path)
    .string(info.deriver ?? '')
    .string(info.narHash.base16);
  w.strings([...info.references].sort())
    .u64(info.registrationTime ?? 0)
    .u64(info.narSize)
    .u64(info.ultimate ?? false);
  w.strings([...(info.sigs ?? [])].sort()).string(info.ca ?? '');
  return w;
}

/** Parse a NAR hash as the daemon sends it (base16 without prefix, or prefixed in any encoding). */
export function parseWireNarHash(s: string): Hash {
  return s.includes(':') || s.includes('-') ? Hash.parse(s) : Hash.parse(s, 'sha256');
}

/** Topological order of `paths` by their references (references first), as Nix copies closures. */
export function topoSortPaths(infos: ReadonlyMap<StorePath, Pick<PathInfo, 'references'>>): StorePath[] {
  const out: StorePath[] = [];
  const state = new Map<StorePath, 1 | 2>();
  const visit = (p: StorePath): void => {
    const s = state.get(p);
    if (s === 2) return;
    if (s === 1) return; // a cycle other than a self-reference cannot occur in a valid store; ignore
    state.set(p, 1);
    for (const ref of infos.get(p)!.references) if (ref !== p && infos.has(ref)) visit(ref);
    state.set(p, 2);
    out.push(p);
  };
  for (const p of [...infos.keys()].sort()) visit(p);
  return out;
}

export interface ProtocolConnectionOptions {
  /** Logical store directory of the remote. @default '/nix/store' */
  readonly storeDir?: string;
  /** Name used in messages (the machine URI). @default the transport's description */
  readonly name?: string;
  /** Log events of every operation not given its own handler. */
  readonly onLog?: OnRemoteLog;
}

/** The scheme and `[user@]host` of an `ssh://` or `ssh-ng://` store (Nix's SSH stores name the host so in their messages). */
export interface SshStoreHost {
  readonly scheme: 'ssh' | 'ssh-ng';
  readonly host: string;
}

/** The SshStoreHost of a store URI (without its path and parameters), or undefined for another name. */
function sshStoreHost(name: string): SshStoreHost | undefined {
  let uri: StoreUri;
  try {
    uri = parseStoreUri(name);
  } catch {
    return undefined;
  }
  const host = uri.authority.split('/')[0]!;
  return (uri.scheme === 'ssh' || uri.scheme === 'ssh-ng') && host ? { scheme: uri.scheme, host } : undefined;
}

/**
 * One connection of either protocol: operations run one at a time (`op`); a failure the protocol cannot
 * resynchronise after (anything but what `survives` accepts) breaks the connection for good, and so
 * does an abort (it closes the transport).
 */
export abstract class ProtocolConnection {
  readonly transport: Transport;
  readonly name: string;
  readonly storeDir: string;
  protected readonly reader: WireReader;
  protected readonly writer: WireWriter;
  /** Where log events of the running operation go. */
  protected currentLog: OnRemoteLog | undefined;
  private readonly defaultLog: OnRemoteLog | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private brokenBy: Error | undefined;

  protected constructor(transport: Transport, opts: ProtocolConnectionOptions) {
    this.transport = transport;
    this.name = opts.name ?? transport.description;
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    this.defaultLog = opts.onLog;
    this.reader = new WireReader(transport.input, `'${this.name}'`);
    this.writer = new WireWriter(transport.output, `'${this.name}'`);
    connectionLost(transport).catch((e: Error) => {
      this.brokenBy ??= e;
      this.reader.fail(e);
    });
  }

  /**
   * Run `handshake` on a new connection; on failure close it and say what went wrong, with the remote's
   * last stderr lines and `hint`. Errors `passThrough` accepts are thrown as they are.
   */
  protected static async open<C extends ProtocolConnection>(
    conn: C,
    signal: AbortSignal | undefined,
    handshake: () => Promise<void>,
    hint: string,
    passThrough: (e: unknown) => boolean = () => false,
  ): Promise<C> {
    const onAbort = (): void => {
      void conn.close();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      signal?.throwIfAborted();
      await handshake();
      return conn;
    } catch (e) {
      await conn.close();
      if (signal?.aborted) throw signal.reason;
      if (passThrough(e)) throw e;
      const tail = conn.transport.stderrTail();
      // The stream ended (the remote process exited: ssh could not connect or log in, no such program).
      if (e instanceof RemoteConnectionError) {
        const ssh = sshStoreHost(conn.name);
        if (ssh) throw conn.sshConnectFailure(e, ssh, tail, hint);
      }
      throw conn.connectFailure(e, tail, hint);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * The error of a handshake that failed with `e`, the remote having written `tail` to stderr (unless it is
   * an `ssh://` or `ssh-ng://` store whose stream ended: sshConnectFailure): what went wrong with the stderr
   * lines below it.
   */
  private connectFailure(e: unknown, tail: string, hint: string): RemoteConnectionError {
    const message = (e as Error).message;
    return new RemoteConnectionError(`cannot open a connection to '${this.name}': ${message}${tail && !message.includes(tail) ? `\n${tail}` : ''}`, {
      cause: e,
      hint,
    });
  }

  /** This protocol's words for a handshake on the `ssh://` or `ssh-ng://` store `ssh` whose stream ended (`e`). */
  protected abstract sshConnectFailure(e: RemoteConnectionError, ssh: SshStoreHost, tail: string, hint: string): RemoteConnectionError;

  /** Whether the connection can still be used. */
  get usable(): boolean {
    return !this.brokenBy;
  }

  /** Close the connection (ends the remote process; a running remote build is stopped). Idempotent. */
  async close(): Promise<void> {
    this.brokenBy ??= new RemoteConnectionError(`connection to '${this.name}' was closed`);
    this.reader.fail(this.brokenBy);
    await this.transport.close();
  }

  /** Whether the connection stays usable after an operation threw `e` (an error the peer reported in order). */
  protected survives(_e: unknown): boolean {
    return false;
  }

  /** `e`, which broke the connection, as the caller is told it. */
  protected explainBreak(e: unknown): unknown {
    return e;
  }

  protected markBroken(e: unknown): void {
    this.brokenBy ??= e instanceof Error ? e : new Error(String(e));
    void this.transport.close();
  }

  /** Validate before sending: a remote that cannot parse a request drops the connection. */
  protected checkPath(p: string): void {
    parseStorePath(p, this.storeDir);
  }

  /** `paths` once each, sorted (as Nix's StorePathSet), each checked. */
  protected checkedPaths(paths: Iterable<StorePath>): StorePath[] {
    const list = [...new Set(paths)].sort();
    list.forEach((p) => this.checkPath(p));
    return list;
  }

  /** Run one operation exclusively, its log events to `onLog` (else the connection's). */
  protected op<T>(fn: () => Promise<T>, onLog?: OnRemoteLog, signal?: AbortSignal): Promise<T> {
    const run = async (): Promise<T> => {
      if (this.brokenBy) throw this.brokenBy;
      signal?.throwIfAborted();
      const onAbort = (): void => {
        void this.close();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.currentLog = onLog ?? this.defaultLog;
      try {
        return await fn();
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (this.survives(e)) throw e;
        this.markBroken(e);
        throw this.explainBreak(e);
      } finally {
        this.currentLog = undefined;
        signal?.removeEventListener('abort', onAbort);
      }
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /**
   * The NAR the remote sends after `request` (which writes the request and reads up to the NAR), streamed.
   * The connection stays busy until the stream is fully read; stopping early (break, throw) reads the
   * rest, so the connection stays usable. A failure reading it breaks the connection.
   */
  protected streamNar(path: StorePath, request: () => Promise<void>, signal: AbortSignal | undefined): NarSource {
    const self = this;
    return (async function* (): AsyncGenerator<Uint8Array> {
      self.checkPath(path);
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      let gotStream!: (g: AsyncGenerator<Buffer>) => void;
      let failed!: (e: unknown) => void;
      const ready = new Promise<AsyncGenerator<Buffer>>((resolve, reject) => {
        gotStream = resolve;
        failed = reject;
      });
      const running = self.op(
        async () => {
          await request();
          gotStream(self.reader.nar());
          await held; // hold the connection until the consumer is finished
        },
        undefined,
        signal,
      );
      running.catch(failed);
      const g = await ready;
      let complete = false;
      try {
        for (let n = await g.next(); !n.done; n = await g.next()) yield n.value;
        complete = true;
      } catch (e) {
        self.markBroken(e);
        throw e;
      } finally {
        if (!complete && self.usable) await self.drain(g);
        release();
        await running.catch(() => {});
      }
    })();
  }

  /** Read what is left of a NAR the consumer stopped reading; a failure breaks the connection. */
  private async drain(g: AsyncGenerator<Buffer>): Promise<void> {
    try {
      while (!(await g.next()).done);
    } catch (e) {
      this.markBroken(e);
    }
  }
}
