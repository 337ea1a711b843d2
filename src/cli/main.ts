/**
 * `realise`: a thin shell over the public API. Commands: build, ensure, repair, path-info, copy.
 * Flags and `--option` names are nix-store's and nix.conf's; exit status as Nix's.
 */
import { cpus } from 'node:os';
import {
  BinaryCacheSubstituter, BuildEngine, createRemoteBuilders, BuildFailedError, RealiseError, copyToBinaryCache, openStore, LocalStore,
  type BuildEngineOptions, type Store, type TargetResult,
} from '../index.js';
import { parseArgs, parseBool, parseIntOption, UsageError, type CliArgs } from './args.js';
import { ProgressDisplay } from './progress.js';

const USAGE = `usage: realise COMMAND [FLAGS] ARGS

commands:
  build DRV[^OUTPUTS]...   realise derivations (DRV^out,dev or DRV^*) and print their output paths
  ensure PATH...           make store paths valid, substituting them
  repair PATH...           substitute again, or rebuild the deriver in repair mode
  path-info [-r] PATH...   show path info (narHash, narSize, references, deriver), like nix path-info
  copy --to URL PATH...    write the closure of PATHs to a binary cache (file:// URL)

flags:
  --store ROOT|local?root=..&store=..&state=..&log=..   the store (default: the embedded default store)
  --substituter URL  --trusted-public-key KEY  --max-jobs N  --cores N  --keep-going  --fallback
  --check  --repair  --timeout S  --max-silent-time S  --builders SPEC  --keep-failed  --json
  --option NAME VALUE   any of: sandbox, sandbox-fallback, sandbox-paths, extra-sandbox-paths, build-repeat,
                        enforce-determinism, max-build-log-size, log-lines, post-build-hook, system,
                        system-features, extra-platforms, require-sigs, substituters, trusted-public-keys,
                        max-substitution-jobs, secret-key, compression
`;

async function openStoreArg(spec: string | undefined): Promise<Store> {
  if (!spec) return LocalStore.openDefault();
  return openStore(spec);
}

function engineOptions(args: CliArgs, store: Store): BuildEngineOptions {
  const o = args.options;
  const opts: BuildEngineOptions & Record<string, unknown> = { store };
  const subs = [...args.substituters, ...(o.get('substituters') ?? '').split(/\s+/).filter(Boolean), ...(o.get('extra-substituters') ?? '').split(/\s+/).filter(Boolean)];
  const keys = [...args.trustedPublicKeys, ...(o.get('trusted-public-keys') ?? '').split(/\s+/).filter(Boolean), ...(o.get('extra-trusted-public-keys') ?? '').split(/\s+/).filter(Boolean)];
  const requireSigs = o.has('require-sigs') ? parseBool('require-sigs', o.get('require-sigs')!) : true;
  if (subs.length) opts.substituters = subs.map((u) => new BinaryCacheSubstituter(u, { trustedPublicKeys: keys, requireSigs }));
  for (const [name, value] of o) {
    switch (name) {
      case 'max-jobs': opts.maxJobs = value === 'auto' ? cpus().length : parseIntOption(name, value); break;
      case 'cores': opts.cores = parseIntOption(name, value); break;
      case 'keep-going': opts.keepGoing = parseBool(name, value); break;
      case 'fallback': opts.fallback = parseBool(name, value); break;
      case 'keep-failed': opts.keepFailed = parseBool(name, value); break;
      case 'sandbox': opts.sandbox = value === 'relaxed' ? 'relaxed' : parseBool(name, value); break;
      case 'sandbox-fallback': opts.sandboxFallback = parseBool(name, value); break;
      case 'sandbox-paths': case 'extra-sandbox-paths':
        opts.sandboxPaths = [...(opts.sandboxPaths ?? []), ...value.split(/\s+/).filter(Boolean)]; break;
      case 'build-repeat': opts.buildRepeat = parseIntOption(name, value); break;
      case 'enforce-determinism': opts.enforceDeterminism = parseBool(name, value); break;
      case 'max-silent-time': opts.maxSilentTime = parseIntOption(name, value); break;
      case 'timeout': opts.buildTimeout = parseIntOption(name, value); break;
      case 'max-build-log-size': opts.maxLogSize = parseIntOption(name, value); break;
      case 'log-lines': opts.logLines = parseIntOption(name, value); break;
      case 'post-build-hook': opts.postBuildHook = value; break;
      case 'system': opts.system = value; break;
      case 'system-features': opts.systemFeatures = value.split(/\s+/).filter(Boolean); break;
      case 'extra-platforms': opts.extraPlatforms = value.split(/\s+/).filter(Boolean); break;
      case 'max-substitution-jobs': opts.maxSubstitutionJobs = parseIntOption(name, value); break;
      case 'substituters': case 'extra-substituters': case 'trusted-public-keys': case 'extra-trusted-public-keys':
      case 'require-sigs': case 'secret-key': case 'compression': case 'builders': break;
      default: throw new UsageError(`unknown setting '${name}'`);
    }
  }
  return opts;
}

