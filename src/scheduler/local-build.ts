/**
 * The part of a derivation goal that builds: output locks, re-check, stale output deletion, a build slot
 * (only this leaf work takes one), the build directory and environment, the sandboxed run with time and
 * log limits, registration of the outputs, the post-build hook, and repeated rounds.
 */
import { lstatSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { makeBuildEnv, rewriteStrings } from '../derivation/build-env.js';
import { deleteTree } from '../store/canonicalise.js';
import { mkdirOnPool, rmdirOnPool } from '../store/pool-fs.js';
import { RealiseError } from '../store/errors.js';
import { Hash } from '../store/hash.js';
import type { OpenedLocks, PathLocks } from '../store/store-api.js';
import {
  makeStorePath,
  outputPathName,
  storePathBase,
  storePathHashPart,
  storePathName,
  hashPlaceholder,
  toStorePath,
  type StorePath,
} from '../store/store-path.js';
import type { Sandbox, SandboxExit } from '../platform/sandbox.js';
import { buildDirRegistry } from '../platform/build-dirs.js';
import { buildDirPool } from '../platform/build-dir-pool.js';
import { runPostBuildHook } from '../platform/post-build-hook.js';
import { checkImpureHostDeps, parseSandboxPaths, type SandboxPath } from '../platform/sandbox-config.js';
import { canBuildHere, knownPath, requiredSystemFeatures, type DrvView } from './drv-view.js';
import { BuilderLogMessageError, BuildSetupError } from './errors.js';
import { encodeError } from '../remote/wire.js';
import { exportReferencesGraph } from './export-references.js';
import { builderLogMessage, LogCollector } from './log-collector.js';
import { describeSignal } from '../platform/signals.js';
import { roundsToTryToBuild, slotGate } from './slot-gate.js';
import { registerOutputs, type RoundOutputs } from './register-outputs.js';
import { knownOutputs } from './realisations.js';
import { isRejected } from './rejected.js';
import { failure, messageParts, success, type BuildResult, type BuildStatus, type FailureDetails } from './results.js';
import type { BuildMode, Worker } from './worker.js';
import type { DerivationGoal } from './derivation-goal.js';
import type { RunningCount } from './events.js';
import type { ResolvedOptions } from './options.js';
import { processUmask } from '../store/umask.js';
import { hintfmt, plainMessage, type NixMessage } from '../store/nix-message.js';

export interface LocalBuildPlan {
  readonly mode: BuildMode;
  readonly rounds: number;
  readonly inputPaths: Set<StorePath>;
  readonly preferLocal: boolean;
  /** The goal's wanted outputs (undefined = all), for Nix's goal name `DRV!out,dev` / `DRV!*` in messages. */
  readonly wanted?: ReadonlySet<string> | undefined;
  /** The goal that builds (its depth and activity steer the order of build slots; it waits through it). */
  readonly goal: DerivationGoal;
}

const ZERO_SHA256 = new Hash('sha256', new Uint8Array(32));

/** Nix's makeFallbackPath for an output whose final path is unknown. */
export function fallbackPathForOutput(view: DrvView, outputName: string, storeDir: string): StorePath {
  return makeStorePath(`rewrite:${view.drvPath}:name:${outputName}`, ZERO_SHA256, outputPathName(view.name, outputName), storeDir);
}

/** Nix's makeFallbackPath for a known output path that can't be used (valid, or being repaired). */
export function fallbackPathFor(view: DrvView, p: StorePath, storeDir: string): StorePath {
  return makeStorePath(`rewrite:${view.drvPath}:${storePathBase(p)}`, ZERO_SHA256, storePathName(p), storeDir);
}

/** One lstat: synchronous, since a single stat never holds the event loop for long (and a thread-pool round trip per check adds up). */
function exists(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false }) !== undefined;
}

/**
 * Remove a build directory: an empty one (the usual case) with one rmdir, else the whole tree. The rmdir
 * goes through the thread pool: on a disk mounted with `discard` it takes milliseconds, which would block
 * the event loop (the slot is already free, so other builds run meanwhile).
 */
async function removeBuildDir(dir: BuildDir): Promise<void> {
  try {
    if (dir.dir !== dir.top) await rmdirOnPool(dir.dir);
    await rmdirOnPool(dir.top);
  } catch {
    await deleteTree(dir.top);
  }
}

/**
 * After a build: keep its build dir (a failed build with keepFailed) opened up to 0755, as Nix does; else
 * into the pool for the next build when it is as made (see build-dir-pool.ts), or removed.
 */
async function keepOrRemoveBuildDir(dir: BuildDir, keep: boolean): Promise<void> {
  try {
    await (keep ? fsp.chmod(dir.top, 0o755) : poolOrRemoveBuildDir(dir));
  } catch {
    /* best effort, as Nix's: a directory that cannot be opened up or removed stays */
  }
  buildDirRegistry().delete(dir.top);
  countBuildDir(dir.top.replace(/-\d+$/, ''), -1);
}

async function poolOrRemoveBuildDir(dir: BuildDir): Promise<void> {
  // The base: dir.top is `<base>/<prefix>-<n>`, absolute (no path.dirname per build in code not optimised).
  const base = dir.top.slice(0, dir.top.lastIndexOf('/')) || '/';
  if (!(await buildDirPool(base).put(dir.top, dir.dir !== dir.top))) await removeBuildDir(dir);
}

const UMASK_CLEARS_OWNER_BITS = (processUmask() & 0o700) !== 0;

/**
 * Nix's createTempDir for build directories: `<base>/<prefix>-<n>` with the first free n from 0, mode 0700.
 * Builders see this name (NIX_BUILD_TOP without a sandbox, NIX_ATTRS_*_FILE always), so it must be Nix's.
 */
