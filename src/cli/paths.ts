/**
 * Command-line path arguments as Nix 2.8's nix-store reads them: relative paths and symlinks (`./result`)
 * are followed into the store, a path inside a store path means that store path, and a bad name is
 * refused with Nix's own message.
 */
import { lstatSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import type { BuildTarget } from '../index.js';

/** An argument the CLI refuses before anything runs (printed as `error: MESSAGE`, exit status 1). */
export class CliError extends Error {}

const HASH_LEN = 32;
/** An empty, `.` or `..` component, or a trailing `/`: what path.resolve would change in an absolute path. */
const NOT_NORMAL = /\/(\.\.?)?(\/|$)/;

function isInStore(storeDir: string, p: string): boolean {
  return p.startsWith(storeDir + '/') && p.length > storeDir.length + 1;
}

/** Nix's StorePath constructor checks, with its messages. */
export function checkStorePathBaseName(base: string): void {
  if (base.length < HASH_LEN + 1) throw new CliError(`'${base}' is too short to be a valid store path`);
  for (const c of base.slice(0, HASH_LEN)) {
    if (c === 'e' || c === 'o' || c === 'u' || c === 't' || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))) {
      throw new CliError(`store path '${base}' contains illegal base-32 character '${c}'`);
    }
  }
  const name = base.slice(HASH_LEN + 1);
  if (name.length === 0) throw new CliError(`store path '${base}' has an empty name`);
  if (name.length > 211) throw new CliError(`store path '${base}' has a name longer than 211 characters`);
  // (One test for a good name; the offending character is looked for only in a bad one.)
  if (/^[0-9a-zA-Z+\-._?=]+$/.test(name)) return;
  for (const c of name) {
    if (!/[0-9a-zA-Z+\-._?=]/.test(c)) throw new CliError(`store path '${base}' contains illegal character '${c}'`);
  }
}

/**
 * Nix's followLinksToStorePath: make the argument absolute, follow symlinks until it is inside the store,
 * cut it to the store path it is in, and check that path's name.
 */
export function followLinksToStorePath(storeDir: string, arg: string): string {
  // An absolute path with no `//`, `.` or `..` component and no trailing `/` is its own resolution.
  let p = arg.startsWith('/') && !NOT_NORMAL.test(arg) ? arg : path.resolve(arg);
  while (!isInStore(storeDir, p)) {
    let isLink: boolean;
    try {
      isLink = lstatSync(p).isSymbolicLink();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new CliError(
        `getting status of '${p}': ${code === 'ENOENT' ? 'No such file or directory' : code === 'ENOTDIR' ? 'Not a directory' : code === 'EACCES' ? 'Permission denied' : String((e as Error).message)}`,
      );
    }
    if (!isLink) break;
    p = path.resolve(path.dirname(p), readlinkSync(p));
  }
  if (!isInStore(storeDir, p)) throw new CliError(`path '${p}' is not in the Nix store`);
  const base = p.slice(storeDir.length + 1).split('/')[0]!;
  checkStorePathBaseName(base);
  return `${storeDir}/${base}`;
}

/**
 * A build target argument: `PATH`, `DRV!out,dev` (nix-store's form), or `DRV^out,dev` / `DRV^*` (newer Nix).
 * Outputs are only taken on .drv paths, as in Nix.
 */
export function parseTargetArg(storeDir: string, arg: string): BuildTarget {
  const m = /^(.*?)([!^])([^/]*)$/.exec(arg);
  const [p, outs] = m && m[1]!.endsWith('.drv') ? [m[1]!, m[3]!] : [arg, undefined];
  const storePath = followLinksToStorePath(storeDir, p);
  if (!storePath.endsWith('.drv')) return { path: storePath };
  if (outs === undefined || outs === '' || outs === '*') return { drvPath: storePath, outputs: '*' };
  return { drvPath: storePath, outputs: outs.split(',').filter(Boolean) };
}
