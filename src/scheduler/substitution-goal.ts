/**
 * One substitution goal of a call (Nix's PathSubstitutionGoal): make one store path valid by fetching it
 * from a substituter, references first (closure invariant), trying substituters in priority order. The
 * goal is an object holding its path and its outcome; its work is straight-line async code (`substitute`).
 */
import { RealiseError, shortMessageOf } from '../store/errors.js';
import { makeFixedOutputPath, storePathName, type FileIngestionMethod, type StorePath } from '../store/store-path.js';
import type { Hash } from '../store/hash.js';
import { BadKeyError } from '../substituter/signatures.js';
import { checkTrust, contentAddressedAs, SubstituterError, type SubstitutablePathInfo, type Substituter } from '../substituter/substituter.js';
import { failure, stoppedResult, success, type BuildResult } from './results.js';
import type { Worker } from './worker.js';

export type SubstitutionOutcome =
  | { readonly kind: 'valid' }
  | { readonly kind: 'substituted'; readonly substituter: string }
  /** No substituter has the path (Nix's ecNoSubstituters). */
  | { readonly kind: 'no-substituters'; readonly message: string }
  /** A reference could not be realised (Nix's ecIncompleteClosure). */
  | { readonly kind: 'incomplete-closure'; readonly message: string }
  /** A substituter had the path but fetching it failed (a real error). */
  | { readonly kind: 'failed'; readonly message: string };

/** What a fixed output's content is (its derivation's `outputHash` and mode). */
export interface FixedContent {
  readonly method: FileIngestionMethod;
  readonly hash: Hash;
}

export function substitutionSucceeded(o: SubstitutionOutcome): boolean {
  return o.kind === 'valid' || o.kind === 'substituted';
}

export class SubstitutionGoal {
  /** How the goal ended (it never rejects). */
  readonly outcome: Promise<SubstitutionOutcome>;

  constructor(
    private readonly worker: Worker,
    readonly path: StorePath,
    /** Fetch the path again even if it is valid (repair mode). */
    readonly repair: boolean,
    /** How many references away from what the caller asked for (Nix's rounds; see Worker.readyInNixOrder). */
    depth: number,
    /** The content of a fixed output: what a cache of another store directory is asked for. */
    private readonly ca?: FixedContent,
  ) {
    worker.ctx.emit('goal-created', { kind: 'substitution', path });
    this.outcome = this.run(depth);
  }

  private async run(depth: number): Promise<SubstitutionOutcome> {
    const { worker: w, path } = this;
    w.ctx.emit('goal-started', { kind: 'substitution', path });
    let outcome: SubstitutionOutcome;
    let stopped = false;
    try {
      outcome = await substitute(w, path, this.repair, depth, this.ca);
    } catch (e) {
      // A malformed trusted key ends the whole call, as Nix's exception out of its worker.
      if (e instanceof BadKeyError && !w.signal.aborted) w.endCallWith(e);
      stopped = w.signal.aborted;
      outcome = { kind: 'failed', message: stopped ? `substitution of '${path}' was stopped` : e instanceof Error ? e.message : String(e) };
    }
    const ok = substitutionSucceeded(outcome);
    w.substitutionFinished(this, ok);
    w.ctx.emit('goal-finished', { kind: 'substitution', path, result: resultOf(outcome, stopped, path) });
    return outcome;
  }
}

/** A substitution's outcome as a goal's BuildResult (for `goal-finished`). */
function resultOf(o: SubstitutionOutcome, stopped: boolean, path: StorePath): BuildResult {
  if (o.kind === 'valid') return success('already-valid');
  if (o.kind === 'substituted') return success('substituted');
  return stopped ? stoppedResult(`substitution of '${path}'`) : failure('misc-failure', o.message);
}

/**
 * The path to ask `sub` for (Nix's PathSubstitutionGoal::tryNext): for a fixed output, the path of its
 * content in the substituter's store directory; otherwise the path itself, or nothing when the
 * substituter is for another store directory.
 */
function pathToAsk(sub: Substituter, storeDir: string, path: StorePath, ca: FixedContent | undefined): StorePath | undefined {
  if (ca) return makeFixedOutputPath(ca.method, ca.hash, storePathName(path), { storeDir: sub.storeDir });
  return sub.storeDir === storeDir ? path : undefined;
}

type LookUp = { info?: SubstitutablePathInfo; error?: string };

/**
 * What `sub` has for `path`, when the engine knows it already (queryMissing asked): no await then. Undefined
 * when it must be asked (lookUp).
 */
function lookUpKnown(w: Worker, sub: Substituter, path: StorePath, asked: StorePath): LookUp | undefined {
  const known = w.ctx.knownPathInfo(sub, asked);
  return known === undefined ? undefined : found(w, sub, path, known ?? undefined);
}

