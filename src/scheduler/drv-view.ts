/**
 * What the scheduler needs of a derivation, read once per call: the parsed derivation (`drv`, outputs as
 * the derivation layer's DerivationOutput), its attributes as Nix's ParsedDerivation reads them (`attrs`),
 * and a few facts derived from them. One model: the helpers below only name what the engine asks.
 */
import type { Store } from '../store/store-api.js';
import { storePathName, type StorePath } from '../store/store-path.js';
import { BadDerivationError } from '../derivation/errors.js';
import { parseDerivation, type Derivation, type DerivationOutput } from '../derivation/derivation.js';
import { ParsedDerivation } from '../derivation/parsed-attrs.js';
import { BuildSetupError } from './errors.js';

/** An output this engine builds: every kind but Nix 2.8's experimental impure outputs. */
export type BuildableOutput = Exclude<DerivationOutput, { readonly type: 'impure' }>;

export interface DrvView {
  readonly drvPath: StorePath;
  readonly drv: Derivation;
  /** The attributes that steer the build (Nix's ParsedDerivation). */
  readonly attrs: ParsedDerivation;
  /** Derivation name (drv base name without hash and `.drv`). */
  readonly name: string;
  readonly outputs: ReadonlyMap<string, BuildableOutput>;
  readonly inputDrvs: ReadonlyMap<StorePath, readonly string[]>;
  readonly inputSrcs: readonly StorePath[];
  readonly platform: string;
  readonly builder: string;
  readonly args: readonly string[];
  readonly env: ReadonlyMap<string, string>;
  readonly structuredAttrs: Record<string, unknown> | undefined;
  readonly isFixedOutput: boolean;
  /**
   * Must be resolved (its input-derivation outputs replaced by their realised paths) before it is built:
   * deferred outputs, or floating CA outputs with input derivations (Nix 2.8's `ca-derivations`).
   */
  readonly needsResolution: boolean;
  /**
   * Every output's path, when the derivation fixes them all (input-addressed and fixed outputs: the usual
   * case), else undefined (floating and deferred ones are known by the store). Shared: never changed.
   */
  readonly staticOutputs: ReadonlyMap<string, StorePath> | undefined;
}

/** The output's path when the derivation fixes it (input-addressed, fixed); floating and deferred ones have none yet. */
export function knownPath(o: BuildableOutput): StorePath | undefined {
  return o.type === 'floating' || o.type === 'deferred' ? undefined : o.path;
}

export async function loadDrv(store: Store, drvPath: StorePath, validityChecked = false): Promise<DrvView> {
  const text = await store.readTextFile(drvPath, { validityChecked });
  const name = storePathName(drvPath).replace(/\.drv$/, '');
  const drv = parseDerivation(text, name, { storeDir: store.storeDir });
  return viewOf(drvPath, drv, name);
}

/**
 * The view of `drv`, which it shares rather than copies (its outputs, input lists, arguments and environment):
 * the derivation must not change afterwards. One pass over the outputs finds the facts the view names.
 */
export function viewOf(drvPath: StorePath, drv: Derivation, name: string): DrvView {
  let isFixedOutput = false;
  let unfixed = false;
  for (const [outName, o] of drv.outputs) {
    if (o.type === 'impure')
      throw new BadDerivationError(`output '${outName}' of derivation '${drvPath}' has a kind this engine cannot build (impure)`, { drv: drvPath });
    if (o.type === 'fixed') isFixedOutput = true;
    else if (o.type === 'floating' || o.type === 'deferred') unfixed = true;
  }
  // No output is impure (checked above).
  const outputs = drv.outputs as ReadonlyMap<string, BuildableOutput>;
  let staticOutputs: Map<string, StorePath> | undefined;
  if (!unfixed) {
    staticOutputs = new Map();
    for (const [outName, o] of outputs) staticOutputs.set(outName, knownPath(o)!);
  }
  const attrs = new ParsedDerivation(drvPath, drv);
  return {
    drvPath,
    drv,
    attrs,
    name,
    outputs,
    inputDrvs: drv.inputDrvs,
    inputSrcs: drv.inputSrcs,
    platform: drv.platform,
    builder: drv.builder,
    args: drv.args,
    env: drv.env,
    structuredAttrs: attrs.structuredAttrs as Record<string, unknown> | undefined,
    isFixedOutput,
    needsResolution: drv.inputDrvs.size > 0 && unfixed,
    staticOutputs,
  };
}

/** The derivation's `requiredSystemFeatures` as Nix 2.8's build hook and platform check hold them: a set, sorted. */
export function requiredSystemFeatures(v: DrvView): string[] {
  return [...new Set(v.attrs.getStringsAttr('requiredSystemFeatures') ?? [])].sort();
}

export function substitutesAllowed(v: DrvView): boolean {
  return v.attrs.substitutesAllowed();
}

export function preferLocalBuild(v: DrvView): boolean {
  return v.attrs.preferLocalBuild;
}

/** Whether this machine can build the derivation: its platform (or an extra platform) and its features. */
export function canBuildHere(v: DrvView, o: { system: string; extraPlatforms: readonly string[]; systemFeatures: readonly string[] }): boolean {
  if (v.platform !== 'builtin' && v.platform !== o.system && !o.extraPlatforms.includes(v.platform)) return false;
  for (const f of requiredSystemFeatures(v)) if (!o.systemFeatures.includes(f)) return false;
  return true;
}

/**
 * Nix 2.8 reads a `.drv` with floating content-addressed or deferred outputs only with the `ca-derivations`
 * experimental feature: the error that ends the call when the engine checks the features it was given and
 * that one is not among them; undefined otherwise.
 */
export function caFeatureMissing(v: DrvView, o: { experimentalFeatures: readonly string[]; experimentalFeaturesGiven: boolean }): BuildSetupError | undefined {
  if (!o.experimentalFeaturesGiven || o.experimentalFeatures.includes('ca-derivations')) return undefined;
  if (![...v.outputs.values()].some((out) => out.type === 'floating' || out.type === 'deferred')) return undefined;
  return new BuildSetupError("experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override");
}
