/**
 * What the scheduler needs of a derivation, read once per call: outputs with their known paths, inputs,
 * and the attributes that steer a build (legacy env or structured `__json`).
 */
import type { Hash } from '../store/hash.js';
import type { Store } from '../store/store-api.js';
import type { FileIngestionMethod, StorePath } from '../store/store-path.js';
import { RealiseError } from '../store/errors.js';
import { parseDerivation, type Derivation } from '../derivation/derivation.js';
import { ParsedDerivation } from '../derivation/parsed-attrs.js';

export type OutputSpec =
  | { readonly kind: 'input-addressed'; readonly path: StorePath }
  | { readonly kind: 'fixed'; readonly method: FileIngestionMethod; readonly hash: Hash; readonly path: StorePath }
  | { readonly kind: 'floating'; readonly method: FileIngestionMethod; readonly algorithm: Hash['algorithm'] }
  /** Input-addressed, but depending on a floating CA output: known only once the derivation is resolved. */
  | { readonly kind: 'deferred' };

export interface DrvView {
  readonly drvPath: StorePath;
  readonly drv: Derivation;
  /** The attributes that steer the build (Nix's ParsedDerivation). */
  readonly attrs: ParsedDerivation;
  /** Derivation name (drv base name without hash and `.drv`). */
  readonly name: string;
  readonly outputs: ReadonlyMap<string, OutputSpec>;
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
}

export function knownPath(o: OutputSpec): StorePath | undefined {
  return o.kind === 'floating' || o.kind === 'deferred' ? undefined : o.path;
}

export async function loadDrv(store: Store, drvPath: StorePath): Promise<DrvView> {
  const text = await store.readTextFile(drvPath);
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1);
  const name = base.slice(33).replace(/\.drv$/, '');
  const drv = parseDerivation(text, name, { storeDir: store.storeDir });
  return viewOf(drvPath, drv, name);
}

export function viewOf(drvPath: StorePath, drv: Derivation, name: string): DrvView {
  const outputs = new Map<string, OutputSpec>();
  for (const [outName, o] of drv.outputs) {
    const spec = toSpec(o as unknown as Record<string, unknown>);
    if (!spec) throw new RealiseError('bad-derivation', `output '${outName}' of derivation '${drvPath}' has a kind this engine cannot build (impure)`);
    outputs.set(outName, spec);
  }
  const attrs = new ParsedDerivation(drvPath, drv);
  const structuredAttrs = attrs.structuredAttrs as Record<string, unknown> | undefined;
  const inputDrvs = new Map<StorePath, readonly string[]>();
  for (const [p, outs] of drv.inputDrvs) inputDrvs.set(p, [...outs]);
  return {
    drvPath, drv, attrs, name, outputs, inputDrvs,
    inputSrcs: [...drv.inputSrcs],
    platform: drv.platform,
    builder: drv.builder,
    args: [...drv.args],
    env: drv.env,
    structuredAttrs,
    isFixedOutput: [...outputs.values()].some((o) => o.kind === 'fixed'),
    needsResolution: inputDrvs.size > 0 && [...outputs.values()].some((o) => o.kind === 'deferred' || o.kind === 'floating'),
  };
}

function toSpec(o: Record<string, unknown>): OutputSpec | undefined {
  const kind = o.kind ?? o.type;
  if (kind === 'input-addressed' || kind === 'inputAddressed') return { kind: 'input-addressed', path: o.path as StorePath };
  if (kind === 'fixed' || kind === 'caFixed' || kind === 'ca-fixed') {
    return { kind: 'fixed', method: (o.method as FileIngestionMethod) ?? 'flat', hash: o.hash as Hash, path: o.path as StorePath };
  }
  if (kind === 'floating' || kind === 'caFloating' || kind === 'ca-floating') {
    return { kind: 'floating', method: (o.method as FileIngestionMethod) ?? 'recursive', algorithm: (o.algorithm ?? o.hashAlgorithm ?? 'sha256') as Hash['algorithm'] };
  }
  if (kind === 'deferred') return { kind: 'deferred' };
  return undefined;
}

/** Attribute lookups as Nix's ParsedDerivation: structured attrs first, else the environment. */
export function getStringAttr(v: DrvView, name: string): string | undefined {
  if (v.structuredAttrs) {
    const x = v.structuredAttrs[name];
    if (x === undefined) return undefined;
    if (typeof x !== 'string') throw new RealiseError('bad-derivation', `attribute '${name}' of derivation '${v.drvPath}' must be a string`);
    return x;
  }
  return v.env.get(name);
}

export function getBoolAttr(v: DrvView, name: string, def = false): boolean {
  if (v.structuredAttrs) {
    const x = v.structuredAttrs[name];
    if (x === undefined) return def;
    if (typeof x !== 'boolean') throw new RealiseError('bad-derivation', `attribute '${name}' of derivation '${v.drvPath}' must be a Boolean`);
    return x;
  }
  const s = v.env.get(name);
  return s === undefined ? def : s === '1';
}

export function getStringsAttr(v: DrvView, name: string): string[] | undefined {
  if (v.structuredAttrs) {
    const x = v.structuredAttrs[name];
    if (x === undefined) return undefined;
    if (!Array.isArray(x) || !x.every((e) => typeof e === 'string')) {
      throw new RealiseError('bad-derivation', `attribute '${name}' of derivation '${v.drvPath}' must be a list of strings`);
    }
    return x as string[];
  }
  const s = v.env.get(name);
  return s === undefined ? undefined : s.split(/[ \t\n\r]+/).filter(Boolean);
}

/** The derivation's `requiredSystemFeatures` as Nix holds them: a set, sorted, without duplicates. */
export function requiredSystemFeatures(v: DrvView): string[] {
  return [...new Set(getStringsAttr(v, 'requiredSystemFeatures') ?? [])].sort();
}

export function substitutesAllowed(v: DrvView): boolean {
  return getBoolAttr(v, 'allowSubstitutes', true);
}

export function preferLocalBuild(v: DrvView): boolean {
  return getBoolAttr(v, 'preferLocalBuild', false);
}

/** Whether this machine can build the derivation: its platform (or an extra platform) and its features. */
export function canBuildHere(v: DrvView, o: { system: string; extraPlatforms: readonly string[]; systemFeatures: readonly string[] }): boolean {
  if (v.platform !== 'builtin' && v.platform !== o.system && !o.extraPlatforms.includes(v.platform)) return false;
  for (const f of requiredSystemFeatures(v)) if (!o.systemFeatures.includes(f)) return false;
  return true;
}
