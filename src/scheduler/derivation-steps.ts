/**
 * A derivation goal's work, as two stretches of straight-line async code named after the states of Nix's
 * DerivationGoal they cover, read top to bottom: `haveDerivation` gets the .drv (substituting it if
 * missing), checks the outputs, tries substitutes and ends by naming the inputs to wait for (its
 * `Waitees`); once the goal (derivation-goal.ts) finds them done, `inputsRealised` computes the input
 * closure and builds (local-build.ts: lock, re-check, build in a slot, register the outputs).
 */
import type { StorePath } from '../store/store-path.js';
import { downstreamPlaceholder, tryResolve, type InputOutputPaths } from '../derivation/resolve.js';
import { drvOutputIds, knownOutputs, realiseValidOutputs, registerResolvedRealisations } from './realisations.js';
import { computeDerivationPath, writeDerivation } from '../derivation/derivation.js';
import { isDerivationPath } from './paths.js';
import { caFeatureMissing, knownPath, preferLocalBuild, substitutesAllowed, type DrvView } from './drv-view.js';
import { buildLocally, postBuildHook } from './local-build.js';
import { failure, success, isSuccess, type BuildResult } from './results.js';
import { substitutionSucceeded } from './substitution-goal.js';
import { BuildSetupError } from './errors.js';
import type { BuildMode, Worker } from './worker.js';
import type { DerivationGoal } from './derivation-goal.js';

interface OutputStatus {
  readonly name: string;
  readonly path: StorePath | undefined;
  readonly valid: boolean;
  readonly wanted: boolean;
}

/**
 * The outputs' statuses; `checked`: the valid ones among the static outputs, just asked for (no query then).
 * Then, in the usual case (a normal build without `ca-derivations`), there is nothing to wait for: the
 * statuses are returned as they are, not as a promise.
 */
function checkPathValidity(
  w: Worker,
  view: DrvView,
  wanted: Set<string> | undefined,
  mode: BuildMode,
  checked?: ReadonlySet<StorePath>,
): OutputStatus[] | Promise<OutputStatus[]> {
  if (checked && view.staticOutputs && mode !== 'repair' && !w.ctx.options.experimentalFeatures.includes('ca-derivations')) {
    return statusesOf(view, view.staticOutputs, checked, wanted);
  }
  return checkPathValidityAsync(w, view, wanted, mode, checked);
}

function statusesOf(view: DrvView, known: ReadonlyMap<string, StorePath>, valid: ReadonlySet<StorePath>, wanted: Set<string> | undefined): OutputStatus[] {
  const out: OutputStatus[] = [];
  for (const name of view.outputs.keys()) {
    const p = known.get(name);
    out.push({ name, path: p, valid: p !== undefined && valid.has(p), wanted: wanted === undefined || wanted.has(name) });
  }
  return out;
}

async function checkPathValidityAsync(
  w: Worker,
  view: DrvView,
  wanted: Set<string> | undefined,
  mode: BuildMode,
  checked?: ReadonlySet<StorePath>,
): Promise<OutputStatus[]> {
  const { store } = w.ctx;
  // Floating CA outputs are known by their realisations; input-addressed and fixed ones are in the .drv.
  const known = view.staticOutputs ?? (await knownOutputs(store, view));
  const valid = checked && view.staticOutputs ? checked : await store.queryValidPaths(known.values());
  const out = statusesOf(view, known, valid, wanted);
  if (mode === 'repair') {
    for (const [i, s] of out.entries()) if (s.valid) out[i] = { ...s, valid: await w.pathContentsGood(s.path!) };
  }
  if (w.ctx.options.experimentalFeatures.includes('ca-derivations')) {
    const staticValid = new Map<string, StorePath>();
    for (const [name, spec] of view.outputs) {
      const p = knownPath(spec);
      if (p && valid.has(p)) staticValid.set(name, p);
    }
    await realiseValidOutputs(store, view, staticValid);
  }
  return out;
}

function outputsOf(statuses: OutputStatus[], onlyWanted: boolean): Record<string, StorePath> {
  const r: Record<string, StorePath> = {};
  for (const s of statuses) if (s.path && (!onlyWanted || s.wanted)) r[s.name] = s.path;
  return r;
}

