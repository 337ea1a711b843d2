/**
 * The part of a derivation goal that builds: output locks, re-check, stale output deletion, a build slot
 * (only this leaf work takes one), the build directory and environment, the sandboxed run with time and
 * log limits, registration of the outputs, the post-build hook, and repeated rounds.
 */
import { lstatSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { makeBuildEnv, rewriteStrings } from '../derivation/build-env.js';
import { deleteTree } from '../store/canonicalise.js';
import { RealiseError } from '../store/errors.js';
import { Hash } from '../store/hash.js';
import type { PathLocks } from '../store/store-api.js';
import { makeStorePath, outputPathName, storePathBase, storePathHashPart, storePathName, hashPlaceholder, toStorePath, type StorePath } from '../store/store-path.js';
import type { SandboxExit } from '../platform/sandbox.js';
import { runPostBuildHook } from '../platform/post-build-hook.js';
import { checkImpureHostDeps, parseSandboxPaths, type SandboxPath } from '../platform/sandbox-config.js';
import { canBuildHere, getStringsAttr, knownPath, requiredSystemFeatures, type DrvView } from './drv-view.js';
import { BuildSetupError } from './errors.js';
import { encodeError } from '../remote/wire.js';
import { exportReferencesGraph } from './export-references.js';
import { LogCollector } from './log-collector.js';
import { describeSignal } from '../platform/signals.js';
import { slotGate } from './slot-gate.js';
import { registerOutputs, OutputRejected, type RoundOutputs } from './register-outputs.js';
import { failure, success, type BuildResult, type BuildStatus } from './results.js';
import type { BuildMode, Worker } from './worker.js';
import { GoalStopped } from './worker.js';

export interface LocalBuildPlan {
  readonly mode: BuildMode;
  readonly rounds: number;
  readonly inputPaths: Set<StorePath>;
  readonly preferLocal: boolean;
  /** The goal's wanted outputs (undefined = all), for Nix's goal name `DRV!out,dev` / `DRV!*` in messages. */
  readonly wanted?: ReadonlySet<string> | undefined;
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
async function exists(p: string): Promise<boolean> {
  return lstatSync(p, { throwIfNoEntry: false }) !== undefined;
}

/**
 * Remove a build directory: an empty one (the usual case) with one rmdir, else the whole tree. The rmdir
 * goes through the thread pool: on a disk mounted with `discard` it takes milliseconds, which would block
 * the event loop (the slot is already free, so other builds run meanwhile).
 */
async function removeBuildDir(dir: string): Promise<void> {
  try {
    await fsp.rmdir(dir);
  } catch {
    await deleteTree(dir);
  }
}

/** After a build: remove its build dir, or keep it (a failed build with keepFailed) opened up to 0755, as Nix does. */
async function keepOrRemoveBuildDir(dir: string, keep: boolean): Promise<void> {
  await (keep ? fsp.chmod(dir, 0o755) : removeBuildDir(dir)).catch(() => {});
}

/** Read once: process.umask() with no argument is a read-and-restore, not something to do per build. */
const UMASK_CLEARS_OWNER_BITS = (process.umask() & 0o700) !== 0;

/**
 * Nix's createTempDir for build directories: `<base>/<prefix>-<n>` with the first free n from 0, mode 0700.
 * Builders see this name (NIX_BUILD_TOP without a sandbox, NIX_ATTRS_*_FILE always), so it must be Nix's.
 */
async function createBuildDir(base: string, prefix: string): Promise<string> {
  for (let n = 0; ; n++) {
    const dir = path.join(base, `${prefix}-${n}`);
    try {
      // Through the thread pool: a directory creation can take milliseconds on a busy disk.
      await fsp.mkdir(dir, 0o700);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw e;
    }
    // mkdir applies the umask; only a umask that takes owner bits away needs a chmod to get 0700.
    if (UMASK_CLEARS_OWNER_BITS) await fsp.chmod(dir, 0o700);
    return dir;
  }
}

function statusText(exit: SandboxExit): string {
  switch (exit.kind) {
    case 'exited': return `failed with exit code ${exit.code}`;
    case 'signalled': return `failed due to signal ${describeSignal(exit.signal)}`;
    case 'spawn-failed': return `failed to start: ${exit.message}`;
    case 'aborted': return 'was interrupted';
  }
}

function canBuildLocally(w: Worker, view: DrvView): boolean {
  return canBuildHere(view, w.ctx.options);
}

export async function buildLocally(w: Worker, view: DrvView, plan: LocalBuildPlan): Promise<BuildResult> {
  const { store, options } = w.ctx;
  const drvPath = view.drvPath;

  // Remote builders first (the build hook), unless the derivation prefers local builds or we repair/check.
  if (options.builders.length > 0 && plan.mode === 'normal' && !plan.preferLocal) {
    const { tryRemoteBuild } = await import('./remote-build.js');
    const r = await w.blocked(drvPath, tryRemoteBuild(w, view, plan.inputPaths));
    if (r) return r;
  }

  if (options.maxJobs === 0 && !plan.preferLocal) {
    throw new BuildSetupError(
      options.builders.length === 0
        ? "unable to start any build; either increase '--max-jobs' or enable remote builds.\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html"
        : 'unable to start any build; remote machines may not have all required system features.',
      { hint: 'set maxJobs to 1 or more, or configure builders that support this system and its features' },
    );
  }
  if (!canBuildLocally(w, view)) {
    throw new BuildSetupError(
      `a '${view.platform}' with features {${requiredSystemFeatures(view).join(', ')}} is required to build '${drvPath}', but I am a '${options.system}' with features {${[...options.systemFeatures].sort().join(', ')}}`,
      { hint: 'configure a remote builder for that platform, or add the features to systemFeatures' },
    );
  }

  w.ctx.progress.builds.expected++;
  w.ctx.progress.changed();
  const lockTargets = [...view.outputs.values()].map(knownPath).filter((p): p is StorePath => !!p);
  let previous: RoundOutputs | undefined;
  let timesBuilt = 0;
  let startTime = 0;
  let isNonDeterministic = false;

  for (let round = 1; round <= plan.rounds; round++) {
    // Lock the outputs (waiting holds no build slot), then re-check: someone may have built them.
    const locks: PathLocks = await store.lockPaths(lockTargets, {
      signal: w.signal,
      onWait: () => w.ctx.emit('build-waiting', { drvPath, lockedPaths: lockTargets.map((p) => store.toRealPath(p)) }),
    });
    let keepLocks = false;
    try {
      const valid = await store.queryValidPaths(lockTargets);
      if (plan.mode === 'normal' && round === 1 && lockTargets.length === view.outputs.size && lockTargets.every((p) => valid.has(p))) {
        const outs: Record<string, StorePath> = {};
        for (const [n, s] of view.outputs) outs[n] = knownPath(s)!;
        // Someone beat us to it: this build is no longer expected (Nix drops it from expectedBuilds).
        w.ctx.progress.builds.expected--;
        w.ctx.progress.changed();
        return success('already-valid', outs);
      }
      // Delete stale, invalid outputs (after round 1, what is there is that round's output, still unregistered).
      for (const p of round === 1 ? lockTargets : []) {
        if (!valid.has(p) && (await exists(store.toRealPath(p)))) await deleteTree(store.toRealPath(p));
      }

      const r = await inBuildSlot(w, drvPath, (releaseSlot) => {
        w.throwIfStopped();
        if (startTime === 0) startTime = Math.floor(Date.now() / 1000);
        return runOneRound(w, view, plan, round, valid, previous, releaseSlot);
      });
      timesBuilt++;
      if (r.kind === 'failed') {
        return { ...r.result, timesBuilt, startTime, stopTime: Math.floor(Date.now() / 1000), isNonDeterministic: r.result.isNonDeterministic || isNonDeterministic };
      }
      if (r.nonDeterministic) isNonDeterministic = true;
      previous = r.outputs;
      if (round === plan.rounds || r.stopRounds) {
        return success('built', r.outputs.paths, { timesBuilt, startTime, stopTime: Math.floor(Date.now() / 1000), isNonDeterministic });
      }
      keepLocks = false;
    } finally {
      if (!keepLocks) await locks.release();
    }
  }
  throw new Error('unreachable: rounds loop ended');
}

/**
 * Run `fn` holding one of the maxJobs build slots until it calls `releaseSlot` or finishes. As Nix
 * (Worker::childTerminated at the start of buildDone), the slot is freed as soon as the builder has exited:
 * closing the log and registering the outputs do not keep another build from starting.
 */
function inBuildSlot<R>(w: Worker, drvPath: StorePath, fn: (releaseSlot: () => void) => Promise<R>): Promise<R> {
  // Waiting for a slot, the goal no longer prepares; the gate grants free slots in Nix's goal order. When
  // its builder is done, the goal is busy again (registering, finishing) until it waits or ends.
  const activity = w.activity(drvPath);
  activity?.pause();
  return new Promise<R>((resolve, reject) => {
    slotGate(w.ctx.buildQueue).request(drvPath, () => new Promise<void>((slotFreed) => {
      let freed = false;
      const free = () => {
        if (freed) return;
        freed = true;
        activity?.resume();
        slotFreed();
      };
      let p: Promise<R>;
      try { p = fn(free); } catch (e) { p = Promise.reject(e); }
      p.then(resolve, reject).finally(free);
    }), w.depthOf(drvPath));
  });
}

type RoundResult =
  | { kind: 'failed'; result: BuildResult }
  | { kind: 'ok'; outputs: RoundOutputs; nonDeterministic: boolean; stopRounds: boolean };

async function runOneRound(
  w: Worker, view: DrvView, plan: LocalBuildPlan, round: number, validNow: Set<StorePath>, previous: RoundOutputs | undefined,
  releaseSlot: () => void,
): Promise<RoundResult> {
  const { store, options } = w.ctx;
  const drvPath = view.drvPath;
  const storeDir = store.storeDir;
  // Nix's startBuilder throws some errors out of the build (not as a build failure): the whole call ends
  // with that one error, exit 1, even with keepGoing; no dependent reports a failed dependency.
  let sandbox: ReturnType<typeof w.ctx.pickSandbox>;
  try {
    sandbox = w.ctx.pickSandbox(view); // `__noChroot` with sandbox = true (before the build dir exists)
  } catch (e) {
    throw asSetupError(e);
  }
  // Outputs that can't be written at their real path are built at scratch paths, with hash rewriting.
  const forceScratch = plan.mode !== 'normal' || round > 1;

  const scratch = new Map<string, StorePath>();
  const rewrites = new Map<string, string>();
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec);
    let s: StorePath;
    if (!p) s = fallbackPathForOutput(view, name, storeDir);
    else if (!forceScratch && !validNow.has(p)) s = p;
    else if (!forceScratch && !sandbox.isolated && !(await exists(store.toRealPath(p)))) s = p;
    else s = fallbackPathFor(view, p, storeDir);
    scratch.set(name, s);
    rewrites.set(hashPlaceholder(name), s);
  }
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec);
    const s = scratch.get(name)!;
    if (p && p !== s) {
      rewrites.set(storePathHashPart(p), storePathHashPart(s));
      if (await exists(store.toRealPath(s))) await deleteTree(store.toRealPath(s));
    }
  }

  // Build directory.
  const buildDir = await createBuildDir(options.buildDir, `nix-build-${view.name}.drv`);
  const buildDirInSandbox = sandbox.isolated ? options.sandboxBuildDir : buildDir;
  let keepBuildDir = false;
  let extraPaths: Map<string, SandboxPath> | undefined;
  try {
    // What Nix adds to the chroot before making it (sandbox paths, impure host deps).
    extraPaths = sandbox.isolated ? await sandboxExtraPaths(w, view) : undefined;
    // Nix 2.8 starts a daemon for recursive Nix here, which needs the experimental feature.
    if (requiredSystemFeatures(view).includes('recursive-nix') && !options.experimentalFeatures.includes('recursive-nix')) {
      throw new RealiseError('experimental-feature-disabled', "experimental Nix feature 'recursive-nix' is disabled; use '--extra-experimental-features recursive-nix' to override", {
        hint: "add 'recursive-nix' to the experimentalFeatures option (recursive Nix itself is not implemented: the builder gets no daemon)",
      });
    }
  } catch (e) {
    // The build dir exists by now: with keepFailed Nix keeps it and says so.
    await keepOrRemoveBuildDir(buildDir, options.keepFailed);
    throw asSetupError(e, options.keepFailed ? buildDir : undefined);
  }

  const log = new LogCollector({
    logLines: options.logLines,
    onLine: (line, bytes) => w.ctx.emit('build-log', { drvPath, line, bytes }),
  });
  const started = Math.floor(Date.now() / 1000);
  w.ctx.progress.builds.running++;
  w.ctx.progress.changed();
  // "building '…'" comes once the sandbox is set up (the sandbox's onSetUp, else the first output or the
  // builder's end): as in Nix, a build whose sandbox cannot be set up is never announced.
  let announced = false;
  const announce = () => {
    if (announced) return;
    announced = true;
    w.ctx.emit('build-started', { drvPath, round, rounds: plan.rounds, mode: plan.mode });
  };
  const finishProgress = (ok: boolean) => {
    w.ctx.progress.builds.running--;
    if (ok) w.ctx.progress.builds.done++;
    else w.ctx.progress.builds.failed++;
    w.ctx.progress.changed();
  };

  try {
    const erg = await exportReferencesGraph(w, view, plan.inputPaths);
    const { env, files } = makeBuildEnv({
      drvEnv: view.env,
      outputNames: [...view.outputs.keys()],
      structuredAttrs: view.structuredAttrs,
      storeDir,
      buildDirInSandbox,
      cores: options.cores,
      fixedOutput: view.isFixedOutput,
      impureEnvVars: getStringsAttr(view, 'impureEnvVars') ?? [],
      hostEnv: options.environment,
      rewrites,
      exportReferencesGraph: erg,
    });
    if (view.structuredAttrs) {
      // Nix 2.8 points builders at the files by their path on the host (tmpDir, even in the sandbox).
      env.NIX_ATTRS_SH_FILE = `${buildDir}/.attrs.sh`;
      env.NIX_ATTRS_JSON_FILE = `${buildDir}/.attrs.json`;
    }
    for (const [name, contents] of files) await fsp.writeFile(path.join(buildDir, name), contents);

    // Run the builder with the limits.
    const ctl = new AbortController();
    const onStop = () => ctl.abort();
    w.signal.addEventListener('abort', onStop, { once: true });
    let limit: { status: BuildStatus; message: string } | undefined;
    const kill = (status: BuildStatus, message: string) => {
      if (!limit) limit = { status, message };
      ctl.abort();
    };
    const name = `building of '${drvPath}!${plan.wanted ? [...plan.wanted].sort().join(',') : '*'}' from .drv file`;
    let silenceTimer: NodeJS.Timeout | undefined;
    const armSilence = () => {
      if (!options.maxSilentTime) return;
      if (silenceTimer) clearTimeout(silenceTimer);
      silenceTimer = setTimeout(() => kill('timed-out', `${name} timed out after ${options.maxSilentTime} seconds of silence`), options.maxSilentTime * 1000);
    };
    armSilence();
    const totalTimer = options.buildTimeout
      ? setTimeout(() => kill('timed-out', `${name} timed out after ${options.buildTimeout} seconds`), options.buildTimeout * 1000)
      : undefined;

    let exit: SandboxExit | undefined;
    /** This build failed and stopped the call itself: its failure is reported, not taken for a stop. */
    let stoppedOthers = false;
    let setupError: string | undefined;
    try {
      exit = await sandbox.run({
        drvPath,
        builder: view.builder,
        args: view.args.map((a) => rewriteStrings(a, rewrites)),
        env,
        buildDir,
        sandboxBuildDir: buildDirInSandbox,
        storeDir,
        realStoreDir: store.realStoreDir,
        inputPaths: [...plan.inputPaths].sort(),
        outputPaths: [...scratch.values()],
        network: view.isFixedOutput,
        extraPaths,
      }, {
        signal: ctl.signal,
        onSetUp: announce,
        onOutput: (chunk) => {
          announce();
          if (limit) return; // being killed: Nix reads nothing more from it
          armSilence();
          // As Nix: the read that goes over the limit kills the builder and is itself not logged. Nix reads
          // a builder that writes line by line one line at a time, so the lines that fit are logged; a
          // chunk here may hold many writes, so its complete lines within the limit are kept.
          if (options.maxLogSize && log.size + chunk.length > options.maxLogSize) {
            const room = options.maxLogSize - log.size;
            const fits = room > 0 ? chunk.lastIndexOf(10, room - 1) : -1;
            if (fits >= 0) log.push(chunk.subarray(0, fits + 1));
            kill('log-limit-exceeded', `${name} killed after writing more than ${options.maxLogSize} bytes of log output`);
            return;
          }
          log.push(chunk);
        },
      });
    } finally {
      if (silenceTimer) clearTimeout(silenceTimer);
      if (totalTimer) clearTimeout(totalTimer);
      w.signal.removeEventListener('abort', onStop);
      if (exit?.kind === 'spawn-failed' && exit.execError) {
        // As Nix: the build environment was set up and only the exec failed, in the child; the build
        // was announced, its error goes to the build log and the child exits 1.
        announce();
        log.push(execErrorLog(exit.execError));
        exit = { kind: 'exited', code: 1 };
      }
      // A sandbox that could not be set up for this build: Nix throws its reason out of the build (exit
      // 1, no "builder failed" message).
      // It ends the call as a fatal error, below, and does not count as a failed builder.
      if (exit?.kind === 'spawn-failed' && sandbox.isolated) setupError = sandboxSetupError(drvPath, exit.message);
      else if (exit?.kind !== 'aborted') announce();
      // A failed builder stops the call (without keepGoing) before its slot is handed on, so no queued
      // build starts in between (Nix handles the failure before its worker loop starts anything else).
      if ((limit || !exit || exit.kind !== 'exited' || exit.code !== 0) && setupError === undefined && !w.signal.aborted) {
        stoppedOthers = true;
        w.noteFailure(drvPath);
      }
      releaseSlot();
      log.end();
      await store.addBuildLog(drvPath, log.text()).catch(() => {});
    }
    if (!exit) throw new Error('unreachable: the sandbox returned no exit');
    const stopTime = Math.floor(Date.now() / 1000);
    const times = { startTime: started, stopTime };

    if (w.signal.aborted && !stoppedOthers) throw new GoalStopped();
    // With keepFailed Nix keeps the build directory of every failed build (a sandbox that could not be
    // set up, timeouts, the log limit, rejected outputs too) and says so.
    const keepNote = () => {
      keepBuildDir = options.keepFailed;
      return keptBuildDirNote(keepBuildDir ? buildDir : undefined);
    };
    if (setupError !== undefined) {
      finishProgress(false);
      await cleanupScratch(w, scratch, new Set());
      throw new BuildSetupError(setupError + keepNote(), { hint: 'check the sandbox paths and the pre-build hook', trace: 'while setting up the build environment' });
    }
    if (limit) {
      finishProgress(false);
      await cleanupScratch(w, scratch);
      return { kind: 'failed', result: failure(limit.status, limit.message + keepNote(), times) };
    }
    if (exit.kind !== 'exited' || exit.code !== 0) {
      finishProgress(false);
      // Nix moves a failed sandboxed build's outputs out of the chroot to their logical path, with or
      // without keepFailed: in a plain store they stay there (invalid); a chroot store never gets them.
      const keep = !sandbox.isolated ? undefined : storeDir === store.realStoreDir && plan.mode === 'normal'
        ? new Set([...view.outputs.values()].map(knownPath).filter((p): p is StorePath => !!p))
        : new Set<StorePath>();
      await cleanupScratch(w, scratch, keep);
      let msg = `builder for '${drvPath}' ${statusText(exit)}`;
      const tail = log.tail();
      if (tail.length > 0) {
        msg += `;\nlast ${tail.length} log lines:\n${tail.map((l) => `> ${l}\n`).join('')}For full logs, run 'nix log ${drvPath}'.`;
      }
      msg += keepNote();
      return { kind: 'failed', result: failure('permanent-failure', msg, times) };
    }

    // Register the outputs.
    let reg;
    try {
      reg = await registerOutputs(w, view, {
        mode: plan.mode, scratch, inputPaths: plan.inputPaths, round, rounds: plan.rounds, previous,
        isolated: sandbox.isolated,
      });
    } catch (e) {
      finishProgress(false);
      await cleanupScratch(w, scratch);
      if (e instanceof OutputRejected) {
        if (e.endsCall) w.stop('failure', drvPath);
        return { kind: 'failed', result: failure(e.status, e.message + keepNote(), { ...times, hashMismatch: e.hashMismatch, checkMismatch: e.checkMismatch, isNonDeterministic: e.status === 'not-deterministic' }) };
      }
      throw e;
    }

    if (options.postBuildHook && plan.mode !== 'check') {
      const outPaths = Object.values(reg.outputs.paths).sort();
      try {
        await runPostBuildHook(options.postBuildHook, {
          env: { ...processEnv(options.environment), DRV_PATH: drvPath, OUT_PATHS: outPaths.join(' ') },
          onLine: (line) => w.ctx.emit('post-build-hook-log', { drvPath, line }),
          signal: w.signal,
        });
      } catch (e) {
        finishProgress(false);
        return { kind: 'failed', result: failure('misc-failure', `post-build hook '${options.postBuildHook}' failed: ${(e as Error).message}`, times) };
      }
    }
    finishProgress(true);
    const result = success('built', reg.outputs.paths, { ...times, timesBuilt: 1 });
    w.ctx.emit('build-finished', { drvPath, result });
    return { kind: 'ok', outputs: reg.outputs, nonDeterministic: reg.nonDeterministic, stopRounds: reg.stopRounds };
  } catch (e) {
    if (e instanceof GoalStopped || w.signal.aborted) {
      finishProgress(false);
      await cleanupScratch(w, scratch).catch(() => {});
    }
    throw e;
  } finally {
    await keepOrRemoveBuildDir(buildDir, keepBuildDir);
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
    try { roots.add(toStorePath(source, store.storeDir)); } catch { /* not a store path: nothing to add */ }
  }
  if (roots.size > 0) {
    for (const p of await store.computeClosure(await store.queryValidPaths(roots))) paths.set(p, { source: p, optional: false });
  }
  const impure = getStringsAttr(view, '__impureHostDeps') ?? [];
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

/** An error Nix throws out of a build's setup, as the fatal BuildSetupError (with the kept build dir's note). */
function asSetupError(e: unknown, keptBuildDir?: string): unknown {
  if (!(e instanceof RealiseError) || e.code === 'build-setup') return e;
  return new BuildSetupError(e.shortMessage + keptBuildDirNote(keptBuildDir), { hint: e.hint, cause: e });
}

/** Nix's note on a failed build's kept build directory, as a line to append (empty when none is kept). */
function keptBuildDirNote(dir: string | undefined): string {
  return dir ? `\nnote: keeping build directory '${dir}'` : '';
}

/**
 * Nix's words for a sandbox that could not be set up: the cause alone (`getting attributes of path '/x':
 * No such file or directory`, `unknown pre-build hook command '...'`), without our prefix and hint.
 */
function sandboxSetupError(drvPath: string, message: string): string {
  const prefix = `setting up the sandbox for '${drvPath}' failed: `;
  return (message.startsWith(prefix) ? message.slice(prefix.length) : message).replace(/\n {2}hint: [\s\S]*$/, '');
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
    if (await exists(real)) await deleteTree(real).catch(() => {});
  }
}
