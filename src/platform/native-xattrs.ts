/**
 * Extended attributes for canonicalisation. Node has no xattr API, so a ~100-line Node-API addon
 * (xattr-addon.c, beside this module) is compiled once with the system C compiler (like the sandbox
 * helper) and loaded into the process: one `llistxattr` plus an `lremovexattr` per attribute,
 * synchronously, per file (no child process per file or per tree). The addon declares the few Node-API
 * functions it calls itself, so no Node headers are needed. Registered with the store
 * (src/store/xattrs.ts) when this module is loaded.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import { provideXattrOps, type XattrOps } from '../store/xattrs.js';
import { C_WARNINGS, cachedBuildPath, compileCOnce, cSource, defaultHelperCacheDir } from './compile-c.js';

interface Addon {
  strip(p: string | Buffer, ignored: Buffer): number;
  list(p: string | Buffer): string[];
  pristineDir(p: string, uid: number, inner: string): boolean;
  renameNoReplace(from: string, to: string): number;
  skeletonUnchanged(root: string, spec: Buffer, store: string, storeFiles: string, mountpoints: string, placed: bigint): boolean;
}

/**
 * The addon's directory operations, for build directories (src/platform/build-dir-pool.ts) and chroot
 * skeletons (src/platform/chroot.ts) reused.
 */
export interface DirOps {
  /**
   * Whether `p` is a directory as realise makes build directories: mode 0700, owned by `uid`, without
   * extended attributes (nor so ACLs), empty; or, given `inner`, holding only `inner`, itself such a directory.
   */
  pristineDir(p: string, uid: number, inner?: string): boolean;
  /** renameat2(RENAME_NOREPLACE): never replaces what is at `to`. 0, or the errno (EEXIST: `to` exists). */
  renameNoReplace(from: string, to: string): number;
  /**
   * A chroot skeleton's check after a build (see chroot.ts): the names of `storeFiles` unlinked from its
   * store dir (`store`, from `root`), then every inode of `spec` compared; `storeFiles` and `mountpoints`
   * (the directories the store dir may hold) are NUL-terminated names, `placed` a ctime in ns (0n: none).
   */
  skeletonUnchanged(root: string, spec: Buffer, store: string, storeFiles: string, mountpoints: string, placed: bigint): boolean;
}

/** The addon's C file, beside this module. */
export const ADDON_SOURCE_FILE = 'xattr-addon.c';

export const ADDON_CFLAGS: readonly string[] = ['-O2', ...C_WARNINGS, '-shared', '-fPIC', '-Wl,-z,now'];

const require = createRequire(import.meta.url);

/**
 * Compile (once per source version, into the helper's cache directory) and load the addon. Rejects when
 * there is no working C compiler.
 */
export async function loadNativeXattrs(opts: { cc?: string; cacheDir?: string } = {}): Promise<XattrOps> {
  const addon = await loadAddon(opts);
  return {
    strip: (p, ignored) => addon.strip(p, Buffer.from(ignored.map((n) => `${n}\0`).join(''))),
    list: (p) => addon.list(p),
  };
}

async function loadAddon(opts: { cc?: string; cacheDir?: string }): Promise<Addon> {
  const source = cSource(ADDON_SOURCE_FILE);
  const dest = cachedBuildPath(opts.cacheDir ?? defaultHelperCacheDir(), 'xattr', source, ADDON_CFLAGS, '.node');
  await compileCOnce(dest, opts.cc ?? process.env.CC ?? 'cc', source, ADDON_CFLAGS, 'the xattr addon', fs.constants.R_OK);
  return require(dest) as Addon;
}

let dirOps: Promise<DirOps | undefined> | undefined;
/** What dirOps resolved to, once it resolved with the operations. */
let loadedOps: DirOps | undefined;

/** The directory operations (the addon compiled and loaded once per process); undefined without a C compiler. */
export function nativeDirOps(): Promise<DirOps | undefined> {
  dirOps ??= loadAddon({}).then(
    (addon): DirOps =>
      (loadedOps = {
        pristineDir: (p, uid, inner) => addon.pristineDir(p, uid, inner ?? ''),
        renameNoReplace: (from, to) => addon.renameNoReplace(from, to),
        skeletonUnchanged: (root, spec, store, storeFiles, mountpoints, placed) => addon.skeletonUnchanged(root, spec, store, storeFiles, mountpoints, placed),
      }),
    () => undefined,
  );
  return dirOps;
}

/** What nativeDirOps() resolved to, once it resolved with the operations (no promise to wait for); else undefined. */
export function loadedDirOps(): DirOps | undefined {
  return loadedOps;
}

provideXattrOps(() => loadNativeXattrs());
