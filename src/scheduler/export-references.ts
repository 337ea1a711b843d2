/**
 * exportReferencesGraph: for each (name, path) pair, the closure of `path` (which must be in the input
 * closure), plus the outputs of derivations in it. Legacy form: Nix's validity registration text; structured
 * form: a JSON array of path infos (path, narHash, narSize, references, closureSize, ca when content-addressed).
 */
import { toStorePath, type StorePath } from '../store/store-path.js';
import type { DrvView } from './drv-view.js';
import { knownPath } from './drv-view.js';
import type { Worker } from './worker.js';
import { OutputRejected } from './rejected.js';

async function exportClosure(w: Worker, view: DrvView, roots: StorePath[], inputPaths: Set<StorePath>): Promise<StorePath[]> {
  const { store } = w.ctx;
  for (const r of roots) {
    if (!inputPaths.has(r)) {
      throw new OutputRejected('input-rejected', `cannot export references of path '${r}' because it is not in the input closure of the derivation`);
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

export async function exportReferencesGraph(w: Worker, view: DrvView, inputPaths: Set<StorePath>): Promise<Map<string, string | unknown> | undefined> {
  const { store } = w.ctx;
  if (view.structuredAttrs) {
    const erg = view.structuredAttrs.exportReferencesGraph;
    if (!erg || typeof erg !== 'object' || Array.isArray(erg)) return undefined;
    const out = new Map<string, unknown>();
    for (const [key, value] of Object.entries(erg as Record<string, unknown>)) {
      const roots = (Array.isArray(value) ? value : [value]).map(String);
      const paths = await exportClosure(w, view, roots, inputPaths);
      const arr = [];
      for (const p of paths) {
        const info = (await store.queryPathInfo(p))!;
        const closure = await store.computeClosure([p]);
        let closureSize = 0;
        for (const c of closure) closureSize += (await store.queryPathInfo(c))!.narSize;
        // Nix's pathInfoToJSON without impure fields: `ca` is there for content-addressed paths.
        arr.push({
          ...(info.ca ? { ca: info.ca } : {}),
          closureSize, narHash: info.narHash.toString('base32'), narSize: info.narSize, path: p, references: [...info.references].sort(),
        });
      }
      out.set(key, arr);
    }
    return out;
  }
  const raw = view.env.get('exportReferencesGraph');
  if (!raw) return undefined;
  const words = raw.split(/[ \t\n\r]+/).filter(Boolean);
  if (words.length % 2 !== 0) {
    throw new OutputRejected('input-rejected', `odd number of tokens in 'exportReferencesGraph': '${raw}'`);
  }
  const out = new Map<string, string>();
  for (let i = 0; i < words.length; i += 2) {
    const fileName = words[i]!;
    const storePath = words[i + 1]!;
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(fileName)) {
      throw new OutputRejected('input-rejected', `invalid file name '${fileName}' in 'exportReferencesGraph'`);
    }
    if (!storePath.startsWith(store.storeDir + '/')) {
      throw new OutputRejected('input-rejected', `'exportReferencesGraph' contains a non-store path '${storePath}'`);
    }
    const top = toStorePath(storePath, store.storeDir);
    const paths = await exportClosure(w, view, [top], inputPaths);
    let s = '';
    for (const p of paths) {
      const info = (await store.queryPathInfo(p))!;
      s += `${p}\n\n${info.references.length}\n`;
      for (const r of [...info.references].sort()) s += `${r}\n`;
    }
    out.set(fileName, s);
  }
  return out;
}