async function createBuildDir(base: string, prefix: string): Promise<string> {
  if (!path.isAbsolute(base)) throw new BuildSetupError(`not an absolute path: '${base}'`);
  for (let n = 0; ; n++) {
    const dir = path.join(base, `${prefix}-${n}`);
    try {
      await mkdirPrivate(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw (await buildDirRootError(base)) ?? e;
    }
    return dir;
  }
}

/**
 * Why Nix 2.8's createTempDir fails before its mkdir, when ours failed: it makes the root canonical first
 * (canonPath with symlinks resolved), which fails on the first component that is not there (its lstat's
 * error: "getting status of '/nonexistent': No such file or directory"; a relative root, refused first, is
 * "not an absolute path: '…'", ending the call). Undefined when the root is there (the mkdir's error is Nix's).
 */
async function buildDirRootError(base: string): Promise<unknown> {
  let p = '';
  for (const c of base.split('/').filter(Boolean)) {
    p += `/${c}`;
    try {
      await fsp.lstat(p);
    } catch (e) {
      return e;
    }
  }
  return undefined;
}

/** A directory of mode 0700. Through the thread pool: a directory creation can take milliseconds on a busy disk. */
async function mkdirPrivate(dir: string): Promise<void> {
  await mkdirOnPool(dir, 0o700);
  // mkdir applies the umask; only a umask that takes owner bits away needs a chmod to get 0700.
  if (UMASK_CLEARS_OWNER_BITS) await fsp.chmod(dir, 0o700);
}

function statusText(exit: SandboxExit): string {
  switch (exit.kind) {
    case 'exited':
      return `failed with exit code ${exit.code}`;
    case 'signalled':
      return `failed due to signal ${describeSignal(exit.signal)}`;
    case 'spawn-failed':
      return `failed to start: ${exit.message}`;
    case 'aborted':
      return 'was interrupted';
  }
}

function canBuildLocally(w: Worker, view: DrvView): boolean {
  return canBuildHere(view, w.ctx.options);
}

export function buildLocally(w: Worker, view: DrvView, plan: LocalBuildPlan): Promise<BuildResult> {
  // Remote builders first (the build hook), unless the derivation prefers local builds and can have them
  // (as Nix, not with maxJobs 0: then everything goes to the hook), or we repair/check.
  // Built-ins (system `builtin`) run in this engine and are never sent away.
  const { options } = w.ctx;
  const prefersHere = plan.preferLocal && options.maxJobs > 0 && canBuildLocally(w, view);
  const hookAsked = plan.mode === 'normal' && !prefersHere;
  if (hookAsked) {
    w.ctx.emit('hook-asked', { drvPath: view.drvPath });
    w.hook.offer(view.drvPath);
  }
  if (hookAsked && options.builders.length > 0 && view.platform !== 'builtin') return remoteOrHere(w, view, plan);
  return buildHere(w, view, plan);
}

/** The build hook first; the build is local when no remote machine takes it. */
async function remoteOrHere(w: Worker, view: DrvView, plan: LocalBuildPlan): Promise<BuildResult> {
  // Imported on first use: a call without builders never loads the remote protocols.
  const { tryRemoteBuild } = await import('./remote-build.js');
  const r = await plan.goal.blocked(tryRemoteBuild(w, view, plan.inputPaths));
  return r ?? buildHere(w, view, plan);
}

function buildHere(w: Worker, view: DrvView, plan: LocalBuildPlan): Promise<BuildResult> {
  const refused = refuseUnbuildable(w, view);
  if (refused) return Promise.resolve(w.endCall(refused, view.drvPath));
  return buildInRounds(w, view, plan);
}

const DISTRIBUTED_BUILDS_URL = 'https://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html';

/** Nix throws these out of the build (the whole call ends): no slot will ever build it here. */
function refuseUnbuildable(w: Worker, view: DrvView): BuildSetupError | undefined {
  const { options } = w.ctx;
  // Nix 2.8 builds nothing here with max-jobs 0, not even preferLocalBuild or built-in derivations.
  if (options.maxJobs === 0) {
    return new BuildSetupError(
      `unable to start any build; ${options.builders.length === 0 ? "either increase '--max-jobs' or enable remote builds" : 'remote machines may not have all required system features'}.\n${DISTRIBUTED_BUILDS_URL}`,
      { hint: 'set maxJobs to 1 or more, or configure builders that support this system and its features' },
    );
  }
  if (!canBuildLocally(w, view)) {
    return new BuildSetupError(
      `a '${view.platform}' with features {${requiredSystemFeatures(view).join(', ')}} is required to build '${view.drvPath}', but I am a '${options.system}' with features {${[...options.systemFeatures].sort().join(', ')}}`,
      { hint: 'configure a remote builder for that platform, or add the features to systemFeatures' },
    );
  }
  return undefined;
}

/**
 * The rounds of a local build (buildRepeat + 1; one unless asked), each in a slot holding the output locks:
 * lock, re-check (someone may have built the outputs meanwhile), delete stale outputs, run the round. As
 * Nix's tryToBuild, the locks are taken only once the build has a slot, and without waiting; when another
 * process (or call) holds one, the slot goes to other builds while this one waits for the lock, then asks
 * for a slot again. So processes building the same derivations share the work instead of queueing behind
 * each other's locks. A known output is locked by its path, a floating one by `<drv>.<output>`, as Nix.
 */
async function buildInRounds(w: Worker, view: DrvView, plan: LocalBuildPlan): Promise<BuildResult> {
  const { store } = w.ctx;
  const drvPath = view.drvPath;
  const expected = w.ctx.progress.expect('builds');
  const lockTargets = [...view.outputs].map(([name, spec]) => knownPath(spec) ?? `${drvPath}.${name}`);
  const known = [...view.outputs.values()].map(knownPath).filter((p): p is StorePath => !!p);
  let previous: RoundOutputs | undefined;
  let timesBuilt = 0;
  let startTime = 0;
  let isNonDeterministic = false;
  let waited = false;

  for (let round = 1; ;) {
    let locks: PathLocks | undefined;
    let deleteLocks = false; // only a success deletes the lock files, as Nix (see releaseLocks)
    const prep = new BuildPrep(w, view, lockTargets);
    try {
      const r = await inBuildSlot(
        w,
        view,
        plan.goal,
        async (releaseSlot): Promise<RoundResult | BuildResult | 'locked'> => {
          w.signal.throwIfAborted();
          locks = await store.tryLockPaths(lockTargets, prep.locks);
          if (!locks) return 'locked';
          if (waited) w.ctx.emit('build-lock-acquired', { drvPath });
          waited = false;
          const { valid, beaten } = await outputsUnderLock(store, view, known, plan.mode === 'normal' && round === 1);
          if (beaten) {
            // Someone beat us to it: this build is no longer expected (Nix drops it from expectedBuilds).
            expected.withdraw();
            return success('already-valid', Object.fromEntries(beaten));
          }
          // After round 1, what is there is that round's output, still unregistered.
          if (round === 1) for (const p of staleOutputs(store, known, valid)) await deleteTree(p);
          if (startTime === 0) startTime = Math.floor(Date.now() / 1000);
          return runOneRound(w, view, plan, round, valid, previous, releaseSlot, prep);
        },
        round > 1,
        () => prep.start(),
      );
      if (r === 'locked') {
        if (!waited) w.ctx.emit('build-waiting', { drvPath, lockedPaths: lockTargets.map((p) => store.toRealPath(p)) });
        waited = true;
        await plan.goal.blocked(waitForLocks(store, lockTargets, w.signal));
        continue;
      }
      if ('status' in r) {
        deleteLocks = true; // (already valid)
        return r;
      }
      if (r.kind === 'ended') return r.result;
      timesBuilt++;
      if (r.kind === 'failed') {
        return {
          ...r.result,
          timesBuilt,
          startTime,
          stopTime: Math.floor(Date.now() / 1000),
          isNonDeterministic: r.result.isNonDeterministic || isNonDeterministic,
        };
      }
      if (r.nonDeterministic) isNonDeterministic = true;
      previous = r.outputs;
      if (round >= plan.rounds || r.stopRounds) {
        deleteLocks = true;
        return success('built', r.outputs.paths, { timesBuilt, startTime, stopTime: Math.floor(Date.now() / 1000), isNonDeterministic });
      }
      round++;
    } catch (e) {
      // A wait for the lock that ended with the call still ends the wait (as the event promises).
      if (waited) w.ctx.emit('build-lock-acquired', { drvPath });
      waited = false;
      throw e;
    } finally {
      prep.discard();
      await releaseLocks(locks as PathLocks | undefined, deleteLocks); // (assigned inside the slot's callback)
    }
  }
}

/**
 * Which of the `known` output paths are valid, checked once the locks are held; with `recheck` (round 1
 * of a normal build), every output's path (floating ones from their realisations) first: `beaten` when
 * someone made them all valid meanwhile.
 */
async function outputsUnderLock(
  store: Worker['ctx']['store'],
  view: DrvView,
  known: readonly StorePath[],
  recheck: boolean,
): Promise<{ valid: Set<StorePath>; beaten?: ReadonlyMap<string, StorePath> }> {
  if (recheck) {
    const outs = view.staticOutputs ?? (await knownOutputs(store, view));
    const valid = await store.queryValidPaths(outs.values());
    if (outs.size === view.outputs.size && [...outs.values()].every((p) => valid.has(p))) return { valid, beaten: outs };
    // The known output paths are among those just checked (the usual case): no second query.
    const checked = new Set(outs.values());
    if (known.every((p) => checked.has(p))) return { valid };
  }
  return { valid: await store.queryValidPaths(known) };
}

/** The real paths of the outputs of `known` that are there but not valid (a build that was interrupted left them), to delete. */
function staleOutputs(store: Worker['ctx']['store'], known: readonly StorePath[], valid: ReadonlySet<StorePath>): string[] {
  const stale: string[] = [];
  for (const p of known) if (!valid.has(p) && exists(store.toRealPath(p))) stale.push(store.toRealPath(p));
  return stale;
}

/**
 * Release a round's output locks. As Nix (PathLocks' setDeletion after registering), only a success
 * deletes the lock files; a failed or stopped build leaves them in the store dir, empty and unlocked.
 */
function releaseLocks(locks: PathLocks | undefined, deleteFiles: boolean): Promise<void> | undefined {
  if (!deleteFiles) locks?.setDeletion?.(false);
  return locks?.release();
}

/**
 * Wait until nobody holds the locks on `targets`: take them, then let go at once without deleting the
 * lock files (Nix's waitForAWhile, woken by the release instead of by polling).
 */
async function waitForLocks(store: Worker['ctx']['store'], targets: readonly string[], signal: AbortSignal): Promise<void> {
  const locks = await store.lockPaths(targets, { signal });
  locks.setDeletion?.(false);
  await locks.release();
}

/**
 * Run `fn` holding one of the maxJobs build slots until it calls `releaseSlot` or finishes. As Nix
 * (Worker::childTerminated at the start of buildDone), the slot is freed as soon as the builder has exited
 * and, when it failed, its failure is made: closing the log and registering the outputs do not keep
 * another build from starting. With a post-build hook the slot is held until `fn` finishes (see afterExit).
 */
function inBuildSlot<R>(
  w: Worker,
  view: DrvView,
  goal: DerivationGoal,
  fn: (releaseSlot: () => void) => Promise<R>,
  nextRound = false,
  prepare?: () => void,
): Promise<R> {
  // Waiting for a slot, the goal no longer prepares; the gate grants free slots in Nix's goal order. When
  // its builder is done, the goal is busy again (registering, finishing) until it waits or ends.
  const activity = goal.activity;
  activity?.pause();
  return new Promise<R>((resolve, reject) => {
    slotGate(w.ctx.buildQueue).request(
      goal.drvPath,
      (giveBack) => {
        const free = slotFreer(activity, giveBack);
        let p: Promise<R>;
        try {
          p = fn(free);
        } catch (e) {
          p = Promise.reject(e as Error);
        }
        // The slot is freed (if `fn` did not) after the caller has gone on with the result.
        p.then(
          (r) => {
            resolve(r);
            queueMicrotask(free);
          },
          (e: unknown) => {
            reject(e as Error);
            queueMicrotask(free);
          },
        );
      },
      roundsToTryToBuild(goal.depth, view.inputDrvs.size > 0),
      nextRound,
      prepare,
    );
  });
}

/**
 * The function that frees a build's slot, once whatever calls it. Made here rather than as a named closure
 * in inBuildSlot: the CLI's bundle keeps function names (esbuild's keepNames), which costs a defineProperty
 * for each closure bound to a name when it is made, and the engine's per-build code runs cold in a CLI
 * run. (Arrow functions passed as arguments or returned, and methods, keep their names without one.)
 */
function slotFreer(activity: DerivationGoal['activity'], giveBack: () => void): () => void {
  let freed = false;
  return () => {
    if (freed) return;
    freed = true;
    activity?.resume();
    // The gate hands the slot on in a microtask, once the code that freed it has gone on.
    queueMicrotask(giveBack);
  };
}

/**
 * How a round ended: its outputs registered (`ok`), failed (the goal's failure, once the rounds' counts
 * and times are added), or `ended`: the goal's result as it is (stopped, or a setup error that ends the call).
 */
type RoundResult =
  | { kind: 'failed'; result: BuildResult }
  | { kind: 'ended'; result: BuildResult }
  | { kind: 'ok'; outputs: RoundOutputs; nonDeterministic: boolean; stopRounds: boolean };
type FailedRound = Extract<RoundResult, { kind: 'failed' }>;
type EndedRound = Extract<RoundResult, { kind: 'ended' }>;

/** Where a round builds each output (its scratch path) and the string rewrites that put it there. */
interface ScratchOutputs {
  readonly scratch: Map<string, StorePath>;
  readonly rewrites: Map<string, string>;
}

/** How the builder's run ended, once its log is closed. */
interface BuilderRun {
  readonly exit: SandboxExit;
  /** The limit (time, silence, log size) that killed the builder. */
  readonly limit: { status: BuildStatus; message: NixMessage } | undefined;
  /** The sandbox could not be set up: Nix's reason, thrown out of the build. */
  readonly setupError: string | undefined;
  /** This build failed and stopped the call itself: its failure is reported, not taken for a stop. */
  readonly stoppedOthers: boolean;
}

type Times = { readonly startTime: number; readonly stopTime: number };

/** The builder's environment, or how the round ended before its builder ran. */
type EnvStep = { kind: 'env'; env: Record<string, string> } | FailedRound | EndedRound;

/** The files of a build directory, one after the other. */
async function writeFiles(dir: string, files: ReadonlyMap<string, string>): Promise<void> {
  for (const [name, contents] of files) await fsp.writeFile(path.join(dir, name), contents);
}

/**
 * One round of a local build, in its steps (Nix's startBuilder → buildDone → registerOutputs): plan the
 * scratch outputs, prepare the build directory, write the environment, run the builder, classify its exit,
 * register the outputs and run the post-build hook. The round is counted as a running build from the
 * environment on; the count ends in a `finally`, so no way out of the round leaves it running.
 */
async function runOneRound(
  w: Worker,
  view: DrvView,
  plan: LocalBuildPlan,
  round: number,
  validNow: Set<StorePath>,
  previous: RoundOutputs | undefined,
  releaseSlot: () => void,
  prep: BuildPrep,
): Promise<RoundResult> {
  // (Usually known at once: no round trip through the engine's choice.)
  const sandbox = w.ctx.knownSandbox?.(view) ?? (await pickSandbox(w, view));
  if (sandbox instanceof BuildSetupError) return { kind: 'ended', result: w.endCall(sandbox, view.drvPath) };
  const { outs, stale } = planScratchOutputs(w, view, plan.mode !== 'normal' || round > 1, validNow, sandbox.isolated);
  for (const p of stale) await deleteTree(p);
  const dir = await prepareBuildDir(w, view, sandbox.isolated, prep.takeBuildDir());
  if (dir instanceof BuildSetupError) return { kind: 'ended', result: w.endCall(dir, view.drvPath) };
  const r = new LocalRound(w, view, plan, round, sandbox, outs, dir);
  try {
    const writing = r.writeEnvironment();
    const env = writing instanceof Promise ? await writing : writing;
    if (env.kind !== 'env') {
      releaseSlot();
      return env;
    }
    const failed = await r.runBuilder(env.env, releaseSlot);
    if (failed) return failed;
    return await r.registerAndFinish(previous);
  } catch (e) {
    // A sandbox that threw after the build was announced.
    r.finishBuild(w.signal.aborted ? 'stopped' : 'failure');
    if (w.signal.aborted) {
      // A stopped build is neither done nor failed.
      r.running.end('dropped');
      await cleanupScratch(w, outs.scratch).catch(() => {});
    }
    throw e;
  } finally {
    r.running.end(false);
    await keepOrRemoveBuildDir(dir, r.keepBuildDir);
  }
}

/** The sandbox for this build, or Nix's refusal (`__noChroot` with sandbox = true), which ends the call. */
async function pickSandbox(w: Worker, view: DrvView): Promise<Sandbox | BuildSetupError> {
  try {
    return await w.ctx.pickSandbox(view);
  } catch (e) {
    return asSetupError(e);
  }
}

/**
 * Outputs that can't be written at their real path (valid, present without a sandbox, repair, check, later
 * rounds) are built at scratch paths, with hash rewriting; `stale`: old scratch paths there, to remove first.
 */
function planScratchOutputs(
  w: Worker,
  view: DrvView,
  forceScratch: boolean,
  validNow: Set<StorePath>,
  isolated: boolean,
): { outs: ScratchOutputs; stale: string[] } {
  const { store } = w.ctx;
  const scratch = new Map<string, StorePath>();
  const rewrites = new Map<string, string>();
  const stale: string[] = [];
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec);
    let s: StorePath;
    if (!p) s = fallbackPathForOutput(view, name, store.storeDir);
    else if (!forceScratch && !validNow.has(p)) s = p;
    else if (!forceScratch && !isolated && !exists(store.toRealPath(p))) s = p;
    else s = fallbackPathFor(view, p, store.storeDir);
    scratch.set(name, s);
    rewrites.set(hashPlaceholder(name), s);
  }
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec);
    const s = scratch.get(name)!;
    if (p && p !== s) {
      rewrites.set(storePathHashPart(p), storePathHashPart(s));
      if (exists(store.toRealPath(s))) stale.push(store.toRealPath(s));
    }
  }
  return { outs: { scratch, rewrites }, stale };
}

