/**
 * Nix's registerOutputs, in its steps: scan (outputs must exist and not be group/world writable; they are
 * canonicalised and scanned for references to the input closure and the outputs), order (topologically by
 * their references to each other, cycles rejected), finalise each output by its kind (rewritten from
 * scratch to final paths; content-addressed ones hashed, a fixed output's hash checked, a mismatch still
 * registering the content under its true path) and move it into place, then check (outputChecks), compare
 * (check mode; between rounds) and register in one transaction.
 */
import { lstatSync, promises as fsp, readFileSync, type Stats } from 'node:fs';
import { canonicaliseFileSync, canonicalisePathMetaData, canonicalXattrOps, deleteTree, movePathSync } from '../store/canonicalise.js';
import { loadedXattrOps, type XattrOps } from '../store/xattrs.js';
import '../platform/native-xattrs.js'; // the native operations that remove extended attributes
import '../platform/native-optimise.js'; // the native loop of auto-optimise-store
import { strerror } from '../store/system-error.js';
import { Hash, HashModulo } from '../store/hash.js';
import { collect, dumpPath, hashPath, narOfRegularFile, restorePath, streamOf } from '../store/nar.js';
import { scanBufferForReferences, scanForReferences } from '../store/references.js';
import { RealiseError, UnsupportedFileTypeError } from '../store/errors.js';
import type { PathInfo } from '../store/store-api.js';
import { makeFixedOutputPath, outputPathName, storePathHashPart, storePathName, type StorePath } from '../store/store-path.js';
import { type BuildableOutput, type DrvView } from './drv-view.js';
import { checkOutputs } from './output-checks.js';
import { BadDerivationError } from '../derivation/errors.js';
import type { OutputChecks } from '../derivation/parsed-attrs.js';
import { isRejected, rejected, type Rejected } from './rejected.js';
import { registerBuiltRealisations, registersRealisations } from './realisations.js';
import type { BuildMode, Worker } from './worker.js';
import { signPathInfo } from '../substituter/narinfo.js';
import { hintfmt } from '../store/nix-message.js';

export interface RoundOutputs {
  /** Output name → final path. */
  readonly paths: Record<string, StorePath>;
  /** Output name → NAR hash (base32), to compare rounds. */
  readonly narHashes: Record<string, string>;
  /**
   * With buildRepeat: the first round's outputs, in place at their final paths but registered only when
   * every round agreed (as Nix, which registers after the last round); content-addressed ones are not here
   * (they are registered at once, as Nix does).
   */
  readonly pending?: readonly PathInfo[];
}

export interface RegisterPlan {
  readonly mode: BuildMode;
  readonly scratch: ReadonlyMap<string, StorePath>;
  readonly inputPaths: ReadonlySet<StorePath>;
  readonly round: number;
  readonly rounds: number;
  readonly previous: RoundOutputs | undefined;
  readonly isolated: boolean;
}

export interface Registered {
  readonly outputs: RoundOutputs;
  /** This round's outputs differ from the previous round's. */
  readonly nonDeterministic: boolean;
  /** No more rounds (they differed and determinism is not enforced). */
  readonly stopRounds: boolean;
}

/** An output as the scan found it. */
interface Scanned {
  name: string;
  scratch: StorePath;
  real: string;
  /** The output's path as Nix names it in messages (inside the build's chroot when sandboxed). */
  shown: string;
  refs: Set<StorePath>;
  isReg: boolean;
  isExec: boolean;
  /**
   * The NAR of a small regular-file output, read once (fast path): scanning, hashing and rewriting use it
   * instead of walking the file again. Dropped as soon as the file on disk changes.
   */
  nar?: Buffer | undefined;
}

/**
 * Outputs that are a regular file up to this size take the synchronous fast path: one read, and the NAR
 * kept in memory for the scan and the hash. Single syscalls on a small file never hold the event loop
 * for long; anything bigger (or a directory, or a symlink) streams asynchronously as before.
 */
const SMALL_FILE = 64 * 1024;

