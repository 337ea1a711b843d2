/**
 * Nix's registerOutputs: outputs must exist and not be group/world writable; they are canonicalised,
 * scanned for references (input closure + outputs), sorted topologically (cycles rejected), rewritten
 * from scratch to final paths, content-addressed where the derivation says so (fixed-output hash checked;
 * a mismatch still registers the content under its true path), checked (outputChecks), compared in check
 * mode and between rounds, then registered in one transaction.
 */
import { chmodSync, lchownSync, lstatSync, lutimesSync, promises as fsp, readFileSync, type Stats } from 'node:fs';
import { canonicalisePathMetaData, deleteTree, STORE_MTIME } from '../store/canonicalise.js';
import { Hash, HashModulo, HashSink } from '../store/hash.js';
import { collect, dumpPath, narOfRegularFile, restorePath, streamOf } from '../store/nar.js';
import { RefScanner } from '../store/references.js';
import { RealiseError, UnsupportedFileTypeError } from '../store/errors.js';
import type { PathInfo } from '../store/store-api.js';
import {
  makeFixedOutputPath, outputPathName, storePathHashPart, storePathName, isStorePath, type StorePath,
} from '../store/store-path.js';
import { rewriteStrings } from '../derivation/build-env.js';
import { getStringsAttr, type DrvView } from './drv-view.js';
import type { BuildStatus } from './results.js';
import type { BuildMode, Worker } from './worker.js';

export class OutputRejected extends Error {
  constructor(
    readonly status: BuildStatus,
    message: string,
    readonly hashMismatch = false,
    readonly checkMismatch = false,
    /**
     * Ends the whole call, even with keepGoing: Nix 2.8 throws the output-cycle error as a plain Error,
     * which leaves its worker loop (the other builds stop; measured against nix-store --keep-going).
     */
    readonly endsCall = false,
  ) {
    super(message);
  }
}

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