/** Output paths of a result that the target asked for, sorted by output name. */
function wantedOutputs(r: TargetResult): [string, string][] {
  if ('path' in r.target) return [];
  const wanted = r.target.outputs === undefined || r.target.outputs === '*' ? undefined : new Set(r.target.outputs);
  return Object.entries(r.result.builtOutputs)
    .filter(([name]) => !wanted || wanted.has(name))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function printResults(args: CliArgs, results: TargetResult[]): void {
  if (args.json) {
    // The shape of `nix build --json`: one object per target.
    process.stdout.write(JSON.stringify(results.map((r) => ('path' in r.target
      ? { path: r.path }
      : { drvPath: r.path, outputs: Object.fromEntries(wantedOutputs(r)) }))) + '\n');
    return;
  }
  for (const r of results) {
    if ('path' in r.target) process.stdout.write(r.path + '\n');
    else for (const [, p] of wantedOutputs(r)) process.stdout.write(p + '\n');
  }
}

async function run(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  if (args.help || !args.command) {
    process.stdout.write(USAGE);
    return args.help ? 0 : 1;
  }
  const store = await openStoreArg(args.store);
  try {
    switch (args.command) {
      case 'build': case 'ensure': case 'repair': {
        const opts = engineOptions(args, store);
        const builders = args.options.get('builders');
        if (builders) opts.builders = createRemoteBuilders(builders);
        const engine = new BuildEngine(opts);
        const display = new ProgressDisplay(engine, process.stderr);
        const ac = new AbortController();
        const onSig = () => ac.abort();
        process.once('SIGINT', onSig);
        process.once('SIGTERM', onSig);
        try {
          if (args.positional.length === 0) throw new UsageError(`'${args.command}' needs at least one argument`);
          if (args.command === 'repair') {
            for (const p of args.positional) await engine.repairPath(p, { signal: ac.signal });
            return 0;
          }
          const mode = args.check ? 'check' : args.repair ? 'repair' : 'normal';
          const targets = args.command === 'ensure' ? args.positional.map((p) => ({ path: p })) : args.positional;
          const results = await engine.buildPaths(targets, { mode, signal: ac.signal });
          display.stop();
          printResults(args, results);
          return 0;
        } finally {
          display.stop();
          process.off('SIGINT', onSig);
          process.off('SIGTERM', onSig);
        }
      }
      case 'path-info': {
        const infos = [];
        const paths = args.recursive ? [...(await store.computeClosure(args.positional))].sort() : args.positional;
        for (const p of paths) {
          const info = await store.queryPathInfo(p);
          if (!info) throw new RealiseError('invalid-path', `path '${p}' is not valid`);
          infos.push(info);
        }
        if (args.json) {
          // Same fields and order as `nix path-info --json` of Nix 2.8.
          process.stdout.write(JSON.stringify(infos.map((i) => ({
            path: i.path, narHash: i.narHash.toString('sri'), narSize: i.narSize, references: [...i.references].sort(),
            ...(i.ca ? { ca: i.ca } : {}), ...(i.deriver ? { deriver: i.deriver } : {}),
            ...(i.registrationTime ? { registrationTime: i.registrationTime } : {}),
            ...(i.ultimate ? { ultimate: true } : {}), ...(i.sigs?.length ? { signatures: i.sigs } : {}),
          }))) + '\n');
        } else {
          for (const i of infos) process.stdout.write(`${i.path}\n`);
        }
        return 0;
      }
      case 'copy': {
        if (!args.to) throw new UsageError("'copy' needs '--to URL'");
        const secretKey = args.options.get('secret-key');
        const compression = args.options.get('compression');
        const written = await copyToBinaryCache(store, args.positional, args.to, {
          ...(secretKey ? { secretKey: (await import('node:fs')).readFileSync(secretKey, 'utf8').trim() } : {}),
          ...(compression ? { compression: compression as never } : {}),
        });
        if (args.json) process.stdout.write(JSON.stringify(written) + '\n');
        return 0;
      }
      default:
        throw new UsageError(`unknown command '${args.command}'`);
    }
  } finally {
    await store.close();
  }
}

run(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e: unknown) => {
    if (e instanceof BuildFailedError) {
      for (const f of e.failures) process.stderr.write(`error: ${f.result.errorMsg ?? `build of '${f.path}' failed`}\n`);
      process.exitCode = e.exitStatus;
    } else if (e instanceof UsageError) {
      process.stderr.write(`error: ${e.message}\nTry 'realise --help' for more information.\n`);
      process.exitCode = 1;
    } else if (e instanceof RealiseError) {
      process.stderr.write(`error: ${e.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`error: ${(e as Error)?.stack ?? String(e)}\n`);
      process.exitCode = 1;
    }
  },
);
