/**
 * Helpers for the scheduler tests: real Nix 2.8 on private stores (chroot and plain), path-info comparison,
 * and a hand-released fake Sandbox.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IN_CI, runNix, nix, type NixRunResult } from '../helpers/nix.js';
import type { Sandbox, SandboxExit, SandboxRequest, SandboxRunOptions } from '../../src/platform/sandbox.js';
import { computeOutputPaths, readDerivationFromStore, writeDerivation, type Derivation } from '../../src/derivation/derivation.js';
import type { Store } from '../../src/store/store-api.js';
import type { StorePath } from '../../src/store/store-path.js';
import { loadDrv } from '../../src/scheduler/drv-view.js';
import { knownOutputs } from '../../src/scheduler/realisations.js';

export const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/scheduler');

/** A static /bin/busybox, the builders' shell in both sandboxes. In CI its absence is an error, not a skip. */
export function busyboxOk(): boolean {
  const ok = existsSync('/bin/busybox');
  if (!ok && IN_CI) throw new Error('/bin/busybox is required in CI (apt-get install busybox-static)');
  return ok;
}

/** Sandbox paths giving builders a shell: /bin/sh is busybox, and /bin/busybox for the other tools. */
export const SANDBOX_PATHS = ['/bin/sh=/bin/busybox', '/bin/busybox'];

/** Nix options for a sandboxed build in a chroot store, as our tests configure our engine. */
export function nixSandboxArgs(): string[] {
  return [
    '--option',
    'sandbox',
    'true',
    '--option',
    'build-users-group',
    '',
    '--option',
    'substituters',
    '',
    '--option',
    'sandbox-paths',
    SANDBOX_PATHS.join(' '),
  ];
}

/** Instantiate every attribute of a Nix file (an attribute set of derivations); returns attr → .drv path. */
export function instantiateAttrs(store: string, file: string): Record<string, string> {
  const out = nix('nix-instantiate', [
    '--store',
    store,
    '--eval',
    '--strict',
    '--json',
    '--read-write-mode',
    '-E',
    `builtins.mapAttrs (n: v: v.drvPath) (import ${file})`,
  ]);
  return JSON.parse(out) as Record<string, string>;
}

export { nixRealise } from '../helpers/nix.js';

export interface PathFacts {
  valid: boolean;
  narHash?: string;
  narSize?: number;
  references?: string[];
  ca?: string;
  deriver?: string;
}

/** What real Nix says about paths of a store (`nix path-info --json`); with no paths: every valid path. */
export function pathFacts(store: string, paths: readonly string[] | 'all'): Map<string, PathFacts> {
  const args = ['path-info', '--store', store, '--json'];
  if (paths === 'all') args.push('--all');
  else args.push(...paths);
  if (paths !== 'all' && paths.length === 0) return new Map();
  const r = runNix('nix', args);
  if (r.status !== 0 && !r.stdout.startsWith('[')) throw new Error(`nix path-info failed (${r.status}): ${r.stderr}`);
  const list = JSON.parse(r.stdout) as {
    path: string;
    valid?: boolean;
    narHash?: string;
    narSize?: number;
    references?: string[];
    ca?: string;
    deriver?: string;
  }[];
  const out = new Map<string, PathFacts>();
  for (const x of list) {
    out.set(
      x.path,
      x.valid === false
        ? { valid: false }
        : { valid: true, narHash: x.narHash, narSize: x.narSize, references: [...(x.references ?? [])].sort(), ca: x.ca, deriver: x.deriver },
    );
  }
  return out;
}

/** Output paths of derivations as Nix has them (`nix-store -q --outputs`). */
export function nixOutputs(store: string, drvs: readonly string[]): string[] {
  return nix('nix-store', ['--store', store, '-q', '--outputs', ...drvs])
    .split('\n')
    .filter(Boolean);
}

/** Closure (`nix-store -qR`) of paths. */
export function nixClosure(store: string, paths: readonly string[]): string[] {
  return nix('nix-store', ['--store', store, '-qR', ...paths])
    .split('\n')
    .filter(Boolean)
    .sort();
}

/** `nix-store --verify --check-contents` of a store. */
export function nixVerify(store: string): NixRunResult {
  return runNix('nix-store', ['--store', store, '--verify', '--check-contents']);
}

/** Remove a directory tree that may hold read-only store paths. */
export async function removeTree(dir: string): Promise<void> {
  spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' });
  await fsp.rm(dir, { recursive: true, force: true });
}

/** The `> line` lines of a Nix error message (the log tail). */
export function logTail(message: string): string[] {
  return message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('> '))
    .map((l) => l.slice(2));
}

// ---------------------------------------------------------------------------------------------------------
// A fake sandbox released by hand.

export interface PendingRun {
  readonly request: SandboxRequest;
  readonly opts: SandboxRunOptions;
  /** Write the outputs (files with `contents`, default the drv path) and exit with `code`. */
  finish(code?: number, contents?: (outputPath: string) => string): Promise<void>;
  /** Send output to the log. */
  log(text: string): void;
  /** Whether the run's signal has fired. */
  readonly aborted: boolean;
  /** Settles when the run is over (finished or aborted). */
  readonly done: Promise<SandboxExit>;
}

/**
 * Sandbox whose runs stay pending until the test calls `finish()`. Tracks concurrency. `toRealPath` maps a
 * logical output path to where the test must write it (the store's physical path).
 */
