// Bundles the `realise` command (src/cli/main.ts and everything it imports from src/) into dist/bundle/
// with esbuild, so that starting the command costs Node one file to resolve and compile instead of a
// hundred modules. npm packages stay external (native addons must; the rest are loaded from
// node_modules, most of them only when a command needs them). Code reached only through a dynamic
// import() lands in its own chunk. The files of src/ that modules read beside themselves (worker-thread
// scripts, C sources; found through `new URL('./x', import.meta.url)`) are copied next to the bundle. bin/realise.js runs
// dist/bundle/main.js when it is newer than src/.
//   node scripts/bundle-cli.mjs          (part of `npm run build` and `prepare`)
//   node scripts/bundle-cli.mjs OUTDIR   (elsewhere; OUTDIR/meta.json is esbuild's metafile)
import { build } from 'esbuild';
import { rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyAssets } from './copy-assets.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = process.argv[2] ? path.resolve(process.argv[2]) : `${root}dist/bundle`;
rmSync(outdir, { recursive: true, force: true });
const result = await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/main.ts'],
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: 'linked',
  minify: true,
  keepNames: true,
  logLevel: 'warning',
  metafile: Boolean(process.argv[2]),
});
if (process.argv[2]) writeFileSync(path.join(outdir, 'meta.json'), JSON.stringify(result.metafile));

// The worker scripts and C sources, next to the chunks that name them relative to import.meta.url.
copyAssets(outdir, ['.cjs', '.c'], { flat: true });
