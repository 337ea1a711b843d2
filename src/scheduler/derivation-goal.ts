/**
 * DerivationGoal as straight-line async code (Nix's DerivationGoal state machine, read top to bottom):
 * get the .drv (substituting it if missing), check outputs, try substitutes, realise inputs, lock,
 * re-check, then build in a slot and register the outputs.
 */
import type { StorePath } from '../store/store-path.js';
import { tryResolve, type InputOutputPaths } from '../derivation/resolve.js';
import { writeDerivation } from '../derivation/derivation.js';
import { isDerivationPath } from './paths.js';
import { knownPath, preferLocalBuild, substitutesAllowed, type DrvView } from './drv-view.js';
import { buildLocally } from './local-build.js';
import { failure, success, isSuccess, type BuildResult } from './results.js';
import { substitutionSucceeded } from './substitution-goal.js';
import type { BuildMode, Worker } from './worker.js';

interface OutputStatus {
  readonly name: string;
  readonly path: StorePath | undefined;
  readonly valid: boolean;
  readonly wanted: boolean;
}

async function checkPathValidity(w: Worker, view: DrvView, wanted: Set<string> | undefined, mode: BuildMode): Promise<OutputStatus[]> {
  const { store } = w.ctx;
  // Only floating CA outputs need the registered mapping; input-addressed and fixed ones are in the .drv.
  const allKnown = [...view.outputs.values()].every((o) => knownPath(o) !== undefined);
  const registered = allKnown ? new Map<string, StorePath>() : await store.queryDerivationOutputs(view.drvPath).catch(() => new Map<string, StorePath>());
  const out: OutputStatus[] = [];
  const paths: StorePath[] = [];
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec) ?? registered.get(name);
    if (p) paths.push(p);
  }
  const valid = await store.queryValidPaths(paths);
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec) ?? registered.get(name);
    let ok = p !== undefined && valid.has(p);
    if (ok && mode === 'repair') ok = await w.pathContentsGood(p!);
    out.push({ name, path: p, valid: ok, wanted: wanted === undefined || wanted.has(name) });
  }
  return out;
}

function outputsOf(statuses: OutputStatus[], onlyWanted: boolean): Record<string, StorePath> {
  const r: Record<string, StorePath> = {};
  for (const s of statuses) if (s.path && (!onlyWanted || s.wanted)) r[s.name] = s.path;
  return r;
}

