/**
 * A long-running sandbox helper ("zygote"): one `helper --server` process, shared by the LinuxSandboxes of
 * the process (another one by its NoSandboxes), forks a small process per build, so a build costs a fork
 * of a tiny C process instead of a fork of Node. Every build's output and status come back on the
 * server's stdout (records of all builds, see #onStatus): a sandboxed build's from its own process, an
 * unsandboxed (`--plain`) builder's from the server, which reads its output. Abort kills the build's
 * process group, whose sandbox dies with it (parent-death signal). A sandboxed build's pid comes with its
 * "started" record, in one write (a record of its own cost a wake-up of the event loop per build): an
 * abort before that waits for it, the setup of the sandbox, about a millisecond. A build process dies
 * with the server.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { SandboxExit } from './sandbox.js';
import { signalName } from './signals.js';

interface Pending {
  readonly onOutput: ((chunk: Buffer) => void) | undefined;
  readonly onSetUp: (() => void) | undefined;
  readonly onOutputsLeft: (() => void) | undefined;
  readonly onSkeletonKept: (() => void) | undefined;
  pid?: number;
  aborted: boolean;
  status?: string;
  readonly id: string;
  readonly signal: AbortSignal | undefined;
  readonly owner: object | undefined;
  /** The run's promise's resolve: through #resolve, which forgets the run first. */
  readonly settle: (exit: SandboxExit) => void;
}

export interface ServerRunRequest {
  /** Who asked (a LinuxSandbox sharing the server): stopRunsOf(owner) stops its runs. */
  readonly owner?: object | undefined;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly signal?: AbortSignal | undefined;
  readonly onOutput?: ((chunk: Buffer) => void) | undefined;
  /** A sandboxed build's "started" status: its sandbox is set up and the builder runs. */
  readonly onSetUp?: (() => void) | undefined;
  /**
   * A sandboxed build's "left" status, before its exit status: the helper moved not every output the
   * builder made out of the chroot (see the helper's moveOutputsOut). Without it, an exit or signal
   * status means nothing is left there.
   */
  readonly onOutputsLeft?: (() => void) | undefined;
  /**
   * A sandboxed build's "kept" status, before its exit status: the helper found the chroot, a pooled
   * skeleton (`--recycle-to`), unchanged after the build and renamed it to its name in the pool.
   */
  readonly onSkeletonKept?: (() => void) | undefined;
  readonly drvPath: string;
}

