/**
 * `realise gc` (nix-store --gc and --delete) and `realise store optimise` (nix-store --optimise): the
 * same flags, output and messages as Nix 2.8. stdout has what nix-store prints there (the dead or live
 * paths, the roots, "N store paths deleted, X MiB freed"); stderr Nix's informational lines, and on a
 * terminal a status line with the paths and bytes freed so far.
 */
import { compileOptimiseAddon, LocalStore, type GcAction, type GcEvent, type Store } from '../index.js';
import { parseBool, parseUnitPrefixed, UsageError, type CliArgs } from './args.js';
import { CliError, followLinksToStorePath } from './paths.js';

/** Nix's showBytes. */
function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(2)} MiB`;
}

/** `--max-freed N` with an optional K/M/G/T suffix (Nix's getIntArg with units, of a signed value); negative means 0. */
export function parseMaxFreed(v: string): number {
  return Math.max(parseUnitPrefixed(v, true), 0);
}

interface GcOperation {
  action: GcAction;
  printRoots: boolean;
  ignoreLiveness: boolean;
  maxFreed?: number;
}

/**
 * What nix-store's opGC or opDelete makes of its flags, with their errors: --delete takes only
 * `--ignore-liveness` (else "unknown flag"); --gc `--print-roots` (which wins over the others),
 * `--print-live`, `--print-dead` (the last of these two counts) and `--max-freed N` (else "bad
 * sub-operation"); arguments only with --delete.
 */
export function gcOperation(args: CliArgs): GcOperation {
  const { flags } = args.gc;
  const op: GcOperation = { action: args.gc.delete ? 'delete-specific' : 'delete-dead', printRoots: false, ignoreLiveness: false };
  for (let i = 0; i < flags.length; i++) {
    const f = flags[i]!;
    if (args.gc.delete) {
      if (f !== '--ignore-liveness') throw new UsageError(`unknown flag '${f}'`);
      op.ignoreLiveness = true;
    } else if (f === '--print-roots') op.printRoots = true;
    else if (f === '--print-live') op.action = 'print-live';
    else if (f === '--print-dead') op.action = 'print-dead';
    else if (f === '--max-freed') op.maxFreed = parseMaxFreed(flags[++i]!);
    else throw new UsageError(`bad sub-operation '${f}' in GC`);
  }
  if (!args.gc.delete && args.positional.length) throw new UsageError('no arguments expected');
  return op;
}

function localStoreOf(store: Store, what: string): LocalStore {
  if (!(store instanceof LocalStore)) throw new CliError(`'${what}' needs a local store`);
  return store;
}

function boolSetting(args: CliArgs, names: string[], dflt: boolean): boolean {
  for (const n of names) {
    const v = args.options.get(n);
    if (v !== undefined) return parseBool(n, v);
  }
  return dflt;
}

/** Informational lines on stderr, with a status line below them on a terminal. */
class GcDisplay {
  private status = '';
  private last = 0;
  constructor(
    private readonly quiet: boolean,
    private readonly tty = !!process.stderr.isTTY,
  ) {}

  line(message: string): void {
    if (this.quiet) return;
    this.clear();
    process.stderr.write(message + '\n');
    this.draw();
  }

  /** The status line (redrawn at most every 100 ms). */
  progress(status: string): void {
    if (!this.tty || this.quiet) return;
    this.status = status;
    const now = Date.now();
    if (now - this.last < 100) return;
    this.last = now;
    this.clear();
    this.draw();
  }

  private clear(): void {
    if (this.tty && this.status) process.stderr.write('\r\x1b[K');
  }
  private draw(): void {
    if (this.tty && this.status) process.stderr.write(this.status);
  }
  done(): void {
    this.clear();
    this.status = '';
  }
}

export async function gcCommand(args: CliArgs, store: Store): Promise<number> {
  const local = localStoreOf(store, 'gc');
  const { action, printRoots, ignoreLiveness, maxFreed } = gcOperation(args);
  if (printRoots) {
    const lines: Array<[string, string]> = [];
    for (const [target, links] of local.findRoots()) for (const link of links) lines.push([link, target]);
    lines.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    for (const [link, target] of lines) process.stdout.write(`${link} -> ${target}\n`);
    return 0;
  }
  const display = new GcDisplay(args.quiet);
  let deleted = 0;
  let bytesFreed = 0;
  const onEvent = (e: GcEvent) => {
    if (e.type === 'info') display.line(e.message);
    else if (e.type === 'deleted') {
      bytesFreed = e.bytesFreed;
      display.progress(`[${++deleted} paths deleted, ${mib(e.bytesFreed)} freed]`);
    }
  };
  const ac = new AbortController();
  const onSig = () => ac.abort();
  // As Nix's PrintFreed, the summary of a deleting collection is printed however it ends: a path that is
  // still alive, an interrupt or a failure leaves "N store paths deleted" of what went before.
  const deleting = action === 'delete-dead' || action === 'delete-specific';
  const paths = action === 'delete-specific' ? args.positional.map((p) => followLinksToStorePath(store.storeDir, p)) : undefined;
  const keepOutputs = boolSetting(args, ['keep-outputs', 'gc-keep-outputs'], false);
  const keepDerivations = boolSetting(args, ['keep-derivations', 'gc-keep-derivations'], true);
  // (Only now: the finally below removes them; what throws above leaves none behind.)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSig);
  try {
    const r = await local.collectGarbage({
      action,
      paths,
      ignoreLiveness,
      maxFreed,
      keepOutputs,
      keepDerivations,
      signal: ac.signal,
      onEvent,
    });
    display.done();
    if (deleting) [deleted, bytesFreed] = [r.paths.length, r.bytesFreed];
    else for (const p of r.paths) process.stdout.write(p + '\n');
    return 0;
  } finally {
    display.done();
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSig);
    if (deleting) process.stdout.write(`${deleted} store paths deleted, ${mib(bytesFreed)} freed\n`);
  }
}

/** `realise store optimise`: nix-store --optimise. */
export async function storeCommand(args: CliArgs, store: Store): Promise<number> {
  const [sub, ...rest] = args.positional;
  if (sub !== 'optimise') throw new UsageError(sub ? `unknown 'store' subcommand '${sub}'` : "'store' needs a subcommand: optimise");
  // nix-store --optimise takes neither flags of its own nor arguments, and says so in one message.
  if (rest.length || args.opFlags.length) throw new UsageError('no arguments expected');
  const local = localStoreOf(store, 'store optimise');
  const display = new GcDisplay(args.quiet);
  // The native loop (and its registration with the store): compiled once; without a C compiler, JavaScript does the work.
  await compileOptimiseAddon().catch(() => undefined);
  const stats = await local.optimiseStore({
    onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
    onProgress: (done, expected, s) => display.progress(`[${done}/${expected} paths optimised, ${mib(s.bytesFreed)} freed]`),
  });
  display.done();
  if (!args.quiet) process.stderr.write(`${mib(stats.bytesFreed)} freed by hard-linking ${stats.filesLinked} files\n`);
  return 0;
}
