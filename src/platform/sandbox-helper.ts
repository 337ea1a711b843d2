/**
 * Build (once) and locate the sandbox helper: HELPER_SOURCE compiled with the system C compiler into
 * a cache directory, named by the hash of its source so that upgrades rebuild it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HELPER_SOURCE } from './sandbox-helper-source.js';

export interface SandboxHelperOptions {
  /**
   * C compiler to use.
   * @default `$CC`, else `cc`
   */
  readonly cc?: string;
  /**
   * Where the compiled helper is kept.
   * @default `$XDG_CACHE_HOME/realise` or `~/.cache/realise`
   */
  readonly cacheDir?: string;
}

export function defaultHelperCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'realise');
}

/**
 * Compiler flags. Symbols are bound at start-up (`-z now`): every build runs in a process forked from
 * the resident server, which then neither resolves PLT entries nor copies GOT pages on first calls.
 */
const CFLAGS = ['-O2', '-Wl,-z,now'];

export function helperPath(cacheDir: string = defaultHelperCacheDir()): string {
  const h = createHash('sha256').update(HELPER_SOURCE).update(process.arch).update(CFLAGS.join(' ')).digest('hex').slice(0, 16);
  return path.join(cacheDir, `sandbox-helper-${h}`);
}

const pending = new Map<string, Promise<string>>();

/**
 * Path of the compiled helper, compiling it if needed. Rejects with the compiler's message when
 * there is no working C compiler.
 */
export function ensureSandboxHelper(opts: SandboxHelperOptions = {}): Promise<string> {
  const dest = helperPath(opts.cacheDir);
  let p = pending.get(dest);
  if (!p) {
    p = compile(dest, opts.cc ?? process.env.CC ?? 'cc');
    pending.set(dest, p);
    p.catch(() => pending.delete(dest));
  }
  return p;
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

function compile(dest: string, cc: string): Promise<string> {
  return compileCOnce(dest, cc, HELPER_SOURCE, CFLAGS, 'the sandbox helper');
}