/**
 * A build's directory. `top` has Nix 2.8's name and mode 0700. In a sandbox the builder works in
 * `top/build` (its /build), as in Nix >= 2.24: whatever it does to its own directory (chmod 755 /build,
 * then files for other users to run or change), `top` keeps every other user of the host out of it.
 * Without a sandbox the builder runs as the engine's user anyway and works in `top` itself, as in Nix 2.8.
 */
interface BuildDir {
  readonly top: string;
  /** Where the builder works (bound as its /build in a sandbox): `top/build`, or `top` without a sandbox. */
  readonly dir: string;
  /** The build directory as the builder sees it. */
  readonly inSandbox: string;
  /** What Nix adds to the chroot before making it (sandbox paths, impure host deps). */
  readonly extraPaths: Map<string, SandboxPath> | undefined;
}

/** The build directory, and what the sandbox needs besides; an error here ends the call (as Nix throws it). */
async function prepareBuildDir(
  w: Worker,
  view: DrvView,
  isolated: boolean,
  madeAhead: Promise<AheadBuildDir | undefined> | undefined,
): Promise<BuildDir | BuildSetupError> {
  const { options } = w.ctx;
  let made: AheadBuildDir | undefined = await madeAhead;
  if (!made) {
    try {
      made = await makeTopBuildDir(w, view, isolated);
    } catch (e) {
      // (A relative root for build directories: Nix's error that ends the call.)
      if (e instanceof BuildSetupError) return e;
      throw e;
    }
  }
  const { top } = made;
  let dir: BuildDir = { top, dir: top, inSandbox: top, extraPaths: undefined };
  try {
    if (isolated) {
      dir = { top, dir: path.join(top, 'build'), inSandbox: options.sandboxBuildDir, extraPaths: undefined };
      if (!made.inner) await mkdirPrivate(dir.dir);
    } else if (made.inner) await rmdirOnPool(path.join(top, 'build')); // (made for a sandbox after all not used)
    const extraPaths = isolated ? await sandboxExtraPaths(w, view) : undefined;
    // Nix 2.8 starts a daemon for recursive Nix here, which needs the experimental feature.
    if (requiredSystemFeatures(view).includes('recursive-nix') && !options.experimentalFeatures.includes('recursive-nix')) {
      throw new RealiseError(
        'experimental-feature-disabled',
        "experimental Nix feature 'recursive-nix' is disabled; use '--extra-experimental-features recursive-nix' to override",
        {
          hint: "add 'recursive-nix' to the experimentalFeatures option (recursive Nix itself is not implemented: the builder gets no daemon)",
        },
      );
    }
    return { ...dir, extraPaths };
  } catch (e) {
    // The build dir exists by now: with keepFailed Nix keeps it and says so.
    await keepOrRemoveBuildDir(dir, options.keepFailed);
    return asSetupError(e, options.keepFailed ? top : undefined);
  }
}

