/**
 * Realisations, as Nix 2.8 keeps them with `ca-derivations`: an output of a derivation, named by the
 * derivation's hash modulo and the output's name (`sha256:<base16>!out`), maps to the path it was built
 * as. Floating content-addressed outputs are known only this way (Nix 2.8 writes no DerivationOutputs row
 * for them). Nix registers a realisation for every output it builds while `ca-derivations` is enabled;
 * realise builds floating CA derivations without the feature too, and then registers theirs alone.
 */
import { DerivationHasher, readDerivationFromStore, type Derivation } from '../derivation/derivation.js';
import type { Hash } from '../store/hash.js';
import type { Realisation, Store } from '../store/store-api.js';
import { storePathBase, type StorePath } from '../store/store-path.js';
import { knownPath, type DrvView } from './drv-view.js';
import { signDetached } from '../substituter/signatures.js';

/** One hasher (with its memo of input derivations' hashes) per store, as Nix's drvHashes. */
const hashers = new WeakMap<Store, DerivationHasher>();

export function hasherFor(store: Store): DerivationHasher {
  let h = hashers.get(store);
  if (!h) hashers.set(store, (h = new DerivationHasher(readDerivationFromStore(store), { storeDir: store.storeDir })));
  return h;
}

/** Nix's staticOutputHashes: output name → the derivation's hash modulo (own outputs masked) for it. */
async function outputHashes(store: Store, drv: Derivation): Promise<ReadonlyMap<string, Hash>> {
  return (await hasherFor(store).hashModulo(drv, true)).hashes;
}

/** Nix's DrvOutput id. */
export function drvOutputId(hash: Hash, output: string): string {
  return `${hash.toString('base16', true)}!${output}`;
}

/** The DrvOutput ids of a derivation's outputs (none when its input derivations are not there to hash). */
export async function drvOutputIds(store: Store, view: DrvView): Promise<Map<string, string>> {
  const ids = new Map<string, string>();
  const hashes = await outputHashes(store, view.drv).catch(() => new Map<string, Hash>());
  for (const [name, h] of hashes) ids.set(name, drvOutputId(h, name));
  return ids;
}

const hasFloating = (view: DrvView) => [...view.outputs.values()].some((o) => o.type === 'floating');

/** Whether outputs built from `view` get realisations: always with `ca-derivations`, else floating CA ones. */
export function registersRealisations(view: DrvView, experimentalFeatures: readonly string[]): boolean {
  return experimentalFeatures.includes('ca-derivations') || hasFloating(view);
}

/**
 * Nix's queryPartialDerivationOutputMap: the outputs of a derivation whose paths are known, from the .drv
 * (input-addressed and fixed), its DerivationOutputs rows, and its realisations (floating CA outputs).
 */
export async function knownOutputs(store: Store, view: DrvView): Promise<ReadonlyMap<string, StorePath>> {
  if (view.staticOutputs) return view.staticOutputs;
  const out = new Map<string, StorePath>();
  const unknown: string[] = [];
  for (const [name, spec] of view.outputs) {
    const p = knownPath(spec);
    if (p) out.set(name, p);
    else unknown.push(name);
  }
  if (unknown.length === 0) return out;
  const rows = await store.queryDerivationOutputs(view.drvPath).catch(() => new Map<string, StorePath>());
  let hashes: ReadonlyMap<string, Hash> | undefined;
  for (const name of unknown) {
    let p = rows.get(name);
    if (!p && store.queryRealisation) {
      // The hash modulo needs the input derivations; without them nothing is known (as an unbuilt output).
      hashes ??= await outputHashes(store, view.drv).catch(() => new Map<string, Hash>());
      const h = hashes.get(name);
      if (h) p = (await store.queryRealisation(drvOutputId(h, name)))?.outPath;
    }
    if (p) out.set(name, p);
  }
  return out;
}

/**
 * Nix 2.8's checkPathValidity with `ca-derivations`: a valid output known from the .drv that has no
 * realisation yet (built or fetched without the feature) gets one.
 */
