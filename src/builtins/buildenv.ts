/**
 * builtin:buildenv, as Nix 2.8's buildProfile: the symlink tree of a user environment. Packages come in
 * the `derivations` attribute as `active priority #outputs path…` groups; they are linked in priority
 * order (lower number first, then by path), directories are merged (a symlink to a directory is replaced
 * by a directory of links when a second package brings the same directory), a file that two packages of
 * the same priority bring is an error, otherwise the higher priority (lower number) wins. Packages named
 * in `nix-support/propagated-user-env-packages` follow, with priorities from 1000. `manifest.nix` links
 * to the `manifest` attribute.
 *
 * Paths are logical (what the links say); the files are read and made at their physical places.
 */
import { promises as fsp } from 'node:fs';
import { BuiltinFailure, hintfmt, sys, sysFailure, type NixMessage } from './log.js';

export interface TreeAccess {
  /** Physical path of a logical path (the store dir mapped to the physical store dir). */
  real(logical: string): string;
  warn(message: NixMessage): void;
}

interface Package {
  readonly path: string;
  readonly active: boolean;
  readonly priority: number;
}

const IGNORED_SUFFIXES = ['/propagated-build-inputs', '/nix-support', '/perllocal.pod', '/info/dir', '/log', '/manifest.nix', '/manifest.json'];

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

/**
 * Nix's canonPath(p, true): the logical path with every symlink resolved (absolute targets are logical
 * too, so each step is looked up at its physical place).
 */
async function canonLogical(p: string, fs: TreeAccess): Promise<string> {
  const todo = p.split('/').filter(Boolean);
  const done: string[] = [];
  let follows = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '.') continue;
    if (c === '..') {
      done.pop();
      continue;
    }
    const cur = '/' + [...done, c].join('/');
    let target: string | undefined;
    try {
      target = await fsp.readlink(fs.real(cur));
    } catch (e) {
      if (errnoOf(e) !== 'EINVAL' && errnoOf(e) !== 'ENOENT' && errnoOf(e) !== 'ENOTDIR') throw e;
    }
    if (target === undefined) {
      done.push(c);
      continue;
    }
    if (++follows > 40) throw Object.assign(new Error(`too many symbolic links at '${cur}'`), { code: 'ELOOP' });
    if (target.startsWith('/')) done.length = 0;
    todo.unshift(...target.split('/').filter(Boolean));
  }
  return '/' + done.join('/');
}

/** stat(2) of a logical path (symlinks followed logically). */
async function statLogical(p: string, fs: TreeAccess) {
  return fsp.stat(fs.real(await canonLogical(p, fs)));
}

class Profile {
  readonly priorities = new Map<string, number>();
  symlinks = 0;
  constructor(private readonly fs: TreeAccess) {}

