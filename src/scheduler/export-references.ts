/**
 * exportReferencesGraph: for each (name, path) pair, the closure of `path` (which must be in the input
 * closure), plus the outputs of derivations in it. Legacy form: Nix's validity registration text; structured
 * form: a JSON array of path infos (path, narHash, narSize, references, closureSize, ca when content-addressed).
 */
import type { StorePath } from '../store/store-path.js';
import { ExportReferencesError } from '../derivation/parsed-attrs.js';
import type { DrvView } from './drv-view.js';
import { knownPath } from './drv-view.js';
import type { Worker } from './worker.js';
import { isRejected, rejected, type Rejected } from './rejected.js';

async function exportClosure(w: Worker, view: DrvView, roots: StorePath[], inputPaths: Set<StorePath>): Promise<StorePath[] | Rejected> {
  const { store } = w.ctx;
  for (const r of roots) {
    if (!inputPaths.has(r)) {
      return rejected('input-rejected', `cannot export references of path '${r}' because it is not in the input closure of the derivation`);
    }
  }
  const paths = await store.computeClosure(roots);
  for (const p of [...paths]) {
    if (!p.endsWith('.drv')) continue;
    const dv = await w.ctx.loadDrv(p);
    const outs = [...dv.outputs.values()].map(knownPath).filter((x): x is StorePath => !!x);
    const valid = await store.queryValidPaths(outs);
    for (const c of await store.computeClosure([...valid])) paths.add(c);
  }
  return [...paths].sort();
}

/**
 * The files exportReferencesGraph asks for (file name → contents; structured: name → JSON value), from the
 * derivation's attributes as ParsedDerivation reads them. A malformed attribute that Nix treats as a build
 * error (ExportReferencesError), or a path outside the input closure, rejects the build's inputs (a
 * `Rejected` value, `input-rejected`: Nix's BuildError); other BadDerivationErrors are thrown (the round
 * ends the call with them, as Nix's Error).
 */
export function exportReferencesGraph(
  w: Worker,
  view: DrvView,
  inputPaths: Set<StorePath>,
): Promise<Map<string, string | unknown> | Rejected> | undefined | Rejected {
  let wanted: ExportWanted[];
  try {
    wanted = view.attrs.exportReferencesGraph(w.ctx.store.storeDir);
  } catch (e) {
    if (e instanceof ExportReferencesError) return rejected('input-rejected', e.shortMessage);
    throw e;
  }
  // (None asked for, the usual case: answered at once, without a promise.)
  return wanted.length === 0 ? undefined : exportClosures(w, view, wanted, inputPaths);
}

type ExportWanted = { readonly name: string; readonly paths: StorePath[] };

async function exportClosures(
  w: Worker,
  view: DrvView,
  wanted: readonly ExportWanted[],
  inputPaths: Set<StorePath>,
): Promise<Map<string, string | unknown> | Rejected> {
  const out = new Map<string, unknown>();
  for (const { name, paths: roots } of wanted) {
    const paths = await exportClosure(w, view, roots, inputPaths);
    if (isRejected(paths)) return paths;
    out.set(name, view.structuredAttrs ? await closureAsJson(w, paths) : await closureAsRegistration(w, paths));
  }
  return out;
}

/** Structured form: Nix's pathInfoToJSON of each path, without impure fields (`ca` for content-addressed paths). */
async function closureAsJson(w: Worker, paths: readonly StorePath[]): Promise<unknown[]> {
  const { store } = w.ctx;
  const arr = [];
  for (const p of paths) {
    const info = (await store.queryPathInfo(p))!;
    let closureSize = 0;
    for (const c of await store.computeClosure([p])) closureSize += (await store.queryPathInfo(c))!.narSize;
    arr.push({
      ...(info.ca ? { ca: info.ca } : {}),
      closureSize,
      narHash: info.narHash.toString('base32'),
      narSize: info.narSize,
      path: p,
      references: [...info.references].sort(),
    });
  }
  return arr;
}

/** Legacy form: Nix's validity registration text (path, empty deriver, reference count, references). */
async function closureAsRegistration(w: Worker, paths: readonly StorePath[]): Promise<string> {
  let s = '';
  for (const p of paths) {
    const info = (await w.ctx.store.queryPathInfo(p))!;
    s += `${p}\n\n${info.references.length}\n`;
    for (const r of [...info.references].sort()) s += `${r}\n`;
  }
  return s;
}