/**
 * What a goal waits for before `inputsRealised` (Nix's waitees), and all it keeps meanwhile: little (a
 * call of 100,000 goals has nearly all of them waiting at once).
 */
export interface Waitees {
  /** The goals of the input derivations, in the order of the derivation's inputDrvs. */
  readonly deps: readonly DerivationGoal[];
  /** Substitutions of missing input sources: whether each succeeded. */
  readonly others: readonly Promise<boolean>[];
  /** Set when substitution is tried again once the inputs are there: the outputs' statuses then. */
  readonly retrySubstitution: OutputStatus[] | undefined;
}

const allWantedValid = (st: readonly OutputStatus[]): boolean => st.every((s) => !s.wanted || s.valid);

/**
 * Steps 1–4 of a derivation goal (Nix's getDerivation, haveDerivation, outputsSubstitutionTried): the
 * .drv, the outputs' validity, substitutes; then the input goals to wait for (the goal parks until they
 * are done and goes on with `inputsRealised`).
 */
export async function haveDerivation(goal: DerivationGoal, wanted: Set<string> | undefined): Promise<BuildResult | Waitees> {
  const { worker: w, drvPath, mode } = goal;
  const { store } = w.ctx;
  // 1. Make sure the derivation exists; it may come from a substitute. The usual case, a valid .drv, is
  // found valid together with its outputs (drvAndOutputsValid); else it is looked for alone. (As Nix, a
  // path that is no .drv is looked for first: `nix-store --realise PATH!out` of a missing one is a missing derivation.)
  const early = await drvAndOutputsValid(w, drvPath);
  let view: DrvView;
  if (early) view = early.view;
  else {
    const valid = w.ctx.isProvidedDrv(drvPath) || (await store.isValidPath(drvPath));
    if (!valid) {
      const o = await goal.blocked(w.substitutionGoal(drvPath));
      w.signal.throwIfAborted();
      if (!substitutionSucceeded(o)) return failure('misc-failure', `cannot build missing derivation '${drvPath}'`);
    }
    if (!isDerivationPath(drvPath)) return failure('misc-failure', `'${drvPath}' is not a derivation path`);
    // (Just found valid: reading it need not ask the store again.)
    view = await w.ctx.loadDrv(drvPath, valid);
  }
  // Nix 2.8 refuses to read such a .drv without the feature: the error ends the call.
  const noCa = w.ctx.isProvidedDrv(drvPath) ? undefined : caFeatureMissing(view, w.ctx.options);
  if (noCa) return w.endCall(noCa, drvPath);
  // (Roots taken already, by drvAndOutputsValid for a file read but not registered, are not recorded again.)
  if (!early) await addTempRoots(w, drvPath, view);
  if (wanted) {
    for (const o of wanted) {
      if (!view.outputs.has(o)) return failure('misc-failure', `derivation '${drvPath}' does not have wanted outputs '${o}'`);
    }
  }

  // 2. Which wanted outputs are missing?
  const checking = checkPathValidity(w, view, wanted, mode, early?.valid);
  let statuses = checking instanceof Promise ? await checking : checking;
  if (allWantedValid(statuses) && mode === 'normal') {
    return success('already-valid', outputsOf(statuses, true));
  }

  // 3. Try substitutes for the missing outputs.
  let retry = false;
  if (maySubstitute(w, view)) {
    const tried = await trySubstitutes(goal, view, wanted, statuses);
    if (tried.result) return tried.result;
    statuses = tried.statuses;
    retry = tried.retry;
  }
  if (mode === 'repair' && allWantedValid(statuses)) return repairClosure(goal, view, statuses);
  if (mode === 'check' && statuses.some((s) => s.wanted && !s.valid)) {
    // Nix throws this out of the worker: the whole call ends with it (exit 1), --keep-going or not.
    const error = new BuildSetupError(`some outputs of '${drvPath}' are not valid, so checking is not possible`, {
      hint: 'build the derivation normally first, then check it',
    });
    return w.endCall(error, drvPath);
  }

  // 4. Give up on substitution: realise the inputs (all outputs are built from here on).
  const inputMode: BuildMode = mode === 'repair' ? 'repair' : 'normal';
  const deps: DerivationGoal[] = [];
  for (const [dep, outs] of view.inputDrvs) deps.push(w.goalFor(dep, outs, inputMode, goal));
  const srcs = view.inputSrcs;
  const others: Promise<boolean>[] = [];
  // (No input sources, the usual case: no query.)
  const validSrcs = srcs.length === 0 ? new Set<StorePath>() : await store.queryValidPaths(srcs);
  for (const src of srcs) {
    if (validSrcs.has(src)) continue;
    if (w.ctx.substituters.length === 0) {
      return failure('misc-failure', `dependency '${src}' of '${drvPath}' does not exist, and substitution is disabled`);
    }
    others.push(w.substitutionGoal(src).then(substitutionSucceeded));
  }
  // The parsed derivation is not kept while waiting; it is fetched again after, usually from the engine's cache.
  return { deps, others, retrySubstitution: retry ? statuses : undefined };
}

