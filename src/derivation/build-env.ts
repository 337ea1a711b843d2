/**
 * The builder's environment and the files of its build directory, exactly as Nix 2.8 prepares them
 * (initEnv, initTmpDir, passAsFile, writeStructuredAttrs). Pure: returns values, writes nothing.
 */
import { Hash } from '../store/hash.js';
import { hashPlaceholder } from '../store/store-path.js';

/** Apply Nix's `rewriteStrings`: each key replaced by its value, in map order. */
export function rewriteStrings(s: string, rewrites: ReadonlyMap<string, string> | Rewrites): string {
  const list = rewrites instanceof Rewrites ? rewrites.list : new Rewrites(rewrites).list;
  for (let i = 0; i < list.length; i += 2) {
    const from = list[i]!;
    if (s.includes(from)) s = s.split(from).join(list[i + 1]!);
  }
  return s;
}

/** Rewrites prepared for many strings: the ones that change anything, as one flat list (from, to, from, to…). */
export class Rewrites {
  readonly list: string[] = [];
  constructor(rewrites: ReadonlyMap<string, string>) {
    for (const [from, to] of rewrites) if (from !== to && from.length > 0) this.list.push(from, to);
  }
}

export interface BuildEnvInput {
  /** The derivation's environment (`env` of the .drv). */
  readonly drvEnv: ReadonlyMap<string, string>;
  /** Output names of the derivation. */
  readonly outputNames: readonly string[];
  /** Structured attrs (`__json` parsed), if the derivation uses them. */
  readonly structuredAttrs?: Record<string, unknown> | undefined;
  /** Logical store dir. */
  readonly storeDir: string;
  /** Build directory as the builder sees it. */
  readonly buildDirInSandbox: string;
  /** NIX_BUILD_CORES. */
  readonly cores: number;
  /** Fixed-output (impure) derivation: sets NIX_OUTPUT_CHECKED and passes `impureEnvVars`. */
  readonly fixedOutput: boolean;
  /** Names listed in `impureEnvVars`, and where to read them. */
  readonly impureEnvVars?: readonly string[];
  readonly hostEnv?: Readonly<Record<string, string | undefined>>;
  /** Placeholder and hash rewrites (Nix's inputRewrites), applied to env values, args, and files. */
  readonly rewrites: ReadonlyMap<string, string>;
  /** exportReferencesGraph, precomputed by the caller: file name → contents (legacy) or JSON value (structured). */
  readonly exportReferencesGraph?: ReadonlyMap<string, string | unknown>;
}

export interface BuildEnv {
  /** Final environment, rewrites applied. */
  readonly env: Record<string, string>;
  /** Files to create in the build directory: name → contents. */
  readonly files: ReadonlyMap<string, string>;
}