interface Scanned {
  name: string;
  scratch: StorePath;
  real: string;
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

const myUid = typeof process.geteuid === 'function' ? process.geteuid() : -1;
const myGid = typeof process.getegid === 'function' ? process.getegid() : -1;

/** canonicalisePathMetaData for one regular file, synchronously (same rules: 0444/0555, mtime 1, owner). */
function canonicaliseFileSync(p: string, st: Stats): void {
  const perm = st.mode & 0o7777;
  if (perm !== 0o444 && perm !== 0o555) chmodSync(p, 0o444 | (st.mode & 0o100 ? 0o111 : 0));
  if (Math.floor(st.mtimeMs / 1000) !== STORE_MTIME || st.mtimeMs % 1000 !== 0) lutimesSync(p, st.atime, STORE_MTIME);
  if (myUid === 0 && (st.uid !== myUid || st.gid !== myGid)) lchownSync(p, myUid, myGid);
}

/**
 * Nix's movePath: a read-only directory is made writable for the rename (its `..` changes) and restored
 * after; nothing else changes mode (a flat output must stay non-executable: its NAR hash depends on it).
 */
async function movePath(src: string, dst: string): Promise<void> {
  const st = await fsp.lstat(src);
  const changePerm = myUid !== 0 && st.isDirectory() && (st.mode & 0o200) === 0;
  if (changePerm) await fsp.chmod(src, (st.mode & 0o7777) | 0o200);
  await fsp.rename(src, dst);
  if (changePerm) await fsp.chmod(dst, st.mode & 0o7777);
}

function scanBuffer(nar: Buffer, candidates: Map<string, StorePath>): Set<StorePath> {
  const scanner = new RefScanner(candidates.keys());
  scanner.update(nar);
  const out = new Set<StorePath>();
  for (const h of scanner.result()) out.add(candidates.get(h)!);
  return out;
}

async function narOf(real: string): Promise<Buffer> {
  return collect(dumpPath(real));
}

async function scan(real: string, candidates: Map<string, StorePath>): Promise<Set<StorePath>> {
  const scanner = new RefScanner(candidates.keys());
  for await (const chunk of dumpPath(real)) scanner.update(chunk);
  const out = new Set<StorePath>();
  for (const h of scanner.result()) out.add(candidates.get(h)!);
  return out;
}

/**
 * Rewrite a tree in place: dump as NAR (or use the one already read), replace strings, restore. Hash
 * parts have equal length. Returns whether anything changed.
 */
async function rewriteTree(real: string, rewrites: Map<string, string>, narRead?: Buffer): Promise<boolean> {
  if (rewrites.size === 0) return false;
  const nar = narRead ?? (await narOf(real));
  let s = nar.toString('latin1');
  let changed = false;
  for (const [from, to] of rewrites) {
    if (from !== to && s.includes(from)) { s = s.split(from).join(to); changed = true; }
  }
  if (!changed) return false;
  await deleteTree(real);
  await restorePath(real, streamOf(Buffer.from(s, 'latin1')));
  return true;
}

export async function registerOutputs(w: Worker, view: DrvView, plan: RegisterPlan): Promise<{ outputs: RoundOutputs; nonDeterministic: boolean; stopRounds: boolean }> {
  const { store, options } = w.ctx;
  const drvPath = view.drvPath;

  // Referenceable: the input closure and the scratch outputs.
  const candidates = new Map<string, StorePath>();
  for (const p of plan.inputPaths) candidates.set(storePathHashPart(p), p);
  for (const p of plan.scratch.values()) candidates.set(storePathHashPart(p), p);

  const scanned = new Map<string, Scanned>();
  for (const name of view.outputs.keys()) {
    const scratch = plan.scratch.get(name)!;
    const real = store.toRealPath(scratch);
    // Where Nix names the output in these messages: inside the build's chroot (`<drv>.chroot/<store path>`)
    // when it ran in the sandbox, as Nix looks for it there (ours are moved out already).
    const shown = plan.isolated ? `${store.toRealPath(drvPath)}.chroot${scratch}` : real;
    const st = lstatSync(real, { throwIfNoEntry: false });
    if (!st) {
      throw new OutputRejected('misc-failure', `builder for '${drvPath}' failed to produce output path for output '${name}' at '${shown}'`);
    }
    if (!st.isSymbolicLink() && (st.mode & 0o022) !== 0) {
      throw new OutputRejected('output-rejected', `suspicious ownership or permission on '${shown}' for output '${name}'; rejecting this build output`);
    }
    if (st.isFile() && st.size <= SMALL_FILE) {
      // Fast path: canonicalise, read once, keep the NAR for the scan and the hash.
      let nar: Buffer;
      try {
        canonicaliseFileSync(real, st);
        nar = narOfRegularFile(readFileSync(real), (st.mode & 0o100) !== 0);
      } catch (e) {
        throw new OutputRejected('output-rejected', (e as Error).message);
      }
      scanned.set(name, { name, scratch, real, refs: scanBuffer(nar, candidates), isReg: true, isExec: (st.mode & 0o100) !== 0, nar });
      continue;
    }
    try {
      await canonicalisePathMetaData(real);
    } catch (e) {
      // A FIFO, socket or device: Nix's words, naming the file where Nix finds it.
      if (e instanceof UnsupportedFileTypeError && e.file.startsWith(real)) {
        throw new OutputRejected('output-rejected', `file '${shown}${e.file.slice(real.length)}' has an unsupported type`);
      }
      throw new OutputRejected('output-rejected', (e as Error).message);
    }
    const refs = await scan(real, candidates);
    scanned.set(name, { name, scratch, real, refs, isReg: st.isFile(), isExec: (st.mode & 0o100) !== 0 });
  }

  // Topological sort of outputs by their references to each other; cycles are rejected.
  const byScratch = new Map<StorePath, string>();
  for (const s of scanned.values()) byScratch.set(s.scratch, s.name);
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, parent: string | undefined) => {
    const st = state.get(name);
    if (st === 'done') return;
    if (st === 'visiting') {
      throw new OutputRejected('output-rejected', `cycle detected in build of '${drvPath}' in the references of output '${name}' from output '${parent}'`, false, false, true);
    }
    state.set(name, 'visiting');
    for (const r of scanned.get(name)!.refs) {
      const o = byScratch.get(r);
      if (o && o !== name) visit(o, name);
    }
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of [...scanned.keys()].sort()) visit(name, undefined);

  const outputRewrites = new Map<string, string>();
  const finalPaths: Record<string, StorePath> = {};
  const infos = new Map<string, PathInfo>();
  let delayed: OutputRejected | undefined;