/** What `sub` has for `path`; `error`: a lookup that failed (a real failure without `fallback`). */
async function lookUp(w: Worker, sub: Substituter, path: StorePath, asked: StorePath): Promise<LookUp> {
  let info;
  try {
    info = (await w.ctx.queryPathInfosCached(sub, [asked], w.signal)).get(asked);
  } catch (e) {
    // Nix logs the error (and, without --fallback, gives up: a real failure here).
    w.ctx.emit('warning', { message: shortMessageOf(e), level: 'error' });
    return w.ctx.options.fallback ? {} : { error: `substituter '${sub.uri}': ${(e as Error).message}` };
  }
  return found(w, sub, path, info);
}

/** The info `sub` gave for `path`, unless it is another path's. */
function found(w: Worker, sub: Substituter, path: StorePath, info: SubstitutablePathInfo | undefined): LookUp {
  if (info && info.path !== path && !contentAddressedAs(info, sub.storeDir, path, w.ctx.store.storeDir)) {
    w.ctx.emit('warning', { message: `asked '${sub.uri}' for '${path}' but got '${info.path}'`, level: 'error' });
    return {};
  }
  return { info };
}

async function substitute(w: Worker, path: StorePath, repair: boolean, depth: number, ca?: FixedContent): Promise<SubstitutionOutcome> {
  // (Rooted first, so that a collector cannot delete it once it is found valid.)
  if ((await w.substitutionStart(path)) && !repair) return { kind: 'valid' };

  const subs = w.ctx.substituters;
  if (subs.length === 0) {
    return { kind: 'no-substituters', message: `path '${path}' is required, but there is no substituter that can build it` };
  }

  let realError: string | undefined;
  for (const sub of subs) {
    w.signal.throwIfAborted();
    const asked = pathToAsk(sub, w.ctx.store.storeDir, path, ca);
    if (!asked) continue;
    const { info, error } = lookUpKnown(w, sub, path, asked) ?? (await lookUp(w, sub, path, asked));
    if (error) realError = error;
    if (!info) continue;
    // Goals whose lookups end together go on (warn, ask for their references) in Nix's goal order.
    await w.readyInNixOrder(path, depth);

    // As Nix: a substitute without a trusted signature is skipped before anything is downloaded, with a
    // warning, as if the substituter did not have it (not a real error, so no '--fallback' is needed).
    try {
      checkTrust(sub, info);
    } catch (e) {
      if (!(e instanceof SubstituterError)) throw e;
      w.warn(`the substitute for '${path}' from '${sub.uri}' is not signed by any of the keys in 'trusted-public-keys'`);
      continue;
    }

    // As Nix's substitution goal, a substitute found counts as expected, with its sizes, before its
    // references are fetched; withdrawn if it never runs.
    const { progress } = w.ctx;
    const expected = progress.expect('substitutions');
    progress.download.expected += info.downloadSize;
    progress.nar.expected += info.narSize;
    let started = false;
    const outcome = await runSubstitute(w, path, sub, info, repair, depth, () => (started = true)).finally(() => {
      if (started) return;
      expected.withdraw();
      progress.download.expected -= info.downloadSize;
      progress.nar.expected -= info.narSize;
      progress.changed();
    });
    if ('kind' in outcome) return outcome;
    if (outcome.ok) {
      if (outcome.k === 'valid') return { kind: 'valid' };
      w.markContentsGood(path);
      w.ctx.emit('substitution-finished', { path, substituter: sub.uri, ok: true });
      return { kind: 'substituted', substituter: sub.uri };
    }
    w.signal.throwIfAborted();
    const msg = (outcome.e as Error).message ?? String(outcome.e);
    w.ctx.emit('substitution-finished', { path, substituter: sub.uri, ok: false, error: msg });
    // As Nix (printError of the failure, then the next substituter): the error is shown as it is.
    const shown = outcome.e instanceof RealiseError ? outcome.e.shortMessage : msg;
    w.ctx.emit('warning', { message: shown, level: 'error' });
    // The substitute is gone (its NAR file vanished): as if it never existed, not a real error.
    if (outcome.e instanceof SubstituterError && outcome.e.code === 'not-found') continue;
    realError = `substitution of path '${path}' from '${sub.uri}' failed: ${msg}`;
  }
  if (realError) return { kind: 'failed', message: realError };
  return { kind: 'no-substituters', message: `path '${path}' is required, but there is no substituter that can build it` };
}

/**
 * A substitute's references, then the substitute itself in a substitution slot (`onStart` as it starts
 * running): the goal's outcome when it ends here, else how the fetch went.
 */
