/**
 * Client of the legacy `nix-store --serve --write` protocol (what `ssh://` machines speak). We offer 2.7
 * (Nix 2.8's); fields are gated on the lower of both versions. There is no log channel in this protocol:
 * the remote writes build output to its stderr, which the transport hands us line by line and which we
 * forward as build log lines of the running operation.
 */
import type { NarSource, PathInfo } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import { RemoteConnectionError, RemoteDaemonError, RemoteProtocolError } from './errors.js';
import {
  parseWireNarHash,
  ProtocolConnection,
  readBuildResult,
  writeBasicDerivation,
  writePathInfo,
  type WireBuildResult,
  type WireDerivation,
  type SshStoreHost,
} from './protocol-common.js';
import type { Transport } from './transport.js';
import { hintfmt, plainMessage } from '../store/nix-message.js';
import { ResultType, type OnRemoteLog, type PathToAdd } from './worker-protocol.js';

export const SERVE_MAGIC_1 = 0x390c9deb;
export const SERVE_MAGIC_2 = 0x5452eecb;
/** 2.7, Nix 2.8's. */
export const SERVE_PROTOCOL_VERSION = (2 << 8) | 7;
const EXPORT_MAGIC = 0x4558494e;

export const ServeCommand = {
  QueryValidPaths: 1,
  QueryPathInfos: 2,
  DumpStorePath: 3,
  ImportPaths: 4,
  ExportPaths: 5,
  BuildPaths: 6,
  QueryClosure: 7,
  BuildDerivation: 8,
  AddToStoreNar: 9,
} as const;

/** Build settings sent with each build (Nix's putBuildSettings). */
export interface ServeBuildSettings {
  /** Seconds; 0 = none. @default 0 */
  readonly maxSilentTime?: number;
  /** Seconds; 0 = none. @default 0 */
  readonly buildTimeout?: number;
  /** Bytes; 0 = none. @default 0 */
  readonly maxLogSize?: number;
  /** @default 0 */
  readonly buildRepeat?: number;
  /** @default true */
  readonly enforceDeterminism?: boolean;
  /** @default false */
  readonly keepFailed?: boolean;
}

export interface ServeConnectOptions {
  readonly storeDir?: string;
  readonly name?: string;
  readonly signal?: AbortSignal;
}

export class ServeConnection extends ProtocolConnection {
  remoteVersion = 0;
  version = 0;

  private constructor(transport: Transport, opts: ServeConnectOptions) {
    super(transport, { storeDir: opts.storeDir, name: opts.name });
  }

  /**
   * Handshake over an open transport. Pass the transport's stderr lines to `conn.stderrLine` (the
   * `onStderr` of StdioTransport) so they reach the log of the running operation.
   */
  static async connect(transport: Transport, opts: ServeConnectOptions = {}): Promise<ServeConnection> {
    const conn = new ServeConnection(transport, opts);
    return ProtocolConnection.open(
      conn,
      opts.signal,
      () => conn.handshake(),
      'check that the remote runs Nix (nix-store in PATH, or set remote-program=) and that you can log in non-interactively',
    );
  }

  private async handshake(): Promise<void> {
    this.writer.u64(SERVE_MAGIC_1).u64(SERVE_PROTOCOL_VERSION);
    await this.writer.flush();
    const magic = await this.reader.u64();
    if (magic !== SERVE_MAGIC_2) throw new RemoteProtocolError(`'nix-store --serve' protocol mismatch from '${this.name}' (got 0x${magic.toString(16)})`);
    this.remoteVersion = await this.reader.u64();
    if ((this.remoteVersion & 0xff00) !== 0x200)
      throw new RemoteProtocolError(
        `unsupported 'nix-store --serve' protocol version ${this.remoteVersion >> 8}.${this.remoteVersion & 0xff} on '${this.name}'`,
      );
    this.version = Math.min(SERVE_PROTOCOL_VERSION, this.remoteVersion);
    if ((this.version & 0xff) < 4)
      throw new RemoteProtocolError(`the Nix on '${this.name}' is too old ('nix-store --serve' protocol 2.${this.version & 0xff}; at least 2.4 is needed)`);
  }

  /**
   * As Nix's `ssh://` store words a remote that went away during the handshake (ssh could not connect or log
   * in, no `nix-store` there): "cannot connect to 'HOST'" and what ssh and the remote wrote to stderr.
   */
  protected override sshConnectFailure(e: RemoteConnectionError, ssh: SshStoreHost, tail: string, hint: string): RemoteConnectionError {
    // Without the line end ssh wrote (its `\r\n`), as Nix chomps what it read.
    const said = tail.replace(/[ \t\n\r]+$/, '');
    return new RemoteConnectionError(hintfmt("cannot connect to '%s'%s", ssh.host, plainMessage(said ? `: ${said}` : '')), { cause: e, hint });
  }

  /** Feed one stderr line of the remote (build output during BuildDerivation). */
  stderrLine(line: string): void {
    this.currentLog?.({ type: 'result', id: 0n, resultType: ResultType.BuildLogLine, fields: [line] });
  }

  private minor(): number {
    return this.version & 0xff;
  }

  /** This protocol has no error replies to resynchronise on: any failure breaks the connection. A dead remote usually said why on stderr. */
  protected override explainBreak(e: unknown): unknown {
    if (e instanceof RemoteConnectionError) {
      const tail = this.transport.stderrTail();
      if (tail && !e.message.includes(tail)) return new RemoteConnectionError(`${e.shortMessage}\n${tail}`, { cause: e });
    }
    return e;
  }