/**
 * A build's top directory (Nix's name, mode 0700), recorded until it is gone: one from the pool when there
 * is one (for a sandboxed build, `inner`, preferably with its `build` inside), else made.
 */
async function makeTopBuildDir(w: Worker, view: DrvView, inner: boolean): Promise<AheadBuildDir> {
  const { buildDir } = w.ctx.options;
  const name = buildDirName(buildDir, view);
  countBuildDir(name, 1); // at once, before the directory exists (see BuildPrep)
  try {
    // Build directories a killed process left behind go first.
    await buildDirRegistry().sweep(w.ctx.store);
    // (A pooled one comes recorded under its new name.)
    const pooled = await buildDirPool(buildDir).take(buildDirPrefix(view), inner);
    if (pooled) return pooled;
    const top = await createBuildDir(buildDir, buildDirPrefix(view));
    buildDirRegistry().add(top);
    return { top, inner: false };
  } catch (e) {
    countBuildDir(name, -1);
    throw e;
  }
}

/** Build directories of this process being made or in use, by name without their number (`<base>/<prefix>`). */
const buildDirsInUse = new Map<string, number>();

function countBuildDir(name: string, delta: 1 | -1): void {
  const n = (buildDirsInUse.get(name) ?? 0) + delta;
  if (n > 0) buildDirsInUse.set(name, n);
  else buildDirsInUse.delete(name);
}