export async function registerOutputs(w: Worker, view: DrvView, plan: RegisterPlan): Promise<Registered | Rejected> {
  // (Each step returns its value as it is when it had nothing to wait for, the usual case: only promises are awaited.)
  const scanning = scanOutputs(w, view, plan);
  const scanned = scanning instanceof Promise ? await scanning : scanning;
  if (isRejected(scanned)) return scanned;
  const order = orderOutputs(view.drvPath, scanned);
  if (isRejected(order)) return order;
  const fin = new Finalised(w, view, plan);
  for (const name of order) {
    const finalising = fin.finalise(scanned.get(name)!);
    const bad = finalising instanceof Promise ? await finalising : finalising;
    if (bad) return bad;
  }
  if (plan.mode === 'check') return compareWithRegistered(w, view, plan, fin);
  // Outputs rejected by their checks stay in the store, invalid (Nix moved them there before checking).
  // (Outputs without checks, the usual case: no asynchronous step.)
  const checks = new Map<string, OutputChecks | Rejected>();
  for (const name of fin.infos.keys()) {
    const c = outputChecksOf(view, name);
    if (c !== undefined) checks.set(name, c);
  }
  const bad = checks.size > 0 ? await checkOutputs(w.ctx.store, fin.infos, fin.finalPaths, (name) => checks.get(name)) : undefined;
  if (bad) return { ...bad, outputsStay: true };
  if (plan.round > 1 && plan.previous) return compareRounds(w, view, plan, plan.previous, fin);
  return registerRound(w, view, plan, fin);
}

/**
 * Scan: each output exists, is not group/world writable, is canonicalised and scanned for references.
 * Outputs that are small regular files of a derivation that is not fixed-output (the usual case) are
 * scanned without an asynchronous step: when all are, the result is returned as it is, not as a promise;
 * from the first output that needs more, an asynchronous continuation goes on with the lstat made of it.
 */
function scanOutputs(w: Worker, view: DrvView, plan: RegisterPlan): Map<string, Scanned> | Rejected | Promise<Map<string, Scanned> | Rejected> {
  const xattrs = loadedXattrOps();
  if (!xattrs || view.isFixedOutput) return scanOutputsAsync(w, view, plan, xattrs);
  const { store } = w.ctx;
  // Referenceable: the input closure and the scratch outputs.
  const candidates = [...plan.inputPaths, ...plan.scratch.values()];
  const scanned = new Map<string, Scanned>();
  const names = [...view.outputs.keys()];
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    const scratch = plan.scratch.get(name)!;
    const real = store.toRealPath(scratch);
    const st = lstatSync(real, { throwIfNoEntry: false });
    // Anything but a small file that passes the permission check: the rest of the scan takes the general way.
    if (!st || !st.isFile() || st.size > SMALL_FILE || (st.mode & 0o022) !== 0) return scanOutputsAsync(w, view, plan, xattrs, { index: i, scanned, st });
    const r = scanSmallFile(store, name, scratch, real, shownPath(store, view, plan, scratch), st, xattrs, candidates);
    if (isRejected(r)) return r;
    scanned.set(name, r);
  }
  return scanned;
}

/**
 * Where Nix names the output in messages: inside the build's chroot (`<drv>.chroot/<store path>`) when it
 * ran in the sandbox, as Nix looks for it there (ours are moved out already).
 */
function shownPath(store: Worker['ctx']['store'], view: DrvView, plan: RegisterPlan, scratch: StorePath): string {
  return plan.isolated ? `${store.toRealPath(view.drvPath)}.chroot${scratch}` : store.toRealPath(scratch);
}

/** The fast path for a small regular file: canonicalise, read once, keep the NAR for the scan and the hash. */
function scanSmallFile(
  store: Worker['ctx']['store'],
  name: string,
  scratch: StorePath,
  real: string,
  shown: string,
  st: Stats,
  xattrs: XattrOps | undefined,
  candidates: readonly StorePath[],
): Scanned | Rejected {
  const isExec = (st.mode & 0o100) !== 0;
  let nar: Buffer;
  try {
    canonicaliseFileSync(real, st, xattrs, store.ignoredAcls);
    nar = narOfRegularFile(readFileSync(real), isExec);
  } catch (e) {
    return rejected('output-rejected', (e as Error).message);
  }
  return { name, scratch, real, shown, refs: scanBufferForReferences(nar, candidates), isReg: true, isExec, nar };
}

/**
 * The scan of the outputs, all of them, or from where scanOutputs stopped (`from`: the outputs before
 * `index` are in `scanned`; `st` is the lstat it made of the one at `index`).
 */