  async queryValidPaths(paths: Iterable<StorePath>, opts: { lock?: boolean; substitute?: boolean; signal?: AbortSignal } = {}): Promise<Set<StorePath>> {
    const list = this.checkedPaths(paths);
    return this.op(async () => new Set(await this.exchangeValidPaths(list, opts.lock ?? false, opts.substitute ?? false)), undefined, opts.signal);
  }

  /** One QueryValidPaths exchange, inside an operation: the valid ones among `list`. */
  private async exchangeValidPaths(list: readonly string[], lock: boolean, substitute: boolean): Promise<string[]> {
    this.writer.u64(ServeCommand.QueryValidPaths).u64(lock).u64(substitute).strings(list);
    await this.writer.flush();
    return this.reader.strings();
  }

  /** Infos of the valid ones among `paths`. */
  async queryPathInfos(paths: Iterable<StorePath>, opts: { signal?: AbortSignal } = {}): Promise<Map<StorePath, PathInfo>> {
    const list = this.checkedPaths(paths);
    return this.op(
      async () => {
        this.writer.u64(ServeCommand.QueryPathInfos).strings(list);
        await this.writer.flush();
        const r = this.reader;
        const out = new Map<StorePath, PathInfo>();
        for (;;) {
          const path = await r.string();
          if (path === '') break;
          const deriver = await r.string();
          const references = (await r.strings()).sort();
          await r.u64(); // download size
          const narSize = await r.u64();
          const hashStr = await r.string();
          if (!hashStr) throw new RemoteProtocolError(`'${this.name}' sent no NAR hash for '${path}'`);
          const ca = await r.string();
          const sigs = await r.strings();
          out.set(path, { path, deriver: deriver || undefined, references, narSize, narHash: parseWireNarHash(hashStr), ca: ca || undefined, sigs });
        }
        return out;
      },
      undefined,
      opts.signal,
    );
  }

  async queryPathInfo(path: StorePath, opts: { signal?: AbortSignal } = {}): Promise<PathInfo | undefined> {
    return (await this.queryPathInfos([path], opts)).get(path);
  }

  /** Add paths (topological order). Uses cmdAddToStoreNar (2.5+, pipelined) or cmdImportPaths. */
  async addMultipleToStore(paths: readonly PathToAdd[], opts: { signal?: AbortSignal; onLog?: OnRemoteLog } = {}): Promise<void> {
    paths.forEach((p) => this.checkPath(p.info.path));
    return this.op(
      async () => {
        const w = this.writer;
        if (this.minor() >= 5) {
          for (const { info, nar } of paths) {
            writePathInfo(w.u64(ServeCommand.AddToStoreNar), info);
            await w.stream(nar);
          }
          await w.flush();
          for (const { info } of paths) {
            if ((await this.reader.u64()) !== 1) throw new RemoteDaemonError(`failed to add path '${info.path}' to '${this.name}'`);
          }
        } else {
          w.u64(ServeCommand.ImportPaths);
          for (const { info, nar } of paths) {
            w.u64(1);
            await w.stream(nar);
            w.u64(EXPORT_MAGIC)
              .string(info.path)
              .strings([...info.references].sort())
              .string(info.deriver ?? '')
              .u64(0);
          }
          w.u64(0);
          await w.flush();
          if ((await this.reader.u64()) !== 1) throw new RemoteDaemonError(`failed to import paths into '${this.name}'`);
        }
      },
      opts.onLog,
      opts.signal,
    );
  }

  async buildDerivation(
    drvPath: StorePath,
    drv: WireDerivation,
    opts: ServeBuildSettings & { signal?: AbortSignal; onLog?: OnRemoteLog } = {},
  ): Promise<WireBuildResult> {
    this.checkPath(drvPath);
    return this.op(
      async () => {
        const w = this.writer;
        w.u64(ServeCommand.BuildDerivation).string(drvPath);
        writeBasicDerivation(w, drv);
        w.u64(opts.maxSilentTime ?? 0).u64(opts.buildTimeout ?? 0);
        if (this.minor() >= 2) w.u64(opts.maxLogSize ?? 0);
        if (this.minor() >= 3) w.u64(opts.buildRepeat ?? 0).u64(opts.enforceDeterminism ?? true);
        if (this.minor() >= 7) w.u64(opts.keepFailed ?? false);
        await w.flush();
        const result = await readBuildResult(this.reader, this.storeDir, { times: this.minor() >= 3, builtOutputs: this.minor() >= 6 });
        await this.logDrained();
        return result;
      },
      opts.onLog,
      opts.signal,
    );
  }

  /**
   * The remote writes the build's log to its stderr before its result to stdout, but ssh carries the two
   * apart, so the last lines can reach us after the result (Nix's hook reads its log to the end before it
   * reports). A round trip (an empty QueryValidPaths: the remote answers only once it has read it, after
   * the result) whose answer ssh passes on after what it read before, then a turn of the event loop (for
   * stderr ready in the same poll as the answer): the lines written before the result have then all been
   * passed to the build's log.
   */
  private async logDrained(): Promise<void> {
    await this.exchangeValidPaths([], false, false);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** The NAR of a remote path, streamed (see ProtocolConnection.streamNar). */
  narFromPath(path: StorePath, opts: { signal?: AbortSignal } = {}): NarSource {
    return this.streamNar(
      path,
      async () => {
        this.writer.u64(ServeCommand.DumpStorePath).string(path);
        await this.writer.flush();
      },
      opts.signal,
    );
  }
}
