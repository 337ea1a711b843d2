/**
 * Client of the Nix daemon worker protocol (what `nix-daemon --stdio` and `ssh-ng://` speak).
 * We offer protocol 1.35 (Nix 2.15–2.18's). Every field is gated on the lower of both versions, as Nix does,
 * so a Nix 2.8 daemon (1.34) is spoken to at 1.34 and daemons back to Nix 2.3 (1.21) work; recent Lix
 * pins 1.35 as both its version and its minimum, so offering 1.34 would shut Lix out.
 *
 * Each operation writes its request, then runs the "stderr loop": the daemon sends log messages,
 * activities and results until STDERR_LAST (success) or STDERR_ERROR (the operation failed; the
 * connection stays usable). Operations on one connection are serialised.
 */
import type { Hash } from '../store/hash.js';
import type { NarSource, PathInfo } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import { RemoteConnectionError, RemoteDaemonError, RemoteProtocolError } from './errors.js';
import {
  parseWireNarHash,
  ProtocolConnection,
  readBuildResult,
  stripAnsi,
  writeBasicDerivation,
  writePathInfo,
  type WireBuildResult,
  type WireDerivation,
  type SshStoreHost,
} from './protocol-common.js';
import type { Transport } from './transport.js';
import { encodeU64, WireEncoder, type WireReader } from './wire.js';
import { colouredValue, ERROR_PREFIX, hintfmt } from '../store/nix-message.js';

export const WORKER_MAGIC_1 = 0x6e697863;
export const WORKER_MAGIC_2 = 0x6478696f;
/** Protocol 1.35: Nix 2.18's and Lix's; Nix 2.8 (1.34) accepts it and answers at 1.34. */
export const WORKER_PROTOCOL_VERSION = (1 << 8) | 35;

export const WorkerOp = {
  IsValidPath: 1,
  QueryReferrers: 6,
  AddTextToStore: 8,
  BuildPaths: 9,
  AddTempRoot: 11,
  AddIndirectRoot: 12,
  SetOptions: 19,
  QueryAllValidPaths: 23,
  QueryPathInfo: 26,
  QueryValidPaths: 31,
  QueryValidDerivers: 33,
  BuildDerivation: 36,
  NarFromPath: 38,
  AddToStoreNar: 39,
  QueryMissing: 40,
  QueryDerivationOutputMap: 41,
  AddMultipleToStore: 44,
  BuildPathsWithResults: 46,
} as const;

/** Nix's BuildMode on the wire. */
function buildModeNumber(mode: 'normal' | 'repair' | 'check' | undefined): number {
  return mode === 'repair' ? 1 : mode === 'check' ? 2 : 0;
}

export const STDERR_NEXT = 0x6f6c6d67;
export const STDERR_READ = 0x64617461;
export const STDERR_WRITE = 0x64617416;
export const STDERR_LAST = 0x616c7473;
export const STDERR_ERROR = 0x63787470;
export const STDERR_START_ACTIVITY = 0x53545254;
export const STDERR_STOP_ACTIVITY = 0x53544f50;
export const STDERR_RESULT = 0x52534c54;

/** Nix's ActivityType and ResultType numbers we look at. */
export const ActivityType = { CopyPath: 100, FileTransfer: 101, Realise: 102, CopyPaths: 103, Builds: 104, Build: 105, Substitute: 108 } as const;
export const ResultType = { BuildLogLine: 101, SetPhase: 104, Progress: 105, SetExpected: 106, PostBuildLogLine: 107 } as const;

export type LogField = number | string;

/** What the remote tells while an operation runs (Nix's tunnelled logger). */
export type RemoteLogEvent =
  | { readonly type: 'message'; readonly text: string }
  | {
      readonly type: 'start-activity';
      readonly id: bigint;
      readonly level: number;
      readonly activityType: number;
      readonly text: string;
      readonly fields: readonly LogField[];
      readonly parent: bigint;
    }
  | { readonly type: 'stop-activity'; readonly id: bigint }
  | { readonly type: 'result'; readonly id: bigint; readonly resultType: number; readonly fields: readonly LogField[] };

/** The build log line an event carries, if any (builder output, post-build hook output). */
export function buildLogLine(e: RemoteLogEvent): string | undefined {
  if (e.type === 'result' && (e.resultType === ResultType.BuildLogLine || e.resultType === ResultType.PostBuildLogLine)) {
    const f = e.fields[0];
    return typeof f === 'string' ? f : undefined;
  }
  return undefined;
}

