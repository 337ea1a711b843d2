/**
 * Command-line path arguments as Nix 2.8's nix-store reads them: relative paths and symlinks (`./result`)
 * are followed into the store, a path inside a store path means that store path, and a bad name is
 * refused with Nix's own message.
 */
import { lstatSync, readlinkSync, type Stats } from 'node:fs';
import * as path from 'node:path';
import { strerror, type BuildTarget } from '../index.js';

/** An argument the CLI refuses before anything runs (printed as `error: MESSAGE`, exit status 1). */
export class CliError extends Error {}

const HASH_LEN = 32;
/** A file name in a flake reference's path; a Git revision. */
const FILE_NAME_RE = `[0-9a-zA-Z\\-._~!$&'"()*+,;=]+`;
const REV_RE = '[0-9a-fA-F]{40}';
/** An empty, `.` or `..` component, or a trailing `/`: what path.resolve would change in an absolute path. */
const NOT_NORMAL = /\/(\.\.?)?(\/|$)/;

function isInStore(storeDir: string, p: string): boolean {
  return p.startsWith(storeDir + '/') && p.length > storeDir.length + 1;
}

/** A hash part of nixbase32 characters (digits and lower-case letters but e, o, t and u). */
const HASH_PART = /^[0-9a-df-np-sv-z]{32}/;

/** Nix's StorePath constructor checks, with its messages. */
export function checkStorePathBaseName(base: string): void {
  if (base.length < HASH_LEN + 1) throw new CliError(`'${base}' is too short to be a valid store path`);
  // (One test for a good hash part, as for the name below: a loop over its characters costs a fresh process,
  // in V8's interpreter, 10-20 µs per argument; the loop only finds the offending character of a bad one.)
  if (!HASH_PART.test(base)) {
    for (const c of base.slice(0, HASH_LEN)) {
      if (c === 'e' || c === 'o' || c === 'u' || c === 't' || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))) {
        throw new CliError(`store path '${base}' contains illegal base-32 character '${c}'`);
      }
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
    if (!lstatOrFail(p).isSymbolicLink()) break;
    p = path.resolve(path.dirname(p), readlinkSync(p));
  }
  if (!isInStore(storeDir, p)) throw new CliError(`path '${p}' is not in the Nix store`);
  const base = p.slice(storeDir.length + 1).split('/')[0]!;
  checkStorePathBaseName(base);
  return `${storeDir}/${base}`;
}

/**
 * Nix's SysError of a failed lstat of `p`: "getting status of '…': …" (its lstat), or with the path
 * unquoted (its pathExists).
 */
function statusError(p: string, e: unknown, quoted = true): CliError {
  return new CliError(`getting status of ${quoted ? `'${p}'` : p}: ${strerror(e) ?? String((e as Error).message)}`);
}

/** lstat, failing as Nix's does (statusError). */
function lstatOrFail(p: string): Stats {
  try {
    return lstatSync(p);
  } catch (e) {
    throw statusError(p, e);
  }
}

/**
 * Nix's pathExists: false for a name that is not there (or under a file), a failure for anything else (the
 * path unquoted in its message, as Nix's).
 */
function pathExists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw statusError(p, e, false);
  }
}

// The grammar of flake references and URLs as Nix 2.8 matches them (RFC 3986's words), to tell which of
// its errors an argument that is no store path gets.
const UNRESERVED = '[a-zA-Z0-9\\-._~]';
const PCT_ENCODED = '%[0-9a-fA-F]{2}';
const SUB_DELIMS = `[!$&'"()*+,;=]`;
const PCHAR = `(?:${UNRESERVED}|${PCT_ENCODED}|${SUB_DELIMS}|[:@])`;
const QUERY = `(?:${PCHAR}|[/? "])*`;
const SEGMENT = `${PCHAR}*`;
const TAIL = `(?:\\?${QUERY})?(?:#${QUERY})?$`;
/** A path (absolute or relative), with a query and a fragment. */
const PATH_REF = new RegExp(`^(/?${FILE_NAME_RE}(?:/${FILE_NAME_RE})*/?)${TAIL}`);
/** A flake id of the registry (`nixpkgs`, `nixpkgs/branch`, with a revision). */
const FLAKE_ID_REF = new RegExp(`^[a-zA-Z][a-zA-Z0-9_-]*(?:/(?:${REV_RE}|[a-zA-Z0-9][a-zA-Z0-9_./-]*(?:/${REV_RE})?))?(?:#${QUERY})?$`);
const IPV6 = '[0-9a-fA-F:]+(?:%\\w+)?';
const AUTHORITY = `(?:(?:${UNRESERVED}|${PCT_ENCODED}|${SUB_DELIMS}|:)*@)?(?:\\[${IPV6}\\]|${IPV6}|(?:${UNRESERVED}|${PCT_ENCODED}|${SUB_DELIMS})*)(?::[0-9]+)?`;
/** A URL: a scheme, then an authority and an absolute path, or a path. */
const URL_REF = new RegExp(`^[a-z][a-z0-9+.-]*:(?://${AUTHORITY}(?:/${SEGMENT})*/?|/?${SEGMENT}(?:/${SEGMENT})*/?)${TAIL}`);

