/**
 * `path-info`, `copy` and `report`: the commands that neither build nor collect garbage, loaded only when run.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import {
  BuildEngine,
  RealiseError,
  copyToBinaryCache,
  unknownBinaryCacheSettings,
  derivationOutputsAndPaths,
  isCompression,
  readDerivationFromStore,
  renderReport,
  type BuildTarget,
  type PathInfo,
  type Store,
  type TraceFile,
} from '../index.js';
import { UsageError, type CliArgs } from './args.js';
import { engineOptions } from './engine-build.js';
import { warnStderr } from './messages.js';
import { CliError, installableStorePaths } from './paths.js';
import { byString, printJson } from './realised.js';
import { dependenciesFirst, missingLines } from './report.js';
import { engineSettings } from './settings.js';

/** `realise report TRACE [-o OUT]`: the HTML report of a trace file written by `--trace-file`. */
export function report(args: CliArgs): number {
  if (args.positional.length !== 1) throw new UsageError("'report' needs one trace file");
  let t: TraceFile;
  try {
    t = JSON.parse(readFileSync(args.positional[0]!, 'utf8')) as TraceFile;
  } catch (e) {
    throw new CliError(`cannot read the trace file '${args.positional[0]}': ${(e as Error).message}`);
  }
  if (!Array.isArray(t?.traceEvents)) throw new CliError(`'${args.positional[0]}' is not a trace file written by realise (no traceEvents)`);
  t.otherData ??= { tool: 'realise', version: 1, startedAt: '' };
  const html = renderReport(t);
  if (args.addRoot) writeFileSync(args.addRoot, html);
  else process.stdout.write(html);
  return 0;
}

function pathInfoJson(i: PathInfo, closureSize?: number): Record<string, unknown> {
  // Same fields and order as `nix path-info --json` of Nix 2.8.
  return {
    path: i.path,
    narHash: i.narHash.toString('sri'),
    narSize: i.narSize,
    references: [...i.references].sort(byString),
    ...(i.ca ? { ca: i.ca } : {}),
    ...(closureSize !== undefined ? { closureSize } : {}),
    ...(i.deriver ? { deriver: i.deriver } : {}),
    ...(i.registrationTime ? { registrationTime: i.registrationTime } : {}),
    ...(i.ultimate ? { ultimate: true } : {}),
    ...(i.sigs?.length ? { signatures: [...i.sigs] } : {}),
  };
}

/** Sum of the NAR sizes of a path's closure (Nix's getClosureSize). */
async function closureSizeOf(store: Store, p: string): Promise<number> {
  let total = 0;
  for (const q of await store.computeClosure([p])) total += (await store.queryPathInfo(q))?.narSize ?? 0;
  return total;
}