export type OnRemoteLog = (e: RemoteLogEvent) => void;

/** Client settings sent with SetOptions (Nix's ClientSettings). */
export interface WorkerOptions {
  /** @default false */
  readonly keepFailed?: boolean;
  /** @default false */
  readonly keepGoing?: boolean;
  /** Build when substituting fails (Nix's `fallback`). @default false */
  readonly tryFallback?: boolean;
  /** Nix verbosity 0 (error) … 7 (vomit) for messages. @default 3 (info) */
  readonly verbosity?: number;
  /** @default 1 */
  readonly maxBuildJobs?: number;
  /** Seconds; 0 = no limit. @default 0 */
  readonly maxSilentTime?: number;
  /** @default 0 (all cores) */
  readonly buildCores?: number;
  /** Let the remote substitute missing paths. @default false */
  readonly useSubstitutes?: boolean;
  /** Further nix.conf settings (`timeout`, `max-build-log-size`, `sandbox`, ...); a trusted client may set any. */
  readonly overrides?: Readonly<Record<string, string>>;
}

/** A path info as the daemon returns it, in our Store's `PathInfo` shape. */
export type RemotePathInfo = PathInfo;

export interface WorkerConnectOptions extends WorkerOptions {
  /** Logical store dir of the remote (for realisation paths). @default '/nix/store' */
  readonly storeDir?: string;
  /** Log events of the handshake and of every operation not given its own handler. */
  readonly onLog?: OnRemoteLog;
  /** Name used in messages (the machine URI). */
  readonly name?: string;
  /** Protocol version to offer; for testing old-peer code paths. @default WORKER_PROTOCOL_VERSION */
  readonly clientVersion?: number;
  readonly signal?: AbortSignal;
}

/** A path to add with its info and NAR. */
export interface PathToAdd {
  readonly info: PathInfo;
  readonly nar: NarSource;
}

export class WorkerConnection extends ProtocolConnection {
  /** The daemon's protocol version (e.g. 0x122). */
  daemonVersion = 0;
  /** The version both sides use: the lower of ours and the daemon's. */
  version = 0;
  /** The daemon's Nix version string (protocol ≥ 1.33), e.g. `2.8.0`. */
  daemonNixVersion: string | undefined;
  /** Whether the daemon trusts us (protocol ≥ 1.35; undefined when it does not say). */
  remoteTrustsUs: boolean | undefined;

  private constructor(transport: Transport, opts: WorkerConnectOptions) {
    super(transport, opts);
  }

  /** Handshake and SetOptions over an open transport. Closes the transport on failure. */
  static async connect(transport: Transport, opts: WorkerConnectOptions = {}): Promise<WorkerConnection> {
    const conn = new WorkerConnection(transport, opts);
    const { keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime, buildCores, useSubstitutes, overrides } = opts;
    const options = Object.fromEntries(
      Object.entries({ keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime, buildCores, useSubstitutes, overrides }).filter(
        ([, v]) => v !== undefined,
      ),
    );
    return ProtocolConnection.open(
      conn,
      opts.signal,
      async () => {
        await conn.handshake(opts.clientVersion ?? WORKER_PROTOCOL_VERSION, opts.onLog);
        await conn.sendOptions(options);
      },
      'check that the remote runs Nix (nix-daemon in PATH, or set remote-program=) and that you can log in non-interactively',
      (e) => e instanceof RemoteDaemonError,
    );
  }

  /**
   * As Nix's `ssh-ng://` store words a remote that went away during the handshake: "cannot open connection
   * to remote store 'ssh-ng://HOST': error: unexpected end-of-file", after what ssh wrote to its stderr
   * (Nix's ssh writes there itself; here it is the error's `remoteStderr`).
   */
  protected override sshConnectFailure(e: RemoteConnectionError, ssh: SshStoreHost, tail: string, hint: string): RemoteConnectionError {
    // Nix formats its inner error (`error: …` as it shows one) into the message as a value.
    const inner = 'unexpected end-of-file';
    const message = hintfmt("cannot open connection to remote store '%s': %s", `${ssh.scheme}://${ssh.host}`, {
      plain: `error: ${inner}`,
      coloured: colouredValue(ERROR_PREFIX + inner),
    });
    return new RemoteConnectionError(message, {
      cause: e,
      hint,
      remoteStderr: tail,
    });
  }

