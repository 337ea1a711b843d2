/**
 * Nix's queryMissing: before anything runs, which derivations will be built, which paths substituted,
 * which are unknown, and how much will be downloaded and unpacked.
 */
import { shortMessageOf } from '../store/errors.js';
import type { StorePath } from '../store/store-path.js';
import type { EngineContext } from './context.js';
import { caFeatureMissing, substitutesAllowed, type DrvView } from './drv-view.js';
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

interface Visit {
  readonly drvPath: StorePath;
  readonly outputs: readonly string[] | undefined;
}

interface Loaded extends Visit {
  readonly view: DrvView;
  /** The wanted outputs' known paths; undefined when one of them is not known. */
  readonly paths: StorePath[] | undefined;
}

/**
 * Walks the targets wave by wave (a wave: the input derivations of the previous wave's derivations that
 * will be built), so that the validity of a wave's `.drv` files, of their outputs and of their sources is
 * asked in one batched query each rather than path by path. Nix's queryMissing also visits the paths in no
 * fixed order (a thread pool); what it returns are sets and sums. `substitutes` is told the NAR sizes of the
 * substitutes found, if any.
 */
export async function queryMissing(
  ctx: EngineContext,
  targets: readonly BuildTarget[],
  substitutes?: (narSizes: readonly number[]) => void,
): Promise<MissingInfo> {
  const q = new MissingQuery(ctx);
  const drvTargets: Visit[] = [];
  const opaque: StorePath[] = [];
  for (const t of targets) {
    if ('drvPath' in t) drvTargets.push({ drvPath: t.drvPath, outputs: t.outputs === undefined || t.outputs === '*' ? undefined : t.outputs });
    else opaque.push(t.path);
  }
  await q.visitDrvs(drvTargets);
  await q.askValidity(opaque);
  for (const p of opaque) if (!(await q.substitutable(p))) q.unknown.add(p);
  if (q.narSizes.length) substitutes?.(q.narSizes);
  return {
    willBuild: [...q.willBuild].sort(),
    willSubstitute: [...q.willSubstitute].sort(),
    unknown: [...q.unknown].sort(),
    downloadSize: q.downloadSize,
    narSize: q.narSize,
  };
}

class MissingQuery {
  readonly willBuild = new Set<StorePath>();
  readonly willSubstitute = new Set<StorePath>();
  readonly unknown = new Set<StorePath>();
  downloadSize = 0;
  narSize = 0;
  /** The NAR size of each path in willSubstitute. */
  readonly narSizes: number[] = [];
  private readonly done = new Set<string>();
  private readonly signal = new AbortController().signal;
  /** Validity as found during this query (nothing is built or fetched while it runs). */
  private readonly validity = new Map<StorePath, boolean>();

  constructor(private readonly ctx: EngineContext) {}

  /** Ask the store, in one batched query, about those of `paths` not asked yet. */
  async askValidity(paths: Iterable<StorePath>): Promise<void> {
    const ask = new Set<StorePath>();
    for (const p of paths) if (!this.validity.has(p)) ask.add(p);
    if (ask.size === 0) return;
    const valid = await this.ctx.store.queryValidPaths(ask);
    for (const p of ask) this.validity.set(p, valid.has(p));
  }

  private async isValid(p: StorePath): Promise<boolean> {
    let v = this.validity.get(p);
    if (v === undefined) this.validity.set(p, (v = await this.ctx.store.isValidPath(p)));
    return v;
  }

  private async lookup(p: StorePath) {
    const { ctx } = this;
    for (const sub of ctx.substituters) {
      let info;
      try {
        info = (await ctx.queryPathInfosCached(sub, [p], this.signal)).get(p);
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
  }

  /** Try to substitute a path and its references; false when some part has no substitute. */
  async substitutable(p: StorePath): Promise<boolean> {
    if (this.done.has('s:' + p)) return true;
    if (await this.isValid(p)) return true;
    const info = await this.lookup(p);
    if (!info) return false;
    this.done.add('s:' + p);
    this.willSubstitute.add(p);
    this.downloadSize += info.downloadSize;
    this.narSize += info.narSize;
    this.narSizes.push(info.narSize);
    // As Nix: a reference nobody has is unknown (the substitute will not do without it).
    await this.askValidity(info.references);
    for (const r of info.references) if (r !== p && !(await this.substitutable(r))) this.unknown.add(r);
    return true;
  }

  async visitDrvs(first: readonly Visit[]): Promise<void> {
    let wave = first;
    while (wave.length) {
      const fresh = wave.filter((v) => {
        const key = 'd:' + v.drvPath + ':' + (v.outputs ?? ['*']).join(',');
        if (this.done.has(key)) return false;
        this.done.add(key);
        return true;
      });
      const loaded = await this.load(fresh);
      await this.askValidity(loaded.flatMap((l) => l.paths ?? []));
      const next: Visit[] = [];
      const sources: StorePath[] = [];
      for (const l of loaded) {
        if (!(await this.mustBuild(l))) continue;
        this.willBuild.add(l.drvPath);
        for (const [dep, outs] of l.view.inputDrvs) next.push({ drvPath: dep, outputs: outs });
        for (const src of l.view.inputSrcs) sources.push(src);
      }
      await this.askValidity(sources);
      for (const src of sources) if (!(await this.substitutable(src))) this.unknown.add(src);
      wave = next;
    }
  }

  /** The derivations of a wave that are there, loaded, with the paths of their wanted outputs. */
  private async load(wave: readonly Visit[]): Promise<Loaded[]> {
    const { ctx } = this;
    await this.askValidity(wave.map((v) => v.drvPath));
    const loaded: Loaded[] = [];
    for (const v of wave) {
      if (!this.validity.get(v.drvPath)) {
        // As Nix 2.8: a missing .drv is unknown here, even when a substituter has it (the build still
        // substitutes it).
        this.unknown.add(v.drvPath);
        continue;
      }
      const view = await ctx.loadDrv(v.drvPath, true);
      // As Nix, which cannot read it: the query fails.
      const noCa = caFeatureMissing(view, ctx.options);
      if (noCa) throw noCa;
      const registered = await knownOutputs(ctx.store, view);
      let paths: StorePath[] | undefined = [];
      for (const o of v.outputs ?? view.outputs.keys()) {
        // As Nix's queryMissing: a wanted output the derivation does not have is not looked at (the build
        // then fails on it).
        if (!view.outputs.has(o)) continue;
        const p = registered.get(o);
        if (!p) {
          paths = undefined;
          break;
        }
        paths.push(p);
      }
      loaded.push({ ...v, view, paths });
    }
    return loaded;
  }

  /** Whether a loaded derivation must be built (else its outputs are valid or will be substituted). */
  private async mustBuild({ view, paths }: Loaded): Promise<boolean> {
    if (!paths) return true;
    const invalid = paths.filter((p) => !this.validity.get(p));
    if (invalid.length === 0) return false;
    if (this.ctx.substituters.length && substitutesAllowed(view)) {
      const infos = await Promise.all(invalid.map((p) => this.lookup(p)));
      if (infos.every(Boolean)) {
        for (const p of invalid) await this.substitutable(p);
        return false;
      }
    }
    return true;
  }
}
