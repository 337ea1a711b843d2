/**
 * The no-op build without an engine: when every target of a normal-mode call is already valid, the results
 * `BuildEngine.buildPathsWithResults` would give, found with a few batched queries. It takes the temporary
 * roots Nix's goals take on the way (each `.drv`, then every output path it names) and reads and parses
 * each target `.drv` as a goal does, but starts no worker, sandbox or substituter: nothing is missing, so
 * nothing would be fetched or built (Nix 2.8 does not open its substituters for a no-op either).
 * Anything else (a missing path, an output the `.drv` does not fix, a `.drv` that does not parse, an
 * output it lacks) gives `undefined`: the caller runs the engine, which handles it as always.
 */
import { readFileSync } from 'node:fs';
import type { LocalStore } from '../store/local-store.js';
import { parseStorePath, type StorePath } from '../store/store-path.js';
import { derivationNameFromPath, parseDerivation } from '../derivation/derivation.js';
import { success, type BuildTarget, type TargetResult } from './results.js';

/** What a call wants of one `.drv`: some outputs, or all of them (undefined), united over its targets as one goal. */
type Wanted = Set<string> | undefined;

function wantedOutputs(targets: readonly BuildTarget[]): Map<StorePath, Wanted> {
  const wanted = new Map<StorePath, Wanted>();
  for (const t of targets) {
    if (!('drvPath' in t)) continue;
    const all = t.outputs === undefined || t.outputs === '*';
    const had = wanted.get(t.drvPath);
    if (!wanted.has(t.drvPath)) wanted.set(t.drvPath, all ? undefined : new Set(t.outputs));
    else if (had) {
      if (all) wanted.set(t.drvPath, undefined);
      else for (const o of t.outputs as readonly string[]) had.add(o);
    }
  }
  return wanted;
}

/** A goal's outputs: every path its `.drv` fixes, and those of the wanted outputs (the goal's builtOutputs). */
interface GoalOutputs {
  readonly all: readonly StorePath[];
  readonly wanted: Record<string, StorePath>;
}

/** The outputs of a valid `.drv` when it fixes all their paths and has every wanted one, else undefined. */
function fixedOutputsOf(store: LocalStore, drvPath: StorePath, names: Wanted): GoalOutputs | undefined {
  let drv;
  try {
    drv = parseDerivation(readFileSync(store.toRealPath(drvPath), 'utf8'), derivationNameFromPath(drvPath), { storeDir: store.storeDir });
  } catch {
    return undefined;
  }
  if (names && [...names].some((n) => !drv.outputs.has(n))) return undefined;
  const all: StorePath[] = [];
  const wanted: Record<string, StorePath> = {};
  for (const [name, o] of drv.outputs) {
    if (o.type !== 'input-addressed' && o.type !== 'fixed') return undefined;
    all.push(o.path);
    if (!names || names.has(name)) wanted[name] = o.path;
  }
  return { all, wanted };
}

/**
 * The results of realising `targets` in normal mode when all of them are already valid, else undefined:
 * as `buildPathsWithResults` gives them, in target order, status `already-valid`; a `.drv` is one goal
 * however many targets name it, whose `builtOutputs` are the outputs all of them want.
 */
export async function alreadyValidResults(store: LocalStore, targets: readonly BuildTarget[]): Promise<TargetResult[] | undefined> {
  const top = targets.map((t) => ('drvPath' in t ? t.drvPath : t.path));
  for (const p of top) parseStorePath(p, store.storeDir);
  const valid = store.queryValidPathsSync(top);
  if (!top.every((p) => valid.has(p))) return undefined;
  // As Nix's goals: each `.drv` (and opaque path) is a temporary root before it is read.
  await store.addTempRoots(top);
  const goals = new Map<StorePath, GoalOutputs>();
  for (const [drvPath, names] of wantedOutputs(targets)) {
    const o = fixedOutputsOf(store, drvPath, names);
    if (!o) return undefined;
    // A first goal with an output missing (a fresh build) ends the search at once, rather than after every
    // `.drv` is read and parsed, which the engine then does again. (Only a hint: the answer is the check
    // below, after the temporary roots.)
    if (goals.size === 0) {
      const first = Object.values(o.wanted);
      if (store.queryValidPathsSync(first).size < first.length) return undefined;
    }
    goals.set(drvPath, o);
  }
  // Then every output path a `.drv` names, before their validity is checked.
  await store.addTempRoots([...goals.values()].flatMap((o) => o.all));
  const wanted = [...goals.values()].flatMap((o) => Object.values(o.wanted));
  const validOutputs = store.queryValidPathsSync(wanted);
  if (!wanted.every((p) => validOutputs.has(p))) return undefined;
  return targets.map((t, i) => ({ target: t, path: top[i]!, result: success('already-valid', 'drvPath' in t ? goals.get(t.drvPath)!.wanted : {}) }));
}