  private async handshake(clientVersion: number, onLog?: OnRemoteLog): Promise<void> {
    this.writer.u64(WORKER_MAGIC_1);
    await this.writer.flush();
    const magic = await this.reader.u64();
    if (magic !== WORKER_MAGIC_2) {
      throw new RemoteProtocolError(`'${this.name}' is not a Nix daemon (protocol mismatch: got 0x${magic.toString(16)})`);
    }
    this.daemonVersion = await this.reader.u64();
    if ((this.daemonVersion & 0xff00) !== (WORKER_PROTOCOL_VERSION & 0xff00)) {
      throw new RemoteProtocolError(`'${this.name}' speaks Nix daemon protocol ${versionString(this.daemonVersion)}, which this client does not support`);
    }
    this.version = Math.min(clientVersion, this.daemonVersion);
    if (minor(this.version) < 21) {
      throw new RemoteProtocolError(
        `the Nix on '${this.name}' is too old (daemon protocol ${versionString(this.daemonVersion)}; at least 1.21, Nix 2.3, is needed)`,
      );
    }
    this.writer.u64(clientVersion);
    if (minor(this.version) >= 14) this.writer.u64(0); // obsolete CPU affinity
    if (minor(this.version) >= 11) this.writer.u64(0); // obsolete reserveSpace
    await this.writer.flush();
    if (minor(this.version) >= 33) this.daemonNixVersion = await this.reader.string();
    if (minor(this.version) >= 35) {
      const t = await this.reader.u64();
      if (t > 2) throw new RemoteProtocolError(`'${this.name}' sent an invalid trust status ${t}`);
      this.remoteTrustsUs = t === 0 ? undefined : t === 1;
    }
    this.currentLog = onLog;
    await this.processStderr();
  }

  /** The settings last sent with SetOptions. */
  options: WorkerOptions = {};

  /**
   * Send client settings (Nix's SetOptions); they hold for the following operations on this connection.
   * A daemon that does not trust us ignores restricted overrides (`timeout`, `max-silent-time` are allowed).
   */
  setOptions(o: WorkerOptions, opts: { signal?: AbortSignal } = {}): Promise<void> {
    return this.op(() => this.sendOptions(o), undefined, opts.signal);
  }

  private async sendOptions(o: WorkerOptions): Promise<void> {
    const w = this.writer;
    w.u64(WorkerOp.SetOptions)
      .u64(o.keepFailed ?? false)
      .u64(o.keepGoing ?? false)
      .u64(o.tryFallback ?? false)
      .u64(o.verbosity ?? 3)
      .u64(o.maxBuildJobs ?? 1)
      .u64(BigInt.asUintN(64, BigInt(o.maxSilentTime ?? 0))) // a time_t, sent as Nix's client casts it
      .u64(true) // obsolete useBuildHook
      .u64(0) // verboseBuild: lvlError means "show build output"
      .u64(0) // obsolete logType
      .u64(0) // obsolete printBuildTrace
      .u64(o.buildCores ?? 0)
      .u64(o.useSubstitutes ?? false);
    if (minor(this.version) >= 12) w.stringMap(Object.entries(o.overrides ?? {}));
    await w.flush();
    await this.processStderr();
    this.options = o;
  }

  /** An error the daemon reported (STDERR_ERROR) ends the operation, not the connection. */
  protected override survives(e: unknown): boolean {
    return e instanceof RemoteDaemonError;
  }

