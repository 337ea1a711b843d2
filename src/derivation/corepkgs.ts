/**
 * The derivations Nix's own expressions make for its built-in builders, from TypeScript:
 * `fetchurl()` writes the `.drv` that `import <nix/fetchurl.nix> { … }` writes, and `buildEnv()` writes
 * what `nix-env` writes for a user environment (the `env-manifest.nix` text file, then the
 * `builtin:buildenv` derivation over it). Both give the same store paths as Nix 2.8.
 */
import { InvalidDerivationAttrsError } from './errors.js';
import { checkNixNumber, coerceToString, formatFloatGeneral, type AttrValue } from './context.js';
import { addText, derivation, DerivationValue } from './instantiate.js';
import type { Store } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import { compareBytes } from './derivation.js';

export interface FetchurlArgs {
  readonly url: string;
  /** An SRI hash (`sha256-…`); wins over the others. */
  readonly hash?: string;
  readonly sha256?: string;
  readonly sha512?: string;
  readonly sha1?: string;
  readonly md5?: string;
  /** The download is one executable file (hashed as a NAR). @default false */
  readonly executable?: boolean;
  /** The download is a NAR (`.xz`-compressed when the URL ends in `.xz`) to restore. @default false */
  readonly unpack?: boolean;
  /** @default the URL's last path component (Nix's `baseNameOf url`) */
  readonly name?: string;
}

/** Nix's baseNameOf: the last component, a trailing slash ignored. */
function baseNameOf(p: string): string {
  if (p === '') return '';
  let last = p.length - 1;
  if (p[last] === '/' && last > 0) last--;
  const pos = p.lastIndexOf('/', last);
  return p.slice(pos + 1, last + 1);
}

/**
 * `import <nix/fetchurl.nix> { url, sha256 | hash | …, executable, unpack, name }`: a fixed-output
 * derivation built by `builtin:fetchurl` (system `builtin`, preferLocalBuild, the proxy variables as
 * impureEnvVars). The hash attributes are taken as Nix's expression takes them: `hash` first, then
 * sha512, sha1, md5, sha256.
 */
export async function fetchurl(store: Store, args: FetchurlArgs): Promise<DerivationValue> {
  if (typeof args !== 'object' || args === null || typeof args.url !== 'string') {
    throw new InvalidDerivationAttrsError("fetchurl: the argument 'url' is required and must be a string", { attribute: 'url' });
  }
  const hash = args.hash ?? '';
  const sha512 = args.sha512 ?? '';
  const sha1 = args.sha1 ?? '';
  const md5 = args.md5 ?? '';
  const sha256 = args.sha256 ?? '';
  const outputHash = hash !== '' ? hash : sha512 !== '' ? sha512 : sha1 !== '' ? sha1 : md5 !== '' ? md5 : sha256;
  const outputHashAlgo = hash !== '' ? '' : sha512 !== '' ? 'sha512' : sha1 !== '' ? 'sha1' : md5 !== '' ? 'md5' : 'sha256';
  const executable = args.executable ?? false;
  const unpack = args.unpack ?? false;
  return derivation(store, {
    builder: 'builtin:fetchurl',
    outputHashAlgo,
    outputHash,
    outputHashMode: unpack || executable ? 'recursive' : 'flat',
    name: args.name ?? baseNameOf(args.url),
    url: args.url,
    executable,
    unpack,
    system: 'builtin',
    preferLocalBuild: true,
    impureEnvVars: ['http_proxy', 'https_proxy', 'ftp_proxy', 'all_proxy', 'no_proxy'],
    urls: [args.url],
  });
}

/** A value in a package's `meta` (what nix-env keeps: strings, numbers, Booleans, lists and sets of them). */
export type MetaValue = string | number | bigint | boolean | null | readonly MetaValue[] | { readonly [k: string]: MetaValue };

/** One package of a user environment, as nix-env records it in the manifest. */
export interface UserEnvPackage {
  readonly name: string;
  /** The outputs to install, name → store path (nix-env installs `meta.outputsToInstall`, else all). */
  readonly outputs: Readonly<Record<string, string>>;
  /** @default the `out` output, else the first one in name order */
  readonly outPath?: string;
  readonly system?: string;
  /** Recorded with nix-env's `keep-env-derivations`; the manifest then refers to the `.drv`. */
  readonly drvPath?: StorePath;
  /** `priority` (lower wins, default 5) and `active` (`"false"` leaves the package out) steer the tree. */
  readonly meta?: { readonly [k: string]: MetaValue };
}

