/**
 * Tasks for one resident worker thread running a self-contained script: a plain JavaScript file beside
 * the module (a `URL`; `.cjs`, copied to dist/ by the build) or, when it must be made at run time, its
 * source (`eval`). Either imports nothing of ours, so it runs the same from src/ under tsx and from dist/. Each task is one
 * message `{ id, ...request }` answered by one message `{ id, ...reply }`. The thread is started on first
 * use and does not keep the process alive while no task is pending. If it dies, pending tasks reject and
 * the next task starts a new thread.
 */
import { createRequire } from 'node:module';
import type { Worker, TransferListItem } from 'node:worker_threads';

/** node:worker_threads, loaded when a first thread starts (a command that starts none does not load it). */
const workerThreads = (): typeof import('node:worker_threads') => createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');

export class ThreadTasks<Reply extends { id: number }> {
  readonly #source: string | URL;
  readonly #onError: ((e: unknown) => void) | undefined;
  #worker: Worker | undefined;
  /** Whether the current thread has started running its script (Worker's 'online'). */
  #online = false;
  #seq = 0;
  readonly #pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: unknown) => void }>();

  /** `onError`: called when the thread reports an uncaught error (before pending tasks reject). */
  constructor(source: string | URL, onError?: (e: unknown) => void) {
    this.#source = source;
    this.#onError = onError;
  }

  /** Start the thread now (it takes tens of milliseconds), so that a first task soon does not wait for it. */
  warm(): void {
    this.#thread();
  }

  /** Whether a thread is running its script (a task given now does not wait for a thread to start). */
  get online(): boolean {
    return this.#worker !== undefined && this.#online;
  }

  run(request: Record<string, unknown>, transfer?: readonly TransferListItem[]): Promise<Reply> {
    const w = this.#thread();
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      if (this.#pending.size === 1) w.ref();
      w.postMessage({ ...request, id }, transfer);
    });
  }

  /** Requests given to `runTogether` in this turn of the event loop, posted at its end. */
  #wave: Record<string, unknown>[] | undefined;

  /**
   * `run`, for a small request of a thread whose script also takes an array of requests (answered by an
   * array of replies): the requests given in the same turn of the event loop go as one message, and come
   * back as one, instead of a message (and a wake-up of each thread) each.
   */
  runTogether(request: Record<string, unknown>): Promise<Reply> {
    const w = this.#thread();
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      if (this.#pending.size === 1) w.ref();
      if (!this.#wave) {
        const wave: Record<string, unknown>[] = (this.#wave = []);
        setImmediate(() => {
          this.#wave = undefined;
          // (A thread that died meanwhile rejected these already; a new one is not started for them.)
          if (this.#worker === w) w.postMessage(wave.length === 1 ? wave[0] : wave);
        });
      }
      this.#wave.push({ ...request, id });
    });
  }

  /** Stop the thread now (pending tasks reject); a later task starts a new one. */
  async terminate(): Promise<void> {
    const w = this.#worker;
    if (!w) return;
    this.#worker = undefined;
    await w.terminate();
  }

  #thread(): Worker {
    if (this.#worker) return this.#worker;
    // No options of this process's (a loader such as tsx's costs each thread ~100 ms and the script needs none).
    const { Worker } = workerThreads();
    const w = typeof this.#source === 'string' ? new Worker(this.#source, { eval: true, execArgv: [] }) : new Worker(this.#source, { execArgv: [] });
    this.#online = false;
    w.once('online', () => {
      if (this.#worker === w) this.#online = true;
    });
    const settle = (m: Reply) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (this.#pending.size === 0) w.unref();
      p.resolve(m);
    };
    w.on('message', (m: Reply | Reply[]) => {
      if (Array.isArray(m)) for (const r of m) settle(r);
      else settle(m);
    });
    // An uncaught error is followed by 'exit': only the first ends this thread's tasks (by then a new
    // thread may be serving newer ones).
    let dead = false;
    const fail = (e: unknown) => {
      if (dead) return;
      dead = true;
      if (this.#worker === w) this.#worker = undefined;
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
    };
    w.on('error', (e) => {
      this.#onError?.(e);
      fail(e);
    });
    w.on('exit', (code) => fail(new Error(`the worker thread exited with code ${code}`)));
    // Only after the listeners: in Node 20 a 'message' listener added to an unref'ed Worker refs its port
    // again, and a thread that was only warmed kept the process alive forever.
    w.unref();
    this.#worker = w;
    return w;
  }
}