  /**
   * The stderr loop: forward log events until STDERR_LAST; throw RemoteDaemonError on STDERR_ERROR.
   * `readSource` answers STDERR_READ (only old daemons ask for data that way).
   */
  private async processStderr(readSource?: (n: number) => Promise<Buffer>): Promise<void> {
    const r = this.reader;
    for (;;) {
      const msg = await r.u64();
      switch (msg) {
        case STDERR_LAST:
          return;
        case STDERR_NEXT: {
          const text = await r.string();
          this.currentLog?.({ type: 'message', text: text.replace(/\n$/, '') });
          break;
        }
        case STDERR_ERROR: {
          if (minor(this.version) >= 26) {
            const kind = await r.string();
            if (kind !== 'Error') throw new RemoteProtocolError(`'${this.name}' sent a malformed error (type '${kind}')`);
            const level = await r.u64();
            await r.string(); // name, unused
            const message = await r.string();
            await r.u64(); // position (always 0)
            const nTraces = await r.u64();
            const traces: string[] = [];
            for (let i = 0; i < nTraces; i++) {
              await r.u64(); // position
              traces.push(await r.string());
            }
            throw new RemoteDaemonError(`'${this.name}': ${stripAnsi(message)}`, { level, traces });
          }
          const message = await r.string();
          await r.u64(); // exit status
          throw new RemoteDaemonError(`'${this.name}': ${stripAnsi(message)}`);
        }
        case STDERR_START_ACTIVITY: {
          const id = await r.u64big();
          const level = await r.u64();
          const activityType = await r.u64();
          const text = await r.string();
          const fields = await this.readFields();
          const parent = await r.u64big();
          this.currentLog?.({ type: 'start-activity', id, level, activityType, text, fields, parent });
          break;
        }
        case STDERR_STOP_ACTIVITY: {
          const id = await r.u64big();
          this.currentLog?.({ type: 'stop-activity', id });
          break;
        }
        case STDERR_RESULT: {
          const id = await r.u64big();
          const resultType = await r.u64();
          const fields = await this.readFields();
          this.currentLog?.({ type: 'result', id, resultType, fields });
          break;
        }
        case STDERR_READ: {
          const n = await r.u64();
          if (!readSource) throw new RemoteProtocolError(`'${this.name}' asked for data (STDERR_READ) where none is to be sent`);
          this.writer.string(await readSource(n));
          await this.writer.flush();
          break;
        }
        case STDERR_WRITE:
          await r.stringBytes(); // data for a sink; no operation we use produces it
          break;
        default:
          throw new RemoteProtocolError(`'${this.name}' sent an unknown message 0x${msg.toString(16)} in its log stream`);
      }
    }
  }

  private async readFields(): Promise<LogField[]> {
    const n = await this.reader.u64();
    const fields: LogField[] = [];
    for (let i = 0; i < n; i++) {
      const t = await this.reader.u64();
      if (t === 0) fields.push(Number(await this.reader.u64big()));
      else if (t === 1) fields.push(await this.reader.string());
      else throw new RemoteProtocolError(`'${this.name}' sent a log field of unknown type ${t}`);
    }
    return fields;
  }

