/**
 * Twin stores with ONE store directory, for running Nix 2.8's functional tests unsandboxed as Nix's suite
 * runs them (a store directory of its own, no chroot, no sandbox): Nix's store and ours take turns at the
 * same directory (the other one is parked beside it under another name), each with its own state and log
 * directories. So both build the same .drv files to the same paths, and what each registered can be
 * compared row by row.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { expect, onTestFinished } from 'vitest';
import { lockFiles } from '../../src/store/locks.js';
import { nixEnv, removeTreeSync, runNix, tempDir, type NixRunResult } from './nix.js';
import { realiseInProcess } from './cli.js';

export type Side = 'nix' | 'ours';

const NIX_TESTS = fileURLToPath(new URL('../fixtures/nix-tests', import.meta.url));
const BIN = fileURLToPath(new URL('../../bin/realise.js', import.meta.url));

/** Nix's configure step for config.nix.in. */
function configNix(): string {
  return readFileSync(path.join(NIX_TESTS, 'config.nix.in'), 'utf8')
    .replace('@bash@', '/bin/bash')
    .replace('@coreutils@', '/usr/bin:/bin')
    .replace('@system@', 'x86_64-linux');
}

export interface DbRows {
  validPaths: unknown[];
  refs: unknown[];
  derivationOutputs: unknown[];
  realisations: unknown[];
  realisationsRefs: unknown[];
}

export class TwinStores {
  readonly root = tempDir('realise-nixtests-');
  /** The store directory both use (a path of the same length as Nix's suite would have). */
  readonly storeDir = path.join(this.root, 'store');
  /** A copy of test/fixtures/nix-tests with config.nix written (Nix's tests run in their directory). */
  readonly tests = path.join(this.root, 'tests');
  /** `_NIX_TEST_SHARED` (parallel.nix's counter files). */
  readonly shared = path.join(this.root, 'shared');
  private active: Side | undefined;
  /** Environment for every command of both sides (as Nix's common.sh sets it). */
  readonly env: Record<string, string>;

  /** Made in a test: everything is removed when the test ends. */
  constructor(extraConfig = '') {
    onTestFinished(() => removeTreeSync(this.root));
    cpSync(NIX_TESTS, this.tests, { recursive: true });
    writeFileSync(path.join(this.tests, 'config.nix'), configNix());
    writeFileSync(path.join(this.tests, 'ca', 'config.nix'), configNix());
    this.env = {
      NIX_REMOTE: '',
      NIX_USER_CONF_FILES: '/dev/null',
      // As Nix's tests/init.sh writes nix.conf (keep-derivations = false), plus ca-derivations.
      // Nix polls a lock it waits for every build-poll-interval seconds (5 by default; realise is woken by its
      // release): 1 keeps the concurrent tests short.
      NIX_CONFIG: `experimental-features = nix-command ca-derivations\nbuild-users-group =\nkeep-derivations = false\nsubstituters =\nsandbox = false\nbuild-poll-interval = 1\n${extraConfig}`,
      IMPURE_VAR1: 'foo',
      IMPURE_VAR2: 'bar',
      _NIX_TEST_SHARED: this.shared,
    };
  }

  private parked(side: Side): string {
    return path.join(this.root, `${side}-store`);
  }

  /** Put `side`'s store at the store directory. */
  use(side: Side): void {
    if (this.active === side) return;
    if (this.active) renameSync(this.storeDir, this.parked(this.active));
    if (existsSync(this.parked(side))) renameSync(this.parked(side), this.storeDir);
    else mkdirSync(this.storeDir);
    this.active = side;
  }

  uri(side: Side): string {
    return `local?store=${this.storeDir}&state=${this.root}/${side}/state&log=${this.root}/${side}/log`;
  }

  /** Nix's clearStore: both stores go (their directories made writable first, for an ordinary user). */
  clear(): void {
    this.active = undefined;
    for (const p of [this.storeDir, this.parked('nix'), this.parked('ours'), `${this.root}/nix`, `${this.root}/ours`]) removeTreeSync(p);
  }

