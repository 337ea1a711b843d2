/**
 * The native loop of store optimisation (optimise-addon.c, beside this module): the walk, hashing and
 * linking of one store path per call, the same steps as src/store/optimise-links.cjs at a third of its CPU
 * time. Compiled once with the system C compiler (like the xattr addon) and registered with the store
 * (src/store/optimise.ts) when this module is loaded; without a C compiler the store optimises in
 * JavaScript.
 */
import * as fs from 'node:fs';
import { provideNativeOptimiser } from '../store/optimise.js';
import { cachedBuildPath, compileCOnce, cSource, defaultHelperCacheDir } from './compile-c.js';
import { ADDON_CFLAGS } from './native-xattrs.js';

/** The addon's C file, beside this module. */
export const OPTIMISE_ADDON_SOURCE_FILE = 'optimise-addon.c';

/** Compile the addon (once per source version, into the helper's cache directory); resolves to its file. */
export async function compileOptimiseAddon(opts: { cc?: string; cacheDir?: string } = {}): Promise<string> {
  const source = cSource(OPTIMISE_ADDON_SOURCE_FILE);
  const dest = cachedBuildPath(opts.cacheDir ?? defaultHelperCacheDir(), 'optimise', source, ADDON_CFLAGS, '.node');
  return compileCOnce(dest, opts.cc ?? process.env.CC ?? 'cc', source, ADDON_CFLAGS, 'the optimise addon', fs.constants.R_OK);
}

provideNativeOptimiser(() => compileOptimiseAddon());
