/**
 * Strings with context, as in Nix's evaluator: a string remembers which store paths and derivation
 * outputs it mentions, so that a derivation using it gets the right `inputSrcs` and `inputDrvs`.
 *
 * Context elements use Nix's encoding: `/nix/store/…` (a source path), `!out!/nix/store/….drv` (an
 * output of a derivation), `=/nix/store/….drv` (a derivation itself, with its whole closure).
 * Pure: no I/O.
 */
import type { StorePath } from '../store/store-path.js';
import { compareBytes } from './derivation.js';
import { InvalidDerivationAttrsError } from './errors.js';

/** An immutable string with its context. */
export class NixString {
  readonly value: string;
  readonly context: ReadonlySet<string>;

  constructor(value: string, context: Iterable<string> = []) {
    this.value = value;
    this.context = new Set(context);
  }

  /** The plain string (the context is lost; use `nix\`…\`` to keep it). */
  toString(): string {
    return this.value;
  }

  toJSON(): string {
    return this.value;
  }

  /** Context elements, sorted as Nix's PathSet. */
  get contextElements(): string[] {
    return [...this.context].sort(compareBytes);
  }
}

/** A string whose context is a source store path (what `builtins.storePath`, `builtins.toFile`, `builtins.path` return). */
export function storePathString(path: StorePath): NixString {
  return new NixString(path, [path]);
}

/** A string naming output `outputName` of `drvPath`, located at `path` (a store path or a placeholder). */
export function outputString(drvPath: StorePath, outputName: string, path: string): NixString {
  return new NixString(path, [`!${outputName}!${drvPath}`]);
}

/** `drv.drvPath` with Nix's deep context: the user gets the `.drv`, and the build sees its whole closure. */
export function drvPathString(drvPath: StorePath): NixString {
  return new NixString(drvPath, [`=${drvPath}`]);
}

/** Attach context explicitly (the "explicit form"): `withContext(s, { inputSrcs: [p], inputDrvs: { [drv]: ['out'] } })`. */
export function withContext(
  value: string | NixString,
  ctx: { inputSrcs?: Iterable<StorePath>; inputDrvs?: Record<StorePath, readonly string[]> | ReadonlyMap<StorePath, readonly string[]> },
): NixString {
  const els = new Set(typeof value === 'string' ? [] : value.context);
  for (const p of ctx.inputSrcs ?? []) els.add(p);
  const drvs = ctx.inputDrvs instanceof Map ? [...ctx.inputDrvs] : Object.entries(ctx.inputDrvs ?? {});
  for (const [d, outs] of drvs) for (const o of outs) els.add(`!${o}!${d}`);
  return new NixString(typeof value === 'string' ? value : value.value, els);
}

/** Anything that becomes a string with context when interpolated: see `coerceToString`. */
export interface Contextual {
  /** The string and context this value stands for (an output's path, a derivation's default output, ...). */
  toNixString(): NixString;
}

export function isContextual(v: unknown): v is Contextual {
  return typeof v === 'object' && v !== null && typeof (v as Contextual).toNixString === 'function';
}

/** A value accepted by `derivation` attributes. Plain objects only with structured attributes. */
export type AttrValue =
  string | number | bigint | boolean | null | undefined | NixString | Contextual | readonly AttrValue[] | { readonly [k: string]: AttrValue };

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an attribute set';
  if (typeof v === 'boolean') return 'a Boolean';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a float';
  if (typeof v === 'bigint') return 'an integer';
  return `a ${typeof v}`;
}

/** C's `%f` (std::to_string of a double). */
export function formatFloatFixed(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  if (Math.abs(x) >= 1e21) return BigInt(x).toString() + '.000000';
  const s = x.toFixed(6);
  return s === '-0.000000' ? '0.000000' : s;
}