  for (const name of order) {
    const s = scanned.get(name)!;
    const spec = view.outputs.get(name)!;
    // A deferred derivation is resolved (and the resolved one built) before any build: never here.
    if (spec.kind === 'deferred') throw new RealiseError('bad-derivation', `output '${name}' of '${view.drvPath}' is deferred; the derivation must be resolved before it is built`);
    const scratchHash = storePathHashPart(s.scratch);
    // Already valid and not checking: keep the registered output, drop the rebuilt one (Nix's AlreadyRegistered).
    if (plan.mode === 'normal' && plan.round === 1 && spec.kind !== 'floating' && s.scratch !== spec.path && (await store.isValidPath(spec.path))) {
      outputRewrites.set(scratchHash, storePathHashPart(spec.path));
      finalPaths[name] = spec.path;
      await deleteTree(s.real).catch(() => {});
      continue;
    }
    const rewriteRefs = (): { self: boolean; refs: StorePath[] } => {
      let self = false;
      const refs: StorePath[] = [];
      for (const r of s.refs) {
        if (r === s.scratch) { self = true; continue; }
        const h = storePathHashPart(r);
        const to = outputRewrites.get(h);
        refs.push(to ? `${store.storeDir}/${to}-${storePathName(r)}` : r);
      }
      return { self, refs };
    };

    let info: PathInfo;
    if (spec.kind === 'input-addressed') {
      if (s.scratch !== spec.path) outputRewrites.set(scratchHash, storePathHashPart(spec.path));
      if (await rewriteTree(s.real, outputRewrites, s.nar)) s.nar = undefined;
      const { hash, size } = s.nar ? { hash: Hash.of('sha256', s.nar), size: s.nar.length } : await hashTree(s.real);
      const { self, refs } = rewriteRefs();
      if (self) refs.push(spec.path);
      info = { path: spec.path, narHash: hash, narSize: size, references: refs.sort() };
    } else {
      const method = spec.method;
      const algorithm = spec.kind === 'fixed' ? spec.hash.algorithm : spec.algorithm;
      if (method === 'flat' && (!s.isReg || s.isExec)) {
        throw new OutputRejected('output-rejected', `output path '${s.real}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)`);
      }
      if (await rewriteTree(s.real, outputRewrites, s.nar)) s.nar = undefined;
      const ca = new HashModulo(algorithm, scratchHash);
      if (method === 'recursive') for await (const c of dumpPath(s.real)) ca.update(c);
      else ca.update(await fsp.readFile(s.real));
      const got = ca.finish().hash;
      const { self, refs } = rewriteRefs();
      const nar = new HashModulo('sha256', scratchHash);
      for await (const c of dumpPath(s.real)) nar.update(c);
      const narHS = nar.finish();
      // As Nix's makeFixedOutputPath: only a sha256 NAR hash puts a self-reference into the path; for other
      // kinds it is left out of the path (the path info still lists it).
      const selfInPath = self && method === 'recursive' && algorithm === 'sha256';
      const path = makeFixedOutputPath(method, got, outputPathName(view.name, name), { references: refs, hasSelfReference: selfInPath, storeDir: store.storeDir });
      if (self) refs.push(path);
      info = {
        path, narHash: narHS.hash, narSize: narHS.size, references: refs.sort(),
        ca: `fixed:${method === 'recursive' ? 'r:' : ''}${got.toString('base32')}`,
      };
      if (spec.kind === 'fixed' && !spec.hash.equals(got)) {
        delayed = new OutputRejected('output-rejected',
          `hash mismatch in fixed-output derivation '${drvPath}':\n  specified: ${spec.hash.sri}\n     got:    ${got.sri}`, true);
      }
      if (self && s.scratch !== path) {
        // Self-references were hashed as zeroes; now point them at the final path. Nix 2.8 registers the
        // plain NAR hash of the rewritten content (checked against real Nix in test/scheduler).
        outputRewrites.set(scratchHash, storePathHashPart(path));
        if (await rewriteTree(s.real, new Map([[scratchHash, storePathHashPart(path)]]), s.nar)) s.nar = undefined;
        const rewritten = await hashTree(s.real);
        info = { ...info, narHash: rewritten.hash, narSize: rewritten.size };
      }
    }

    // Move into place (unless checking: then compare with what is registered).
    const finalReal = store.toRealPath(info.path);
    if (finalReal !== s.real) {
      if (plan.mode === 'repair') {
        const old = `${finalReal}.old-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
        await fsp.rename(finalReal, old).catch(() => {});
        await fsp.rename(s.real, finalReal);
        await deleteTree(old).catch(() => {});
      } else if (plan.mode === 'check' || plan.round > 1) {
        // Leave the new output where it is, for comparison.
      } else if (await store.isValidPath(info.path)) {
        await deleteTree(s.real);
      } else {
        await deleteTree(finalReal).catch(() => {});
        await movePath(s.real, finalReal);
      }
    }
    const actual = plan.mode === 'check' || plan.round > 1 ? s.real : finalReal;
    // A fast-path file that stayed where it was and was not rewritten is canonical already.
    const untouched = s.nar !== undefined && finalReal === s.real;
    if (!untouched && (actual === finalReal || plan.mode === 'check' || plan.round > 1)) await canonicalisePathMetaData(actual).catch(() => {});
    if (s.scratch !== info.path) outputRewrites.set(scratchHash, storePathHashPart(info.path));
    finalPaths[name] = info.path;
    infos.set(name, { ...info, deriver: drvPath, ultimate: true, registrationTime: Math.floor(Date.now() / 1000) });
  }

  // Check mode: compare with the registered outputs.
  if (plan.mode === 'check') {
    for (const [name, info] of infos) {
      const old = await store.queryPathInfo(info.path);
      const real = store.toRealPath(plan.scratch.get(name)!);
      if (!old) { await deleteTree(real).catch(() => {}); continue; }
      if (!old.narHash.equals(info.narHash)) {
        if (options.keepFailed) {
          const dst = store.toRealPath(info.path) + '.check';
          await deleteTree(dst).catch(() => {});
          await fsp.rename(real, dst);
          throw new OutputRejected('not-deterministic', `derivation '${drvPath}' may not be deterministic: output '${store.toRealPath(info.path)}' differs from '${dst}'`, false, true);
        }
        await deleteTree(real).catch(() => {});
        throw new OutputRejected('not-deterministic', `derivation '${drvPath}' may not be deterministic: output '${store.toRealPath(info.path)}' differs`, false, true);
      }
      await deleteTree(real).catch(() => {});
      // As Nix: a path the check reproduced (e.g. one substituted) is now ultimately trusted.
      if (!old.ultimate) await store.registerValidPaths([{ ...old, ultimate: true }]);
    }
    return { outputs: { paths: finalPaths, narHashes: hashesOf(infos) }, nonDeterministic: false, stopRounds: false };
  }

  await checkOutputs(w, view, infos, finalPaths);

  // Later rounds: compare with the previous round.
  let nonDeterministic = false;
  let stopRounds = false;
  if (plan.round > 1 && plan.previous) {
    for (const [name, info] of infos) {
      const real = store.toRealPath(plan.scratch.get(name)!);
      if (plan.previous.narHashes[name] !== info.narHash.base32) {
        nonDeterministic = true;
        const msg = `output '${info.path}' of '${drvPath}' differs from previous round`;
        if (options.enforceDeterminism) {
          await deleteTree(real).catch(() => {});
          // Not a check mismatch: Nix 2.8 exits with 1 here (104 only for --check).
          throw new OutputRejected('not-deterministic', msg, false, false);
        }
        // Nix logs it as an error without the `error:` prefix.
        w.warn(msg, 'plain');
        stopRounds = true;
      }
      await deleteTree(real).catch(() => {});
    }
    const pending = plan.previous.pending ?? [];
    if (plan.round === plan.rounds || stopRounds) {
      if (pending.length) await store.registerValidPaths([...pending]);
      return { outputs: { paths: finalPaths, narHashes: hashesOf(infos) }, nonDeterministic, stopRounds };
    }
    return { outputs: { paths: finalPaths, narHashes: hashesOf(infos), pending }, nonDeterministic, stopRounds };
  }

  if (plan.round === 1 && plan.rounds > 1) {
    // More rounds follow: leave the outputs in place, unregistered, until the rounds agree.
    const now = [...infos.values()].filter((i) => i.ca);
    if (now.length) await store.registerValidPaths(now);
    return { outputs: { paths: finalPaths, narHashes: hashesOf(infos), pending: [...infos.values()].filter((i) => !i.ca) }, nonDeterministic: false, stopRounds: false };
  }

  await store.registerValidPaths([...infos.values()]);
  if (delayed) throw delayed;
  // Floating content-addressed outputs are known only now: record them as the derivation's outputs.
  const floating = new Map<string, StorePath>();
  for (const [name, spec] of view.outputs) if (spec.kind === 'floating' && finalPaths[name]) floating.set(name, finalPaths[name]!);
  if (floating.size && (await store.isValidPath(drvPath))) await store.registerDerivationOutputs(drvPath, floating);
  return { outputs: { paths: finalPaths, narHashes: hashesOf(infos) }, nonDeterministic, stopRounds };
}

function hashesOf(infos: Map<string, PathInfo>): Record<string, string> {
  const r: Record<string, string> = {};
  for (const [n, i] of infos) r[n] = i.narHash.base32;
  return r;
}

async function hashTree(real: string): Promise<{ hash: Hash; size: number }> {
  const sink = new HashSink('sha256');
  for await (const c of dumpPath(real)) sink.update(c);
  return sink.finish();
}

interface Checks {
  ignoreSelfRefs: boolean;
  maxSize?: number;
  maxClosureSize?: number;
  allowedReferences?: string[];
  allowedRequisites?: string[];
  disallowedReferences?: string[];
  disallowedRequisites?: string[];
}

async function checkOutputs(w: Worker, view: DrvView, infos: Map<string, PathInfo>, finalPaths: Record<string, StorePath>): Promise<void> {
  const { store } = w.ctx;
  const byPath = new Map<StorePath, PathInfo>();
  for (const i of infos.values()) byPath.set(i.path, i);

  const closureOf = async (p: StorePath): Promise<{ paths: Set<StorePath>; size: number }> => {
    const done = new Set<StorePath>();
    let size = 0;
    const todo = [p];
    while (todo.length) {
      const x = todo.pop()!;
      if (done.has(x)) continue;
      done.add(x);
      const info = byPath.get(x) ?? (await store.queryPathInfo(x));
      if (!info) continue;
      size += info.narSize;
      todo.push(...info.references);
    }
    return { paths: done, size };
  };

  for (const [name, info] of infos) {
    const apply = async (checks: Checks) => {
      if (checks.maxSize !== undefined && info.narSize > checks.maxSize) {
        throw new OutputRejected('output-rejected', `path '${info.path}' is too large at ${info.narSize} bytes; limit is ${checks.maxSize} bytes`);
      }
      if (checks.maxClosureSize !== undefined) {
        const { size } = await closureOf(info.path);
        if (size > checks.maxClosureSize) {
          throw new OutputRejected('output-rejected', `closure of path '${info.path}' is too large at ${size} bytes; limit is ${checks.maxClosureSize} bytes`);
        }
      }
      const checkRefs = async (value: string[] | undefined, allowed: boolean, recursive: boolean) => {
        if (!value) return;
        const spec = new Set<StorePath>();
        for (const i of value) {
          if (isStorePath(i, store.storeDir)) spec.add(i);
          else if (finalPaths[i]) spec.add(finalPaths[i]!);
          else throw new OutputRejected('output-rejected', `derivation contains an illegal reference specifier '${i}'`);
        }
        const used = recursive ? (await closureOf(info.path)).paths : new Set(info.references);
        if (recursive && checks.ignoreSelfRefs) used.delete(info.path);
        const bad = [...used].filter((u) => (allowed ? !spec.has(u) : spec.has(u))).sort();
        if (bad.length) {
          throw new OutputRejected('output-rejected', `output '${info.path}' is not allowed to refer to the following paths:${bad.map((b) => `\n  ${b}`).join('')}`);
        }
      };
      await checkRefs(checks.allowedReferences, true, false);
      await checkRefs(checks.allowedRequisites, true, true);
      await checkRefs(checks.disallowedReferences, false, false);
      await checkRefs(checks.disallowedRequisites, false, true);
    };

    if (view.structuredAttrs) {
      const oc = view.structuredAttrs.outputChecks as Record<string, Record<string, unknown>> | undefined;
      const o = oc && typeof oc === 'object' ? oc[name] : undefined;
      if (o && typeof o === 'object') {
        const list = (k: string): string[] | undefined => {
          const v = o[k];
          if (v === undefined) return undefined;
          if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
            throw new OutputRejected('output-rejected', `attribute '${k}' of derivation '${view.drvPath}' must be a list of strings`);
          }
          return v as string[];
        };
        const num = (k: string): number | undefined => (typeof o[k] === 'number' ? (o[k] as number) : undefined);
        await apply({
          ignoreSelfRefs: false, maxSize: num('maxSize'), maxClosureSize: num('maxClosureSize'),
          allowedReferences: list('allowedReferences'), allowedRequisites: list('allowedRequisites'),
          disallowedReferences: list('disallowedReferences'), disallowedRequisites: list('disallowedRequisites'),
        });
      }
    } else {
      await apply({
        ignoreSelfRefs: true,
        allowedReferences: getStringsAttr(view, 'allowedReferences'),
        allowedRequisites: getStringsAttr(view, 'allowedRequisites'),
        disallowedReferences: getStringsAttr(view, 'disallowedReferences'),
        disallowedRequisites: getStringsAttr(view, 'disallowedRequisites'),
      });
    }
  }
}

export { rewriteStrings };
