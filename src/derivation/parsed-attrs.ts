/**
 * The attributes of a derivation that steer its build (Nix's ParsedDerivation), read from either the
 * legacy environment (strings, space-separated lists, "1" for true) or structured attributes (`__json`).
 * Pure: no I/O.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import type { StorePath } from '../store/store-path.js';
import { DEFAULT_STORE_DIR, isStorePath, toStorePath } from '../store/store-path.js';
import { derivationKind, type Derivation } from './derivation.js';
import { BadDerivationError } from './errors.js';

/** JSON value of structured attributes. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };

/** The checks an output must pass after the build (Nix's `Checks` in checkOutputs). */
export interface OutputChecks {
  /** Ignore the output's own path in requisite checks (legacy attributes: true; structured: false, as in Nix). */
  readonly ignoreSelfRefs: boolean;
  readonly maxSize?: number | undefined;
  readonly maxClosureSize?: number | undefined;
  /** Store paths or output names. */
  readonly allowedReferences?: readonly string[] | undefined;
  readonly allowedRequisites?: readonly string[] | undefined;
  readonly disallowedReferences?: readonly string[] | undefined;
  readonly disallowedRequisites?: readonly string[] | undefined;
}

/** What the local machine offers, for `canBuildLocally` (Nix's `system`, `extra-platforms`, `system-features`). */
export interface LocalPlatform {
  /** e.g. `x86_64-linux` (Nix's `system` setting). */
  readonly system: string;
  /** Nix's `extra-platforms`, e.g. `i686-linux`. */
  readonly extraPlatforms?: Iterable<string>;
  /** Nix's `system-features`. */
  readonly systemFeatures: Iterable<string>;
  /** Nix's `max-jobs`: with 0 nothing but `builtin:` builders can build locally. */
  readonly maxBuildJobs?: number;
}

/** The features Nix 2.8 offers on every machine; `defaultSystemFeatures()` adds `kvm` where it is usable. */
export const DEFAULT_SYSTEM_FEATURES: readonly string[] = ['nixos-test', 'benchmark', 'big-parallel'];

/**
 * Nix 2.8's default `system-features` for this machine and user: DEFAULT_SYSTEM_FEATURES, plus `kvm` on
 * Linux when `/dev/kvm` is readable and writable by this process (so root may get it and an ordinary
 * user not, as with Nix). Sorted, as Nix's set.
 */
export function defaultSystemFeatures(): string[] {
  const features = [...DEFAULT_SYSTEM_FEATURES];
  if (process.platform === 'linux') {
    try {
      accessSync('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK);
      features.push('kvm');
    } catch {
      /* not usable */
    }
  }
  return features.sort();
}

/** Nix's whitespace tokenizer (space, tab, newline, CR). */
export function tokenize(s: string): string[] {
  return s.split(/[ \t\n\r]+/).filter((t) => t.length > 0);
}

const EXPORT_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

/**
 * A malformed `exportReferencesGraph` that Nix reports as the build's failure (its BuildError: the
 * build's inputs are rejected), not as an error that ends the whole call.
 */
export class ExportReferencesError extends BadDerivationError {}

/** nlohmann::json's name for the type of `v`, as in its type errors. */
function jsonTypeName(v: JsonValue): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'object') return 'object';
  return typeof v === 'boolean' ? 'boolean' : typeof v;
}

export class ParsedDerivation {
  readonly drvPath: StorePath;
  readonly drv: Derivation;
  /** The parsed `__json` object, or undefined for a legacy derivation. */
  readonly structuredAttrs: Readonly<Record<string, JsonValue>> | undefined;

  constructor(drvPath: StorePath, drv: Derivation) {
    this.drvPath = drvPath;
    this.drv = drv;
    const json = drv.env.get('__json');
    if (json !== undefined) {
      let v: unknown;
      try {
        v = JSON.parse(json);
      } catch (e) {
        throw new BadDerivationError(`cannot process __json attribute of '${drvPath}': ${(e as Error).message}`, { drv: drvPath, cause: e });
      }
      if (typeof v !== 'object' || v === null || Array.isArray(v)) {
        throw new BadDerivationError(`the __json attribute of '${drvPath}' is not a JSON object`, { drv: drvPath });
      }
      this.structuredAttrs = v as Record<string, JsonValue>;
    }
  }

  get hasStructuredAttrs(): boolean {
    return this.structuredAttrs !== undefined;
  }

  private typeError(name: string, what: string): never {
    throw new BadDerivationError(`attribute '${name}' of derivation '${this.drvPath}' must be ${what}`, { drv: this.drvPath });
  }