/** C++ `ostream << double` (`%g`, 6 significant digits), as Nix writes floats in JSON. */
export function formatFloatGeneral(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const exp = x.toExponential(5); // d.ddddde±X
  const [mant, e] = exp.split('e') as [string, string];
  const X = Number(e);
  const strip = (s: string) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (X < -4 || X >= 6) {
    const ee = Math.abs(X) < 10 ? `0${Math.abs(X)}` : `${Math.abs(X)}`;
    return `${strip(mant)}e${X < 0 ? '-' : '+'}${ee}`;
  }
  return strip(x.toFixed(5 - X));
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * Reject numbers no Nix value can be: integers outside 64 bits (Nix's integers are int64), NaN and the
 * infinities (no Nix expression yields them: `1.0 / 0` is an error, `fromJSON` has no such literal).
 */
export function checkNixNumber(v: number | bigint, where: string): void {
  if (typeof v === 'number' && !Number.isFinite(v)) {
    throw new InvalidDerivationAttrsError(`${Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity'} is not a Nix value (${where})`, {
      attribute: where,
      hint: 'Nix floats are finite: pass a finite number or a string',
    });
  }
  if (typeof v === 'number' && !Number.isInteger(v)) return;
  const i = BigInt(v);
  if (i < INT64_MIN || i > INT64_MAX) {
    throw new InvalidDerivationAttrsError(`integer ${i} is outside Nix's 64-bit integers (${where})`, {
      attribute: where,
      hint: `Nix integers are between ${INT64_MIN} and ${INT64_MAX}: pass a string for bigger numbers`,
    });
  }
}

/**
 * Nix's `coerceToString`. With `coerceMore` (derivation attributes): numbers, Booleans (`"1"`/`""`),
 * null (`""`) and lists (elements joined by spaces) are accepted too. `where` names the attribute for errors.
 */
export function coerceToString(v: AttrValue, context: Set<string>, coerceMore: boolean, where: string, ancestors: Set<object> = new Set()): string {
  if (typeof v === 'string') return v;
  if (v instanceof NixString) {
    for (const c of v.context) context.add(c);
    return v.value;
  }
  if (isContextual(v)) return coerceToString(v.toNixString(), context, coerceMore, where);
  // Interpolation (`"${42}"`) takes no numbers in Nix; derivation attributes do.
  if ((typeof v === 'number' || typeof v === 'bigint') && coerceMore) {
    checkNixNumber(v, where);
    return typeof v === 'number' && !Number.isInteger(v) ? formatFloatFixed(v) : v.toString();
  }
  if (coerceMore) {
    if (v === true) return '1';
    if (v === false || v === null || v === undefined) return '';
    if (Array.isArray(v)) {
      if (ancestors.has(v)) throw new InvalidDerivationAttrsError(`the list in '${where}' contains itself`, { attribute: where });
      ancestors.add(v);
      let out = '';
      const list = v as readonly AttrValue[];
      list.forEach((item, i) => {
        out += coerceToString(item, context, coerceMore, where, ancestors);
        if (i < list.length - 1 && !(Array.isArray(item) && item.length === 0)) out += ' ';
      });
      ancestors.delete(v);
      return out;
    }
  }
  throw new InvalidDerivationAttrsError(`cannot coerce ${describe(v)} to a string (${where})`, {
    attribute: where,
    hint: coerceMore
      ? 'use a string, number, Boolean, null, list, store path or derivation output'
      : 'interpolate strings, numbers, store paths or derivation outputs',
  });
}

/**
 * The tagged template that keeps context: `nix\`${dep.out}/bin/tool --config ${configFile}\``.
 * Interpolated values: strings, `NixString`s, derivation outputs, derivations (their default output),
 * store paths from `addPath`/`addText`. Numbers are rejected, as Nix rejects `"${42}"`: use `String(n)`.
 */
export function nix(strings: TemplateStringsArray, ...values: AttrValue[]): NixString {
  const context = new Set<string>();
  let out = strings[0]!;
  values.forEach((v, i) => {
    out += coerceToString(v, context, false, `interpolation ${i + 1} of a nix\`\` template`);
    out += strings[i + 1]!;
  });
  return new NixString(out, context);
}

/** Concatenate values as Nix's `+` / string interpolation would. */
export function concat(...values: AttrValue[]): NixString {
  const context = new Set<string>();
  let out = '';
  for (const v of values) out += coerceToString(v, context, false, 'concat');
  return new NixString(out, context);
}

function jsonString(s: string): string {
  let out = '"';
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let rep: string | undefined;
    if (c === 0x22) rep = '\\"';
    else if (c === 0x5c) rep = '\\\\';
    else if (c === 0x0a) rep = '\\n';
    else if (c === 0x0d) rep = '\\r';
    else if (c === 0x09) rep = '\\t';
    else if (c < 0x20) rep = '\\u' + c.toString(16).padStart(4, '0');
    if (rep !== undefined) {
      out += s.slice(from, i) + rep;
      from = i + 1;
    }
  }
  return out + s.slice(from) + '"';
}

/**
 * Nix's `printValueAsJSON` (strict), as used for `__structuredAttrs`: compact JSON, object keys in
 * byte order, Nix's string escaping (`\u00XX` for other control characters, UTF-8 as is), floats as
 * C++ streams print them. Derivations and outputs become their paths (with context).
 */
export function toNixJson(v: AttrValue, context: Set<string>, where: string, ancestors: Set<object> = new Set()): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string') return jsonString(v);
  if (v instanceof NixString) {
    for (const c of v.context) context.add(c);
    return jsonString(v.value);
  }
  if (isContextual(v)) return toNixJson(v.toNixString(), context, where);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number' || typeof v === 'bigint') {
    checkNixNumber(v, where);
    return typeof v === 'number' && !Number.isInteger(v) ? formatFloatGeneral(v) : v.toString();
  }
  if (typeof v === 'object') {
    if (ancestors.has(v)) throw new InvalidDerivationAttrsError(`the value of '${where}' contains itself`, { attribute: where });
    ancestors.add(v);
    let out: string;
    if (Array.isArray(v)) {
      out = '[' + (v as readonly AttrValue[]).map((x, i) => toNixJson(x, context, `${where}[${i}]`, ancestors)).join(',') + ']';
    } else {
      const obj = v as { readonly [k: string]: AttrValue };
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort(compareBytes);
      out = '{' + keys.map((k) => jsonString(k) + ':' + toNixJson(obj[k], context, `${where}.${k}`, ancestors)).join(',') + '}';
    }
    ancestors.delete(v);
    return out;
  }
  throw new InvalidDerivationAttrsError(`cannot convert ${describe(v)} to JSON (${where})`, { attribute: where });
}