/** nix path-info's size column: a tab and the byte count right-aligned in 11, or with -h one decimal and a unit. */
function formatSize(value: number, human: boolean): string {
  if (!human) return `\t${String(value).padStart(11)}`;
  const units = [' ', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
  let power = 0;
  let res = value;
  while (res > 1024 && power < units.length - 1) {
    power++;
    res /= 1024;
  }
  return `\t${res.toFixed(1).padStart(6)}${units[power]}`;
}

/**
 * The store paths the arguments name, as the nix command reads its installables (`none` when there are
 * none), each a path or the error to throw when the command comes to it.
 */
function installables(args: CliArgs, store: Store, none: string[]): Array<string | Error> {
  const features = `${args.options.get('experimental-features') ?? ''} ${args.options.get('extra-experimental-features') ?? ''}`;
  return installableStorePaths(store.storeDir, args.positional.length ? args.positional : none, {
    flakes: features.split(/\s+/).includes('flakes'),
    // Nix's notice level: shown unless --quiet was given twice.
    notice: (m) => void (args.verbosity >= 2 && process.stderr.write(m + '\n')),
  });
}

export async function pathInfo(args: CliArgs, store: Store): Promise<number> {
  // As Nix 2.8's `nix path-info`: every argument is read first (`.` when there is none and no --all), a
  // .drv stands for its outputs (unless --derivation), the result is a sorted set, and nothing is built.
  const argPaths = installables(args, store, args.all ? [] : ['.']);
  // --all: every valid path as it is (a .drv among them stands for itself).
  let all: Set<string> | undefined;
  if (args.all) {
    if (args.positional.length > 0) throw new UsageError("'--all' does not expect arguments");
    if (!store.queryAllValidPaths) throw new CliError('this store cannot list its valid paths');
    all = await store.queryAllValidPaths();
  }
  const roots = new Set<string>(all);
  // What printMissing is asked about, from the arguments as read above (a .drv: all its outputs).
  const targets: BuildTarget[] = [];
  for (const p of argPaths) {
    if (p instanceof Error) throw p;
    targets.push(!args.derivation && p.endsWith('.drv') ? { drvPath: p, outputs: '*' } : { path: p });
    if (p.endsWith('.drv')) {
      // Nix reads every .drv argument first (its outputs are what the argument means).
      if (!(await store.isValidPath(p))) throw new CliError(`path '${p}' is not a valid store path`);
      let drv;
      try {
        drv = await readDerivationFromStore(store)(p);
      } catch (e) {
        throw new CliError(`error parsing derivation '${p}': ${e instanceof RealiseError ? e.shortMessage : (e as Error).message}`);
      }
      if (args.derivation) {
        roots.add(p);
        continue;
      }
      const registered = await store.queryDerivationOutputs(p).catch(() => new Map<string, string>());
      for (const [name, o] of derivationOutputsAndPaths(drv)) {
        const out = o.path ?? registered.get(name);
        if (out) roots.add(out);
      }
    } else if (args.derivation) {
      // As Nix's toDerivations: a store path stands for the (first) valid derivation that has it as an output.
      const [deriver] = (await store.queryValidDerivers?.(p)) ?? [];
      if (!deriver) throw new CliError(`'${p}' does not have a known deriver`);
      roots.add(deriver);
    } else {
      roots.add(p);
    }
  }
  // What Nix's printMissing says before the info (nothing is built: Realise::Nothing).
  // With the command line's substituters, as Nix's printMissing asks them what would be fetched.
  const engine = new BuildEngine(engineOptions(engineSettings(args, store), warnStderr));
  try {
    const missing = await engine.queryMissing(targets).catch(() => undefined);
    if (missing) for (const l of await missingLines(store, missing)) process.stderr.write(l + '\n');
  } finally {
    await engine.close();
  }
  let paths = [...roots].sort(byString);
  const valid = await store.queryValidPaths(paths);
  if (args.recursive) {
    // Nix computes the closure first, which fails on the first path that is not valid.
    const bad = paths.find((p) => !valid.has(p));
    if (bad) throw new CliError(`path '${bad}' is not valid`);
    const closure = await store.computeClosure(paths.filter((p) => valid.has(p)));

    paths = [...new Set([...closure, ...paths])].sort(byString);
  }
  if (args.json) {
    const out: Record<string, unknown>[] = [];
    for (const p of paths) {
      const info = await store.queryPathInfo(p);
      out.push(info ? pathInfoJson(info, args.closureSize ? await closureSizeOf(store, p) : undefined) : { path: p, valid: false });
    }
    // Nix 2.8 ends its JSON without a newline.
    printJson(out, false);
    return 0;
  }
  const width = Math.max(0, ...paths.map((p) => p.length));
  // The text listing is in Nix's topological order (dependencies first); the JSON one is sorted.
  for (const p of await dependenciesFirst(store, paths)) {
    const info = await store.queryPathInfo(p);
    if (!info) throw new CliError(`path '${p}' is not valid`);
    let line = p;
    if (args.size || args.closureSize || args.sigs) line += ' '.repeat(width - p.length);
    if (args.size) line += formatSize(info.narSize, args.humanReadable);
    if (args.closureSize) line += formatSize(await closureSizeOf(store, p), args.humanReadable);
    if (args.sigs) line += '\t' + [...(info.ultimate ? ['ultimate'] : []), ...(info.ca ? [`ca:${info.ca}`] : []), ...(info.sigs ?? [])].join(' ');
    process.stdout.write(line + '\n');
  }
  return 0;
}

export async function copy(args: CliArgs, store: Store): Promise<number> {
  // nix copy's words (it also takes --from, which realise has not: it copies from its store to a cache).
  if (!args.to) throw new UsageError("you must pass '--from' and/or '--to'");
  // As Nix opens the destination store first: the URL's settings it does not have, each warned about.
  for (const name of unknownBinaryCacheSettings(args.to)) warnStderr(`unknown setting '${name}'`);
  const secretKeyFile = args.options.get('secret-key');
  // Read before anything is copied, as Nix reads the key when it opens the cache.
  const secretKey = secretKeyFile ? readFileSync(secretKeyFile, 'utf8').trim() : undefined;
  const compression = args.options.get('compression');
  if (compression !== undefined && !isCompression(compression)) throw new CliError(`unknown compression method '${compression}'`);
  const paths: string[] = [];
  // As nix copy: the paths are realised first (here: they must be valid, nothing is substituted).
  for (const p of installables(args, store, ['.'])) {
    if (p instanceof Error) throw p;
    paths.push(p);
    if (!(await store.isValidPath(p))) throw new CliError(`path '${p}' is required, but there is no substituter that can build it`);
  }
  // nix copy's progress lines: how many paths of the closure the cache lacks, then each one copied.
  // Nix names the cache without its settings (`file:///c?compression=zstd` is 'file:///c').
  const shownUrl = args.to.replace(/\?.*$/, '');
  const dir = shownUrl.startsWith('file://') ? shownUrl.slice('file://'.length) : shownUrl.startsWith('/') ? shownUrl : undefined;
  const closure = dir !== undefined && !args.quiet ? await store.computeClosure(paths) : undefined;
  const written = await copyToBinaryCache(store, paths, args.to, {
    ...(secretKey ? { secretKey } : {}),
    ...(compression ? { compression } : {}),
    // As nix copy, once the cache is open (an error opening it comes first).
    onOpen: () => {
      if (!closure || dir === undefined) return;
      const missing = [...closure].filter((p) => !existsSync(path.join(dir, `${path.basename(p).slice(0, 32)}.narinfo`)));
      process.stderr.write(`copying ${missing.length} paths...\n`);
    },
    onPath: (p: string, wrote: boolean) => {
      if (wrote && !args.quiet) process.stderr.write(`copying path '${p}' to '${shownUrl}'...\n`);
    },
  });
  if (args.json) printJson(written);
  return 0;
}