/**
 * Temporary GC roots, as Nix: a concurrent garbage collector keeps the derivation and its outputs.
 * Recorded together where the store can (one write under one hold of the GC lock), else one by one.
 */
async function addTempRoots(w: Worker, drvPath: StorePath, view: DrvView): Promise<void> {
  const { store } = w.ctx;
  if (!store.addTempRoot) return;
  const roots = [drvPath];
  for (const spec of view.outputs.values()) {
    const p = knownPath(spec);
    if (p) roots.push(p);
  }
  if (store.addTempRoots) await store.addTempRoots(roots);
  else for (const p of roots) await store.addTempRoot(p);
}

/**
 * A `.drv` in the store read before its validity is known, its temporary roots taken, then its validity
 * and its outputs' asked in one statement (one read of the database, not two). Otherwise undefined
 * (missing, unreadable, handed to us, no .drv at all, or a file read but not registered: the caller then
 * looks for it as Nix does, and the copy read here is not kept).
 */
async function drvAndOutputsValid(w: Worker, drvPath: StorePath): Promise<{ view: DrvView; valid: ReadonlySet<StorePath> } | undefined> {
  const { ctx } = w;
  if (!ctx.forgetDrv || ctx.isProvidedDrv(drvPath) || !isDerivationPath(drvPath)) return undefined;
  let view: DrvView;
  try {
    view = await ctx.loadDrv(drvPath, true);
  } catch {
    return undefined; // (a failed load is not cached: the caller's load reports it, if the .drv is valid)
  }
  await addTempRoots(w, drvPath, view);
  const valid = await w.validTogether.addAll([drvPath, ...(view.staticOutputs?.values() ?? [])]);
  if (valid.has(drvPath)) return { view, valid };
  ctx.forgetDrv(drvPath);
  return undefined;
}

/** Whether the derivation's outputs may come from substituters: there are some, and it allows them. */
function maySubstitute(w: Worker, view: DrvView): boolean {
  return w.ctx.substituters.length > 0 && substitutesAllowed(view);
}

/**
 * Step 3 (Nix's tryToSubstitute / outputsSubstitutionTried): substitute the missing wanted outputs. A
 * result ends the goal; `retry` asks to try again once the inputs are built (a substitute's references
 * that nobody had).
 */
