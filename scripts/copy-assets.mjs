// Copies the files of src/ that are not TypeScript and that modules read at run time next to themselves
// (through `new URL('./x', import.meta.url)`): the C sources compiled on the user's machine (.c, and the
// .h they include) and the plain worker-thread scripts (.cjs). Into dist/ at the same relative paths after
// `tsc` (which emits the .cjs itself but not the C files), and flat into the bundle's one directory
// (scripts/bundle-cli.mjs).
//   node scripts/copy-assets.mjs         (part of `npm run build` and `prepare`: src/ → dist/)
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The files under `dir` whose names end with one of `exts`, as paths relative to `dir`. */
function assets(dir, exts, rel = '') {
  const found = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const p = path.join(rel, e.name);
    if (e.isDirectory()) found.push(...assets(dir, exts, p));
    else if (exts.some((x) => e.name.endsWith(x))) found.push(p);
  }
  return found;
}

/**
 * Copy the assets of src/ with the extensions `exts` into `outdir`: at their relative paths, or all in
 * `outdir` itself when `flat` (two files of one name are then an error).
 */
export function copyAssets(outdir, exts, { flat = false } = {}) {
  const src = path.join(root, 'src');
  const copied = new Map();
  for (const rel of assets(src, exts)) {
    const name = flat ? path.basename(rel) : rel;
    if (copied.has(name)) throw new Error(`copy-assets: two files named ${name} (${copied.get(name)}, ${rel}) for one directory`);
    copied.set(name, rel);
    mkdirSync(path.dirname(path.join(outdir, name)), { recursive: true });
    copyFileSync(path.join(src, rel), path.join(outdir, name));
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) copyAssets(path.join(root, 'dist'), ['.c', '.h']);