  /** `nix-instantiate FILE ARGS` into both stores; the .drv paths (the same in both). */
  instantiate(file: string, args: string[] = [], env: Record<string, string> = {}): string[] {
    let first: string[] | undefined;
    for (const side of ['nix', 'ours'] as const) {
      this.use(side);
      const r = runNix('nix-instantiate', ['--store', this.uri(side), path.join(this.tests, file), ...args], { env: { ...this.env, ...env }, cwd: this.tests });
      if (r.status !== 0) throw new Error(`nix-instantiate ${file} ${args.join(' ')} failed:\n${r.stderr}`);
      const drvs = r.stdout.trim().split('\n');
      if (first && drvs.join() !== first.join()) throw new Error(`the twins instantiated different derivations: ${first} / ${drvs}`);
      first = drvs;
    }
    return first!;
  }

  /** `nix-store --realise ARGS` (Nix) or `realise build ARGS` (us), in this process for us. */
  async build(side: Side, args: string[]): Promise<NixRunResult> {
    this.use(side);
    if (side === 'nix') return runNix('nix-store', ['--store', this.uri('nix'), '--realise', ...args], { env: this.env, cwd: this.tests });
    const r = await realiseInProcess(['build', '--store', this.uri('ours'), ...args], this.env);
    return { stdout: r.stdout, stderr: r.stderr, status: r.status };
  }

  /**
   * A command other than a build on `side`'s store: `nix` is a Nix command line (`--store` is put after
   * its first word: `['nix-store', '--gc']`), `ours` a `realise` one (`--store` is put at its end:
   * `['gc']`).
   */
  async command(side: Side, nix: string[], ours: string[]): Promise<NixRunResult> {
    this.use(side);
    if (side === 'nix') return runNix(nix[0]!, ['--store', this.uri('nix'), ...nix.slice(1)], { env: this.env, cwd: this.tests });
    const r = await realiseInProcess([...ours, '--store', this.uri('ours')], this.env);
    return { stdout: r.stdout, stderr: r.stderr, status: r.status };
  }

  /** `nix-instantiate -E EXPR` (evaluated in the tests' directory) into both stores. */
  instantiateExpr(expr: string, env: Record<string, string> = {}): string[] {
    const file = `expr-${createHash('sha256').update(expr).digest('hex').slice(0, 16)}.nix`;
    writeFileSync(path.join(this.tests, file), expr);
    return this.instantiate(file, [], env);
  }

  /**
   * `count` builds of ARGS at once, each its own process (Nix's concurrent tests). `gate`: a path whose
   * lock (`<gate>.lock`, as the builds take it) is held until every process says it is waiting for it, so
   * that all of them are running before the first build starts however slowly each one starts up.
   */
  async buildConcurrently(side: Side, count: number, args: string[], gate?: string): Promise<NixRunResult[]> {
    this.use(side);
    const held = gate ? await lockFiles([gate]) : undefined;
    let waiting = 0;
    const onStderr = (text: string) => {
      if (held && text.includes(`waiting for lock on '${gate}'`) && ++waiting === count) held.releaseSync();
    };
    const runs: Promise<NixRunResult>[] = [];
    for (let i = 0; i < count; i++) {
      runs.push(
        side === 'nix'
          ? spawnRun('nix-store', ['--store', this.uri('nix'), '--realise', ...args], this.env, this.tests, onStderr)
          : spawnRun(process.execPath, [BIN, 'build', '--store', this.uri('ours'), ...args], this.env, this.tests, onStderr),
      );
    }
    // A process that ends before it waits (a failure) opens the gate for the others.
    return Promise.all(runs.map((r) => r.finally(() => held?.releaseSync())));
  }

  /** The database rows Nix compares by (ids and registration times left out). */
  rows(side: Side): DbRows {
    const db = new Database(path.join(this.root, side, 'state', 'db', 'db.sqlite'), { readonly: true, fileMustExist: true });
    try {
      const has = (t: string) => !!db.prepare("select 1 from sqlite_master where type = 'table' and name = ?").get(t);
      const all = (sql: string) => db.prepare(sql).all();
      return {
        validPaths: all(
          'select path, hash, narSize, ultimate, ca, (select path from ValidPaths w where w.path = v.deriver) is not null as hasDeriver, deriver from ValidPaths v order by path',
        ),
        refs: all(
          'select a.path as referrer, b.path as reference from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference order by 1, 2',
        ),
        derivationOutputs: all('select v.path as drv, d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv order by 1, 2'),
        realisations: has('Realisations')
          ? all('select r.drvPath, r.outputName, v.path as outputPath, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath order by 1, 2')
          : [],
        realisationsRefs: has('RealisationsRefs')
          ? all(
              "select a.drvPath || '!' || a.outputName as referrer, b.drvPath || '!' || b.outputName as reference from RealisationsRefs x join Realisations a on a.id = x.referrer join Realisations b on b.id = x.realisationReference order by 1, 2",
            )
          : [],
      };
    } finally {
      db.close();
    }
  }