async function trySubstitutes(
  goal: DerivationGoal,
  view: DrvView,
  wanted: Set<string> | undefined,
  statuses: OutputStatus[],
): Promise<{ result?: BuildResult; statuses: OutputStatus[]; retry: boolean }> {
  const { worker: w, mode } = goal;
  // (In check mode too, as Nix: outputs that are not valid are substituted first, then checked.)
  if (!maySubstitute(w, view)) return { statuses, retry: false };
  const missing = statuses.filter((s) => s.wanted && !s.valid);
  // As Nix 2.8: an output whose path is not known yet (floating content-addressed) by its realisation.
  const ids = missing.some((s) => !s.path) ? await drvOutputIds(w.ctx.store, view) : new Map<string, string>();
  // As Nix's getDerivationCA: a fixed output `out` is asked for by its content.
  const out = view.outputs.get('out');
  const ca = out?.type === 'fixed' ? { method: out.method, hash: out.hash } : undefined;
  const noId = { kind: 'no-substituters', message: '' } as const;
  const outcomes = await goal.blocked(
    Promise.all(
      missing.map((s) => {
        if (s.path) return w.substitutionGoal(s.path, mode === 'repair', 0, ca);
        const id = ids.get(s.name);
        return id ? w.drvOutputSubstitutionGoal(id) : noId;
      }),
    ),
  );
  w.signal.throwIfAborted();
  const failed = outcomes.filter((o) => !substitutionSucceeded(o));
  const noSubs = failed.filter((o) => o.kind === 'no-substituters').length;
  const incomplete = failed.filter((o) => o.kind === 'incomplete-closure').length;
  if (failed.length > noSubs + incomplete && !w.ctx.options.fallback) {
    return {
      statuses,
      retry: false,
      result: failure(
        'transient-failure',
        `some substitutes for the outputs of derivation '${view.drvPath}' failed (usually happens due to networking issues); try '--fallback' to build derivation from source `,
      ),
    };
  }
  const retry = incomplete > 0;
  statuses = await checkPathValidity(w, view, wanted, mode);
  if (mode === 'normal' && allWantedValid(statuses)) return { statuses, retry, result: success('substituted', outputsOf(statuses, true)) };
  // Repair: the outputs are good now; their closure is checked (and repaired) next, as Nix.
  if (mode === 'repair' && allWantedValid(statuses)) return { statuses, retry, result: await repairClosure(goal, view, statuses) };
  return { statuses, retry };
}

/** Steps 5–6 (Nix's inputsRealised), once every input is there: the input closure, then the build. */
export async function inputsRealised(goal: DerivationGoal, wanted: Set<string> | undefined, waitees: Waitees): Promise<BuildResult> {
  const { worker: w, drvPath, mode } = goal;
  const { store } = w.ctx;
  const view = await w.ctx.loadDrv(drvPath);
  if (waitees.retrySubstitution) {
    const again = await trySubstitutes(goal, view, wanted, waitees.retrySubstitution);
    if (again.result) return again.result;
  }

  // 5. The input closure: wanted outputs of input derivations (as their goals reported them), and input sources.
  const roots: StorePath[] = [...view.inputSrcs];
  const inputOutputs = new Map<StorePath, Map<string, StorePath>>();
  let i = 0;
  for (const [dep, outs] of view.inputDrvs) {
    const built = waitees.deps[i++]!.result!.builtOutputs;
    let depView: DrvView | undefined;
    let known: ReadonlyMap<string, StorePath> | undefined;
    for (const o of outs) {
      let p: StorePath | undefined = built[o];
      if (!p) {
        depView ??= await w.ctx.loadDrv(dep);
        if (!depView.outputs.has(o))
          return failure('misc-failure', `derivation '${drvPath}' requires non-existent output '${o}' from input derivation '${dep}'`);
        known ??= await knownOutputs(store, depView);
        p = known.get(o);
      }
      if (!p)
        return failure(
          'misc-failure',
          `derivation '${drvPath}' requires output '${o}' from input derivation '${dep}', which is supposedly realized already, yet we still don't know what path corresponds to that output`,
        );
      roots.push(p);
      let m = inputOutputs.get(dep);
      if (!m) inputOutputs.set(dep, (m = new Map()));
      m.set(o, p);
    }
  }
  // Deferred, or floating CA with input derivations: build the resolved derivation instead (Nix's tryResolve).
  if (view.needsResolution || (view.isFixedOutput && resolvesFixedOutput(w, view))) return buildResolved(goal, view, inputOutputs, wanted);
  const inputPaths = await store.computeClosure(roots);

  // 6. Build (rounds for buildRepeat; fixed outputs are built once).
  const rounds = view.isFixedOutput ? 1 : w.ctx.options.buildRepeat + 1;
  return buildLocally(w, view, { mode, rounds, inputPaths, preferLocal: preferLocalBuild(view), wanted, goal });
}

