/**
 * Nix's queryMissing: before anything runs, which derivations will be built, which paths substituted,
 * which are unknown, and how much will be downloaded and unpacked.
 */
import { shortMessageOf } from '../store/errors.js';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import { caFeatureMissing, substitutesAllowed } from './drv-view.js';
import { knownOutputs } from './realisations.js';
import type { BuildTarget } from './results.js';

export interface MissingInfo {
  readonly willBuild: StorePath[];
  readonly willSubstitute: StorePath[];
  readonly unknown: StorePath[];
  /** Compressed bytes to download. */
  readonly downloadSize: number;
  /** Uncompressed NAR bytes. */
  readonly narSize: number;
}

export async function queryMissing(ctx: EngineContext, targets: readonly BuildTarget[]): Promise<MissingInfo> {
  const { store } = ctx;
  const willBuild = new Set<StorePath>();
  const willSubstitute = new Set<StorePath>();
  const unknown = new Set<StorePath>();
  let downloadSize = 0;
  let narSize = 0;
  const done = new Set<string>();
  const signal = new AbortController().signal;

  const lookup = async (p: StorePath) => {
    for (const sub of ctx.substituters) {
      let info;
      try {
        info = (await ctx.queryPathInfosCached(sub, [p], signal)).get(p);
      } catch (e) {
        // As Nix: a substituter that fails to answer (a corrupt narinfo, a server error) ends the query,
        // unless falling back to building, when the error is logged and the substituter passed over.
        if (!ctx.options.fallback) throw e;
        ctx.emit('warning', { message: shortMessageOf(e), level: 'error' });
        continue;
      }
      if (info) return info;
    }
    return undefined;
  };

  /** Try to substitute a path and its references; false when some part has no substitute. */
  const substitutable = async (p: StorePath): Promise<boolean> => {
    if (done.has('s:' + p)) return true;
    if (await store.isValidPath(p)) return true;
    const info = await lookup(p);
    if (!info) return false;
    done.add('s:' + p);
    willSubstitute.add(p);
    downloadSize += info.downloadSize;
    narSize += info.narSize;
    // As Nix: a reference nobody has is unknown (the substitute will not do without it).
    for (const r of info.references) if (r !== p && !(await substitutable(r))) unknown.add(r);
    return true;
  };

  const visitDrv = async (drvPath: StorePath, outputs: readonly string[] | undefined): Promise<void> => {
    const key = 'd:' + drvPath + ':' + (outputs ?? ['*']).join(',');
    if (done.has(key)) return;
    done.add(key);
    if (!(await store.isValidPath(drvPath))) {
      // As Nix 2.8: a missing .drv is unknown here, even when a substituter has it (the build still
      // substitutes it).
      unknown.add(drvPath);
      return;
    }
    const view = await ctx.loadDrv(drvPath);
    // As Nix, which cannot read it: the query fails.
    const noCa = caFeatureMissing(view, ctx.options);
    if (noCa) throw noCa;
    const wanted = outputs ? outputs : [...view.outputs.keys()];
    const registered = await knownOutputs(store, view);
    const invalid: StorePath[] = [];
    let unknownOutput = false;
    for (const o of wanted) {
      const spec = view.outputs.get(o);
      // As Nix's queryMissing: a wanted output the derivation does not have is not looked at (the build
      // then fails on it).
      if (!spec) continue;
      const p = registered.get(o);
      if (!p) {
        unknownOutput = true;
        continue;
      }
      if (!(await store.isValidPath(p))) invalid.push(p);
    }
    if (invalid.length === 0 && !unknownOutput) return;
    if (!unknownOutput && ctx.substituters.length && substitutesAllowed(view)) {
      const infos = await Promise.all(invalid.map(lookup));
      if (infos.every(Boolean)) {
        for (const p of invalid) await substitutable(p);
        return;
      }
    }
    willBuild.add(drvPath);
    for (const [dep, outs] of view.inputDrvs) await visitDrv(dep, outs);
    for (const src of view.inputSrcs) {
      if (!(await substitutable(src))) unknown.add(src);
    }
  };

  for (const t of targets) {
    if ('drvPath' in t) await visitDrv(t.drvPath, t.outputs === undefined || t.outputs === '*' ? undefined : t.outputs);
    else if (!(await substitutable(t.path))) unknown.add(t.path);
  }
  return { willBuild: [...willBuild].sort(), willSubstitute: [...willSubstitute].sort(), unknown: [...unknown].sort(), downloadSize, narSize };
}
