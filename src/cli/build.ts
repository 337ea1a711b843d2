/**
 * `realise build` / `ensure` (nix-store --realise): settings and targets are read here, then a no-op
 * (every target already valid, as a second run of the same command finds it) is answered straight from
 * the store, as Nix answers it (temporary roots on what it reads, no substituter opened, nothing started),
 * and anything else goes to a BuildEngine (engine-build.ts, loaded only then).
 */
import { LocalStore, alreadyValidResults, type BuildTarget, type Store } from '../index.js';
import { UsageError, type CliArgs } from './args.js';
import { warnStderr } from './messages.js';
import { followLinksToStorePath, parseTargetArg } from './paths.js';
import { byString, printRealised } from './realised.js';
import { engineSettings, type EngineSettings } from './settings.js';

/**
 * Whether a call that finds every target valid would show nothing beyond the printed results: a normal
 * build (no check, repair or dry run), no JSON log or trace recording the engine's events, no
 * `ca-derivations` (its goals register realisations of valid outputs) and no `min-free` (Nix's goal loop
 * starts its automatic collection even for a no-op).
 */
function noOpAnswerable(args: CliArgs, settings: EngineSettings): boolean {
  const o = settings.options;
  return (
    !args.check &&
    !args.repair &&
    !args.dryRun &&
    args.logFormat !== 'internal-json' &&
    !args.options.has('json-log-path') &&
    !args.traceFile &&
    !args.report &&
    !(o.experimentalFeatures ?? []).includes('ca-derivations') &&
    !((o.minFree ?? 0) > 0)
  );
}

export async function buildCommand(args: CliArgs, store: Store): Promise<number> {
  const settings = engineSettings(args, store);
  // nix-store --realise's own flags are all ours already: any other it hands over is its first error
  // (after the settings, which its option parser checked as it read them).
  if (args.opFlags.length) throw new UsageError(`unknown flag '${args.opFlags[0]}'`);
  const targets: BuildTarget[] = args.positional.map((a) =>
    args.command === 'ensure' ? { path: followLinksToStorePath(store.storeDir, a) } : parseTargetArg(store.storeDir, a),
  );
  // nix-store --realise with nothing to do succeeds quietly.
  if (targets.length === 0) return 0;
  if (store instanceof LocalStore && noOpAnswerable(args, settings)) {
    const results = await alreadyValidResults(store, targets);
    if (results) {
      await printRealised(args, store, results, undefined, warnStderr);
      return 0;
    }
  }
  return (await import('./engine-build.js')).build(args, store, settings, targets);
}
