/**
 * Extended attributes of store files. Canonicalisation removes them all (but the names in Nix's
 * `ignored-acls`), as Nix's canonicalisePathMetaData: a file capability (`security.capability`) or ACL on
 * a store file would give it privileges no NAR records. Node has no xattr API: the platform layer provides
 * the native operations (src/platform/native-xattrs.ts, loaded with the package) through provideXattrOps.
 */
import { StoreError } from './errors.js';

/** Nix's default `ignored-acls`: attributes the kernel or file system sets itself and that are left alone. */
export const DEFAULT_IGNORED_ACLS: readonly string[] = ['security.selinux', 'system.nfs4_acl', 'security.csm'];

export interface XattrOps {
  /** Remove every extended attribute of `p` (not following symlinks) not named in `ignored`; returns how many. Throws with `code` (EPERM, ...). */
  strip(p: string | Buffer, ignored: readonly string[]): number;
  /** Names of the extended attributes of `p` (not following symlinks). */
  list(p: string | Buffer): string[];
}

let loader: (() => Promise<XattrOps>) | undefined;
let loaded: Promise<XattrOps> | undefined;
/** What `loaded` resolved to, once it did. */
let ready: XattrOps | undefined;

/** Install the loader of the native operations (called once by the platform layer). */
export function provideXattrOps(load: () => Promise<XattrOps>): void {
  loader = load;
  loaded = ready = undefined;
}

/** The native operations if they are loaded already (no promise to wait for), else undefined. */
export function loadedXattrOps(): XattrOps | undefined {
  return ready;
}

/**
 * The native operations, loaded on first use. Rejects with StoreError `xattrs-unavailable` when they cannot
 * be loaded (no C compiler): a store must not take in files whose extended attributes it cannot remove.
 */
export function xattrOps(): Promise<XattrOps> {
  if (!loaded) {
    const load = loader;
    const p = (loaded = (load ? load() : Promise.reject(new Error('no native extended-attribute support was registered'))).then(
      (ops) => {
        if (loaded === p) ready = ops;
        return ops;
      },
      (e: unknown) => {
        loaded = undefined;
        throw new StoreError('xattrs-unavailable', `cannot remove extended attributes from store files: ${(e as Error).message}`, {
          cause: e,
          hint: "install a C compiler (cc), which realise uses to build its small native helpers, or import 'realise' rather than its store module alone",
        });
      },
    ));
  }
  return loaded;
}

/** Strip `p`'s extended attributes, as a StoreError naming the file on failure. */
export function stripXattrs(ops: XattrOps, p: string, ignored: readonly string[]): void {
  try {
    ops.strip(p, ignored);
  } catch (e) {
    throw new StoreError('xattr-removal-failed', `cannot remove the extended attributes of '${p}': ${(e as Error).message}`, {
      cause: e,
      hint: 'an untrusted builder may have set a file capability or ACL; the path is not registered (removing security.capability needs CAP_SETFCAP, i.e. running as root)',
    });
  }
}