async function scanOutputsAsync(
  w: Worker,
  view: DrvView,
  plan: RegisterPlan,
  loaded: XattrOps | undefined,
  from?: { index: number; scanned: Map<string, Scanned>; st: Stats | undefined },
): Promise<Map<string, Scanned> | Rejected> {
  const { store } = w.ctx;
  const candidates = [...plan.inputPaths, ...plan.scratch.values()];
  const scanned = from?.scanned ?? new Map<string, Scanned>();
  const xattrs = loaded ?? (await canonicalXattrOps());
  const names = [...view.outputs.keys()];
  for (let i = from?.index ?? 0; i < names.length; i++) {
    const name = names[i]!;
    const scratch = plan.scratch.get(name)!;
    const real = store.toRealPath(scratch);
    const shown = shownPath(store, view, plan, scratch);
    let st = from && i === from.index ? from.st : lstatSync(real, { throwIfNoEntry: false });
    if (!st) {
      return rejected('misc-failure', hintfmt("builder for '%s' failed to produce output path for output '%s' at '%s'", view.drvPath, name, shown));
    }
    if (!st.isSymbolicLink() && (st.mode & 0o022) !== 0) {
      return rejected('output-rejected', `suspicious ownership or permission on '${shown}' for output '${name}'; rejecting this build output`);
    }
    if (view.isFixedOutput) {
      const bad = await replaceByCopy(real, shown);
      if (bad) return bad;
      st = lstatSync(real);
    }
    const isExec = (st.mode & 0o100) !== 0;
    if (st.isFile() && st.size <= SMALL_FILE) {
      const r = scanSmallFile(store, name, scratch, real, shown, st, xattrs, candidates);
      if (isRejected(r)) return r;
      scanned.set(name, r);
      continue;
    }
    const bad = await canonicaliseOutput(real, shown, store.ignoredAcls);
    if (bad) return bad;
    const refs = await scanForReferences(dumpPath(real), candidates);
    scanned.set(name, { name, scratch, real, shown, refs, isReg: st.isFile(), isExec });
  }
  return scanned;
}

/**
 * Replace a fixed-output build's output by a copy of itself, in new inodes. Its builder shares the host's
 * network namespace and so reaches abstract Unix sockets of host processes: a descriptor of the output it
 * handed out (CVE-2024-27297) must not reach what gets registered. The old files are deleted.
 */
async function replaceByCopy(real: string, shown: string): Promise<Rejected | undefined> {
  const copy = `${real}.copy-${process.pid}`;
  try {
    await deleteTree(copy);
    await restorePath(copy, dumpPath(real));
    await deleteTree(real);
    await fsp.rename(copy, real);
    return undefined;
  } catch (e) {
    await deleteTree(copy).catch(() => {});
    return rejected('output-rejected', `cannot copy the output '${shown}' of a fixed-output derivation: ${(e as Error).message}`);
  }
}

async function canonicaliseOutput(real: string, shown: string, ignoredAcls: readonly string[] | undefined): Promise<Rejected | undefined> {
  try {
    await canonicalisePathMetaData(real, { ignoredAcls });
    return undefined;
  } catch (e) {
    // A FIFO, socket or device: Nix's words, naming the file where Nix finds it.
    if (e instanceof UnsupportedFileTypeError && e.file.startsWith(real)) {
      return rejected('output-rejected', `file '${shown}${e.file.slice(real.length)}' has an unsupported type`);
    }
    const sys = canonicaliseSysError(e as NodeJS.ErrnoException, real, shown);
    // Nix's SysError is no BuildError: it ends the call, even with keepGoing (exit 1).
    if (sys !== undefined) return rejected('misc-failure', sys, { endsCall: true });
    return rejected('output-rejected', (e as Error).message);
  }
}

/**
 * A system call of canonicalisePathMetaData that failed inside the output (a directory the builder left
 * without permissions, as an ordinary user: Nix's canonicalisation makes it 0444 before reading it), in
 * Nix's SysError words naming the file where Nix finds it; undefined for other errors.
 */
function canonicaliseSysError(e: NodeJS.ErrnoException, real: string, shown: string): string | undefined {
  const what = e.syscall === 'lstat' ? 'getting status of' : e.syscall === 'scandir' ? 'opening directory' : undefined;
  const text = strerror(e);
  if (what === undefined || text === undefined || e.path === undefined || !(e.path === real || e.path.startsWith(`${real}/`))) return undefined;
  return `${what} '${shown}${e.path.slice(real.length)}': ${text}`;
}

