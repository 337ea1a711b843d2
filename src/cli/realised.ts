/**
 * What `realise build` / `ensure` print once every target is realised, as nix-store --realise 2.8 prints
 * it: each target's output paths (or the GC roots `--add-root` makes for them) on stdout, the warning about
 * a missing `--add-root`, or with `--json` the shape of `nix build --json`.
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readlinkSync, renameSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { goalKey, LocalStore, toNixBase32, type Store, type TargetResult } from '../index.js';
import type { CliArgs } from './args.js';
import { CliError } from './paths.js';
import { stdout } from './stdio.js';

export const byString = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

const GC_WARNING = "you did not specify '--add-root'; the result might be removed by the garbage collector";

/** Output paths of a derivation target (all when none were named), in Nix's order: by path. */
export async function targetOutputs(store: Store, r: TargetResult, known?: ReadonlyMap<string, ReadonlyMap<string, string>>): Promise<[string, string][]> {
  if ('path' in r.target) return [];
  const wanted = r.target.outputs === undefined || r.target.outputs === '*' ? undefined : new Set(r.target.outputs);
  // nix-store prints the store's output map of the derivation (its DerivationOutputs rows): for a
  // fixed-output derivation whose output has references, Nix 2.8 registers the output under another path
  // than the .drv names, yet prints the .drv's. What the build reports fills outputs the store has no row for.
  const all = new Map<string, string>(known?.get(r.path) ?? (await store.queryDerivationOutputs(r.path)));
  for (const [n, p] of Object.entries(r.result.builtOutputs)) if (!all.has(n)) all.set(n, p);
  return [...all].filter(([name]) => !wanted || wanted.has(name)).sort(([, a], [, b]) => byString(a, b));
}

/** Replace `link` with a symlink to `target` atomically, creating its directory (Nix's makeSymlink). */
function makeSymlink(link: string, target: string): void {
  mkdirSync(path.dirname(link), { recursive: true });
  const tmp = `${link}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  symlinkSync(target, tmp);
  renameSync(tmp, link);
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** How a store records an indirect GC root it keeps elsewhere (the Nix daemon's state directory). */
export type IndirectRoots = ((link: string) => Promise<void>) | undefined;

/** Nix's LocalFSStore::addPermRoot: a symlink to the store path, registered as an indirect GC root. */
async function addPermRoot(store: Store, storePath: string, root: string, indirect: IndirectRoots): Promise<string> {
  const gcRoot = path.resolve(root);
  if (gcRoot.startsWith(store.storeDir + '/')) {
    throw new CliError(`creating a garbage collector root (${gcRoot}) in the Nix store is forbidden (are you running nix-build inside the store?)`);
  }
  if (existsSync(gcRoot) || isSymlink(gcRoot)) {
    if (!isSymlink(gcRoot) || !readlinkSync(gcRoot).startsWith(store.storeDir + '/')) throw new CliError(`cannot create symlink '${gcRoot}'; already exists`);
  }
  makeSymlink(gcRoot, storePath);
  if (store instanceof LocalStore) {
    const auto = path.join(store.layout.stateDir, 'gcroots', 'auto');
    makeSymlink(path.join(auto, toNixBase32(createHash('sha1').update(gcRoot).digest())), gcRoot);
  }
  await indirect?.(gcRoot);
  return gcRoot;
}

/** What nix-store --realise prints per argument after the build: output paths, or the GC roots made for them. */
async function realisedPaths(args: CliArgs, store: Store, results: readonly TargetResult[], indirect: IndirectRoots, warnGc: () => void): Promise<string[]> {
  const lines: string[] = [];
  let rootNr = 0;
  // A local store's output maps of every target, read at once.
  const known = store instanceof LocalStore ? store.queryDerivationOutputsMany(results.filter((r) => !('path' in r.target)).map((r) => r.path)) : undefined;
  for (const r of results) {
    rootNr++;
    const pairs: [string, string][] = 'path' in r.target ? [['', r.path]] : await targetOutputs(store, r, known);
    const printed = new Set<string>();
    for (const [name, p] of pairs) {
      let ret = p;
      if (!args.addRoot) warnGc();
      else {
        let rootName = args.addRoot;
        if (rootNr > 1) rootName += `-${rootNr}`;
        if (name && name !== 'out') rootName += `-${name}`;
        ret = await addPermRoot(store, p, rootName, indirect);
      }
      printed.add(ret);
    }
    lines.push(...[...printed].sort(byString));
  }
  return lines;
}

export function printJson(value: unknown, newline = true): void {
  stdout.write(JSON.stringify(value) + (newline ? '\n' : ''));
}

/**
 * Print the targets' results of a successful call: `--json`, nothing with `--ignore-unknown`, else the
 * realised paths (GC roots with `--add-root`, each registered through `indirect` too when given).
 */
export async function printRealised(
  args: CliArgs,
  store: Store,
  results: readonly TargetResult[],
  indirect: IndirectRoots,
  warn: (message: string) => void,
): Promise<void> {
  if (args.json) {
    // The shape of `nix build --json`: one object per target, in Nix's goal order (store paths, then
    // derivations, each by name, then path), as nix build lists them.
    const out = [];
    // (Each goal key made once, not twice per comparison.)
    const keyed = results.map((r) => ({ r, key: goalKey('path' in r.target ? 'substitution' : 'derivation', r.path) }));
    keyed.sort((a, b) => byString(a.key, b.key));
    for (const { r } of keyed) {
      out.push(
        'path' in r.target
          ? { path: r.path }
          : { drvPath: r.path, outputs: Object.fromEntries((await targetOutputs(store, r)).sort(([a], [b]) => byString(a, b))) },
      );
    }
    printJson(out);
    return;
  }
  // nix-store --realise --ignore-unknown builds what it can and prints nothing.
  if (args.ignoreUnknown) return;
  let warned = false;
  const lines = await realisedPaths(args, store, results, indirect, () => {
    if (!warned) {
      warned = true;
      warn(GC_WARNING);
    }
  });
  // One write for all of them (a pipe gets one system call, not one per path).
  if (lines.length) stdout.write(lines.join('\n') + '\n');
}
