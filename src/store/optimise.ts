/**
 * Store optimisation as Nix 2.8's optimise-store.cc does it, so that a store we optimised is one
 * `nix-store --optimise` finds nothing more to do in, and the other way round:
 *   - every regular file and symlink of a path is hashed as Nix's hashPath does (SHA-256 of its NAR
 *     serialisation, so the executable bit and a symlink's target count);
 *   - `<realStoreDir>/.links/<nix-base32 hash>` is a hard link to the first file seen with that hash;
 *     a later identical file is replaced by a hard link to it (linked to a temporary name
 *     `.tmp-link-<pid>-<random>` in the store dir, renamed over the file), its directory made writable for
 *     that and restored to 0555 and mtime 1 afterwards;
 *   - files already linked (an inode found in `.links`) are skipped, writable regular files are skipped
 *     with a warning, a `.links` entry of another size is replaced, EMLINK (too many links) and ENOSPC
 *     are shrugged off.
 * The file-system work is optimise-links.cjs, in synchronous calls (a thread-pool round trip per call
 * costs more than most of these calls), or the same steps in C when the platform layer provides the
 * native addon (provideNativeOptimiser; src/platform/optimise-addon.c): a whole store path per call, at a
 * third of the CPU time. One new path (auto-optimise-store) is optimised in the calling thread, as Nix
 * does; a whole store is shared out in batches of paths to worker threads, so that the cores and the file
 * system's waits overlap.
 */
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { ThreadTasks } from './thread-tasks.js';

/** What an optimisation did (Nix's OptimiseStats). */
export interface OptimiseStats {
  /** Files replaced by a hard link. */
  filesLinked: number;
  /** Their sizes (Nix's bytesFreed). */
  bytesFreed: number;
  /** Their 512-byte blocks. */
  blocksFreed: number;
}

export interface OptimiseOptions {
  /** Warnings (Nix's: "skipping suspicious writable file …", "removing corrupted link …"). */
  readonly onWarning?: ((message: string) => void) | undefined;
  /** Progress over the paths: done of expected. */
  readonly onProgress?: ((done: number, expected: number, stats: OptimiseStats) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
}

/** optimise-links.cjs. */
interface Optimiser {
  readonly stats: OptimiseStats;
  /** Optimise one store path at its real location; throws the file system's errors (ENOENT: it is gone). */
  optimisePath(realPath: string): void;
  /** Resolves when the replaced files are freed (deferFrees). */
  drain(): Promise<void>;
  /** Forget the inodes and `.links` entries seen so far. */
  forget(): void;
}
interface LinksModule {
  Optimiser: new (realStoreDir: string, inodes: Set<number>, warn: (message: string) => void, deferFrees?: boolean) => Optimiser;
  /** The same on the compiled addon at `addonPath` (`inodes` copied). */
  NativeOptimiser: new (addonPath: string, realStoreDir: string, inodes: Iterable<number>, warn: (message: string) => void, deferFrees?: boolean) => Optimiser;
  /** The inodes of `.links` (made if missing). */
  loadInodes(linksDir: string): Set<number>;
  removeCorruptLinks(realStoreDir: string, realPath: string, warn: (m: string) => void): void;
}
let linksModule: LinksModule | undefined;
/** optimise-links.cjs, loaded by the first optimisation (a command that optimises nothing never loads it). */
const links = (): LinksModule => (linksModule ??= createRequire(import.meta.url)('./optimise-links.cjs') as LinksModule);

let nativeLoader: (() => Promise<string>) | undefined;
let nativeAddon: Promise<string | undefined> | undefined;
let nativeReady: string | undefined;

/**
 * Install the loader of the native addon (called once by the platform layer, src/platform/native-optimise.ts):
 * it resolves to the compiled addon's file. Without it, or when it fails (no C compiler), or with
 * REALISE_NATIVE_OPTIMISE=0 in the environment, the optimiser is optimise-links.cjs alone.
 */
export function provideNativeOptimiser(load: () => Promise<string>): void {
  nativeLoader = load;
  nativeAddon = undefined;
  nativeReady = undefined;
}

/** The native addon's file, loaded on first use; undefined when there is none. */
function nativeOptimiser(): Promise<string | undefined> {
  if (process.env.REALISE_NATIVE_OPTIMISE === '0') return Promise.resolve(undefined);
  return (nativeAddon ??= (nativeLoader ? nativeLoader() : Promise.reject(new Error('none'))).then(
    (p) => (nativeReady = p),
    () => undefined,
  ));
}

/** A batch's reply from optimise-thread.cjs. */
interface BatchReply extends OptimiseStats {
  id: number;
  warnings: string[];
  error?: { message: string; code?: string; path?: string };
}

/**
 * Threads of a whole-store run, this one included (it is bound by the CPU: more threads than cores only
 * add start-up costs); paths per task sent to a worker; a whole-store run with no more paths than
 * IN_THREAD_MAX has no workers. This thread gives the event loop a turn every SLICE_MS of its share.
 */
const THREADS = Math.max(2, Math.min(availableParallelism(), 4));
const BATCH = 16;
const IN_THREAD_MAX = 64;
const SLICE_MS = 10;

function linksDirOf(realStoreDir: string): string {
  return realStoreDir + '/.links';
}

function add(to: OptimiseStats, s: OptimiseStats): void {
  to.filesLinked += s.filesLinked;
  to.bytesFreed += s.bytesFreed;
  to.blocksFreed += s.blocksFreed;
}

/**
 * Nix's optimisePath for new paths of one store (auto-optimise-store): synchronous, in this thread, except
 * that replaced files are freed in the thread pool (`drain()` waits for that). The native addon is loaded
 * in the background from the first call on, and used once it is there.
 */
export class StoreOptimiser {
  private linksMade = false;
  private readonly js: Optimiser;
  private native: Optimiser | undefined;