/** Order: outputs sorted topologically by their references to each other; a cycle ends the call. */
function orderOutputs(drvPath: StorePath, scanned: ReadonlyMap<string, Scanned>): string[] | Rejected {
  // One output (the usual case): its references to itself do not count, so it is its own order.
  if (scanned.size === 1) return [...scanned.keys()];
  const byScratch = new Map<StorePath, string>();
  for (const s of scanned.values()) byScratch.set(s.scratch, s.name);
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, parent: string | undefined): Rejected | undefined => {
    const st = state.get(name);
    if (st === 'done') return undefined;
    if (st === 'visiting') {
      const message = `cycle detected in build of '${drvPath}' in the references of output '${name}' from output '${parent}'`;
      return rejected('output-rejected', message, { endsCall: true });
    }
    state.set(name, 'visiting');
    for (const r of scanned.get(name)!.refs) {
      const o = byScratch.get(r);
      const bad = o && o !== name ? visit(o, name) : undefined;
      if (bad) return bad;
    }
    state.set(name, 'done');
    order.push(name);
    return undefined;
  };
  for (const name of [...scanned.keys()].sort()) {
    const bad = visit(name, undefined);
    if (bad) return bad;
  }
  return order;
}

/** As Nix's LocalStore::signPathInfo: the info signed by each of the `secretKeys` (its signatures a sorted set). */
function signed(w: Worker, info: PathInfo): PathInfo {
  const keys = w.ctx.options.secretKeys;
  if (!keys.length) return info;
  return { ...info, sigs: [...new Set([...(info.sigs ?? []), ...keys.map((k) => signPathInfo(info, k))])].sort() };
}

/** The outputs finalised so far, in order: their final paths and path infos, and the rewrites to them. */
class Finalised {
  /** Scratch hash part → final hash part, for the outputs finalised so far. */
  readonly outputRewrites = new Map<string, string>();
  readonly finalPaths: Record<string, StorePath> = {};
  readonly infos = new Map<string, PathInfo>();
  /** A fixed output's hash mismatch: reported after its content is registered under its true path. */
  delayed: Rejected | undefined;

  constructor(
    private readonly w: Worker,
    private readonly view: DrvView,
    private readonly plan: RegisterPlan,
  ) {}

  /**
   * Finalise one output by its kind and move it into place; its rejection, if any. An input-addressed output
   * built at its own path from the fast path's NAR, with nothing to rewrite (the usual case), is finalised
   * without an asynchronous step: the result is returned as it is, not as a promise.
   */
  finalise(s: Scanned): Rejected | undefined | Promise<Rejected | undefined> {
    const { view } = this;
    const spec = view.outputs.get(s.name)!;
    // A deferred derivation is resolved (and the resolved one built) before any build: never here.
    if (spec.type === 'deferred')
      throw new RealiseError('bad-derivation', `output '${s.name}' of '${view.drvPath}' is deferred; the derivation must be resolved before it is built`);
    if (spec.type !== 'input-addressed' || s.scratch !== spec.path || this.outputRewrites.size > 0 || !s.nar) return this.finaliseAsync(s, spec);
    const info = this.infoOf(s, spec.path, Hash.of('sha256', s.nar), s.nar.length);
    return this.moveIntoPlace(s, info)?.then(() => undefined);
  }

  private async finaliseAsync(s: Scanned, spec: Exclude<BuildableOutput, { type: 'deferred' }>): Promise<Rejected | undefined> {
    const { plan } = this;
    // Already valid and not checking: keep the registered output, drop the rebuilt one (Nix's AlreadyRegistered).
    if (plan.mode === 'normal' && plan.round === 1 && spec.type !== 'floating' && s.scratch !== spec.path && (await this.w.ctx.store.isValidPath(spec.path))) {
      this.outputRewrites.set(storePathHashPart(s.scratch), storePathHashPart(spec.path));
      this.finalPaths[s.name] = spec.path;
      await deleteTree(s.real).catch(() => {});
      return undefined;
    }
    const info = spec.type === 'input-addressed' ? await this.inputAddressed(s, spec.path) : await this.contentAddressed(s, spec);
    if (isRejected(info)) return info;
    const moving = this.moveIntoPlace(s, info);
    if (moving) await moving;
    return undefined;
  }