function buildDirPrefix(view: DrvView): string {
  return `nix-build-${view.name}.drv`;
}

/** The build dirs' base as path.join makes it, with a trailing `/` (buildDirName), for the last base asked. */
let joinedBase: { readonly base: string; readonly joined: string } | undefined;

/**
 * `path.join(buildDir, buildDirPrefix(view))`: the base is normalised once, the prefix (no `/`, not `.` or
 * `..`) appended, where path.join would normalise the whole path again, character by character, twice per
 * build.
 */
function buildDirName(buildDir: string, view: DrvView): string {
  if (joinedBase?.base !== buildDir) joinedBase = { base: buildDir, joined: path.join(buildDir, '_').slice(0, -1) };
  return joinedBase.joined + buildDirPrefix(view);
}

/**
 * What a build waiting for its slot makes ahead when it is one of the next in line (the slot gate calls
 * `start`): its output lock files, opened (not locked: the locks are still taken in the slot, as Nix's
 * tryToBuild), the directory of its log (Store.prepareBuildLog), and a build directory of its name. Creating a file or a directory is the slow part of both
 * (the thread pool's queue, then the disk), and it then overlaps the running builds instead of holding a
 * slot. What the round does not use is undone by `discard`.
 *
 * A build directory is made ahead only when none of the same name is being made or in use in this
 * process, and the first build of that name to reach its slot takes it, whichever made it: so it has the
 * number Nix gives it in the slot (the first free one), even when another build of the same name gets a
 * slot first.
 */
class BuildPrep {
  locks: OpenedLocks | undefined;
  readonly #name: string;

  constructor(
    private readonly w: Worker,
    private readonly view: DrvView,
    private readonly lockTargets: readonly string[],
  ) {
    this.#name = buildDirName(w.ctx.options.buildDir, view);
  }