  constructor(
    private readonly realStoreDir: string,
    private readonly onWarning: (m: string) => void = () => {},
  ) {
    this.js = new (links().Optimiser)(realStoreDir, new Set(), onWarning, true);
  }

  /** What the calls so far did. */
  get stats(): OptimiseStats {
    const all = { ...this.js.stats };
    if (this.native) add(all, this.native.stats);
    return all;
  }

  /**
   * Optimise one path (file or tree) at its real location. Each call starts with no known inodes, as Nix's.
   * `repair` (a path being repaired): `.links` entries of its files are checked by content first.
   */
  optimisePath(realPath: string, repair = false): void {
    if (repair) links().removeCorruptLinks(this.realStoreDir, realPath, this.onWarning);
    if (!this.linksMade) {
      mkdirSync(linksDirOf(this.realStoreDir), { recursive: true, mode: 0o755 });
      this.linksMade = true;
      void nativeOptimiser();
    }
    if (!this.native && nativeReady && process.env.REALISE_NATIVE_OPTIMISE !== '0')
      this.native = new (links().NativeOptimiser)(nativeReady, this.realStoreDir, [], this.onWarning, true);
    const opt = this.native ?? this.js;
    opt.forget();
    opt.optimisePath(realPath);
  }

  /** Resolves when every file replaced so far is freed. */
  async drain(): Promise<void> {
    await Promise.all([this.js.drain(), this.native?.drain()]);
  }
}

/**
 * Nix's optimiseStore over `realPaths` (the real locations of every valid path): paths whose contents are
 * missing are skipped. This thread and up to THREADS - 1 worker threads take paths from one queue. Stops
 * when `signal` aborts (what was linked stays linked).
 */
export async function optimiseStorePaths(realStoreDir: string, realPaths: readonly string[], opts: OptimiseOptions = {}): Promise<OptimiseStats> {
  const inodes = links().loadInodes(linksDirOf(realStoreDir));
  const warn = opts.onWarning ?? (() => {});
  const addon = await nativeOptimiser();
  const here = addon ? new (links().NativeOptimiser)(addon, realStoreDir, inodes, warn, true) : new (links().Optimiser)(realStoreDir, inodes, warn, true);
  const stats: OptimiseStats = { filesLinked: 0, bytesFreed: 0, blocksFreed: 0 };
  const workers = !addon && realPaths.length > IN_THREAD_MAX ? THREADS - 1 : 0;
  const threads = Array.from({ length: workers }, () => new ThreadTasks<BatchReply>(new URL('./optimise-thread.cjs', import.meta.url)));
  const firstTask = { realStoreDir, inodes: Float64Array.from(inodes) };
  const queue = { next: 0, done: 0, last: Date.now(), failure: undefined as unknown };
  const progress = (n: number) => {
    queue.done += n;
    if (Date.now() - queue.last < 100) return;
    queue.last = Date.now();
    const all = { ...stats };
    add(all, here.stats);
    opts.onProgress?.(queue.done, realPaths.length, all);
  };
  const stopped = () => {
    if (opts.signal?.aborted) queue.failure ??= opts.signal.reason;
    return queue.failure !== undefined || queue.next >= realPaths.length;
  };
  const driveHere = async (): Promise<void> => {
    for (let slice = Date.now(); !stopped();) {
      try {
        here.optimisePath(realPaths[queue.next++]!);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') queue.failure ??= e; // ENOENT: contents missing
      }
      progress(1);
      if (Date.now() - slice >= SLICE_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        slice = Date.now();
      }
    }
    await here.drain();
  };
  const drive = async (thread: ThreadTasks<BatchReply>): Promise<void> => {
    try {
      for (let first: object = firstTask; !stopped(); first = {}) {
        const paths = realPaths.slice(queue.next, (queue.next += BATCH));
        const r = await thread.run({ ...first, paths });
        add(stats, r);
        for (const w of r.warnings) warn(w);
        if (r.error) queue.failure ??= Object.assign(new Error(r.error.message), { code: r.error.code, path: r.error.path });
        progress(paths.length);
      }
      await thread.run({ drain: true });
    } catch (e) {
      queue.failure ??= e; // the thread died
    }
  };
  try {
    await Promise.all([...threads.map(drive), driveHere()]); // the threads first: they start while this one works
  } finally {
    await Promise.all(threads.map((t) => t.terminate()));
  }
  if (queue.failure !== undefined) throw queue.failure;
  add(stats, here.stats);
  opts.onProgress?.(realPaths.length, realPaths.length, stats);
  return stats;
}