  /** The output's references with the outputs finalised so far at their final paths; `self` apart. */
  private rewrittenRefs(s: Scanned): { self: boolean; refs: StorePath[] } {
    let self = false;
    const refs: StorePath[] = [];
    for (const r of s.refs) {
      if (r === s.scratch) {
        self = true;
        continue;
      }
      const to = this.outputRewrites.get(storePathHashPart(r));
      refs.push(to ? `${this.w.ctx.store.storeDir}/${to}-${storePathName(r)}` : r);
    }
    return { self, refs };
  }

  /** Rewrite the output in place by `rewrites` (the fast path's NAR is dropped when it changed). */
  private async rewrite(s: Scanned, rewrites: ReadonlyMap<string, string>): Promise<void> {
    if (await rewriteTree(s.real, rewrites, s.nar)) s.nar = undefined;
  }

  private async inputAddressed(s: Scanned, path: StorePath): Promise<PathInfo> {
    if (s.scratch !== path) this.outputRewrites.set(storePathHashPart(s.scratch), storePathHashPart(path));
    // (Built at its final path with no other output rewritten, the usual case: nothing to rewrite.)
    if (this.outputRewrites.size > 0) await this.rewrite(s, this.outputRewrites);
    const { hash, size } = s.nar ? { hash: Hash.of('sha256', s.nar), size: s.nar.length } : await hashPath(s.real);
    return this.infoOf(s, path, hash, size);
  }

  /** An input-addressed output's path info: its references with the outputs finalised so far at their final paths. */
  private infoOf(s: Scanned, path: StorePath, narHash: Hash, narSize: number): PathInfo {
    const { self, refs } = this.rewrittenRefs(s);
    if (self) refs.push(path);
    return { path, narHash, narSize, references: refs.sort() };
  }

  /** A fixed or floating content-addressed output: its path from its content, hashed modulo its own scratch hash. */
  private async contentAddressed(s: Scanned, spec: Extract<BuildableOutput, { type: 'fixed' | 'floating' }>): Promise<PathInfo | Rejected> {
    const { view } = this;
    const { store } = this.w.ctx;
    const method = spec.method;
    const algorithm = spec.type === 'fixed' ? spec.hash.algorithm : spec.algorithm;
    if (method === 'flat' && (!s.isReg || s.isExec)) {
      return rejected(
        'output-rejected',
        `output path '${s.shown}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)`,
      );
    }
    await this.rewrite(s, this.outputRewrites);
    const scratchHash = storePathHashPart(s.scratch);
    const ca = new HashModulo(algorithm, scratchHash);
    if (method === 'recursive') for await (const c of dumpPath(s.real)) ca.update(c);
    else ca.update(await fsp.readFile(s.real));
    const got = ca.finish().hash;
    const { self, refs } = this.rewrittenRefs(s);
    const nar = new HashModulo('sha256', scratchHash);
    for await (const c of dumpPath(s.real)) nar.update(c);
    const narHS = nar.finish();
    // As Nix's makeFixedOutputPath: only a sha256 NAR hash puts a self-reference into the path; for other
    // kinds it is left out of the path (the path info still lists it).
    const selfInPath = self && method === 'recursive' && algorithm === 'sha256';
    const path = makeFixedOutputPath(method, got, outputPathName(view.name, s.name), {
      references: refs,
      hasSelfReference: selfInPath,
      storeDir: store.storeDir,
    });
    if (self) refs.push(path);
    let info: PathInfo = {
      path,
      narHash: narHS.hash,
      narSize: narHS.size,
      references: refs.sort(),
      ca: `fixed:${method === 'recursive' ? 'r:' : ''}${got.toString('base32')}`,
    };
    if (spec.type === 'fixed' && !spec.hash.equals(got)) {
      this.delayed = rejected(
        'output-rejected',
        hintfmt("hash mismatch in fixed-output derivation '%s':\n  specified: %s\n     got:    %s", view.drvPath, spec.hash.sri, got.sri),
        { hashMismatch: true },
      );
    }
    if (self && s.scratch !== path) {
      // Self-references were hashed as zeroes; now point them at the final path. Nix 2.8 registers the
      // plain NAR hash of the rewritten content (checked against real Nix in test/scheduler).
      this.outputRewrites.set(scratchHash, storePathHashPart(path));
      await this.rewrite(s, new Map([[scratchHash, storePathHashPart(path)]]));
      const rewritten = await hashPath(s.real);
      info = { ...info, narHash: rewritten.hash, narSize: rewritten.size };
    }
    return info;
  }