export class FakeSandbox implements Sandbox {
  readonly name = 'fake';
  readonly isolated = true;
  readonly pending: PendingRun[] = [];
  readonly started: SandboxRequest[] = [];
  running = 0;
  maxRunning = 0;
  private waiters: (() => void)[] = [];
  /**
   * Set to finish every run at once: return an exit code, or `{ code, contents }` (output contents by
   * output path), or undefined to leave the run pending.
   */
  auto: ((req: SandboxRequest) => number | { code: number; contents?: (outputPath: string) => string } | undefined) | undefined;

  constructor(private readonly toRealPath: (p: string) => string) {}

  run(request: SandboxRequest, opts: SandboxRunOptions = {}): Promise<SandboxExit> {
    this.started.push(request);
    opts.onSetUp?.();
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    let resolve!: (e: SandboxExit) => void;
    const done = new Promise<SandboxExit>((r) => {
      resolve = r;
    });
    let settled = false;
    const settle = (e: SandboxExit) => {
      if (settled) return;
      settled = true;
      this.running--;
      const i = this.pending.indexOf(run);
      if (i >= 0) this.pending.splice(i, 1);
      resolve(e);
    };
    const run: PendingRun = {
      request,
      opts,
      done,
      get aborted() {
        return !!opts.signal?.aborted;
      },
      log: (text) => opts.onOutput?.(Buffer.from(text)),
      finish: async (code = 0, contents) => {
        if (code === 0) {
          for (const p of request.outputPaths) {
            await fsp.writeFile(this.toRealPath(p), contents ? contents(p) : `built by ${request.drvPath}\n`);
          }
        }
        settle({ kind: 'exited', code });
      },
    };
    opts.signal?.addEventListener('abort', () => settle({ kind: 'aborted' }), { once: true });
    this.pending.push(run);
    for (const w of this.waiters.splice(0)) w();
    if (this.auto) {
      const a = this.auto(request);
      if (typeof a === 'number') void run.finish(a);
      else if (a) void run.finish(a.code, a.contents);
    }
    return done;
  }

  /** Wait until `n` runs are pending (or time out). */
  async waitPending(n: number, timeoutMs = 10_000): Promise<PendingRun[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.length < n) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} pending runs (have ${this.pending.length})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return [...this.pending];
  }

  /** The pending run of a derivation whose name contains `name`. */
  find(name: string): PendingRun | undefined {
    return this.pending.find((r) => r.request.drvPath.endsWith(`-${name}.drv`));
  }
}

/** Let the event loop run a few times (goals progress, nothing else due). */
export async function settle(ms = 100): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Output paths of derivations, per derivation (`nix show-derivation`, one call). */
export function drvOutputs(store: string, drvs: readonly string[]): Map<string, Record<string, string>> {
  const json = JSON.parse(nix('nix', ['show-derivation', '--store', store, ...drvs])) as Record<string, { outputs: Record<string, { path?: string }> }>;
  const out = new Map<string, Record<string, string>>();
  for (const [d, v] of Object.entries(json)) {
    const o: Record<string, string> = {};
    for (const [name, x] of Object.entries(v.outputs)) if (x.path) o[name] = x.path;
    out.set(d, o);
  }
  return out;
}

/** Closure of `roots` in a map of path facts (from `pathFacts(store, 'all')`). */
export function closureIn(facts: ReadonlyMap<string, PathFacts>, roots: readonly string[]): string[] {
  const seen = new Set<string>();
  const todo = [...roots];
  while (todo.length) {
    const p = todo.pop()!;
    if (seen.has(p)) continue;
    seen.add(p);
    todo.push(...(facts.get(p)?.references ?? []));
  }
  return [...seen].sort();
}

export interface DrvSpec {
  script?: string;
  outputs?: string[];
  env?: Record<string, string>;
  builder?: string;
}

let drvCounter = 0;

/**
 * Write a derivation `<name>` into `store` (unique per test run via a salt) depending on the `out` outputs of
 * `deps`; its builder is /bin/sh -c `script` unless given. Returns the .drv path.
 */
export async function writeTestDrv(store: Store, name: string, deps: StorePath[] = [], o: DrvSpec = {}): Promise<StorePath> {
  return writeDerivation(store, await testDrv(store, name, deps, o));
}

/** The derivation writeTestDrv writes (its output paths computed), not written. */
export async function testDrv(store: Store, name: string, deps: StorePath[] = [], o: DrvSpec = {}): Promise<Derivation> {
  const outputs = o.outputs ?? ['out'];
  const script = o.script ?? 'echo building';
  const env = new Map<string, string>([
    ['builder', o.builder ?? '/bin/sh'],
    ['name', name],
    ['system', 'x86_64-linux'],
    ['salt', `${process.pid}-${drvCounter++}`],
    ...(outputs.length > 1 ? [['outputs', outputs.join(' ')] as [string, string]] : []),
    ...Object.entries(o.env ?? {}),
  ]);
  return computeOutputPaths(
    readDerivationFromStore(store),
    {
      name,
      inputDrvs: new Map(deps.map((d) => [d, ['out']])),
      inputSrcs: [],
      platform: 'x86_64-linux',
      builder: o.builder ?? '/bin/sh',
      args: ['-c', script],
      env,
    },
    new Map(outputs.map((n) => [n, { type: 'input-addressed' as const }])),
    { storeDir: store.storeDir },
  );
}

/**
 * The outputs of a derivation whose paths the store knows (Nix's queryPartialDerivationOutputMap): from the
 * .drv, its DerivationOutputs rows, and its realisations (floating CA outputs are known only by those).
 */
export async function outputsOf(store: Store, drvPath: string): Promise<Map<string, string>> {
  return new Map(await knownOutputs(store, await loadDrv(store, drvPath)));
}