export async function derivationGoal(w: Worker, drvPath: StorePath, wanted: Set<string> | undefined, mode: BuildMode): Promise<BuildResult> {
  const { store, options } = w.ctx;
  if (!isDerivationPath(drvPath)) return failure('misc-failure', `'${drvPath}' is not a derivation path`);
  // Waiting for other goals, this goal is not preparing (the order of build slots depends on it).
  const activity = w.activity(drvPath);
  const waitFor = <T>(p: Promise<T>): Promise<T> => (activity ? activity.blocked(p) : p);

  // 1. Make sure the derivation exists; it may come from a substitute.
  if (!w.ctx.isProvidedDrv(drvPath) && !(await store.isValidPath(drvPath))) {
    const o = await waitFor(w.substitutionGoal(drvPath));
    w.throwIfStopped();
    if (!substitutionSucceeded(o)) return failure('misc-failure', `cannot build missing derivation '${drvPath}'`);
  }
  let view: DrvView | undefined = await w.ctx.loadDrv(drvPath);
  // Temporary GC roots, as Nix: a concurrent garbage collector keeps the derivation and its outputs.
  if (store.addTempRoot) {
    await store.addTempRoot(drvPath);
    for (const spec of view.outputs.values()) { const p = knownPath(spec); if (p) await store.addTempRoot(p); }
  }
  if (wanted) {
    for (const o of wanted) {
      if (!view.outputs.has(o)) return failure('misc-failure', `derivation '${drvPath}' does not have wanted outputs '${o}'`);
    }
  }

  // 2. Which wanted outputs are missing?
  let statuses = await checkPathValidity(w, view, wanted, mode);
  const allWantedValid = (st: OutputStatus[]) => st.every((s) => !s.wanted || s.valid);
  if (allWantedValid(statuses) && mode === 'normal') {
    return success('already-valid', outputsOf(statuses, true));
  }

  // 3. Try substitutes for the missing outputs.
  let retrySubstitution = false;
  const trySubstitutes = async (): Promise<BuildResult | undefined> => {
    // (In check mode too, as Nix: outputs that are not valid are substituted first, then checked.)
    if (w.ctx.substituters.length === 0 || !substitutesAllowed(view!)) return undefined;
    const missing = statuses.filter((s) => s.wanted && !s.valid);
    if (missing.some((s) => !s.path)) {
      w.warn('do not know how to query for unknown floating content-addressed derivation output yet');
      return undefined;
    }
    const outcomes = await waitFor(Promise.all(missing.map((s) => w.substitutionGoal(s.path!, mode === 'repair'))));
    w.throwIfStopped();
    const failed = outcomes.filter((o) => !substitutionSucceeded(o));
    const noSubs = failed.filter((o) => o.kind === 'no-substituters').length;
    const incomplete = failed.filter((o) => o.kind === 'incomplete-closure').length;
    if (failed.length > noSubs + incomplete && !options.fallback) {
      return failure('transient-failure',
        `some substitutes for the outputs of derivation '${drvPath}' failed (usually happens due to networking issues); try '--fallback' to build derivation from source `);
    }
    if (incomplete > 0) retrySubstitution = true;
    statuses = await checkPathValidity(w, view!, wanted, mode);
    if (mode === 'normal' && allWantedValid(statuses)) return success('substituted', outputsOf(statuses, true));
    // Repair: the outputs are good now; their closure is checked (and repaired) next, as Nix.
    if (mode === 'repair' && allWantedValid(statuses)) return repairClosure(w, view!, statuses);
    return undefined;
  };
  const substituted = await trySubstitutes();
  if (substituted) return substituted;
  if (mode === 'repair' && allWantedValid(statuses)) return repairClosure(w, view, statuses);
  if (mode === 'check' && statuses.some((s) => s.wanted && !s.valid)) {
    return failure('misc-failure', `some outputs of '${drvPath}' are not valid, so checking is not possible`);
  }

  // 4. Give up on substitution: realise the inputs (all outputs are built from here on).
  const inputMode: BuildMode = mode === 'repair' ? 'repair' : 'normal';
  const depResults = new Map<StorePath, Promise<BuildResult>>();
  const inputGoals: Promise<boolean>[] = [];
  for (const [dep, outs] of view.inputDrvs) {
    const r = w.derivationGoal(dep, outs, inputMode, drvPath);
    depResults.set(dep, r);
    inputGoals.push(r.then((x) => isSuccess(x.status)));
  }
  const srcs = view.inputSrcs;
  const validSrcs = await store.queryValidPaths(srcs);
  for (const src of srcs) {
    if (validSrcs.has(src)) continue;
    if (w.ctx.substituters.length === 0) {
      return failure('misc-failure', `dependency '${src}' of '${drvPath}' does not exist, and substitution is disabled`);
    }
    inputGoals.push(w.substitutionGoal(src).then(substitutionSucceeded));
  }
  // A goal waiting for its inputs holds no parsed derivation (a graph of 100,000 goals has nearly all of
  // them waiting at once): the view is dropped here and fetched again, usually from the engine's cache.
  view = undefined;
  const nrFailed = await waitFor(countFailures(inputGoals, options.keepGoing));
  if (nrFailed > 0) {
    return failure('dependency-failed', `${nrFailed} dependencies of derivation '${drvPath}' failed to build`);
  }
  view = await w.ctx.loadDrv(drvPath);
  if (retrySubstitution) {
    const again = await trySubstitutes();
    if (again) return again;
  }

  // 5. The input closure: wanted outputs of input derivations (as their goals reported them), and input sources.
  const roots: StorePath[] = [...srcs];
  const inputOutputs = new Map<StorePath, Map<string, StorePath>>();
  for (const [dep, outs] of view.inputDrvs) {
    const built = (await depResults.get(dep)!).builtOutputs;
    let depView: DrvView | undefined;
    let registered: Map<string, StorePath> | undefined;
    for (const o of outs) {
      let p: StorePath | undefined = built[o];
      if (!p) {
        depView ??= await w.ctx.loadDrv(dep);
        const spec = depView.outputs.get(o);
        if (!spec) return failure('misc-failure', `derivation '${drvPath}' requires non-existent output '${o}' from input derivation '${dep}'`);
        registered ??= await store.queryDerivationOutputs(dep);
        p = knownPath(spec) ?? registered.get(o);
      }
      if (!p) return failure('misc-failure', `derivation '${drvPath}' requires output '${o}' from input derivation '${dep}', which is supposedly realized already, yet we still don't know what path corresponds to that output`);
      roots.push(p);
      let m = inputOutputs.get(dep);
      if (!m) inputOutputs.set(dep, (m = new Map()));
      m.set(o, p);
    }
  }
  // Deferred, or floating CA with input derivations: build the resolved derivation instead (Nix's tryResolve).
  if (view.needsResolution) return buildResolved(w, view, inputOutputs, wanted, mode);
  const inputPaths = await store.computeClosure(roots);

  // 6. Build (rounds for buildRepeat; fixed outputs are built once).
  const rounds = view.isFixedOutput ? 1 : options.buildRepeat + 1;
  return buildLocally(w, view, { mode, rounds, inputPaths, preferLocal: preferLocalBuild(view), wanted });
}