  private structured(name: string): JsonValue | undefined {
    const s = this.structuredAttrs!;
    return Object.prototype.hasOwnProperty.call(s, name) ? s[name] : undefined;
  }

  /** A string attribute (structured: must be a JSON string). */
  getStringAttr(name: string): string | undefined {
    if (this.structuredAttrs) {
      const v = this.structured(name);
      if (v === undefined) return undefined;
      if (typeof v !== 'string') this.typeError(name, 'a string');
      return v;
    }
    return this.drv.env.get(name);
  }

  /** A Boolean attribute (legacy: true iff the value is `"1"`). */
  getBoolAttr(name: string, def = false): boolean {
    if (this.structuredAttrs) {
      const v = this.structured(name);
      if (v === undefined) return def;
      if (typeof v !== 'boolean') this.typeError(name, 'a Boolean');
      return v;
    }
    const v = this.drv.env.get(name);
    return v === undefined ? def : v === '1';
  }

  /** A list-of-strings attribute (legacy: whitespace-separated). */
  getStringsAttr(name: string): string[] | undefined {
    if (this.structuredAttrs) {
      const v = this.structured(name);
      if (v === undefined) return undefined;
      return this.stringList(name, v);
    }
    const v = this.drv.env.get(name);
    return v === undefined ? undefined : tokenize(v);
  }