export interface BuildEnvOptions {
  /** Record each package's `.drv` in the manifest (nix-env's `keep-env-derivations`). @default false */
  readonly keepDerivations?: boolean;
}

/** A built user environment's derivation, with the manifest it links as `manifest.nix`. */
export interface UserEnvironment {
  readonly derivation: DerivationValue;
  readonly manifest: StorePath;
}

/** Nix 2.8's Value::print, for the data a manifest holds (attribute names in byte order). */
function printValue(v: MetaValue, where: string): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number' || typeof v === 'bigint') {
    checkNixNumber(v, where);
    return typeof v === 'number' && !Number.isInteger(v) ? formatFloatGeneral(v) : v.toString();
  }
  if (typeof v === 'string') {
    let out = '"';
    for (let i = 0; i < v.length; i++) {
      const c = v[i]!;
      if (c === '"' || c === '\\') out += '\\' + c;
      else if (c === '\n') out += '\\n';
      else if (c === '\r') out += '\\r';
      else if (c === '\t') out += '\\t';
      else if (c === '$' && v[i + 1] === '{') out += '\\$';
      else out += c;
    }
    return out + '"';
  }
  if (Array.isArray(v)) return '[ ' + (v as readonly MetaValue[]).map((x, i) => printValue(x, `${where}[${i}]`) + ' ').join('') + ']';
  if (typeof v === 'object') {
    const o = v as { readonly [k: string]: MetaValue };
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort(compareBytes);
    return '{ ' + keys.map((k) => `${k} = ${printValue(o[k]!, `${where}.${k}`)}; `).join('') + '}';
  }
  throw new InvalidDerivationAttrsError(`buildEnv: ${where} is not a value a manifest can hold`, { attribute: where });
}

function packageOf(p: UserEnvPackage | DerivationValue): UserEnvPackage {
  if (p instanceof DerivationValue) {
    const outputs: Record<string, string> = {};
    for (const n of p.outputNames) outputs[n] = p.outputs[n]!.path;
    return { name: p.name, outputs, system: p.drv.platform, drvPath: p.drvPath, outPath: p.outPath };
  }
  return p;
}

/**
 * A user environment as `nix-env` makes it: the manifest (`env-manifest.nix`, referring to every
 * installed output) and the `builtin:buildenv` derivation that links the packages into one tree.
 * Packages are given as nix-env's elements, or as derivations (all their outputs, no meta).
 */
export async function buildEnv(store: Store, packages: readonly (UserEnvPackage | DerivationValue)[], opts: BuildEnvOptions = {}): Promise<UserEnvironment> {
  const references = new Set<StorePath>();
  const elements: Record<string, MetaValue>[] = [];
  const groups: AttrValue[] = [];
  packages.forEach((raw, i) => {
    const p = packageOf(raw);
    const names = Object.keys(p.outputs).sort(compareBytes); // nix-env keeps outputs in a sorted map
    if (names.length === 0) throw new InvalidDerivationAttrsError(`buildEnv: package '${p.name}' has no outputs`, { attribute: `packages[${i}].outputs` });
    const outPath = p.outPath ?? p.outputs.out ?? p.outputs[names[0]!]!;
    const el: Record<string, MetaValue> = { type: 'derivation', name: p.name, outPath, outputs: names, meta: p.meta ?? {} };
    if (p.system) el.system = p.system;
    if (opts.keepDerivations && p.drvPath) {
      el.drvPath = p.drvPath;
      references.add(p.drvPath);
    }
    for (const n of names) {
      el[n] = { outPath: p.outputs[n]! };
      references.add(p.outputs[n]!);
    }
    elements.push(el);
    // buildenv.nix: [ (meta.active or "true") (meta.priority or 5) (length outputs) ] ++ the output paths.
    const meta = p.meta ?? {};
    groups.push([(meta.active ?? 'true') as AttrValue, (meta.priority ?? 5) as AttrValue, names.length, ...names.map((n) => p.outputs[n]!)]);
  });
  const manifestText = printValue(elements, 'manifest');
  const manifest = await addText(store, 'env-manifest.nix', manifestText, references);
  // Check now what the builder will get (Nix coerces the list when it evaluates the derivation).
  coerceToString(groups, new Set(), true, 'derivations');
  const drv = await derivation(store, {
    name: 'user-environment',
    system: 'builtin',
    builder: 'builtin:buildenv',
    manifest,
    derivations: groups,
    preferLocalBuild: true,
    allowSubstitutes: false,
  });
  return { derivation: drv, manifest: manifest.value };
}