  start(): void {
    const { store } = this.w.ctx;
    if (this.w.signal.aborted) return;
    this.locks = store.openLockFiles?.(this.lockTargets as StorePath[]);
    void store.prepareBuildLog?.(this.view.drvPath);
    if (!buildDirsInUse.has(this.#name)) {
      // A sandboxed builder works in `build` inside it: made ahead too when the sandbox is known already.
      const inner = this.w.ctx.knownSandbox?.(this.view)?.isolated === true;
      const dir = makeTopBuildDir(this.w, this.view, inner).then(
        (made) =>
          inner && !made.inner
            ? mkdirPrivate(path.join(made.top, 'build')).then(
                () => ({ top: made.top, inner }),
                () => made,
              )
            : made,
        () => undefined,
      );
      buildDirsAhead.set(this.#name, { dir, owner: this });
    }
  }

  /** A build directory of this build's name made ahead, for the round (undefined: none). */
  takeBuildDir(): Promise<AheadBuildDir | undefined> | undefined {
    const ahead = buildDirsAhead.get(this.#name);
    buildDirsAhead.delete(this.#name);
    return ahead?.dir;
  }

  discard(): void {
    this.locks?.discard();
    this.locks = undefined;
    const ahead = buildDirsAhead.get(this.#name);
    if (ahead?.owner !== this) return;
    buildDirsAhead.delete(this.#name);
    void ahead.dir.then(async (made) => {
      if (!made) return;
      const { top, inner } = made;
      await keepOrRemoveBuildDir({ top, dir: inner ? path.join(top, 'build') : top, inSandbox: top, extraPaths: undefined }, false);
    });
  }
}

/** Build directories made ahead and not taken yet, by name without their number (at most one each). */
const buildDirsAhead = new Map<string, { readonly dir: Promise<AheadBuildDir | undefined>; readonly owner: BuildPrep }>();

/** A build directory made ahead of its slot: its top, and whether `build` was made inside it (for a sandbox). */
interface AheadBuildDir {
  readonly top: string;
  readonly inner: boolean;
}

/** The state one round's steps share: its log, its running count, its start time, the build dir's fate. */
class LocalRound {
  readonly log: LogCollector;
  readonly running: RunningCount;
  readonly started = Math.floor(Date.now() / 1000);
  /** Whether the build directory stays after the round (a failed build with keepFailed). */
  keepBuildDir = false;
  private announced = false;
  private finished = false;

  /** The end of an announced build (once): `build-finished` (with the failure, when it failed), before its slot is freed. */
  finishBuild(outcome: 'success' | 'failure' | 'stopped', result?: BuildResult): void {
    if (!this.announced || this.finished) return;
    this.finished = true;
    // Nix keeps a stopped build's directory too with keepFailed (its goal's destructor says so).
    const kept = outcome === 'stopped' ? this.keptBuildDir() : undefined;
    this.w.ctx.emit('build-finished', {
      drvPath: this.view.drvPath,
      round: this.round,
      rounds: this.plan.rounds,
      outcome,
      ...(result ? { result } : {}),
      ...(kept !== undefined ? { keptBuildDir: kept } : {}),
    });
  }

  /** The ids of the activities the builder started (`@nix` start lines) and has not stopped, as Nix's map of them. */
  private readonly builderActivities = new Set<number>();

  constructor(
    readonly w: Worker,
    readonly view: DrvView,
    readonly plan: LocalBuildPlan,
    readonly round: number,
    readonly sandbox: Sandbox,
    readonly outs: ScratchOutputs,
    readonly dir: BuildDir,
  ) {
    // (Methods, not arrow functions: see slotFreer.)
    const builderActivities = this.builderActivities;
    const log: LogCollector = new LogCollector({
      logLines: w.ctx.options.logLines,
      onLine(line, bytes) {
        w.ctx.emit('build-log', { drvPath: view.drvPath, line, bytes });
      },
      // A builder's messages and activities are passed on, as Nix does (a built-in's messages come as
      // warning events of their own; its download's activity as a builder's, as Nix's forked built-in sends it).
      onStructured(json: string) {
        const error = forwardBuilderMessage(w, view.drvPath, json, view.builder.startsWith('builtin:'), builderActivities);
        if (!error) return;
        // As Nix, whose logger throws it out of the build: the call ends with it, nothing more is read.
        log.stop();
        w.endCallWith(error);
      },
      onBadStructured(message) {
        w.ctx.emit('warning', { message, level: 'plain', verbosity: 0 });
      },
    });
    this.log = log;
    this.running = w.ctx.progress.running('builds');
  }

  /**
   * "building '…'" comes once the sandbox is set up (the sandbox's onSetUp, else the first output or the
   * builder's end): as in Nix, a build whose sandbox cannot be set up is never announced.
   */
  announce(): void {
    if (this.announced) return;
    this.announced = true;
    this.w.ctx.emit('build-started', { drvPath: this.view.drvPath, round: this.round, rounds: this.plan.rounds, mode: this.plan.mode });
    this.w.hook.settled(this.view.drvPath);
  }

  times(): Times {
    return { startTime: this.started, stopTime: Math.floor(Date.now() / 1000) };
  }

  /**
   * With keepFailed Nix keeps the build directory of every failed build (a sandbox that could not be set
   * up, timeouts, the log limit, rejected inputs and outputs too) and says so: the directory kept, if any.
   * Not for built-ins (Nix: their build directory may hold privileged data, such as the netrc).
   */
  keptBuildDir(): string | undefined {
    this.keepBuildDir = this.w.ctx.options.keepFailed && !this.view.builder.startsWith('builtin:');
    return this.keepBuildDir ? this.dir.top : undefined;
  }

  /**
   * A failed round: counted as a failed build, its build directory kept with keepFailed, the outputs it
   * left removed (or those in `keep` kept).
   */
  async fail(
    status: BuildStatus,
    why: Omit<FailureDetails, 'keptBuildDir'>,
    extra: Partial<BuildResult> = {},
    keep?: ReadonlySet<StorePath>,
  ): Promise<FailedRound> {
    this.running.end(false);
    const details: FailureDetails = { ...why, keptBuildDir: this.keptBuildDir() };
    await cleanupScratch(this.w, this.outs.scratch, keep);
    return { kind: 'failed', result: failure(status, details, { ...this.times(), ...extra }) };
  }

  /**
   * The builder's environment and the files in its build directory. A bad exportReferencesGraph rejects
   * the build's inputs (Nix's InputRejected), as a failed round that stops the call before its slot is
   * handed on. Without anything to wait for (no graph to query, no file to write: the usual case) the
   * step is returned as it is, not as a promise.
   */
  writeEnvironment(): EnvStep | Promise<EnvStep> {
    const { w, view, plan } = this;
    let asked: ReturnType<typeof exportReferencesGraph>;
    try {
      asked = exportReferencesGraph(w, view, plan.inputPaths);
    } catch (e) {
      return this.endedBy(e);
    }
    return asked instanceof Promise
      ? asked.then(
          (erg) => this.environmentWith(erg),
          (e: unknown) => this.endedBy(e),
        )
      : this.environmentWith(asked);
  }

  /** A malformed attribute Nix throws out of the build as a plain Error: it ends the call. */
  private endedBy(e: unknown): EndedRound {
    return { kind: 'ended', result: this.w.endCall(asSetupError(e), this.view.drvPath) };
  }

  private environmentWith(erg: Awaited<ReturnType<typeof exportReferencesGraph>>): EnvStep | Promise<EnvStep> {
    const { w, view, dir } = this;
    const { store, options } = w.ctx;
    if (isRejected(erg)) {
      w.noteFailure(view.drvPath);
      return this.fail(erg.status, { message: erg.message, colouredMessage: erg.colouredMessage });
    }
    const { env, files } = makeBuildEnv({
      drvEnv: view.env,
      outputNames: [...view.outputs.keys()],
      structuredAttrs: view.structuredAttrs,
      storeDir: store.storeDir,
      buildDirInSandbox: dir.inSandbox,
      cores: options.cores,
      fixedOutput: view.isFixedOutput,
      impureEnvVars: view.attrs.impureEnvVars,
      hostEnv: options.environment,
      rewrites: this.outs.rewrites,
      exportReferencesGraph: erg,
    });
    if (view.structuredAttrs) {
      // Nix 2.8 points builders at the files by their path on the host (tmpDir, even in the sandbox).
      env.NIX_ATTRS_SH_FILE = `${dir.top}/.attrs.sh`;
      env.NIX_ATTRS_JSON_FILE = `${dir.top}/.attrs.json`;
    }
    if (files.size === 0) return { kind: 'env', env };
    return writeFiles(dir.dir, files).then(() => ({ kind: 'env', env }));
  }

  /**
   * Run the builder under its limits, then (still in the slot) classify its exit; then free the slot and
   * store the log. Resolves with the round's failure, or undefined when the builder succeeded.
   */
  async runBuilder(env: Record<string, string>, releaseSlot: () => void): Promise<FailedRound | EndedRound | undefined> {
    const { w, view, plan, dir, outs } = this;
    const { store, options } = w.ctx;
    // Without limits (the default) the call's stop is the builder's only stop: its signal serves as is.
    const limits = RunLimits.needed(options)
      ? new RunLimits(options, `building of '${view.drvPath}!${plan.wanted ? [...plan.wanted].sort().join(',') : '*'}' from .drv file`)
      : undefined;
    const onStop = limits ? () => limits.controller.abort() : undefined;
    // A stop that came in while the build was being set up stops it before its builder starts.
    if (onStop && w.signal.aborted) onStop();
    else if (onStop) w.signal.addEventListener('abort', onStop, { once: true });
    const round = this; // (for the methods below, not arrow functions: see slotFreer)
    let exit: SandboxExit | undefined;
    try {
      exit = await this.sandbox.run(
        {
          drvPath: view.drvPath,
          builder: view.builder,
          args: view.args.map((a) => rewriteStrings(a, outs.rewrites)),
          env,
          buildDir: dir.dir,
          sandboxBuildDir: dir.inSandbox,
          storeDir: store.storeDir,
          realStoreDir: store.realStoreDir,
          // Sorted for a sandbox that binds them (its mounts in a stable order); the order is no matter to others.
          inputPaths: this.sandbox.isolated ? [...plan.inputPaths].sort() : [...plan.inputPaths],
          outputPaths: [...outs.scratch.values()],
          network: view.isFixedOutput,
          kvm: options.systemFeatures.includes('kvm'),
          extraPaths: dir.extraPaths,
        },
        {
          signal: limits ? limits.controller.signal : w.signal,
          onSetUp() {
            round.announce();
          },
          // Nix prints an error its clean-up ignored at once, as "error (ignored): error: …".
          onIgnoredError(message) {
            w.warn(`error (ignored): ${message}`, 'plain');
          },
          onOutput(chunk) {
            round.announce();
            if (limits) limits.onOutput(round.log, chunk);
            else round.log.push(chunk);
          },
        },
      );
    } finally {
      if (limits) limits.clear();
      if (onStop) w.signal.removeEventListener('abort', onStop);
    }
    return this.afterExit(exit, limits?.hit, releaseSlot);
  }

  /**
   * The builder has exited: what Nix does in buildDone before its worker loop handles the next goal. A
   * failed build is classified (its failure made, its outputs removed) and ends with `build-finished`
   * carrying that failure before the slot is handed on, so the failure is reported before the next build
   * starts; a successful one frees its slot at once (its outputs are registered outside the slot), unless
   * a post-build hook is set: then the slot is held until the hook has run (inBuildSlot frees it once the
   * round is done), as Nix runs the hook in buildDone, before its worker loop starts another build.
   */
  private async afterExit(exit: SandboxExit, limit: BuilderRun['limit'], releaseSlot: () => void): Promise<FailedRound | EndedRound | undefined> {
    const { w, view } = this;
    const drvPath = view.drvPath;
    let setupError: string | undefined;
    let stoppedOthers = false;
    let failed: FailedRound | EndedRound | undefined;
    let holdForHook = false;
    try {
      if (exit.kind === 'spawn-failed' && exit.execError) {
        // As Nix: the build environment was set up and only the exec failed, in the child; the build
        // was announced, its error goes to the build log and the child exits 1.
        this.announce();
        this.log.push(execErrorLog(exit.execError));
        exit = { kind: 'exited', code: 1 };
      }
      // A sandbox that could not be set up for this build: Nix throws its reason out of the build (exit
      // 1, no "builder failed" message). It ends the call as a fatal error and is not a failed builder.
      // Nix's words for a sandbox that could not be set up: the cause alone (`getting attributes of path
      // '/x': No such file or directory`), without our prefix and hint.
      if (exit.kind === 'spawn-failed' && this.sandbox.isolated) setupError = exit.reason ?? exit.message;
      else if (exit.kind !== 'aborted') this.announce();
      // A failed builder stops the call (without keepGoing) before its slot is handed on, so no queued
      // build starts in between (Nix handles the failure before its worker loop starts anything else).
      if ((limit || exit.kind !== 'exited' || exit.code !== 0) && setupError === undefined && !w.signal.aborted) {
        stoppedOthers = true;
        w.noteFailure(drvPath);
      }
      // The last (unterminated) log line comes before the end of the build.
      this.log.end();
      // A builder that exited 0 within its limits (the usual case) is classified without an asynchronous step.
      if (setupError === undefined && !limit && exit.kind === 'exited' && exit.code === 0) {
        if (!stoppedOthers) w.signal.throwIfAborted();
        holdForHook = !!w.ctx.options.postBuildHook;
      } else failed = await this.classify({ exit, limit, setupError, stoppedOthers });
    } finally {
      // The end of the build, then its slot is free: the events of a build bracket exactly its time in the slot.
      this.log.end();
      const outcome = exit.kind === 'exited' && exit.code === 0 && !limit ? 'success' : w.signal.aborted && !stoppedOthers ? 'stopped' : 'failure';
      this.finishBuild(outcome, failed?.kind === 'failed' ? failed.result : undefined);
      if (!holdForHook) releaseSlot();
      try {
        await w.ctx.store.addBuildLog(drvPath, this.log.text());
      } catch {
        /* a log that cannot be written does not fail the build */
      }
    }
    return failed;
  }

  /** A round whose builder did not succeed: its failure (or a throw: stopped, or a sandbox that could not be set up). */
  private async classify(run: BuilderRun): Promise<FailedRound | EndedRound | undefined> {
    const { w, view, plan } = this;
    const { store } = w.ctx;
    const { exit } = run;
    // Stopped by another goal's failure or the caller: the stop unwinds the round (runOneRound cleans up).
    if (!run.stoppedOthers) w.signal.throwIfAborted();
    if (run.setupError !== undefined) {
      this.running.end(false);
      await cleanupScratch(w, this.outs.scratch, new Set());
      const error = new BuildSetupError(run.setupError, {
        hint: 'check the sandbox paths and the pre-build hook',
        trace: 'while setting up the build environment',
        keptBuildDir: this.keptBuildDir(),
      });
      return { kind: 'ended', result: w.endCall(error, view.drvPath) };
    }
    if (run.limit) return this.fail(run.limit.status, messageParts(run.limit.message));
    if (exit.kind === 'exited' && exit.code === 0) return undefined;
    // Nix moves a failed sandboxed build's outputs out of the chroot to their logical path, with or
    // without keepFailed: in a plain store they stay there (invalid); a chroot store never gets them.
    const keep = !this.sandbox.isolated
      ? undefined
      : store.storeDir === store.realStoreDir && plan.mode === 'normal'
        ? new Set([...view.outputs.values()].map(knownPath).filter((p): p is StorePath => !!p))
        : new Set<StorePath>();
    const message = hintfmt("builder for '%s' %s", view.drvPath, plainMessage(statusText(exit)));
    // As Nix: a failed fixed-output build (not a sandboxed kind of derivation) is a transient failure.
    return this.fail(
      view.isFixedOutput ? 'transient-failure' : 'permanent-failure',
      { ...messageParts(message), logTail: { drvPath: view.drvPath, lines: this.log.tail() } },
      {},
      keep,
    );
  }

  /** The builder succeeded: register its outputs, run the post-build hook, count the build as done. */
  async registerAndFinish(previous: RoundOutputs | undefined): Promise<RoundResult> {
    const { w, view, plan } = this;
    const { options } = w.ctx;
    const drvPath = view.drvPath;
    let reg;
    try {
      reg = await registerOutputs(w, view, {
        mode: plan.mode,
        scratch: this.outs.scratch,
        inputPaths: plan.inputPaths,
        round: this.round,
        rounds: plan.rounds,
        previous,
        isolated: this.sandbox.isolated,
      });
    } catch (e) {
      this.running.end(false);
      await cleanupScratch(w, this.outs.scratch);
      throw e;
    }
    if (isRejected(reg)) {
      if (reg.endsCall) w.stop('failure', drvPath, true);
      return this.fail(
        reg.status,
        { message: reg.message, colouredMessage: reg.colouredMessage, ...(reg.endsCall ? { endedCall: true } : {}) },
        { hashMismatch: reg.hashMismatch ?? false, checkMismatch: reg.checkMismatch ?? false, isNonDeterministic: reg.status === 'not-deterministic' },
        reg.outputsStay ? new Set(this.outs.scratch.values()) : undefined,
      );
    }
    // As Nix 2.8, in check mode too.
    const hookError = options.postBuildHook ? await postBuildHook(w, drvPath, Object.values(reg.outputs.paths)) : undefined;
    if (hookError !== undefined) {
      this.running.end(false);
      return { kind: 'failed', result: failure('misc-failure', hookError, this.times()) };
    }
    this.running.end(true);
    return { kind: 'ok', outputs: reg.outputs, nonDeterministic: reg.nonDeterministic, stopRounds: reg.stopRounds };
  }
}

/**
 * A run's limits: buildTimeout, maxSilentTime (re-armed by each output) and maxLogSize. The first limit
 * hit kills the builder (through `controller`) and is the round's failure. A negative time (Nix 2.8 takes
 * one: its check `elapsed >= limit` holds at once) is hit at once; the silence first, as Nix checks it first.
 */
class RunLimits {
  readonly controller = new AbortController();
  hit: { status: BuildStatus; message: NixMessage } | undefined;
  private silenceTimer: NodeJS.Timeout | undefined;
  private readonly totalTimer: NodeJS.Timeout | undefined;

  /** Whether any limit is set (else a run needs none of this). */
  static needed(options: ResolvedOptions): boolean {
    return options.buildTimeout !== 0 || options.maxSilentTime !== 0 || options.maxLogSize > 0;
  }

  constructor(
    private readonly options: ResolvedOptions,
    private readonly name: string,
  ) {
    this.armSilence();
    this.totalTimer = options.buildTimeout
      ? setTimeout(() => this.kill('timed-out', hintfmt('%s timed out after %s seconds', name, options.buildTimeout)), Math.max(0, options.buildTimeout * 1000))
      : undefined;
  }

  private kill(status: BuildStatus, message: NixMessage): void {
    this.hit ??= { status, message };
    this.controller.abort();
  }

  private armSilence(): void {
    const { maxSilentTime } = this.options;
    if (!maxSilentTime) return;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(
      () => this.kill('timed-out', hintfmt('%s timed out after %s seconds of silence', this.name, maxSilentTime)),
      Math.max(0, maxSilentTime * 1000),
    );
  }

  /** A chunk of the builder's output: logged within maxLogSize, else the builder is killed. */
  onOutput(log: LogCollector, chunk: Buffer): void {
    if (this.hit) return; // being killed: Nix reads nothing more from it
    this.armSilence();
    const { maxLogSize } = this.options;
    // As Nix: the read that goes over the limit kills the builder and is itself not logged. Nix reads
    // a builder that writes line by line one line at a time, so the lines that fit are logged; a
    // chunk here may hold many writes, so its complete lines within the limit are kept.
    if (maxLogSize && log.size + chunk.length > maxLogSize) {
      const room = maxLogSize - log.size;
      const fits = room > 0 ? chunk.lastIndexOf(10, room - 1) : -1;
      if (fits >= 0) log.push(chunk.subarray(0, fits + 1));
      this.kill('log-limit-exceeded', hintfmt('%s killed after writing more than %d bytes of log output', this.name, maxLogSize));
      return;
    }
    log.push(chunk);
  }

  clear(): void {
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    if (this.totalTimer) clearTimeout(this.totalTimer);
  }
}

/**
 * Nix's dirsInChroot for a sandboxed build (startBuilder): `sandbox-paths`, then the closure of those whose
 * source is in the store (valid ones; each bound at its logical path, as Nix binds it), then the
 * derivation's `__impureHostDeps`, each of which must be under an `allowed-impure-host-deps` prefix.
 */
async function sandboxExtraPaths(w: Worker, view: DrvView): Promise<Map<string, SandboxPath>> {
  const { store, options } = w.ctx;
  const paths = parseSandboxPaths(options.sandboxPaths);
  const roots = new Set<StorePath>();
  for (const { source } of paths.values()) {
    if (!source.startsWith(store.storeDir + '/')) continue;
    try {
      roots.add(toStorePath(source, store.storeDir));
    } catch {
      /* not a store path: nothing to add */
    }
  }
  if (roots.size > 0) {
    for (const p of await store.computeClosure(await store.queryValidPaths(roots))) paths.set(p, { source: p, optional: false });
  }
  const impure = view.attrs.impureHostDeps;
  for (const [t, s] of checkImpureHostDeps(view.drvPath, impure, options.allowedImpureHostDeps)) paths.set(t, s);
  return paths;
}

/**
 * What Nix 2.8's build child writes into the build log when the builder cannot be executed: `\1`, a
 * newline, then the error serialised as on the wire (its message with Nix's colours around the builder
 * and the errno text), with no newline after it.
 */
function execErrorLog(execError: string): Buffer {
  const m = /^executing '(.*)': (.*)$/s.exec(execError);
  const colour = (s: string) => `\x1b[35;1m${s}\x1b[0m`;
  const message = m ? `executing '${colour(m[1]!)}': ${colour(m[2]!)}` : execError;
  return Buffer.concat([Buffer.from('\x01\n'), encodeError(message)]);
}

/**
 * An error Nix throws out of a build's setup, as the BuildSetupError that ends the call (with the kept
 * build dir); anything else (not one of our errors: a bug) is thrown on.
 */
function asSetupError(e: unknown, keptBuildDir?: string): BuildSetupError {
  if (e instanceof BuildSetupError) return e;
  if (!(e instanceof RealiseError)) throw e;
  return new BuildSetupError(e.shortMessage, { hint: e.hint, cause: e, keptBuildDir });
}

/**
 * Nix's runPostBuildHook, when one is set: `DRV_PATH` and `OUT_PATHS` (sorted, space-separated) in its
 * environment, its output as `post-build-hook-log` events. Resolves with the error message if it failed.
 */
export async function postBuildHook(w: Worker, drvPath: StorePath, outPaths: readonly StorePath[]): Promise<string | undefined> {
  const hook = w.ctx.options.postBuildHook;
  if (!hook) return undefined;
  w.ctx.emit('post-build-hook-started', { drvPath, hook });
  // Nix runs the hook in its worker loop: no build starts while it runs (with one slot; a local build
  // holds its own slot through it, see afterExit).
  const release = slotGate(w.ctx.buildQueue).hold();
  try {
    await runPostBuildHook(hook, {
      env: { ...processEnv(w.ctx.options.environment), DRV_PATH: drvPath, OUT_PATHS: [...outPaths].sort().join(' ') },
      onLine: (line) => w.ctx.emit('post-build-hook-log', { drvPath, line }),
      signal: w.signal,
    });
    return undefined;
  } catch (e) {
    return `post-build hook '${hook}' failed: ${(e as Error).message}`;
  } finally {
    release();
  }
}

function processEnv(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * Remove outputs a failed build left behind that are not valid (nothing half-registered stays). `keep`,
 * when given, names the ones to keep instead of keeping all of them with keepFailed.
 */
async function cleanupScratch(w: Worker, scratch: Map<string, StorePath>, keep?: ReadonlySet<StorePath>): Promise<void> {
  const { store } = w.ctx;
  const paths = [...scratch.values()];
  const valid = await store.queryValidPaths(paths);
  for (const p of paths) {
    if (valid.has(p)) continue;
    const real = store.toRealPath(p);
    if (keep ? keep.has(p) : w.ctx.options.keepFailed) continue;
    if (exists(real)) await deleteTree(real).catch(() => {});
  }
}

/** A builder's `@nix` line, passed on as Nix's handleJSONLogMessage passes it to its logger; the error that ends the call for a field missing. */
function forwardBuilderMessage(w: Worker, drvPath: StorePath, json: string, builtin: boolean, activities: Set<number>): BuilderLogMessageError | undefined {
  const m = builderLogMessage(json, activities);
  if (!m || m instanceof BuilderLogMessageError) return m;
  if (m.action === 'msg') {
    // A plain line shown by its level alone: at info (3) it is hidden where the display's verbosity is below.
    if (!builtin) w.ctx.emit('warning', { message: m.message, level: 'plain', verbosity: m.verbosity });
  } else w.ctx.emit('builder-activity', { drvPath, event: m });
}
