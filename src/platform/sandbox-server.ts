/**
 * A long-running sandbox helper ("zygote"): one `helper --server` process per LinuxSandbox forks a
 * small process per build, so a build costs a fork of a tiny C process instead of a fork of Node.
 * A sandboxed build's output and status come back on the server's stdout (records of all builds, see
 * #onStatus); an unsandboxed builder's output on a Unix socket connection of its own (abstract
 * namespace), its status on the server's stdout. Abort kills the build's process group, whose sandbox
 * dies with it (parent-death signal).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import type { SandboxExit } from './sandbox.js';
import { signalName } from './signals.js';

const DRAIN_GRACE_MS = 2000;

/** Random bytes for build ids, drawn a block at a time (one call per build cost more than the rest of an id). */
let idEntropy = Buffer.alloc(0);
let idAt = 0;

/** 16 random bytes, in hex. */
function idSecret(): string {
  if (idAt + 16 > idEntropy.length) {
    idEntropy = randomBytes(4096);
    idAt = 0;
  }
  idAt += 16;
  return idEntropy.toString('hex', idAt - 16, idAt);
}

interface Pending {
  /** An unsandboxed builder (`--plain`): its process group outlives it until its output ends. */
  readonly plain: boolean;
  readonly onOutput: ((chunk: Buffer) => void) | undefined;
  readonly onSetUp: (() => void) | undefined;
  pid?: number;
  aborted: boolean;
  status?: string;
  eof: boolean;
  connected: boolean;
  timer?: NodeJS.Timeout;
  resolve(exit: SandboxExit): void;
}

export interface ServerRunRequest {
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly signal?: AbortSignal | undefined;
  readonly onOutput?: ((chunk: Buffer) => void) | undefined;
  /** A sandboxed build's "started" status: its sandbox is set up and the builder runs. */
  readonly onSetUp?: (() => void) | undefined;
  readonly drvPath: string;
}

export class SandboxServer {
  readonly #exe: string;
  readonly #filter: Buffer | undefined;
  #child: ChildProcess | undefined;
  #listener: net.Server | undefined;
  #ready: Promise<void> | undefined;
  #pending = new Map<string, Pending>();
  #nextId = 1;
  /** The start of a record not complete yet (see #onStatus). */
  #statusBuf: Buffer | undefined;
  #closing = false;
  #died = false;

  readonly #warm: boolean;

  /**
   * `warm`: keep one sandboxed build's namespaces, pseudoterminal and process made ahead of time, so a
   * request (with the default network and ids) only has to mount, pivot and exec. For sandbox servers.
   */
  constructor(exe: string, filter: Buffer | undefined, options: { readonly warm?: boolean } = {}) {
    this.#exe = exe;
    this.#filter = filter;
    this.#warm = options.warm ?? false;
  }

  /** Start the server process now rather than with the first build (rejects as run() would). */
  start(): Promise<void> {
    return this.#start();
  }