export async function realiseValidOutputs(store: Store, view: DrvView, valid: ReadonlyMap<string, StorePath>): Promise<void> {
  if (!store.registerRealisation || !store.queryRealisation || valid.size === 0) return;
  const hashes = await outputHashes(store, view.drv);
  for (const [name, outPath] of valid) {
    const h = hashes.get(name);
    if (!h) continue;
    const id = drvOutputId(h, name);
    if (!(await store.queryRealisation(id))) await store.registerRealisation({ id, outPath, signatures: [] });
  }
}

/** After a build (Nix's registerOutputs): a realisation for each built output. */
export async function registerBuiltRealisations(
  store: Store,
  view: DrvView,
  paths: Readonly<Record<string, StorePath>>,
  secretKeys: readonly string[] = [],
): Promise<void> {
  if (!store.registerRealisation) return;
  const hashes = await outputHashes(store, view.drv);
  for (const [name, outPath] of Object.entries(paths)) {
    const h = hashes.get(name);
    if (!h) continue;
    const id = drvOutputId(h, name);
    // As Nix's signRealisation: each key signs the realisation's JSON without its signatures (keys sorted;
    // a built one has no dependent realisations yet).
    const fingerprint = JSON.stringify({ dependentRealisations: {}, id, outPath: storePathBase(outPath) });
    await store.registerRealisation({ id, outPath, signatures: [...new Set(secretKeys.map((k) => signDetached(fingerprint, k)))].sort() });
  }
}

/**
 * After a resolved derivation was built (Nix's resolvedFinished): the original derivation's outputs are
 * realised as the resolved one's (`outputs`, what its goal reported), with the realisations of its inputs
 * each output refers to. A resolved derivation that is input-addressed gets its realisations here too when
 * its build did not register them (without `ca-derivations`), so the original's outputs stay known.
 */
export async function registerResolvedRealisations(store: Store, view: DrvView, resolved: DrvView, outputs: ReadonlyMap<string, StorePath>): Promise<void> {
  if (!store.registerRealisation || !store.queryRealisation) return;
  const hashes = await outputHashes(store, view.drv);
  const resolvedHashes = await outputHashes(store, resolved.drv);
  let inputs: Realisation[] | undefined;
  for (const [name, outPath] of outputs) {
    const h = hashes.get(name);
    const rh = resolvedHashes.get(name);
    if (!h || !rh) continue;
    const resolvedId = drvOutputId(rh, name);
    if (!(await store.queryRealisation(resolvedId))) await store.registerRealisation({ id: resolvedId, outPath, signatures: [] });
    const deps = new Map<string, StorePath>();
    // As Nix 2.8: a fixed output records none.
    if (!view.isFixedOutput) {
      inputs ??= await inputRealisations(store, view);
      const refs = new Set((await store.queryPathInfo(outPath))?.references ?? []);
      for (const i of inputs) if (refs.has(i.outPath)) deps.set(i.id, i.outPath);
    }
    await store.registerRealisation({ id: drvOutputId(h, name), outPath, signatures: [], dependentRealisations: deps });
  }
}

/**
 * Nix's drvOutputReferences: the realisations of the wanted outputs of the input derivations, with the
 * realisations they depend on, transitively (Realisation::closure). An input without one (built before
 * realisations were kept) is left out.
 */
async function inputRealisations(store: Store, view: DrvView): Promise<Realisation[]> {
  const seen = new Map<string, Realisation>();
  const todo: string[] = [];
  const read = readDerivationFromStore(store);
  for (const [dep, outs] of view.inputDrvs) {
    const hashes = await outputHashes(store, await read(dep));
    for (const o of outs) {
      const h = hashes.get(o);
      if (h) todo.push(drvOutputId(h, o));
    }
  }
  while (todo.length) {
    const id = todo.pop()!;
    if (seen.has(id)) continue;
    const r = await store.queryRealisation!(id);
    if (!r) continue;
    seen.set(id, r);
    for (const d of r.dependentRealisations?.keys() ?? []) todo.push(d);
  }
  return [...seen.values()];
}