const SH_VAR = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Nix's shellEscape: single-quote, with `'` as `'\''`. */
export function shellEscape(s: string): string {
  return "'" + s.split("'").join("'\\''") + "'";
}

function shSimple(v: unknown): string | undefined {
  if (typeof v === 'string') return shellEscape(v);
  const n = asJsonNumber(v);
  if (n) {
    // Nix: an integral value.get<float>() prints std::to_string(value.get<int>()): a 64-bit integer cut to
    // 32 bits, a double truncated (out of int's range, x86's conversion gives INT_MIN).
    if (n.int !== undefined) return String(BigInt.asIntN(32, n.int));
    const f = Math.fround(n.float);
    if (Math.ceil(f) !== f) return undefined;
    return String(n.float > -2147483649 && n.float < 2147483648 ? Math.trunc(n.float) + 0 : -2147483648);
  }
  if (v === null) return "''";
  if (typeof v === 'boolean') return v ? '1' : '';
  return undefined;
}

/**
 * A JSON number as nlohmann::json holds it after parsing Nix's `__json`: an exact 64-bit integer (a literal
 * without fraction or exponent that fits), or else a double.
 */
export class JsonNumber {
  constructor(
    readonly int: bigint | undefined,
    readonly float: number,
  ) {}
}

function asJsonNumber(v: unknown): JsonNumber | undefined {
  if (v instanceof JsonNumber) return v;
  if (typeof v === 'number') return Number.isInteger(v) ? new JsonNumber(BigInt(v), v) : new JsonNumber(undefined, v);
  return undefined;
}

const INT64_MIN = -(1n << 63n);
const UINT64_MAX = (1n << 64n) - 1n;

const JSON_STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const JSON_NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const JSON_WORDS = [
  ['true', true],
  ['false', false],
  ['null', null],
] as const;

/** A recursive-descent reader of one JSON text, numbers as JsonNumber. */
class ExactJsonReader {
  private i = 0;
  constructor(private readonly text: string) {}

  document(): unknown {
    const v = this.value();
    this.ws();
    if (this.i !== this.text.length) this.fail();
    return v;
  }

  private ws(): void {
    while (this.i < this.text.length && ' \t\n\r'.includes(this.text[this.i]!)) this.i++;
  }

  private fail(): never {
    throw new SyntaxError(`malformed JSON at offset ${this.i}`);
  }

  /** The match of `re` at the cursor, which moves past it (or a SyntaxError). */
  private token(re: RegExp): RegExpExecArray {
    re.lastIndex = this.i;
    const m = re.exec(this.text) ?? this.fail();
    this.i += m[0].length;
    return m;
  }

  /** After an item of a list: `close` ends it (true), `,` goes on (false). */
  private endOfItem(close: string): boolean {
    this.ws();
    const d = this.text[this.i++];
    if (d === close) return true;
    if (d !== ',') this.fail();
    return false;
  }

  /** An empty `{}` or `[]` after its opening: the cursor moves past `close`. */
  private emptyUntil(close: string): boolean {
    this.i++;
    this.ws();
    if (this.text[this.i] !== close) return false;
    this.i++;
    return true;
  }

  private value(): unknown {
    this.ws();
    const c = this.text[this.i];
    if (c === '{') return this.object();
    if (c === '[') return this.array();
    if (c === '"') return JSON.parse(this.token(JSON_STRING)[0]) as string;
    for (const [word, v] of JSON_WORDS) {
      if (this.text.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    return this.number();
  }

  private object(): Record<string, unknown> {
    const o: Record<string, unknown> = {};
    if (this.emptyUntil('}')) return o;
    do {
      this.ws();
      const key = JSON.parse(this.token(JSON_STRING)[0]) as string;
      this.ws();
      if (this.text[this.i++] !== ':') this.fail();
      o[key] = this.value();
    } while (!this.endOfItem('}'));
    return o;
  }

  private array(): unknown[] {
    const a: unknown[] = [];
    if (this.emptyUntil(']')) return a;
    do a.push(this.value());
    while (!this.endOfItem(']'));
    return a;
  }

  private number(): JsonNumber {
    const m = this.token(JSON_NUMBER);
    if (m[1] === undefined && m[2] === undefined) {
      const n = BigInt(m[0]);
      if (n >= INT64_MIN && n <= UINT64_MAX) return new JsonNumber(n, Number(n));
    }
    return new JsonNumber(undefined, Number(m[0]));
  }
}

/**
 * Parse JSON text keeping numbers as nlohmann::json does (JsonNumber), so that they are written back as Nix
 * writes them; objects and arrays become plain ones. Throws on malformed text.
 */
export function parseJsonExact(text: string): unknown {
  return new ExactJsonReader(text).document();
}

/** A double as nlohmann::json::dump() writes it (shortest round-trip digits; exponent form outside 1e-4..1e15). */
export function nlohmannFloat(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, exp] = Math.abs(x).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const k = digits.length;
  const n = Number(exp) + 1;
  let s: string;
  if (k <= n && n <= 15) s = digits + '0'.repeat(n - k) + '.0';
  else if (n > 0 && n <= 15) s = `${digits.slice(0, n)}.${digits.slice(n)}`;
  else if (n > -4 && n <= 0) s = `0.${'0'.repeat(-n)}${digits}`;
  else {
    const e = n - 1;
    s = `${k === 1 ? digits : `${digits[0]}.${digits.slice(1)}`}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  return (x < 0 ? '-' : '') + s;
}

/** `.attrs.sh` contents for structured attrs (strings, integers, null, booleans, flat arrays/objects of those). */
export function structuredAttrsToShell(json: Record<string, unknown>): string {
  let out = '';
  for (const key of Object.keys(json).sort()) {
    if (!SH_VAR.test(key)) continue;
    const value = json[key];
    const simple = shSimple(value);
    if (simple !== undefined) {
      out += `declare ${key}=${simple}\n`;
    } else if (Array.isArray(value)) {
      let s = '';
      let good = true;
      for (const x of value) {
        const e = shSimple(x);
        if (e === undefined) {
          good = false;
          break;
        }
        s += e + ' ';
      }
      if (good) out += `declare -a ${key}=(${s})\n`;
    } else if (value !== null && typeof value === 'object') {
      let s = '';
      let good = true;
      for (const k of Object.keys(value).sort()) {
        const e = shSimple((value as Record<string, unknown>)[k]);
        if (e === undefined) {
          good = false;
          break;
        }
        s += `[${shellEscape(k)}]=${e} `;
      }
      if (good) out += `declare -A ${key}=(${s})\n`;
    }
  }
  return out;
}

