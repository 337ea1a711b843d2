/**
 * The native pieces realise builds on the user's machine from the C files shipped beside this module
 * (sandbox-helper.c, xattr-addon.c, and skeleton-check.h, which both include): compiled once with the
 * system C compiler into a cache directory, named by a hash of source, architecture and flags so that an
 * upgrade rebuilds them. The C files sit next to the module that reads them in every layout: src/platform
 * (tsx), dist/platform (copied by scripts/copy-assets.mjs) and dist/bundle (copied by scripts/bundle-cli.mjs).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * Warnings asked for on every compile. The sources are kept free of them with `-Werror` by
 * test/platform/c-sources.test.ts; at run time a warning is not an error, so that a newer compiler's new
 * diagnostic cannot take the sandbox away from a user.
 */
export const C_WARNINGS: readonly string[] = ['-Wall', '-Wextra'];

/** The cache directory of compiled native pieces: `$XDG_CACHE_HOME/realise` or `~/.cache/realise`. */
export function defaultHelperCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'realise');
}

const sources = new Map<string, string>();

/**
 * The text of one of the C files shipped beside this module (read once per process), with the text of each
 * header of ours it includes (`#include "x.h"`, shipped beside it too) in place of that line: it is
 * compiled from elsewhere, and the cached build's name then covers the header as well.
 */
export function cSource(file: string): string {
  let text = sources.get(file);
  if (text === undefined) {
    const url = new URL(`./${file}`, import.meta.url);
    try {
      text = fs.readFileSync(url, 'utf8');
    } catch (e) {
      throw new Error(`the C source ${file} is missing beside realise's modules (${url.pathname}): the installation is incomplete, reinstall realise`, {
        cause: e,
      });
    }
    text = text.replace(/^#include "([\w.-]+\.h)"$/gm, (_line, header: string) => cSource(header));
    sources.set(file, text);
  }
  return text;
}

/** Where the build of `source` with `cflags` is cached: `<cacheDir>/<name>-<hash><suffix>`. */
export function cachedBuildPath(cacheDir: string, name: string, source: string, cflags: readonly string[], suffix = ''): string {
  const h = createHash('sha256').update(source).update(process.arch).update(cflags.join(' ')).digest('hex').slice(0, 16);
  return path.join(cacheDir, `${name}-${h}${suffix}`);
}

/**
 * Compile `source` with `cc` into `dest` once (a cached build is reused): in a private directory next to
 * `dest`, then renamed into place, so concurrent compilers race harmlessly. `what` names it in the error.
 */
export async function compileCOnce(
  dest: string,
  cc: string,
  source: string,
  cflags: readonly string[],
  what: string,
  mode = fs.constants.X_OK,
): Promise<string> {
  try {
    fs.accessSync(dest, mode);
    return dest;
  } catch {
    /* build it */
  }
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const tmpDir = fs.mkdtempSync(path.join(path.dirname(dest), '.build-'));
  try {
    const src = path.join(tmpDir, 'source.c');
    const bin = path.join(tmpDir, 'out');
    fs.writeFileSync(src, source);
    await new Promise<void>((resolve, reject) => {
      execFile(cc, [...cflags, '-o', bin, src], { timeout: 60_000 }, (err, _stdout, stderr) => {
        if (err) reject(new Error(`compiling ${what} with '${cc}' failed: ${stderr || err.message}`));
        else resolve();
      });
    });
    fs.renameSync(bin, dest);
    return dest;
  } finally {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}
