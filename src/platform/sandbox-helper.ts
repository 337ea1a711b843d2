/**
 * Build (once) and locate the sandbox helper: sandbox-helper.c (beside this module) compiled with the
 * system C compiler into a cache directory, named by the hash of its source so that upgrades rebuild it.
 * The helper does what Nix 2.8's startBuilder/runChild do on Linux, in one exec: namespaces, uid/gid
 * maps, loopback, hostname, bind mounts, /proc, /dev/shm, a private devpts, pivot_root, seccomp,
 * personality, RLIMIT_CORE, and the builder's output on a raw pseudoterminal.
 */
import { C_WARNINGS, cachedBuildPath, compileCOnce, cSource, defaultHelperCacheDir } from './compile-c.js';

export { defaultHelperCacheDir };

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

/** The helper's C file, beside this module. */
export const HELPER_SOURCE_FILE = 'sandbox-helper.c';

/**
 * Compiler flags. Symbols are bound at start-up (`-z now`): every build runs in a process forked from
 * the resident server, which then neither resolves PLT entries nor copies GOT pages on first calls.
 */
export const HELPER_CFLAGS: readonly string[] = ['-O2', ...C_WARNINGS, '-Wl,-z,now'];

/** By cache directory: the path hashes the helper's source, which is not done again for every build. */
const helperPaths = new Map<string, string>();

export function helperPath(cacheDir: string = defaultHelperCacheDir()): string {
  let p = helperPaths.get(cacheDir);
  if (p === undefined) helperPaths.set(cacheDir, (p = cachedBuildPath(cacheDir, 'sandbox-helper', cSource(HELPER_SOURCE_FILE), HELPER_CFLAGS)));
  return p;
}

const pending = new Map<string, Promise<string>>();

/**
 * Path of the compiled helper, compiling it if needed. Rejects with the compiler's message when
 * there is no working C compiler.
 */
export async function ensureSandboxHelper(opts: SandboxHelperOptions = {}): Promise<string> {
  const dest = helperPath(opts.cacheDir);
  let p = pending.get(dest);
  if (!p) {
    p = compile(dest, opts.cc ?? process.env.CC ?? 'cc');
    pending.set(dest, p);
    p.catch(() => pending.delete(dest));
  }
  return p;
}

function compile(dest: string, cc: string): Promise<string> {
  return compileCOnce(dest, cc, cSource(HELPER_SOURCE_FILE), HELPER_CFLAGS, 'the sandbox helper');
}