/**
 * Nix 2.8's resolution (DerivationGoal::inputsRealised → resolvedFinished): write the resolved derivation
 * (input-derivation outputs replaced by their realised paths), realise it as a goal of its own, and record
 * its outputs as the outputs of the original derivation, so that the original is valid from then on.
 */
async function buildResolved(w: Worker, view: DrvView, inputOutputs: InputOutputPaths, wanted: Set<string> | undefined, mode: BuildMode): Promise<BuildResult> {
  const { store } = w.ctx;
  const { resolved, missing } = await tryResolve(view.drv, inputOutputs, { storeDir: store.storeDir });
  if (!resolved) {
    const m = missing[0]!;
    return failure('misc-failure', `cannot resolve derivation '${view.drvPath}': output '${m.output}' of input '${m.drvPath}' has no known path; rebuild that input`);
  }
  const pathResolved = await writeDerivation(store, resolved);
  if (store.addTempRoot) await store.addTempRoot(pathResolved);
  const r = await w.derivationGoal(pathResolved, wanted, mode);
  if (!isSuccess(r.status)) return r;
  const outputs = new Map<string, StorePath>();
  for (const name of wanted ?? view.outputs.keys()) {
    const p = r.builtOutputs[name];
    if (!p) return failure('misc-failure', `resolved derivation '${pathResolved}' of '${view.drvPath}' did not report output '${name}'`);
    outputs.set(name, p);
  }
  // Nix keeps a realisation per (hash modulo, output); we map the original .drv to the paths directly.
  // A derivation handed to us without being in the store (buildDerivation) has nothing to map.
  if (await store.isValidPath(view.drvPath)) await store.registerDerivationOutputs(view.drvPath, outputs);
  return { ...r, builtOutputs: Object.fromEntries(outputs) };
}

/**
 * Wait for sub-goals and count failures. Without keepGoing, the first failure is enough (Nix wakes the
 * waiter at once and drops its other waitees); the worker stops the rest.
 */
async function countFailures(goals: Promise<boolean>[], keepGoing: boolean): Promise<number> {
  if (goals.length === 0) return 0;
  if (keepGoing) return (await Promise.all(goals)).filter((ok) => !ok).length;
  return new Promise<number>((resolve, reject) => {
    let left = goals.length;
    let failed = 0;
    for (const g of goals) {
      g.then((ok) => {
        if (!ok) { failed++; resolve(failed); }
        if (--left === 0) resolve(failed);
      }, reject);
    }
  });
}

/**
 * Repair mode with valid, intact outputs (Nix's repairClosure): check every other path in the outputs'
 * closure and repair the corrupt ones, rebuilding their deriver when it is in the input closure, else
 * substituting them again.
 */
async function repairClosure(w: Worker, view: DrvView, statuses: OutputStatus[]): Promise<BuildResult> {
  const { store } = w.ctx;
  const own = statuses.filter((s) => s.wanted && s.path).map((s) => s.path!);
  const closure = await store.computeClosure(own);
  for (const p of statuses.map((s) => s.path)) if (p) closure.delete(p);
  const outputsToDrv = new Map<StorePath, StorePath>();
  for (const p of await store.computeClosure([view.drvPath])) {
    if (!p.endsWith('.drv')) continue;
    for (const [, out] of await store.queryDerivationOutputs(p)) outputsToDrv.set(out, p);
  }
  const repairs: Promise<boolean>[] = [];
  for (const p of closure) {
    if (await w.pathContentsGood(p)) continue;
    w.warn(`found corrupted or missing path '${p}' in the output closure of '${view.drvPath}'`, 'plain');
    const drv = outputsToDrv.get(p);
    repairs.push(drv
      ? w.derivationGoal(drv, undefined, 'repair').then((r) => isSuccess(r.status))
      : w.substitutionGoal(p, true).then(substitutionSucceeded));
  }
  const failed = (await Promise.all(repairs)).filter((ok) => !ok).length;
  if (failed > 0) return failure('misc-failure', `some paths in the output closure of derivation '${view.drvPath}' could not be repaired`);
  return success('already-valid', outputsOf(statuses, true));
}