  /** mtime (seconds) of a path in `side`'s store. */
  mtime(side: Side, p: string): number {
    this.use(side);
    return Math.floor(statSync(p).mtimeMs / 1000);
  }

  read(side: Side, p: string): string {
    this.use(side);
    return readFileSync(p, 'utf8');
  }
}

/** A process run to its end, its stderr also passed on line by line as it comes. */
function spawnRun(cmd: string, args: string[], env: Record<string, string>, cwd: string, onStderr: (line: string) => void): Promise<NixRunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: nixEnv(env), cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      const start = stderr.lastIndexOf('\n') + 1;
      stderr += c;
      for (const line of stderr.slice(start).split('\n').slice(0, -1)) onStderr(line);
    });
    child.on('close', (code) => resolve({ stdout, stderr, status: code ?? -1 }));
  });
}

/**
 * The lines of stderr both must print alike: Nix's activity and error lines with an error's continuation
 * lines (not builder output, whose interleaving with them is not ours to fix, nor `these N derivations will
 * be built`, whose order is compared elsewhere).
 */
export function keyLines(stderr: string): string[] {
  const out: string[] = [];
  let inError = false;
  for (const l of stderr.split('\n')) {
    if (l.startsWith('error: ')) inError = true;
    else if (!l.startsWith(' ')) inError = false;
    if (
      inError ||
      /^(building '|checking outputs of '|repairing outputs of '|copying path '|resolved derivation: |running post-build-hook |post-build-hook: |waiting for lock on )/.test(
        l,
      )
    )
      out.push(l);
  }
  return out;
}

export interface Pair {
  nix: NixRunResult;
  ours: NixRunResult;
}

export interface StepOptions {
  /**
   * Derivations race for the same outputs in parallel slots, so which of them builds is up to timing (in
   * Nix too): the key lines and the outputs' derivers are compared with the derivations' paths left out.
   */
  racing?: boolean;
  /**
   * The key lines are compared as sets: when a substitution fails while other goals start, Nix prints the
   * error a worker round earlier or later than realise does (README, known differences).
   */
  unordered?: boolean;
  /** Paths whose contents differ between the twins (a builder that is not deterministic): their hash and size are left out. */
  differ?: RegExp;
  /** The step for each side (default: a build of the arguments). */
  run?: (side: Side) => Promise<NixRunResult>;
}

/** One step on both stores, Nix first; exit status, stdout, key stderr lines and database rows compared. */
export async function step(t: TwinStores, args: string[], expectStatus: number, opts: StepOptions = {}): Promise<Pair> {
  const { racing = false, unordered = false, differ, run = (side: Side) => t.build(side, args) } = opts;
  const nix = await run('nix');
  const ours = await run('ours');
  expect(nix.status, `nix ${args.join(' ')}:\n${nix.stderr}`).toBe(expectStatus);
  expect(ours.status, `realise ${args.join(' ')}:\n${ours.stderr}`).toBe(expectStatus);
  expect(ours.stdout).toBe(nix.stdout);
  const lines = (stderr: string) =>
    racing
      ? keyLines(stderr)
          .map((l) => l.replace(/[^/' ]+\.drv/g, 'DRV'))
          .sort()
      : unordered
        ? keyLines(stderr).sort()
        : keyLines(stderr);
  expect(lines(ours.stderr)).toEqual(lines(nix.stderr));
  const rows = (side: Side) => {
    const r = t.rows(side);
    const validPaths = r.validPaths.map((v) => {
      const row = v as { path: string; hash: string; narSize: number; deriver: string };
      return { ...row, ...(racing ? { deriver: 'DRV' } : {}), ...(differ?.test(row.path) ? { hash: 'DIFFERS', narSize: 0 } : {}) };
    });
    return { ...r, validPaths };
  };
  expect(rows('ours')).toEqual(rows('nix'));
  return { nix, ours };
}