  async isValidPath(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<boolean> {
    this.checkPath(path);
    return this.op(
      async () => {
        this.writer.u64(WorkerOp.IsValidPath).string(path);
        await this.writer.flush();
        await this.processStderr();
        return this.reader.bool();
      },
      undefined,
      opts.signal,
    );
  }

  /** The subset of `paths` valid on the remote. */
  async queryValidPaths(paths: Iterable<StorePath>, opts: { substitute?: boolean; signal?: AbortSignal } = {}): Promise<Set<StorePath>> {
    const list = this.checkedPaths(paths);
    return this.op(
      async () => {
        this.writer.u64(WorkerOp.QueryValidPaths).strings(list);
        if (minor(this.version) >= 27) this.writer.u64(opts.substitute ?? false);
        await this.writer.flush();
        await this.processStderr();
        return new Set(await this.reader.strings());
      },
      undefined,
      opts.signal,
    );
  }

  /** Path info on the remote, or undefined if the path is not valid there. */
  async queryPathInfo(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<PathInfo | undefined> {
    this.checkPath(path);
    return this.op(
      async () => {
        this.writer.u64(WorkerOp.QueryPathInfo).string(path);
        await this.writer.flush();
        try {
          await this.processStderr();
        } catch (e) {
          // Daemons before 1.17 report an invalid path as an error.
          if (minor(this.version) < 17 && e instanceof RemoteDaemonError && /is not valid/.test(e.message)) return undefined;
          throw e;
        }
        if (minor(this.version) >= 17 && !(await this.reader.bool())) return undefined;
        const r = this.reader;
        const deriver = await r.string();
        const narHash: Hash = parseWireNarHash(await r.string());
        const references = (await r.strings()).sort();
        const registrationTime = await r.u64();
        const narSize = await r.u64();
        let ultimate = false;
        let sigs: string[] = [];
        let ca = '';
        if (minor(this.version) >= 16) {
          ultimate = await r.bool();
          sigs = await r.strings();
          ca = await r.string();
        }
        return {
          path,
          narHash,
          narSize,
          references,
          registrationTime,
          ultimate,
          deriver: deriver || undefined,
          sigs,
          ca: ca || undefined,
        };
      },
      undefined,
      opts.signal,
    );
  }

  /** Add one path from its NAR (trusted connections may skip signature checks with `dontCheckSigs`). */
  async addToStoreNar(
    info: PathInfo,
    nar: NarSource,
    opts: { repair?: boolean; dontCheckSigs?: boolean; signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<void> {
    this.checkPath(info.path);
    info.references.forEach((p) => this.checkPath(p));
    return this.op(
      async () => {
        const w = this.writer;
        writePathInfo(w.u64(WorkerOp.AddToStoreNar), info)
          .u64(opts.repair ?? false)
          .u64(opts.dontCheckSigs ?? true);
        if (minor(this.version) >= 23) {
          await w.framed(nar);
          await this.processStderr();
        } else {
          await w.flush();
          const pull = pullReader(nar);
          await this.processStderr((n) => pull(n));
        }
      },
      opts.onLog,
      opts.signal,
    );
  }

  /**
   * Add many paths in one operation (protocol ≥ 1.32; falls back to AddToStoreNar per path). Paths must
   * come in topological order (references first); NARs are read one after the other.
   */
  async addMultipleToStore(
    paths: readonly PathToAdd[],
    opts: { repair?: boolean; dontCheckSigs?: boolean; signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<void> {
    for (const p of paths) {
      this.checkPath(p.info.path);
      p.info.references.forEach((r) => this.checkPath(r));
    }
    if (minor(this.version) < 32) {
      for (const p of paths) await this.addToStoreNar(p.info, p.nar, opts);
      return;
    }
    return this.op(
      async () => {
        this.writer
          .u64(WorkerOp.AddMultipleToStore)
          .u64(opts.repair ?? false)
          .u64(opts.dontCheckSigs ?? true);
        async function* payload(): AsyncGenerator<Uint8Array> {
          yield encodeU64(paths.length);
          for (const p of paths) {
            yield writePathInfo(new WireEncoder(), p.info).take();
            yield* p.nar;
          }
        }
        await this.writer.framed(payload());
        await this.processStderr();
      },
      opts.onLog,
      opts.signal,
    );
  }

  /** Build a BasicDerivation on the remote (its inputs must be valid there). Never throws for a failed build. */
  async buildDerivation(
    drvPath: StorePath,
    drv: WireDerivation,
    opts: { buildMode?: 'normal' | 'repair' | 'check'; signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<WireBuildResult> {
    this.checkPath(drvPath);
    return this.op(
      async () => {
        this.writer.u64(WorkerOp.BuildDerivation).string(drvPath);
        writeBasicDerivation(this.writer, drv);
        this.writer.u64(buildModeNumber(opts.buildMode));
        await this.writer.flush();
        await this.processStderr();
        return this.readBuildResult();
      },
      opts.onLog,
      opts.signal,
    );
  }

  private readBuildResult(): Promise<WireBuildResult> {
    return readBuildResult(this.reader, this.storeDir, { times: minor(this.version) >= 29, builtOutputs: minor(this.version) >= 28 });
  }

  /**
   * Build or substitute `targets` on the daemon (store paths, or `DRV!out1,out2`), as Nix's
   * BuildPathsWithResults: one result per target, in order; a failed build is a result, not a throw.
   * Daemons before protocol 1.34 get BuildPaths, which throws the daemon's error on a failure.
   */
  async buildPathsWithResults(
    targets: readonly string[],
    opts: { buildMode?: 'normal' | 'repair' | 'check'; signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<{ path: string; result: WireBuildResult }[] | undefined> {
    return this.op(
      async () => {
        if (minor(this.version) < 34) {
          this.writer.u64(WorkerOp.BuildPaths).strings(targets);
          if (minor(this.version) >= 15) this.writer.u64(buildModeNumber(opts.buildMode));
          await this.writer.flush();
          await this.processStderr();
          await this.reader.u64();
          return undefined;
        }
        this.writer.u64(WorkerOp.BuildPathsWithResults).strings(targets).u64(buildModeNumber(opts.buildMode));
        await this.writer.flush();
        await this.processStderr();
        const n = await this.reader.u64();
        const out: { path: string; result: WireBuildResult }[] = [];
        for (let i = 0; i < n; i++) out.push({ path: await this.reader.string(), result: await this.readBuildResult() });
        return out;
      },
      opts.onLog,
      opts.signal,
    );
  }

  /** One request with string arguments whose answer is read by `read`, after the log stream. */
  private simple<T>(
    op: number,
    args: readonly (string | readonly string[])[],
    read: (r: WireReader) => Promise<T>,
    opts: { signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<T> {
    return this.op(
      async () => {
        this.writer.u64(op);
        for (const a of args) {
          if (typeof a === 'string') this.writer.string(a);
          else this.writer.strings(a);
        }
        await this.writer.flush();
        await this.processStderr();
        return read(this.reader);
      },
      opts.onLog,
      opts.signal,
    );
  }

  /** Valid paths that refer to `path` (Nix's QueryReferrers). */
  queryReferrers(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<string[]> {
    this.checkPath(path);
    return this.simple(WorkerOp.QueryReferrers, [path], (r) => r.strings(), opts);
  }

  /** Every valid path of the daemon's store. */
  queryAllValidPaths(opts: { signal?: AbortSignal } = {}): Promise<string[]> {
    return this.simple(WorkerOp.QueryAllValidPaths, [], (r) => r.strings(), opts);
  }

  /** Valid derivations that have `path` as an output. */
  queryValidDerivers(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<string[]> {
    this.checkPath(path);
    return this.simple(WorkerOp.QueryValidDerivers, [path], (r) => r.strings(), opts);
  }

  /** Output name → path (undefined: not known yet, a floating content-addressed output) of a derivation. */
  queryDerivationOutputMap(drvPath: StorePath, opts: { signal?: AbortSignal } = {}): Promise<Map<string, string | undefined>> {
    this.checkPath(drvPath);
    return this.simple(
      WorkerOp.QueryDerivationOutputMap,
      [drvPath],
      async (r) => {
        const n = await r.u64();
        const out = new Map<string, string | undefined>();
        for (let i = 0; i < n; i++) {
          const name = await r.string();
          const p = await r.string();
          out.set(name, p || undefined);
        }
        return out;
      },
      opts,
    );
  }

  /** Add a text file (Nix's addTextToStore: a `.drv`, builtins.toFile); returns its store path. */
  addTextToStore(name: string, text: string, references: readonly string[], opts: { signal?: AbortSignal } = {}): Promise<string> {
    references.forEach((p) => this.checkPath(p));
    return this.simple(WorkerOp.AddTextToStore, [name, text, [...references].sort()], (r) => r.string(), opts);
  }

  /** Register `link` (a symlink to a store path, outside the store) as an indirect GC root of the daemon. */
  async addIndirectRoot(link: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.simple(WorkerOp.AddIndirectRoot, [link], (r) => r.u64(), opts);
  }

  /** Keep `path` from the daemon's garbage collector while this connection is open. */
  async addTempRoot(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.checkPath(path);
    await this.simple(WorkerOp.AddTempRoot, [path], (r) => r.u64(), opts);
  }

  /** The NAR of a valid remote path, streamed (see ProtocolConnection.streamNar). */
  narFromPath(path: StorePath, opts: { signal?: AbortSignal } = {}): NarSource {
    return this.streamNar(
      path,
      async () => {
        this.writer.u64(WorkerOp.NarFromPath).string(path);
        await this.writer.flush();
        await this.processStderr();
      },
      opts.signal,
    );
  }

  /** Which of `paths` (store paths, or `drv!out1,out2`) would be built / substituted / are unknown. */
  async queryMissing(
    targets: readonly string[],
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ willBuild: string[]; willSubstitute: string[]; unknown: string[]; downloadSize: number; narSize: number }> {
    return this.op(
      async () => {
        this.writer.u64(WorkerOp.QueryMissing).strings(targets);
        await this.writer.flush();
        await this.processStderr();
        const r = this.reader;
        return {
          willBuild: await r.strings(),
          willSubstitute: await r.strings(),
          unknown: await r.strings(),
          downloadSize: await r.u64(),
          narSize: await r.u64(),
        };
      },
      undefined,
      opts.signal,
    );
  }
}

function minor(v: number): number {
  return v & 0xff;
}

function versionString(v: number): string {
  return `${v >> 8}.${v & 0xff}`;
}

/** Turn a byte stream into "give me up to n bytes" reads (for STDERR_READ). */
function pullReader(source: AsyncIterable<Uint8Array>): (n: number) => Promise<Buffer> {
  const it = source[Symbol.asyncIterator]();
  let rest: Buffer = Buffer.alloc(0);
  let ended = false;
  return async (n: number) => {
    while (rest.length === 0 && !ended) {
      const r = await it.next();
      if (r.done) ended = true;
      else rest = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    }
    const out = rest.subarray(0, n);
    rest = rest.subarray(out.length);
    return out;
  };
}