/** JSON text as nlohmann::json::dump() prints it: keys sorted, no spaces, numbers as nlohmann holds them. */
export function nixJsonDump(v: unknown): string {
  const n = asJsonNumber(v);
  if (n) return n.int !== undefined ? String(n.int) : nlohmannFloat(n.float);
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return '[' + v.map(nixJsonDump).join(',') + ']';
  const o = v as Record<string, unknown>;
  return (
    '{' +
    Object.keys(o)
      .sort()
      .map((k) => JSON.stringify(k) + ':' + nixJsonDump(o[k]))
      .join(',') +
    '}'
  );
}

export function passAsFileName(attr: string): string {
  return '.attr-' + Hash.of('sha256', attr).toString('base32', false);
}

/** Build the environment and build-directory files of a builder. */
export function makeBuildEnv(input: BuildEnvInput): BuildEnv {
  // One pass: each value is rewritten as it is set (a later set of the same name keeps its place, as in a Map).
  const env: Record<string, string> = {};
  const files = new Map<string, string>();
  const rewrites = new Rewrites(input.rewrites);
  // setVar is a function of the module, not a closure here: the CLI's bundle keeps function names, which costs
  // a defineProperty per closure made, per build.
  const top = input.buildDirInSandbox;

  // initEnv
  setVar(env, rewrites, 'PATH', '/path-not-set');
  setVar(env, rewrites, 'HOME', '/homeless-shelter');
  setVar(env, rewrites, 'NIX_STORE', input.storeDir);
  setVar(env, rewrites, 'NIX_BUILD_CORES', String(input.cores));

  // initTmpDir
  if (!input.structuredAttrs) {
    const listed = input.drvEnv.get('passAsFile');
    const passAsFile = listed === undefined ? undefined : new Set(listed.split(/[ \t\n\r]+/).filter(Boolean));
    for (const [k, v] of input.drvEnv) {
      if (!passAsFile?.has(k)) {
        setVar(env, rewrites, k, v);
      } else {
        const fn = passAsFileName(k);
        files.set(fn, rewriteStrings(v, rewrites));
        setVar(env, rewrites, k + 'Path', `${top}/${fn}`);
      }
    }
  }
  setVar(env, rewrites, 'NIX_BUILD_TOP', top);
  setVar(env, rewrites, 'TMPDIR', top);
  setVar(env, rewrites, 'TEMPDIR', top);
  setVar(env, rewrites, 'TMP', top);
  setVar(env, rewrites, 'TEMP', top);
  setVar(env, rewrites, 'PWD', top);

  if (input.fixedOutput) {
    setVar(env, rewrites, 'NIX_OUTPUT_CHECKED', '1');
    for (const name of input.impureEnvVars ?? []) setVar(env, rewrites, name, input.hostEnv?.[name] ?? '');
  }
  setVar(env, rewrites, 'NIX_LOG_FD', '2');
  setVar(env, rewrites, 'TERM', 'xterm-256color');

  // exportReferencesGraph (legacy form: files in the build dir)
  if (!input.structuredAttrs && input.exportReferencesGraph) {
    for (const [name, contents] of input.exportReferencesGraph) files.set(name, String(contents));
  }

  // writeStructuredAttrs
  if (input.structuredAttrs) writeStructuredAttrs(input, rewrites, files);
  return { env, files };
}

/** Set a variable of the builder's environment, its value rewritten. */
function setVar(env: Record<string, string>, rewrites: Rewrites, k: string, v: string): void {
  env[k] = rewriteStrings(v, rewrites);
}

/** Nix's writeStructuredAttrs: `.attrs.json` and `.attrs.sh`, rewrites applied. */
function writeStructuredAttrs(input: BuildEnvInput, rewrites: Rewrites, files: Map<string, string>): void {
  // Nix re-reads `__json` with nlohmann::json, whose numbers are 64-bit integers or doubles.
  let exact: unknown;
  try {
    exact = parseJsonExact(input.drvEnv.get('__json') ?? '');
  } catch {
    exact = undefined;
  }
  const json: Record<string, unknown> =
    exact !== null && typeof exact === 'object' && !Array.isArray(exact) ? (exact as Record<string, unknown>) : { ...input.structuredAttrs };
  const outputs: Record<string, string> = {};
  for (const o of input.outputNames) outputs[o] = rewriteStrings(hashPlaceholder(o), rewrites);
  json.outputs = outputs;
  const erg = json.exportReferencesGraph;
  if (erg && typeof erg === 'object' && !Array.isArray(erg) && input.exportReferencesGraph) {
    for (const key of Object.keys(erg)) {
      if (input.exportReferencesGraph.has(key)) json[key] = input.exportReferencesGraph.get(key);
    }
  }
  files.set('.attrs.json', rewriteStrings(nixJsonDump(json), rewrites));
  files.set('.attrs.sh', rewriteStrings(structuredAttrsToShell(json), rewrites));
}