async function runSubstitute(
  w: Worker,
  path: StorePath,
  sub: Substituter,
  info: SubstitutablePathInfo,
  repair: boolean,
  depth: number,
  onStart: () => void,
): Promise<SubstitutionOutcome | { ok: true; k: 'valid' | 'substituted' } | { ok: false; e: unknown }> {
  const { store } = w.ctx;
  // References first, so the closure stays complete.
  const refs = info.references.filter((r) => r !== path);
  const refOutcomes = await Promise.all(refs.map((r) => w.substitutionGoal(r, false, depth + 1)));
  const badRefs = refOutcomes.filter((o) => !substitutionSucceeded(o));
  if (badRefs.length > 0) {
    // As Nix: a hole in the closure (a reference nobody has) lets the derivation build it and try this
    // substitute again; a reference whose substitution really failed fails this one too.
    const hole = badRefs.some((o) => o.kind === 'no-substituters' || o.kind === 'incomplete-closure');
    return { kind: hole ? 'incomplete-closure' : 'failed', message: `some references of path '${path}' could not be realised` } as const;
  }

  // Substitutions that become ready together start in Nix's goal order (by name, then path).
  await w.readyInNixOrder(path, refs.length === 0 ? depth : undefined);
  return w.ctx
    .substitutionSlot(path, async () => {
      w.signal.throwIfAborted();
      // addToStore takes the path's lock and re-checks validity under it.
      if (!repair && (await w.validNow(path))) return 'valid' as const;
      onStart();
      const running = w.ctx.progress.running('substitutions');
      w.ctx.emit('substitution-started', {
        path,
        substituter: sub.uri,
        narUrl: `${sub.uri.replace(/\/+$/, '')}/${info.url}`,
        ...(info.path !== path ? { from: info.path } : {}),
      });
      let fetched = false;
      try {
        await w.ctx.fetchPath(sub, info, w.signal, repair, path);
        fetched = true;
      } finally {
        // A fetch cut short by a stop is not a failed substitution.
        running.end(fetched || (w.signal.aborted ? 'dropped' : false));
      }
      return 'substituted' as const;
    })
    .then(
      (k) => ({ ok: true as const, k }),
      (e: unknown) => ({ ok: false as const, e }),
    );
}

/**
 * Nix 2.8's DrvOutputSubstitutionGoal: the realisation `id` (an output of a floating content-addressed
 * derivation, by its hash modulo) from the first substituter that has it; its dependent realisations and its
 * output path are substituted first, then it is registered. A substituter whose realisation of a dependency
 * differs from the store's is skipped with Nix's warning.
 */
export async function substituteRealisation(w: Worker, id: string): Promise<SubstitutionOutcome> {
  const { store } = w.ctx;
  const none = { kind: 'no-substituters', message: `derivation output '${id}' is required, but there is no substituter that can provide it` } as const;
  if (!store.queryRealisation || !store.registerRealisation) return none;
  if (await store.queryRealisation(id)) return { kind: 'valid' };
  let realError: string | undefined;
  for (const sub of w.ctx.substituters) {
    w.signal.throwIfAborted();
    if (!sub.queryRealisation) continue;
    let r;
    try {
      await sub.init(w.signal);
      r = await sub.queryRealisation(id, { signal: w.signal });
    } catch (e) {
      w.signal.throwIfAborted();
      realError = shortMessageOf(e);
      w.ctx.emit('warning', { message: realError, level: 'error' });
      continue;
    }
    if (!r) continue;
    const deps = [...(r.dependentRealisations ?? [])].filter(([depId]) => depId !== id);
    let incompatible = false;
    for (const [depId, depPath] of deps) {
      const local = await store.queryRealisation(depId);
      if (local && local.outPath !== depPath) {
        // (Nix's plain warn(): its continuation lines are not indented.)
        w.warn(
          `warning: substituter '${sub.uri}' has an incompatible realisation for '${depId}', ignoring.\nLocal:  ${local.outPath}\nRemote: ${depPath}`,
          'plain',
        );
        incompatible = true;
        break;
      }
    }
    if (incompatible) continue;
    const outcomes = await Promise.all([...deps.map(([depId]) => w.drvOutputSubstitutionGoal(depId)), w.substitutionGoal(r.outPath)]);
    const bad = outcomes.filter((o) => !substitutionSucceeded(o));
    if (bad.length > 0) {
      const hole = bad.some((o) => o.kind === 'no-substituters' || o.kind === 'incomplete-closure');
      return { kind: hole ? 'incomplete-closure' : 'failed', message: `the output path of the derivation output '${id}' could not be substituted` };
    }
    await store.registerRealisation(r);
    return { kind: 'substituted', substituter: sub.uri };
  }
  return realError ? { kind: 'failed', message: realError } : none;
}