/** The schemes of Nix 2.8's fetchers (`file`, `http`, `https` only for an archive: its tarball fetcher). */
const INPUT_SCHEMES = new Set([
  'flake',
  'path',
  'github',
  'gitlab',
  'sourcehut',
  'git',
  'git+http',
  'git+https',
  'git+ssh',
  'git+file',
  'hg+http',
  'hg+https',
  'hg+ssh',
  'hg+file',
]);
const ARCHIVE = /\.(zip|tar|tgz|tar\.gz|tar\.xz|tar\.bz2|tar\.zst)$/;

/**
 * What Nix 2.8's flake reference parser says of an argument that is no store path when it is a path or
 * a URL no fetcher takes: the notice of its search for a flake.nix (through `notice`), then its error
 * (thrown, as the failed lstat). Undefined where Nix goes on with a flake (a flake.nix found, a flake id
 * of the registry, a fetcher's URL).
 */
function flakeRefError(arg: string, notice: (message: string) => void): CliError | undefined {
  if (FLAKE_ID_REF.test(arg)) return undefined;
  const m = PATH_REF.exec(arg);
  if (!m) {
    const url = URL_REF.exec(arg);
    if (!url) return new CliError(`'${arg}' is not a valid URL`);
    const scheme = arg.slice(0, arg.indexOf(':'));
    const plain = arg.replace(/[?#].*$/, '');
    if (INPUT_SCHEMES.has(scheme) || (['file', 'http', 'https'].includes(scheme) && ARCHIVE.test(plain))) return undefined;
    return new CliError(`input '${arg}' is unsupported`);
  }
  let dir = path.resolve(m[1]!);
  if (pathExists(`${dir}/flake.nix`)) return undefined;
  notice(`path '${dir}' does not contain a 'flake.nix', searching up`);
  const device = lstatOrFail(dir).dev;
  for (; dir !== '/'; dir = path.dirname(dir)) {
    if (pathExists(`${dir}/flake.nix`)) return undefined;
    if (pathExists(`${dir}/.git`))
      return new CliError(`path '${dir}' is not part of a flake (neither it nor its parent directories contain a 'flake.nix' file)`);
    if (lstatOrFail(dir).dev !== device) return new CliError(`unable to find a flake before encountering filesystem boundary at '${dir}'`);
  }
  return new CliError('could not find a flake.nix file');
}

/**
 * The arguments of the commands that mirror the nix command (`path-info`, `copy`; `none` when there are
 * none) as Nix 2.8's parseInstallables reads them, in order: a store path, or a path into the store, is
 * that path; anything else is taken for a flake reference, and fails with what its parser says (`notice`
 * gets the line it prints first). A flake, which realise does not evaluate, is an error in its place, for
 * the command to throw when it comes to it (as Nix fails when it evaluates it): without the `flakes`
 * feature Nix's, else the store path's own error.
 */
export function installableStorePaths(
  storeDir: string,
  args: readonly string[],
  opts: { flakes: boolean; notice: (message: string) => void },
): Array<string | Error> {
  return args.map((arg) => {
    let error: unknown;
    try {
      // (Nix tries this only for an argument with a '/', and `.` is a flake: `result`, a link into the store, is taken here.)
      if (arg !== '.') return followLinksToStorePath(storeDir, arg);
    } catch (e) {
      error = e;
    }
    const refused = flakeRefError(arg, opts.notice);
    if (refused) throw refused;
    if (!opts.flakes) return new CliError("experimental Nix feature 'flakes' is disabled; use '--extra-experimental-features flakes' to override");
    return error instanceof Error ? error : new CliError(`'${arg}' is a flake, which realise does not evaluate: name store paths`);
  });
}

/**
 * A build target argument: `PATH`, `PATH!out,dev` (nix-store's form), or `DRV^out,dev` / `DRV^*` (newer Nix).
 * As Nix 2.8's parsePathWithOutputs, the first `!` ends the path whatever it names: the outputs (comma
 * separated, empty ones dropped; `*` is an output name there) make a build of that path even when it is
 * no .drv (an invalid one is then a missing derivation), and no outputs (`PATH!`) mean the path itself or,
 * for a .drv, all its outputs. `^` is taken after a .drv only.
 */
export function parseTargetArg(storeDir: string, arg: string): BuildTarget {
  const bang = arg.indexOf('!');
  if (bang >= 0) {
    const storePath = followLinksToStorePath(storeDir, arg.slice(0, bang));
    const outputs = arg
      .slice(bang + 1)
      .split(',')
      .filter(Boolean);
    if (outputs.length > 0) return { drvPath: storePath, outputs };
    return storePath.endsWith('.drv') ? { drvPath: storePath, outputs: '*' } : { path: storePath };
  }
  const m = /^(.*?)\^([^/]*)$/.exec(arg);
  const [p, outs] = m && m[1]!.endsWith('.drv') ? [m[1]!, m[2]!] : [arg, undefined];
  const storePath = followLinksToStorePath(storeDir, p);
  if (!storePath.endsWith('.drv')) return { path: storePath };
  if (outs === undefined || outs === '' || outs === '*') return { drvPath: storePath, outputs: '*' };
  return { drvPath: storePath, outputs: outs.split(',').filter(Boolean) };
}