export class SandboxServer {
  readonly #exe: string;
  readonly #filter: Buffer | undefined;
  #child: ChildProcess | undefined;
  /** The server process once it has started (its 'spawn'), until it exits: #start() has nothing to wait for. */
  #started: ChildProcess | undefined;
  #ready: Promise<void> | undefined;
  #pending = new Map<string, Pending>();
  readonly #bySignal = new WeakMap<AbortSignal, Set<Pending>>();
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
      const child = spawn(this.#exe, ['--server', ...(this.#warm ? ['--warm'] : []), ...(this.#filter ? ['--seccomp-fd', '3'] : [])], {
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
      if (this.#child === child) this.#started = child;
    })();
    return this.#ready;
  }

  /** Keep the event loop alive exactly while builds are pending (an idle server must not hold it). */
  #setRef(on: boolean): void {
    const child = this.#child;
    if (!child) return;
    const h = [child, child.stdout] as unknown as ({ ref?: () => void; unref?: () => void } | null)[];
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
    this.#child = this.#started = undefined;
    this.#ready = undefined;
    for (const p of [...this.#pending.values()]) {
      // #resolve() removes it from #pending. Plain builders run in their own session: they do not die with the server.
      this.#kill(p);
      this.#resolve(p, p.aborted ? { kind: 'aborted' } : { kind: 'spawn-failed', message: 'the sandbox helper server exited unexpectedly' });
    }
  }

  /** Whether the server process exited without close() (builds should then go another way). */
  get died(): boolean {
    return this.#died;
  }

  /**
   * The server's stdout: lines "ID STATUS", and builds' output as records "ID out LEN" followed by LEN bytes.
   * One process writes all of a build's records (the server for an unsandboxed build), its output before its
   * status, so a build ends at its status.
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
    if (rest === 'left') {
      p.onOutputsLeft?.();
      return;
    }
    if (rest === 'kept') {
      p.onSkeletonKept?.();
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
    if (p.aborted && (p.pid !== undefined || p.status !== undefined)) return this.#resolve(p, { kind: 'aborted' });
    if (p.status === undefined) return;
    let m: RegExpExecArray | null;
    const s = p.status;
    if ((m = /^exit (\d+)$/.exec(s))) this.#resolve(p, { kind: 'exited', code: Number(m[1]) });
    else if ((m = /^signal (\d+)$/.exec(s))) this.#resolve(p, { kind: 'signalled', signal: signalName(Number(m[1])) });
    else this.#resolve(p, { kind: 'spawn-failed', message: s.replace(/^error /, '') });
  }

  /** End a run with its exit, once. */
  #resolve(p: Pending, exit: SandboxExit): void {
    if (!this.#pending.delete(p.id)) return;
    if (this.#pending.size === 0) this.#setRef(false);
    if (p.signal) this.#bySignal.get(p.signal)?.delete(p);
    p.settle(exit);
  }

  /**
   * Run one build; `args` are the helper's build options and `-- BUILDER ARGV0 ARGS...`, or
   * `--plain CWD FILE ARGV0 ARGS...` for an unsandboxed builder forked straight from the server.
   * Rejects when the server process cannot be started.
   */
  async run(req: ServerRunRequest): Promise<SandboxExit> {
    if (req.signal?.aborted) return { kind: 'aborted' };
    // (Started already, the usual case: no promise to wait for.)
    if (!this.#started) await this.#start();
    // Starting the server (the first build compiles and launches it) can take long enough for a stop to come in.
    if (req.signal?.aborted) return { kind: 'aborted' };
    const child = this.#child;
    if (!child?.stdin) return { kind: 'spawn-failed', message: 'the sandbox helper server is not running' };
    // Only the server and its per-build processes write to its stdout: an id need not be secret.
    const id = String(this.#nextId++);
    const strings = [id, String(req.args.length), ...req.args];
    for (const k in req.env) strings.push(`${k}=${req.env[k]}`);
    for (const s of strings) {
      if (s.includes('\0')) return { kind: 'spawn-failed', message: `an argument or environment variable of '${req.drvPath}' contains a NUL byte` };
    }
    const payload = strings.join('\0') + '\0';
    const length = Buffer.byteLength(payload);
    const frame = Buffer.allocUnsafe(4 + length);
    frame.writeUInt32LE(length, 0);
    frame.write(payload, 4);
    const { signal } = req;
    return await new Promise<SandboxExit>((resolve) => {
      // No closure bound to a name per build (the CLI's bundle keeps names: a defineProperty per closure made).
      const p: Pending = {
        onOutput: req.onOutput,
        onSetUp: req.onSetUp,
        onOutputsLeft: req.onOutputsLeft,
        onSkeletonKept: req.onSkeletonKept,
        aborted: false,
        id,
        signal,
        owner: req.owner,
        settle: resolve,
      };
      this.#pending.set(id, p);
      if (this.#pending.size === 1) this.#setRef(true);
      if (signal) this.#abortsWith(signal).add(p);
      child.stdin!.write(frame);
    });
  }

  /**
   * The runs a signal stops. One listener per signal (a call's builds share its signal), added with its
   * first run and kept while the signal lives: an EventTarget listener added and removed per build costs
   * the event loop more than the set.
   */
  #abortsWith(signal: AbortSignal): Set<Pending> {
    let runs = this.#bySignal.get(signal);
    if (!runs) {
      const set = (runs = new Set<Pending>());
      this.#bySignal.set(signal, set);
      signal.addEventListener(
        'abort',
        () => {
          for (const p of [...set]) {
            p.aborted = true;
            this.#kill(p);
            this.#maybeDone(p);
          }
        },
        { once: true },
      );
    }
    return runs;
  }

  /**
   * Kill the running builds of one user of the server (one that closes while others keep the server): they
   * end as aborted, as a stop of their signal ends them.
   */
  stopRunsOf(owner: object): void {
    for (const p of [...this.#pending.values()]) {
      if (p.owner !== owner) continue;
      p.aborted = true;
      this.#kill(p);
      this.#maybeDone(p);
    }
  }

  /** Stop the server process (running builds are killed with it). */
  close(): void {
    this.#closing = true;
    this.#child?.kill('SIGKILL');
  }
}
