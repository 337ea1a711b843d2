/**
 * Resolving a derivation whose inputs are floating content-addressed (Nix 2.8's `Derivation::tryResolve`,
 * experimental `ca-derivations`): once the inputs are built, every wanted input-derivation output is
 * replaced by its realised store path — the path joins `inputSrcs`, `inputDrvs` becomes empty, and the
 * output's downstream placeholder is rewritten to the path in the builder, the arguments and the
 * environment (names and values). Deferred outputs then become input-addressed, their paths computed
 * from the resolved derivation. Pure: the caller says where the input outputs ended up.
 */
import { DEFAULT_STORE_DIR, downstreamPlaceholder, makeOutputPath, type StorePath } from '../store/store-path.js';
import { rewriteStrings } from './build-env.js';
import { BadDerivationError } from './errors.js';
import { DerivationHasher, compareBytes, derivationKind, type Derivation } from './derivation.js';

export { downstreamPlaceholder };

/**
 * Whether a derivation must be resolved before it is built (Nix 2.8 with `ca-derivations`): deferred
 * (input-addressed, depending on a floating CA output), floating CA with input derivations, or impure
 * with input derivations. Fixed-output derivations are never resolved here (Nix does so only optionally).
 */
export function needsResolution(drv: Derivation): boolean {
  if (drv.inputDrvs.size === 0) return false;
  const kind = derivationKind(drv);
  return kind === 'deferred' || kind === 'floating' || kind === 'impure';
}

/** Where the outputs of input derivations are: input `.drv` path → output name → realised path. */
export type InputOutputPaths = ReadonlyMap<StorePath, ReadonlyMap<string, StorePath>>;

export interface ResolveResult {
  /** The resolved derivation (no input derivations), or undefined when an input output is unknown. */
  readonly resolved: Derivation | undefined;
  /** Placeholder → realised path, as applied. */
  readonly rewrites: ReadonlyMap<string, string>;
  /** Wanted input outputs without a known path (`resolved` is then undefined). */
  readonly missing: readonly { readonly drvPath: StorePath; readonly output: string }[];
}

const noInputs = async (p: StorePath): Promise<Derivation> => {
  throw new BadDerivationError(`a resolved derivation has no input derivations, yet '${p}' was asked for`, { drv: p });
};

/**
 * Nix's `tryResolve` + `rewriteDerivation`. The result keeps the derivation's name, platform and
 * output kinds, except that deferred outputs become input-addressed (with the `out`-style environment
 * variable set to the path); floating outputs stay floating.
 */
export async function tryResolve(drv: Derivation, inputOutputs: InputOutputPaths, opts: { storeDir?: string } = {}): Promise<ResolveResult> {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  const pairs: [string, string][] = [];
  const srcs = new Set<StorePath>(drv.inputSrcs);
  const missing: { drvPath: StorePath; output: string }[] = [];
  for (const [inputDrv, outs] of drv.inputDrvs) {
    for (const o of outs) {
      const p = inputOutputs.get(inputDrv)?.get(o);
      if (!p) {
        missing.push({ drvPath: inputDrv, output: o });
        continue;
      }
      pairs.push([downstreamPlaceholder(inputDrv, o), p]);
      srcs.add(p);
    }
  }
  // Nix's StringMap is ordered by key; rewrites are applied in that order.
  pairs.sort((a, b) => compareBytes(a[0], b[0]));
  const rewrites = new Map(pairs);
  if (missing.length > 0) return { resolved: undefined, rewrites, missing };

  const env = new Map<string, string>();
  for (const [k, v] of drv.env) {
    const name = rewriteStrings(k, rewrites);
    if (!env.has(name)) env.set(name, rewriteStrings(v, rewrites));
  }
  const resolved: Derivation = {
    name: drv.name,
    outputs: new Map(drv.outputs),
    inputDrvs: new Map(),
    inputSrcs: [...srcs].sort(compareBytes),
    platform: drv.platform,
    builder: rewriteStrings(drv.builder, rewrites),
    args: drv.args.map((a) => rewriteStrings(a, rewrites)),
    env,
  };
  const deferred = [...resolved.outputs].filter(([, o]) => o.type === 'deferred').map(([n]) => n);
  if (deferred.length > 0) {
    const h = await new DerivationHasher(noInputs, { storeDir }).hashModulo(resolved, true);
    for (const name of deferred) {
      const path = makeOutputPath(name, h.hashes.get(name)!, drv.name, storeDir);
      resolved.env.set(name, path);
      resolved.outputs.set(name, { type: 'input-addressed', path });
    }
  }
  return { resolved, rewrites, missing };
}
