/**
 * Values both remote protocols share: the BasicDerivation as it travels on the wire, build results,
 * realisations (`DrvOutputs`), and path infos.
 */
import { Hash } from '../store/hash.js';
import type { PathInfo } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';
import { RemoteProtocolError } from './errors.js';
import type { WireReader, WireWriter } from './wire.js';

/** One output as written in a .drv: path (may be empty for floating CA), hash algorithm (`r:sha256`), hash (base16). */
export interface WireDerivationOutput {
  readonly path: string;
  readonly hashAlgo: string;
  readonly hash: string;
}

/**
 * Nix's BasicDerivation: a derivation without `inputDrvs` (their outputs are folded into `inputSrcs`), as the
 * remote builds it. Outputs are written sorted by name, env sorted by key (Nix's std::map order).
 */
export interface WireDerivation {
  readonly outputs: ReadonlyMap<string, WireDerivationOutput> | Readonly<Record<string, WireDerivationOutput>>;
  readonly inputSrcs: Iterable<StorePath>;
  readonly platform: string;
  readonly builder: string;
  readonly args: readonly string[];
  readonly env: ReadonlyMap<string, string> | Readonly<Record<string, string>>;
}

function entries<V>(m: ReadonlyMap<string, V> | Readonly<Record<string, V>>): [string, V][] {
  const list = m instanceof Map ? [...(m as ReadonlyMap<string, V>).entries()] : Object.entries(m as Record<string, V>);
  return list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Nix's `writeDerivation(Sink, Store, BasicDerivation)`. */
export function writeBasicDerivation(w: WireWriter, drv: WireDerivation): void {
  const outs = entries(drv.outputs);
  w.u64(outs.length);
  for (const [name, o] of outs) w.string(name).string(o.path).string(o.hashAlgo).string(o.hash);
  w.strings([...new Set(drv.inputSrcs)].sort());
  w.string(drv.platform).string(drv.builder).strings(drv.args);
  w.stringMap(entries(drv.env));
}

/** Output names of a wire derivation, with their paths (empty string for floating outputs). */
export function wireOutputPaths(drv: WireDerivation): Map<string, string> {
  return new Map(entries(drv.outputs).map(([name, o]) => [name, o.path]));
}

/** Nix's BuildResult::Status, as strings (ARCHITECTURE.md naming). */
export type WireBuildStatus =
  | 'built'
  | 'substituted'
  | 'already-valid'
  | 'permanent-failure'
  | 'input-rejected'
  | 'output-rejected'
  | 'transient-failure'
  | 'cached-failure'
  | 'timed-out'
  | 'misc-failure'
  | 'dependency-failed'
  | 'log-limit-exceeded'
  | 'not-deterministic'
  | 'resolves-to-already-valid'
  | 'no-substituters';

const STATUSES: readonly WireBuildStatus[] = [
  'built',
  'substituted',
  'already-valid',
  'permanent-failure',
  'input-rejected',
  'output-rejected',
  'transient-failure',
  'cached-failure',
  'timed-out',
  'misc-failure',
  'dependency-failed',
  'log-limit-exceeded',
  'not-deterministic',
  'resolves-to-already-valid',
  'no-substituters',
];

export function buildStatusFromWire(n: number): WireBuildStatus {
  const s = STATUSES[n];
  if (!s) throw new RemoteProtocolError(`remote sent unknown build status ${n}`);
  return s;
}

export function isSuccessStatus(s: WireBuildStatus): boolean {
  return s === 'built' || s === 'substituted' || s === 'already-valid' || s === 'resolves-to-already-valid';
}

/** A realisation as the remote reports it: which path an output of a derivation (by hash modulo) got. */
export interface WireRealisation {
  /** `sha256:<hash modulo>!<output>` */
  readonly id: string;
  readonly outputName: string;
  readonly outPath: StorePath;
  readonly signatures: readonly string[];
}

/** The result of BuildDerivation on the remote. */
export interface WireBuildResult {
  readonly status: WireBuildStatus;
  readonly errorMsg: string;
  readonly timesBuilt: number;
  readonly isNonDeterministic: boolean;
  /** Seconds since the epoch (0 when unknown). */
  readonly startTime: number;
  readonly stopTime: number;
  /** Output name → realisation, when the remote reports them. */
  readonly builtOutputs: ReadonlyMap<string, WireRealisation>;
}

/** Read a `DrvOutputs` map (DrvOutput id → Realisation JSON). */
/** A message without the terminal colours Nix puts in it. */
export function stripAnsi(s: string): string {
  return s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

/**
 * A BuildResult as both protocols send it: the status, the error message (Nix's colours stripped), then,
 * when the peer's protocol version has them, the times and the realisations of the built outputs.
 */
export async function readBuildResult(r: WireReader, storeDir: string, has: { times: boolean; builtOutputs: boolean }): Promise<WireBuildResult> {
  const status = buildStatusFromWire(await r.u64());
  const errorMsg = stripAnsi(await r.string());
  let timesBuilt = 0,
    isNonDeterministic = false,
    startTime = 0,
    stopTime = 0;
  if (has.times) {
    timesBuilt = await r.u64();
    isNonDeterministic = await r.bool();
    startTime = await r.u64();
    stopTime = await r.u64();
  }
  const builtOutputs = has.builtOutputs ? await readDrvOutputs(r, storeDir) : new Map<string, WireRealisation>();
  return { status, errorMsg, timesBuilt, isNonDeterministic, startTime, stopTime, builtOutputs };
}

export async function readDrvOutputs(r: WireReader, storeDir: string): Promise<Map<string, WireRealisation>> {
  const n = await r.u64();
  const out = new Map<string, WireRealisation>();
  for (let i = 0; i < n; i++) {
    const id = await r.string();
    const json = await r.string();
    let parsed: { id?: string; outPath?: string; signatures?: string[] };
    try {
      parsed = JSON.parse(json) as typeof parsed;
    } catch (e) {
      throw new RemoteProtocolError(`remote sent a realisation that is not JSON: '${json.slice(0, 100)}'`, { cause: e });
    }
    const outputName = id.slice(id.lastIndexOf('!') + 1);
    const p = parsed.outPath ?? '';
    out.set(outputName, {
      id,
      outputName,
      outPath: p.startsWith('/') ? p : `${storeDir}/${p}`,
      signatures: parsed.signatures ?? [],
    });
  }
  return out;
}

/** Parse a NAR hash as the daemon sends it (base16 without prefix, or prefixed in any encoding). */
export function parseWireNarHash(s: string): Hash {
  return s.includes(':') || s.includes('-') ? Hash.parse(s) : Hash.parse(s, 'sha256');
}

/** Topological order of `paths` by their references (references first), as Nix copies closures. */
export function topoSortPaths(infos: ReadonlyMap<StorePath, Pick<PathInfo, 'references'>>): StorePath[] {
  const out: StorePath[] = [];
  const state = new Map<StorePath, 1 | 2>();
  const visit = (p: StorePath): void => {
    const s = state.get(p);
    if (s === 2) return;
    if (s === 1) return; // a cycle other than a self-reference cannot occur in a valid store; ignore
    state.set(p, 1);
    for (const ref of infos.get(p)!.references) if (ref !== p && infos.has(ref)) visit(ref);
    state.set(p, 2);
    out.push(p);
  };
  for (const p of [...infos.keys()].sort()) visit(p);
  return out;
}