  #start(): Promise<void> {
    this.#ready ??= (async () => {
      this.#closing = false;
      const name = `realise-sbx-${process.pid}-${randomBytes(6).toString('hex')}`;
      const listener = net.createServer((sock) => this.#onConnection(sock));
      await new Promise<void>((resolve, reject) => {
        listener.once('error', reject);
        listener.listen('\0' + name, () => resolve());
      });
      listener.unref();
      this.#listener = listener;
      const child = spawn(this.#exe, ['--server', name, ...(this.#warm ? ['--warm'] : []), ...(this.#filter ? ['--seccomp-fd', '3'] : [])], {
        stdio: ['pipe', 'pipe', 'inherit', ...(this.#filter ? ['pipe' as const] : [])],
        env: {},
      });
      this.#child = child;
      // Node's pipes to a child are socket pairs: a server killed (close()) before it read its seccomp filter
      // or its requests leaves them with ECONNRESET, which is no error of ours (its exit says what matters).
      for (const pipe of child.stdio) pipe?.on('error', () => {});
      if (this.#filter) (child.stdio[3] as NodeJS.WritableStream).end(this.#filter);
      child.stdout!.on('data', (d: Buffer) => this.#onStatus(d));
      child.once('exit', () => this.#onServerExit(child));
      this.#setRef(false);
      // The exec of the server itself can fail (e.g. a cache dir mounted noexec): that is a start failure.
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', (e) => {
          this.#onServerExit(child);
          reject(e);
        });
      });
    })();
    return this.#ready;
  }

  /** Keep the event loop alive exactly while builds are pending (an idle server must not hold it). */
  #setRef(on: boolean): void {
    const child = this.#child;
    if (!child) return;
    const h = [child, child.stdout, this.#listener] as unknown as ({ ref?: () => void; unref?: () => void } | null)[];
    for (const x of h) {
      if (on) x?.ref?.();
      else x?.unref?.();
    }
    const stdin = child.stdin as unknown as { ref?: () => void; unref?: () => void } | null;
    if (on) stdin?.ref?.();
    else stdin?.unref?.();
  }

  #onServerExit(child: ChildProcess): void {
    if (this.#child !== child) return;
    if (!this.#closing) this.#died = true;
    this.#child = undefined;
    this.#ready = undefined;
    this.#listener?.close();
    this.#listener = undefined;
    for (const p of [...this.#pending.values()]) {
      // p.resolve() removes it from #pending. Plain builders run in their own session: they do not die with the server.
      this.#kill(p);
      p.resolve(p.aborted ? { kind: 'aborted' } : { kind: 'spawn-failed', message: 'the sandbox helper server exited unexpectedly' });
    }
  }

  /** Whether the server process exited without close() (builds should then go another way). */
  get died(): boolean {
    return this.#died;
  }

  #onConnection(sock: net.Socket): void {
    let head = '';
    let p: Pending | undefined;
    // A warm build process connects before it has a build: it must not keep the event loop alive.
    sock.unref();
    sock.on('data', (chunk: Buffer) => {
      if (!p) {
        const s = chunk.toString('latin1');
        const nl = s.indexOf('\n');
        if (nl === -1) {
          head += s;
          return;
        }
        // "id PID": the build and the process whose group an abort kills.
        const line = head + s.slice(0, nl);
        const sp = line.indexOf(' ');
        const id = sp === -1 ? line : line.slice(0, sp);
        p = this.#pending.get(id);
        // Only an unsandboxed builder's output comes this way, once.
        if (!p || !p.plain || p.connected) {
          p = undefined;
          sock.destroy();
          return;
        }
        sock.ref();
        p.connected = true;
        if (sp !== -1) {
          p.pid = Number(line.slice(sp + 1));
          if (p.aborted) {
            this.#kill(p);
            this.#maybeDone(p);
          }
        }
        const rest = chunk.subarray(Buffer.byteLength(s.slice(0, nl + 1), 'latin1'));
        if (rest.length && !p.aborted) p.onOutput?.(rest);
        return;
      }
      if (!p.aborted) p.onOutput?.(chunk);
    });
    const done = () => {
      if (!p || p.eof) return;
      p.eof = true;
      // As Nix: the end of a builder's output is the end of its build. A builder still running (it closed
      // its stdout and stderr) is killed with its process group; one that has exited waits, a zombie, for
      // the server to report its status, and the signal leaves it be. An unsandboxed builder's group is
      // killed now whatever its state: what it left running has closed the output too (Nix waits for the
      // output to end, then kills the group; a sandboxed build's processes end with its PID namespace).
      if (p.status === undefined || p.plain) this.#kill(p);
      this.#maybeDone(p);
    };
    sock.on('end', done);
    sock.on('close', done);
    sock.on('error', done);
  }

  /**
   * The server's stdout: lines "ID STATUS", and a sandboxed build's output as records "ID out LEN" followed by
   * LEN bytes. One process writes all of a build's records, its output before its status.
   */
  #onStatus(chunk: Buffer): void {
    const buf = this.#statusBuf ? Buffer.concat([this.#statusBuf, chunk]) : chunk;
    this.#statusBuf = undefined;
    let at = 0;
    for (let nl: number; (nl = buf.indexOf(10, at)) !== -1;) {
      const line = buf.toString('utf8', at, nl);
      const sp = line.indexOf(' ');
      const id = line.slice(0, sp);
      const rest = line.slice(sp + 1);
      if (rest.startsWith('out ')) {
        const end = nl + 1 + Number(rest.slice(4));
        if (end > buf.length) break;
        const p = this.#pending.get(id);
        if (p && !p.aborted) p.onOutput?.(buf.subarray(nl + 1, end));
        at = end;
        continue;
      }
      at = nl + 1;
      const p = this.#pending.get(id);
      if (p) this.#onStatusLine(p, rest);
    }
    if (at < buf.length) this.#statusBuf = buf.subarray(at);
  }

  #onStatusLine(p: Pending, rest: string): void {
    if (rest === 'started') {
      p.onSetUp?.();
      return;
    }
    if (rest.startsWith('pid ')) {
      p.pid = Number(rest.slice(4));
      if (p.aborted) {
        this.#kill(p);
        this.#maybeDone(p);
      }
      return;
    }
    p.status = rest;
    // A sandboxed build's output came before its status; a setup failure has no output worth waiting for.
    if (rest.startsWith('error ') || !p.plain) p.eof = true;
    else if (!p.connected) {
      // Output may still be on its way (or never come): wait a little for it.
      p.timer = setTimeout(() => {
        p.eof = true;
        this.#maybeDone(p);
      }, DRAIN_GRACE_MS);
    }
    this.#maybeDone(p);
  }

  #kill(p: Pending): void {
    if (p.pid !== undefined) {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  #maybeDone(p: Pending): void {
    if (p.aborted && (p.pid !== undefined || p.status !== undefined)) return p.resolve({ kind: 'aborted' });
    if (p.status === undefined || !p.eof) return;
    let m: RegExpExecArray | null;
    const s = p.status;
    if ((m = /^exit (\d+)$/.exec(s))) p.resolve({ kind: 'exited', code: Number(m[1]) });
    else if ((m = /^signal (\d+)$/.exec(s))) p.resolve({ kind: 'signalled', signal: signalName(Number(m[1])) });
    else p.resolve({ kind: 'spawn-failed', message: s.replace(/^error /, '') });
  }

  /**
   * Run one build; `args` are the helper's build options and `-- BUILDER ARGV0 ARGS...`, or
   * `--plain CWD FILE ARGV0 ARGS...` for an unsandboxed builder forked straight from the server.
   * Rejects when the server process cannot be started.
   */
  async run(req: ServerRunRequest): Promise<SandboxExit> {
    if (req.signal?.aborted) return { kind: 'aborted' };
    await this.#start();
    // Starting the server (the first build compiles and launches it) can take long enough for a stop to come in.
    if (req.signal?.aborted) return { kind: 'aborted' };
    const child = this.#child;
    if (!child?.stdin) return { kind: 'spawn-failed', message: 'the sandbox helper server is not running' };
    // Unguessable: the output socket is reachable by anything in the host network namespace (including
    // fixed-output builders), so an id must not be forgeable to inject into another build's log.
    const id = `${this.#nextId++}-${idSecret()}`;
    const strings = [id, String(req.args.length), ...req.args, ...Object.entries(req.env).map(([k, v]) => `${k}=${v}`)];
    for (const s of strings) {
      if (s.includes('\0')) return { kind: 'spawn-failed', message: `an argument or environment variable of '${req.drvPath}' contains a NUL byte` };
    }
    const payload = Buffer.from(strings.join('\0') + '\0');
    const frame = Buffer.alloc(4 + payload.length);
    frame.writeUInt32LE(payload.length, 0);
    payload.copy(frame, 4);
    return await new Promise<SandboxExit>((resolve) => {
      const onAbort = () => {
        p.aborted = true;
        this.#kill(p);
        this.#maybeDone(p);
      };
      const p: Pending = {
        plain: req.args[0] === '--plain',
        onOutput: req.onOutput,
        onSetUp: req.onSetUp,
        aborted: false,
        eof: false,
        connected: false,
        resolve: (exit) => {
          if (!this.#pending.delete(id)) return;
          if (this.#pending.size === 0) this.#setRef(false);
          if (p.timer) clearTimeout(p.timer);
          req.signal?.removeEventListener('abort', onAbort);
          resolve(exit);
        },
      };
      this.#pending.set(id, p);
      if (this.#pending.size === 1) this.#setRef(true);
      req.signal?.addEventListener('abort', onAbort, { once: true });
      child.stdin!.write(frame);
    });
  }

  /** Stop the server process (running builds are killed with it). */
  close(): void {
    this.#closing = true;
    this.#child?.kill('SIGKILL');
  }
}