  private stringList(name: string, v: JsonValue): string[] {
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) this.typeError(name, 'a list of strings');
    return v as string[];
  }

  /** `requiredSystemFeatures`, plus `ca-derivations` when output paths are not known in advance. */
  getRequiredSystemFeatures(): Set<string> {
    const res = new Set(this.getStringsAttr('requiredSystemFeatures') ?? []);
    const kind = derivationKind(this.drv);
    if (kind === 'floating' || kind === 'deferred' || kind === 'impure') res.add('ca-derivations');
    return res;
  }

  /** Whether the builder is one of Nix's built-in builders (`builtin:fetchurl`, ...). */
  get isBuiltin(): boolean {
    return this.drv.builder.startsWith('builtin:');
  }

  /** Nix's `canBuildLocally`: right platform (or builtin builder), build slots, and every required feature. */
  canBuildLocally(local: LocalPlatform): boolean {
    const extra = new Set(local.extraPlatforms ?? []);
    if (this.drv.platform !== local.system && !extra.has(this.drv.platform) && !this.isBuiltin) return false;
    if (local.maxBuildJobs === 0 && !this.isBuiltin) return false;
    const features = new Set(local.systemFeatures);
    for (const f of this.getRequiredSystemFeatures()) if (!features.has(f)) return false;
    return true;
  }

  /** `preferLocalBuild` and buildable here. */
  willBuildLocally(local: LocalPlatform): boolean {
    return this.preferLocalBuild && this.canBuildLocally(local);
  }

  get preferLocalBuild(): boolean {
    return this.getBoolAttr('preferLocalBuild');
  }

  /** `allowSubstitutes` (default true). */
  substitutesAllowed(): boolean {
    return this.getBoolAttr('allowSubstitutes', true);
  }

  /** `__noChroot`: the derivation asks to build outside the sandbox (refused when sandbox = true). */
  get noChroot(): boolean {
    return this.getBoolAttr('__noChroot');
  }

  /** `__impureHostDeps` (macOS sandbox; listed for completeness). */
  get impureHostDeps(): string[] {
    return this.getStringsAttr('__impureHostDeps') ?? [];
  }

  /** `impureEnvVars`: variables copied from the caller's environment (fixed-output derivations only). */
  get impureEnvVars(): string[] {
    return this.getStringsAttr('impureEnvVars') ?? [];
  }

  /** `passAsFile` (legacy only: ignored with structured attributes, as in Nix). */
  get passAsFile(): Set<string> {
    if (this.structuredAttrs) return new Set();
    return new Set(tokenize(this.drv.env.get('passAsFile') ?? ''));
  }

  /**
   * `exportReferencesGraph`: file name → store paths whose closure to export. Legacy: pairs
   * `name1 path1 name2 path2 ...` (paths inside store paths are reduced to the store path);
   * structured: an object of name → path or list of paths (each exactly a store path, as Nix's
   * parseStorePath). Throws BadDerivationError in Nix's words (which name the attribute, not the
   * derivation): an ExportReferencesError where Nix fails the build (its BuildError: an odd number of
   * tokens, a legacy path outside the store), a plain BadDerivationError where Nix's error ends the whole
   * call (an invalid file name, a structured value that is not a string or not a store path).
   */
  exportReferencesGraph(storeDir: string = DEFAULT_STORE_DIR): Array<{ name: string; paths: StorePath[] }> {
    const out: Array<{ name: string; paths: StorePath[] }> = [];
    if (this.structuredAttrs) {
      const e = this.structured('exportReferencesGraph');
      if (e === undefined || typeof e !== 'object' || e === null || Array.isArray(e)) return out;
      for (const [name, v] of Object.entries(e)) {
        const list = Array.isArray(v) ? v : [v];
        out.push({ name, paths: list.map((p) => this.structuredExportPath(p, storeDir)) });
      }
      return out;
    }
    const s = this.drv.env.get('exportReferencesGraph') ?? '';
    const ts = tokenize(s);
    if (ts.length % 2 !== 0) {
      throw new ExportReferencesError(`odd number of tokens in 'exportReferencesGraph': '${s}'`, { drv: this.drvPath });
    }
    for (let i = 0; i < ts.length; i += 2) {
      const name = ts[i]!;
      if (!EXPORT_NAME.test(name)) {
        throw new BadDerivationError(`invalid file name '${name}' in 'exportReferencesGraph'`, {
          drv: this.drvPath,
          hint: 'names must match [A-Za-z_][A-Za-z0-9_.-]*',
        });
      }
      const p = ts[i + 1]!;
      try {
        out.push({ name, paths: [toStorePath(p, storeDir)] });
      } catch (e) {
        throw new ExportReferencesError(`'exportReferencesGraph' contains a non-store path '${p}'`, { drv: this.drvPath, cause: e });
      }
    }
    return out;
  }

  /** One path of a structured `exportReferencesGraph`: a string that is a store path, else Nix's error. */
  private structuredExportPath(p: JsonValue, storeDir: string): StorePath {
    if (typeof p !== 'string') {
      throw new BadDerivationError(`[json.exception.type_error.302] type must be string, but is ${jsonTypeName(p)}`, { drv: this.drvPath });
    }
    if (p.slice(0, p.lastIndexOf('/')) !== storeDir) throw new BadDerivationError(`path '${p}' is not in the Nix store`, { drv: this.drvPath });
    try {
      return toStorePath(p, storeDir);
    } catch (e) {
      throw new BadDerivationError(`path '${p}' is not a valid store path`, { drv: this.drvPath, cause: e });
    }
  }

  /**
   * The checks for output `outputName`: structured `outputChecks.<out>`, or the legacy `allowedReferences`,
   * `allowedRequisites`, `disallowedReferences`, `disallowedRequisites` (applied to every output).
   * Undefined when none is set (no `outputChecks.<out>`, or one that sets none; no legacy attribute).
   */
  outputChecks(outputName: string): OutputChecks | undefined {
    if (this.structuredAttrs) {
      const all = this.structured('outputChecks');
      if (all === undefined || typeof all !== 'object' || all === null || Array.isArray(all)) return undefined;
      if (!Object.prototype.hasOwnProperty.call(all, outputName)) return undefined;
      const o = all[outputName];
      if (typeof o !== 'object' || o === null || Array.isArray(o)) this.typeError(`outputChecks.${outputName}`, 'an attribute set');
      const num = (k: string): number | undefined => {
        if (!Object.prototype.hasOwnProperty.call(o, k)) return undefined;
        const v = o[k];
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.typeError(`outputChecks.${outputName}.${k}`, 'a non-negative integer');
        return v;
      };
      // Named as Nix names them: `attribute 'allowedReferences' of derivation … must be a list of strings`.
      const list = (k: string): string[] | undefined => (Object.prototype.hasOwnProperty.call(o, k) ? this.stringList(k, o[k]!) : undefined);
      return setsAny({
        ignoreSelfRefs: false,
        maxSize: num('maxSize'),
        maxClosureSize: num('maxClosureSize'),
        allowedReferences: list('allowedReferences'),
        allowedRequisites: list('allowedRequisites'),
        disallowedReferences: list('disallowedReferences'),
        disallowedRequisites: list('disallowedRequisites'),
      });
    }
    return setsAny({
      ignoreSelfRefs: true,
      allowedReferences: this.getStringsAttr('allowedReferences'),
      allowedRequisites: this.getStringsAttr('allowedRequisites'),
      disallowedReferences: this.getStringsAttr('disallowedReferences'),
      disallowedRequisites: this.getStringsAttr('disallowedRequisites'),
    });
  }
}

/** `c`, or undefined when it sets no check (most derivations: nothing to check after a build). */
function setsAny(c: OutputChecks): OutputChecks | undefined {
  const set =
    c.maxSize !== undefined ||
    c.maxClosureSize !== undefined ||
    c.allowedReferences !== undefined ||
    c.allowedRequisites !== undefined ||
    c.disallowedReferences !== undefined ||
    c.disallowedRequisites !== undefined;
  return set ? c : undefined;
}
