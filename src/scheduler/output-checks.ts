/**
 * Nix's checkOutputs: after a build, each output must pass its checks (legacy `allowedReferences`,
 * `allowedRequisites`, `disallowedReferences`, `disallowedRequisites`, or structured `outputChecks.<out>`
 * with `maxSize` and `maxClosureSize` too). References are store paths or output names.
 */
import type { OutputChecks } from '../derivation/parsed-attrs.js';
import type { PathInfo, Store } from '../store/store-api.js';
import { isStorePath, type StorePath } from '../store/store-path.js';
import { isRejected, rejected, type Rejected } from './rejected.js';

/** What the checks of one round look at: the outputs' new path infos (not registered yet) and the store. */
class OutputsUnderCheck {
  private readonly byPath = new Map<StorePath, PathInfo>();

  constructor(
    readonly store: Store,
    infos: Iterable<PathInfo>,
    readonly finalPaths: Readonly<Record<string, StorePath>>,
  ) {
    for (const i of infos) this.byPath.set(i.path, i);
  }

  /** The closure of `p` and its NAR size, through the new outputs first, then the store. */
  async closureOf(p: StorePath): Promise<{ paths: Set<StorePath>; size: number }> {
    const done = new Set<StorePath>();
    let size = 0;
    const todo = [p];
    while (todo.length) {
      const x = todo.pop()!;
      if (done.has(x)) continue;
      done.add(x);
      const info = this.byPath.get(x) ?? (await this.store.queryPathInfo(x));
      if (!info) continue;
      size += info.narSize;
      todo.push(...info.references);
    }
    return { paths: done, size };
  }

  /** A list of reference specifiers as store paths (an output name means that output's final path). */
  specified(value: readonly string[]): Set<StorePath> | Rejected {
    const spec = new Set<StorePath>();
    for (const i of value) {
      if (isStorePath(i, this.store.storeDir)) spec.add(i);
      else if (this.finalPaths[i]) spec.add(this.finalPaths[i]!);
      else return rejected('output-rejected', `derivation contains an illegal reference specifier '${i}'`);
    }
    return spec;
  }
}

/**
 * Check every output (name → new path info) against its checks (`checksOf(name)`, undefined: none, or
 * the rejection of malformed checks); resolves with the first violation, as a value.
 */
export async function checkOutputs(
  store: Store,
  infos: ReadonlyMap<string, PathInfo>,
  finalPaths: Readonly<Record<string, StorePath>>,
  checksOf: (output: string) => OutputChecks | Rejected | undefined,
): Promise<Rejected | undefined> {
  const outs = new OutputsUnderCheck(store, infos.values(), finalPaths);
  for (const [name, info] of infos) {
    const checks = checksOf(name);
    if (isRejected(checks)) return checks;
    const bad = checks && (await checkOutput(outs, info, checks));
    if (bad) return bad;
  }
  return undefined;
}

async function checkOutput(outs: OutputsUnderCheck, info: PathInfo, checks: OutputChecks): Promise<Rejected | undefined> {
  if (checks.maxSize !== undefined && info.narSize > checks.maxSize) {
    return rejected('output-rejected', `path '${info.path}' is too large at ${info.narSize} bytes; limit is ${checks.maxSize} bytes`);
  }
  if (checks.maxClosureSize !== undefined) {
    const { size } = await outs.closureOf(info.path);
    if (size > checks.maxClosureSize) {
      return rejected('output-rejected', `closure of path '${info.path}' is too large at ${size} bytes; limit is ${checks.maxClosureSize} bytes`);
    }
  }
  // (Only the lists that are set are checked: most derivations set none.)
  const { allowedReferences, allowedRequisites, disallowedReferences, disallowedRequisites } = checks;
  return (
    (allowedReferences && (await checkReferences(outs, info, checks, allowedReferences, true, false))) ||
    (allowedRequisites && (await checkReferences(outs, info, checks, allowedRequisites, true, true))) ||
    (disallowedReferences && (await checkReferences(outs, info, checks, disallowedReferences, false, false))) ||
    (disallowedRequisites && (await checkReferences(outs, info, checks, disallowedRequisites, false, true))) ||
    undefined
  );
}

/** One of the four reference lists: `allowed` or disallowed, of the references or (`recursive`) the requisites. */
async function checkReferences(
  outs: OutputsUnderCheck,
  info: PathInfo,
  checks: OutputChecks,
  value: readonly string[],
  allowed: boolean,
  recursive: boolean,
): Promise<Rejected | undefined> {
  const spec = outs.specified(value);
  if (isRejected(spec)) return spec;
  const used = recursive ? (await outs.closureOf(info.path)).paths : new Set(info.references);
  if (recursive && checks.ignoreSelfRefs) used.delete(info.path);
  const bad = [...used].filter((u) => (allowed ? !spec.has(u) : spec.has(u))).sort();
  if (bad.length) {
    return rejected('output-rejected', `output '${info.path}' is not allowed to refer to the following paths:${bad.map((b) => `\n  ${b}`).join('')}`);
  }
  return undefined;
}