  async createLinks(srcDir: string, dstDir: string, priority: number): Promise<void> {
    const fs = this.fs;
    let names: string[];
    try {
      names = await fsp.readdir(fs.real(await canonLogical(srcDir, fs)));
    } catch (e) {
      if (errnoOf(e) === 'ENOTDIR') {
        fs.warn(hintfmt("not including '%s' in the user environment because it's not a directory", srcDir));
        return;
      }
      throw sysFailure(e, "opening directory '%1%'", srcDir);
    }
    for (const name of names) {
      if (name.startsWith('.')) continue; // not matched by glob
      const srcFile = `${srcDir}/${name}`;
      const dstFile = `${dstDir}/${name}`;
      let srcSt;
      try {
        srcSt = await statLogical(srcFile, fs);
      } catch (e) {
        if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') {
          fs.warn(hintfmt("skipping dangling symlink '%s'", dstFile));
          continue;
        }
        throw sysFailure(e, "getting status of '%1%'", srcFile);
      }
      // Files that are useless in a profile or would collide pointlessly.
      if (IGNORED_SUFFIXES.some((s) => srcFile.endsWith(s))) continue;
      const dstSt = await fsp.lstat(fs.real(dstFile)).catch((e: unknown) => {
        if (errnoOf(e) === 'ENOENT') return undefined;
        throw sysFailure(e, "getting status of '%1%'", dstFile);
      });
      if (srcSt.isDirectory()) {
        if (dstSt?.isDirectory()) {
          await this.createLinks(srcFile, dstFile, priority);
          continue;
        }
        if (dstSt?.isSymbolicLink()) {
          const target = await canonLogical(dstFile, fs);
          const targetSt = await sys(fsp.lstat(fs.real(target)), "getting status of '%1%'", target);
          if (!targetSt.isDirectory()) throw new BuiltinFailure(hintfmt("collision between '%1%' and non-directory '%2%'", srcFile, target));
          await sys(fsp.unlink(fs.real(dstFile)), "unlinking '%1%'", dstFile);
          await sys(fsp.mkdir(fs.real(dstFile), 0o755), "creating directory '%1%'", dstFile);
          await this.createLinks(target, dstFile, this.priorities.get(dstFile) ?? 0);
          await this.createLinks(srcFile, dstFile, priority);
          continue;
        }
      } else if (dstSt?.isSymbolicLink()) {
        const prev = this.priorities.get(dstFile) ?? 0;
        if (prev === priority) {
          throw new BuiltinFailure(
            hintfmt(
              "packages '%1%' and '%2%' have the same priority %3%; use 'nix-env --set-flag priority NUMBER INSTALLED_PKGNAME' to change the priority of one of the conflicting packages (0 being the highest priority)",
              srcFile,
              await fsp.readlink(fs.real(dstFile)),
              priority,
            ),
          );
        }
        if (prev < priority) continue;
        await sys(fsp.unlink(fs.real(dstFile)), "unlinking '%1%'", dstFile);
      } else if (dstSt?.isDirectory()) {
        throw new BuiltinFailure(hintfmt("collision between non-directory '%1%' and directory '%2%'", srcFile, dstFile));
      }
      await sys(fsp.symlink(srcFile, fs.real(dstFile)), "creating symlink from '%1%' to '%2%'", dstFile, srcFile);
      this.priorities.set(dstFile, priority);
      this.symlinks++;
    }
  }
}

/** Nix's stoi: leading whitespace, optional sign, digits; the rest ignored; no digits is an error. */
function stoi(s: string | undefined): number {
  const m = /^\s*([+-]?\d+)/.exec(s ?? '');
  if (!m) throw new BuiltinFailure(hintfmt('stoi'), { bare: true });
  return Number(m[1]);
}

/** Nix's buildProfile. */
async function buildProfile(out: string, pkgs: Package[], fs: TreeAccess): Promise<void> {
  const profile = new Profile(fs);
  const done = new Set<string>();
  let postponed = new Set<string>();
  const addPkg = async (pkgDir: string, priority: number) => {
    if (done.has(pkgDir)) return;
    done.add(pkgDir);
    await profile.createLinks(pkgDir, out, priority);
    let text: string | undefined;
    try {
      text = await fsp.readFile(fs.real(await canonLogical(`${pkgDir}/nix-support/propagated-user-env-packages`, fs)), 'utf8');
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT' && errnoOf(e) !== 'ENOTDIR') throw e;
    }
    for (const p of (text ?? '').split(/[ \n]+/).filter(Boolean)) if (!done.has(p)) postponed.add(p);
  };
  const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  pkgs.sort((a, b) => a.priority - b.priority || byteOrder(a.path, b.path));
  for (const p of pkgs) if (p.active) await addPkg(p.path, p.priority);
  // Propagated packages come later, with lower priorities, in path order per round.
  let counter = 1000;
  while (postponed.size > 0) {
    const round = [...postponed].sort(byteOrder);
    postponed = new Set();
    for (const dir of round) await addPkg(dir, counter++);
  }
}

/** builtin:buildenv with the derivation's (rewritten) environment. */
export async function builtinBuildenv(getAttr: (name: string) => string, fs: TreeAccess): Promise<void> {
  const out = getAttr('out');
  await sys(fsp.mkdir(fs.real(out), { recursive: true }), "creating directory '%1%'", out);
  const words = getAttr('derivations')
    .split(/[ \t\n\r]+/)
    .filter(Boolean);
  const pkgs: Package[] = [];
  for (let i = 0; i < words.length;) {
    const active = words[i++]!;
    const priority = stoi(words[i++]);
    const outputs = stoi(words[i++]);
    for (let n = 0; n < outputs; n++) {
      const p = words[i++];
      if (p === undefined) break;
      pkgs.push({ path: p, active: active !== 'false', priority });
    }
  }
  await buildProfile(out, pkgs, fs);
  const manifest = getAttr('manifest');
  await sys(fsp.symlink(manifest, fs.real(`${out}/manifest.nix`)), "creating symlink from '%1%' to '%2%'", `${out}/manifest.nix`, manifest);
}
