/**
 * Transports: a duplex byte stream to a remote Nix. `StdioTransport` runs any command and talks over its
 * stdin/stdout (`nix-daemon --stdio`, `ssh host nix-store --serve --write`, ...); its stderr is passed
 * on line by line (ssh messages, and the build log of `nix-store --serve`).
 */
import { createConnection, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { createRequire } from 'node:module';
import type { ResultPromise } from 'execa';
import { RemoteConnectionError } from './errors.js';

export interface Transport {
  /** Bytes from the remote. */
  readonly input: Readable;
  /** Bytes to the remote. */
  readonly output: Writable;
  /** For messages: the command line or URI. */
  readonly description: string;
  /** Resolves when the transport is gone (process exited / socket closed), with a reason. */
  readonly closed: Promise<TransportExit>;
  /** The last lines the remote wrote to stderr (for error messages). */
  stderrTail(): string;
  /** Close the stream and stop the process (SIGTERM, then SIGKILL after a grace period). Idempotent. */
  close(): Promise<void>;
}

export interface TransportExit {
  readonly code?: number | undefined;
  readonly signal?: string | undefined;
  readonly message: string;
}

export interface StdioTransportOptions {
  /** Environment for the child (merged over process.env unless `extendEnv` is false). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly extendEnv?: boolean;
  readonly cwd?: string;
  /** Each line the child writes to stderr. */
  readonly onStderr?: (line: string) => void;
}

const TAIL_LINES = 20;

let execaModule: typeof import('execa') | undefined;
/**
 * execa, loaded when the first transport is spawned (its import is tens of ms of start-up): through
 * `loadExeca` when an async caller ran it first, else through require, which loads the ES module natively
 * but fails under a loader that compiles required ES modules into CommonJS (tsx: execa's dependencies
 * export no CommonJS entry).
 */
function execa(): typeof import('execa').execa {
  return (execaModule ??= createRequire(import.meta.url)('execa') as typeof import('execa')).execa;
}

/** Load execa with import(), which works under any loader, so that `StdioTransport.spawn` needs no require. */
export async function loadExeca(): Promise<void> {
  execaModule ??= await import('execa');
}

/** Spawn `command args...` and speak over its stdin/stdout. */
export class StdioTransport implements Transport {
  readonly input: Readable;
  readonly output: Writable;
  readonly description: string;
  readonly closed: Promise<TransportExit>;
  private readonly child: ResultPromise;
  private readonly tail: string[] = [];
  private closing: Promise<void> | undefined;

  private constructor(command: string, args: readonly string[], opts: StdioTransportOptions) {
    this.description = [command, ...args].join(' ');
    this.child = execa()(command, args, {
      stdin: 'pipe',
      stdout: 'pipe',
      stderr: 'pipe',
      buffer: false,
      reject: false,
      env: opts.env as Record<string, string> | undefined,
      extendEnv: opts.extendEnv ?? true,
      cwd: opts.cwd,
      // Do not let a Ctrl-C of the terminal kill the remote session behind our back.
      detached: false,
      cleanup: true,
    });
    this.input = this.child.stdout!;
    this.output = this.child.stdin!;
    // Writes to a dead child must not crash the process; the reader reports the loss.
    this.output.on('error', () => {});
    let partial = '';
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (s: string) => {
      partial += s;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        this.tail.push(line);
        if (this.tail.length > TAIL_LINES) this.tail.shift();
        opts.onStderr?.(line);
      }
    });
    this.child.stderr!.on('end', () => {
      if (partial) {
        this.tail.push(partial);
        opts.onStderr?.(partial);
        partial = '';
      }
    });
    this.closed = this.child.then(
      (r) => ({
        code: r.exitCode,
        signal: r.signal,
        message:
          r.failed && r.exitCode === undefined && !r.signal
            ? `could not start '${command}': ${r.shortMessage}`
            : r.signal
              ? `'${command}' was killed by ${r.signal}`
              : `'${command}' exited with status ${r.exitCode}`,
      }),
      (e: unknown) => ({ message: `'${command}' failed: ${(e as Error).message}` }),
    );
  }

  static spawn(command: string, args: readonly string[] = [], opts: StdioTransportOptions = {}): StdioTransport {
    return new StdioTransport(command, args, opts);
  }

  stderrTail(): string {
    return this.tail.join('\n');
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.output.end();
      this.output.destroy();
      this.input.destroy();
      const exited = await Promise.race([this.closed.then(() => true), delay(200).then(() => false)]);
      if (!exited) {
        this.child.kill('SIGTERM');
        const gone = await Promise.race([this.closed.then(() => true), delay(2000).then(() => false)]);
        if (!gone) this.child.kill('SIGKILL');
        await this.closed;
      }
    })();
    return this.closing;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** Reject with a RemoteConnectionError describing the exit when the transport closes. */
export function connectionLost(t: Transport): Promise<never> {
  return t.closed.then((exit) => {
    const tail = t.stderrTail();
    throw new RemoteConnectionError(`connection to '${t.description}' lost: ${exit.message}${tail ? `\n${tail}` : ''}`);
  });
}

/** A connection to a Unix domain socket (the Nix daemon's `daemon-socket/socket`). */
export class SocketTransport implements Transport {
  readonly input: Readable;
  readonly output: Writable;
  readonly description: string;
  readonly closed: Promise<TransportExit>;
  private readonly socket: Socket;

  private constructor(socket: Socket, description: string) {
    this.socket = socket;
    this.input = socket;
    this.output = socket;
    this.description = description;
    this.closed = new Promise((resolve) => {
      let error: Error | undefined;
      socket.on('error', (e) => {
        error ??= e;
      });
      socket.once('close', () =>
        resolve({ message: error ? `the connection to ${description} failed: ${error.message}` : `${description} closed the connection` }),
      );
    });
  }

  /** Connect to the socket at `socketPath`; rejects with the system's error (ENOENT, EACCES, ECONNREFUSED). */
  static connect(socketPath: string): Promise<SocketTransport> {
    return new Promise((resolve, reject) => {
      const socket = createConnection({ path: socketPath });
      const onError = (e: Error): void => reject(e);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(new SocketTransport(socket, `socket '${socketPath}'`));
      });
    });
  }

  stderrTail(): string {
    return '';
  }

  async close(): Promise<void> {
    if (!this.socket.destroyed) this.socket.destroy();
    await this.closed;
  }
}