  /**
   * Move the output to its final path (unless checking or in a later round: then it stays for comparison)
   * and canonicalise it there, then record it; a promise only when there is something to wait for (a
   * fast-path output built at its final path and not rewritten is canonical already: recorded at once).
   */
  private moveIntoPlace(s: Scanned, info: PathInfo): Promise<void> | undefined {
    if (s.nar !== undefined && this.w.ctx.store.toRealPath(info.path) === s.real) {
      this.record(s, info);
      return undefined;
    }
    return this.moveAndCanonicalise(s, info);
  }

  private async moveAndCanonicalise(s: Scanned, info: PathInfo): Promise<void> {
    const { plan } = this;
    const { store } = this.w.ctx;
    const finalReal = store.toRealPath(info.path);
    const compared = plan.mode === 'check' || plan.round > 1;
    if (finalReal !== s.real) {
      if (plan.mode === 'repair') {
        const old = `${finalReal}.old-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
        try {
          movePathSync(finalReal, old);
        } catch {
          /* not there */
        }
        movePathSync(s.real, finalReal);
        await deleteTree(old).catch(() => {});
      } else if (compared) {
        // Leave the new output where it is, for comparison.
      } else if (await store.isValidPath(info.path)) {
        await deleteTree(s.real);
      } else {
        await deleteTree(finalReal).catch(() => {});
        movePathSync(s.real, finalReal);
      }
    }
    await canonicalisePathMetaData(compared ? s.real : finalReal, { ignoredAcls: store.ignoredAcls }).catch(() => {});
    this.record(s, info);
  }

  /** The output is in place: its final path and path info are recorded, and later outputs rewritten to it. */
  private record(s: Scanned, info: PathInfo): void {
    if (s.scratch !== info.path) this.outputRewrites.set(storePathHashPart(s.scratch), storePathHashPart(info.path));
    this.finalPaths[s.name] = info.path;
    // Object.assign, not a spread followed by new keys (the same object): V8 makes new hidden classes for such
    // a literal each time, some 3-5 µs a call in code not optimised (a CLI run never optimises this).
    const full: PathInfo = Object.assign({}, info, { deriver: this.view.drvPath, ultimate: true, registrationTime: Math.floor(Date.now() / 1000) });
    this.infos.set(s.name, signed(this.w, full));
  }

  outputs(pending?: readonly PathInfo[]): RoundOutputs {
    const narHashes: Record<string, string> = {};
    for (const [n, i] of this.infos) narHashes[n] = i.narHash.base32;
    return pending ? { paths: this.finalPaths, narHashes, pending } : { paths: this.finalPaths, narHashes };
  }
}

/** Check mode: compare with the registered outputs; a difference is kept as `<path>.check` with keepFailed. */
async function compareWithRegistered(w: Worker, view: DrvView, plan: RegisterPlan, fin: Finalised): Promise<Registered | Rejected> {
  const { store, options } = w.ctx;
  for (const [name, info] of fin.infos) {
    const old = await store.queryPathInfo(info.path);
    const real = store.toRealPath(plan.scratch.get(name)!);
    if (!old) {
      await deleteTree(real).catch(() => {});
      continue;
    }
    if (!old.narHash.equals(info.narHash)) {
      const differs = `derivation '${view.drvPath}' may not be deterministic: output '${store.toRealPath(info.path)}' differs`;
      if (options.keepFailed) {
        const dst = store.toRealPath(info.path) + '.check';
        await deleteTree(dst).catch(() => {});
        await fsp.rename(real, dst);
        return rejected('not-deterministic', `${differs} from '${dst}'`, { checkMismatch: true });
      }
      await deleteTree(real).catch(() => {});
      return rejected('not-deterministic', differs, { checkMismatch: true });
    }
    await deleteTree(real).catch(() => {});
    // As Nix: a path the check reproduced (e.g. one substituted) is now ultimately trusted.
    if (!old.ultimate) await store.registerValidPaths([signed(w, { ...old, ultimate: true })]);
  }
  // As Nix: a fixed output whose content does not have its hash fails the check too (exit 102), even
  // when nothing valid was there to compare it with (its true path is another one).
  if (fin.delayed) return fin.delayed;
  return { outputs: fin.outputs(), nonDeterministic: false, stopRounds: false };
}

/** A later round: compare with the previous one; after the last round (or a difference) register the first's outputs. */
async function compareRounds(w: Worker, view: DrvView, plan: RegisterPlan, previous: RoundOutputs, fin: Finalised): Promise<Registered | Rejected> {
  const { store, options } = w.ctx;
  let nonDeterministic = false;
  let stopRounds = false;
  for (const [name, info] of fin.infos) {
    const real = store.toRealPath(plan.scratch.get(name)!);
    if (previous.narHashes[name] !== info.narHash.base32) {
      nonDeterministic = true;
      const msg = `output '${info.path}' of '${view.drvPath}' differs from previous round`;
      if (options.enforceDeterminism) {
        await deleteTree(real).catch(() => {});
        // Not a check mismatch: Nix 2.8 exits with 1 here (104 only for --check).
        return rejected('not-deterministic', msg);
      }
      // Nix logs it as an error without the `error:` prefix.
      w.warn(msg, 'plain');
      stopRounds = true;
    }
    await deleteTree(real).catch(() => {});
  }
  const pending = previous.pending ?? [];
  if (plan.round === plan.rounds || stopRounds) {
    if (pending.length) await store.registerValidPaths([...pending]);
    await registerRealisations(w, view, fin.finalPaths);
    return { outputs: fin.outputs(), nonDeterministic, stopRounds };
  }
  return { outputs: fin.outputs(pending), nonDeterministic, stopRounds };
}

/**
 * Register the round's outputs in one transaction (content-addressed ones only, when more rounds follow),
 * then report a fixed output's hash mismatch; then the realisations of the outputs.
 */
async function registerRound(w: Worker, view: DrvView, plan: RegisterPlan, fin: Finalised): Promise<Registered | Rejected> {
  const { store } = w.ctx;
  if (plan.round === 1 && plan.rounds > 1) {
    // More rounds follow: leave the outputs in place, unregistered, until the rounds agree.
    const now = [...fin.infos.values()].filter((i) => i.ca);
    if (now.length) await store.registerValidPaths(now);
    return { outputs: fin.outputs([...fin.infos.values()].filter((i) => !i.ca)), nonDeterministic: false, stopRounds: false };
  }
  // Every output was canonicalised where it is now (the scan, or moveIntoPlace): not again.
  await store.registerValidPaths([...fin.infos.values()], { canonicalise: false });
  if (fin.delayed) return fin.delayed;
  // (None to register, the usual case: no asynchronous step.)
  if (registersRealisations(view, w.ctx.options.experimentalFeatures)) await registerRealisations(w, view, fin.finalPaths);
  return { outputs: fin.outputs(), nonDeterministic: false, stopRounds: false };
}

/**
 * Nix's realisations of the built outputs, once they are registered and their hashes matched: floating
 * content-addressed outputs are known only by them (Nix 2.8 writes no DerivationOutputs row for them);
 * with `ca-derivations` every output gets one.
 */
async function registerRealisations(w: Worker, view: DrvView, paths: Record<string, StorePath>): Promise<void> {
  if (registersRealisations(view, w.ctx.options.experimentalFeatures)) await registerBuiltRealisations(w.ctx.store, view, paths, w.ctx.options.secretKeys);
}

/** The checks of one output; a derivation whose checks are malformed has its outputs rejected. */
function outputChecksOf(view: DrvView, name: string): OutputChecks | Rejected | undefined {
  try {
    return view.attrs.outputChecks(name);
  } catch (e) {
    if (e instanceof BadDerivationError) return rejected('output-rejected', e.shortMessage);
    throw e;
  }
}

/**
 * Rewrite a tree in place: dump as NAR (or use the one already read), replace strings, restore. Hash
 * parts have equal length. Returns whether anything changed.
 */
async function rewriteTree(real: string, rewrites: ReadonlyMap<string, string>, narRead?: Buffer): Promise<boolean> {
  if (rewrites.size === 0) return false;
  const nar = narRead ?? (await collect(dumpPath(real)));
  let s = nar.toString('latin1');
  let changed = false;
  for (const [from, to] of rewrites) {
    if (from !== to && s.includes(from)) {
      s = s.split(from).join(to);
      changed = true;
    }
  }
  if (!changed) return false;
  await deleteTree(real);
  await restorePath(real, streamOf(Buffer.from(s, 'latin1')));
  return true;
}