/**
 * Whether a fixed-output derivation with input derivations is resolved before it is built: Nix 2.8 resolves
 * every content-addressed one with `ca-derivations`; without the feature, one that names an input's output
 * by its placeholder (an input that is floating content-addressed) must be resolved all the same.
 */
function resolvesFixedOutput(w: Worker, view: DrvView): boolean {
  if (view.inputDrvs.size === 0) return false;
  if (w.ctx.options.experimentalFeatures.includes('ca-derivations')) return true;
  const placeholders: string[] = [];
  for (const [dep, outs] of view.inputDrvs) for (const o of outs) placeholders.push(downstreamPlaceholder(dep, o));
  const uses = (s: string) => placeholders.some((p) => s.includes(p));
  return uses(view.builder) || view.args.some(uses) || [...view.env.values()].some(uses);
}

/**
 * Nix 2.8's resolution (DerivationGoal::inputsRealised → resolvedFinished): write the resolved derivation
 * (input-derivation outputs replaced by their realised paths), realise it as a goal of its own, and record
 * its outputs as the outputs of the original derivation, so that the original is valid from then on.
 */
async function buildResolved(goal: DerivationGoal, view: DrvView, inputOutputs: InputOutputPaths, wanted: Set<string> | undefined): Promise<BuildResult> {
  const { worker: w, mode } = goal;
  const { store } = w.ctx;
  const { resolved, missing } = await tryResolve(view.drv, inputOutputs, { storeDir: store.storeDir });
  if (!resolved) {
    const m = missing[0]!;
    return failure(
      'misc-failure',
      `cannot resolve derivation '${view.drvPath}': output '${m.output}' of input '${m.drvPath}' has no known path; rebuild that input`,
    );
  }
  // Announced before the .drv is written (that can take a while): Nix prints it in the same step as it
  // resolves, before any other build can take a free slot.
  const pathResolved = computeDerivationPath(resolved, store.storeDir);
  w.ctx.emit('derivation-resolved', { drvPath: view.drvPath, resolvedPath: pathResolved });
  await writeDerivation(store, resolved);
  if (store.addTempRoot) await store.addTempRoot(pathResolved);
  const r = await goal.blocked(w.derivationGoal(pathResolved, wanted, mode));
  if (!isSuccess(r.status)) return r;
  const outputs = new Map<string, StorePath>();
  for (const name of wanted ?? view.outputs.keys()) {
    const p = r.builtOutputs[name];
    if (!p) return failure('misc-failure', `resolved derivation '${pathResolved}' of '${view.drvPath}' did not report output '${name}'`);
    outputs.set(name, p);
  }
  // As Nix: the original derivation's outputs are realised as the resolved one's (a fixed output's path
  // is in the .drv already). A derivation handed to us without being in the store has nothing to record.
  if (await store.isValidPath(view.drvPath)) await registerResolvedRealisations(store, view, await w.ctx.loadDrv(pathResolved), outputs);
  // Nix 2.8 runs the post-build hook again for the original derivation, built or not.
  const hookError = await postBuildHook(w, view.drvPath, [...outputs.values()]);
  if (hookError !== undefined) return failure('misc-failure', hookError);
  return { ...r, builtOutputs: Object.fromEntries(outputs) };
}

/**
 * Repair mode with valid, intact outputs (Nix's repairClosure): check every other path in the outputs'
 * closure and repair the corrupt ones, rebuilding their deriver when it is in the input closure, else
 * substituting them again.
 */
async function repairClosure(goal: DerivationGoal, view: DrvView, statuses: OutputStatus[]): Promise<BuildResult> {
  const w = goal.worker;
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
    repairs.push(drv ? w.derivationGoal(drv, undefined, 'repair').then((r) => isSuccess(r.status)) : w.substitutionGoal(p, true).then(substitutionSucceeded));
  }
  const failed = (await goal.blocked(Promise.all(repairs))).filter((ok) => !ok).length;
  if (failed > 0) return failure('misc-failure', `some paths in the output closure of derivation '${view.drvPath}' could not be repaired`);
  return success('already-valid', outputsOf(statuses, true));
}
