// Bundles the `realise` command (src/cli/main.ts and everything it imports from src/) into dist/bundle/
// with esbuild, so that starting the command costs Node one file to resolve and compile instead of a
// hundred modules. npm packages stay external (native addons must; the rest are loaded from
// node_modules, most of them only when a command needs them). Code reached only through a dynamic
// import() lands in its own chunk. Plain .cjs files of src/ (worker-thread scripts, found through
// `new URL('./x.cjs', import.meta.url)`) are copied next to the bundle. bin/realise.js runs
// dist/bundle/main.js when it is newer than src/.
//   node scripts/bundle-cli.mjs          (part of `npm run build` and `prepare`)
//   node scripts/bundle-cli.mjs OUTDIR   (elsewhere; OUTDIR/meta.json is esbuild's metafile)
import { build } from 'esbuild';
import { copyFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

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

// The worker scripts, next to the chunks that name them relative to import.meta.url.
const copied = new Map();
const copyScripts = (dir) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) copyScripts(p);
    else if (e.name.endsWith('.cjs')) {
      if (copied.has(e.name)) throw new Error(`bundle-cli: two scripts named ${e.name} (${copied.get(e.name)}, ${p}): the bundle is one directory`);
      copied.set(e.name, p);
      copyFileSync(p, path.join(outdir, e.name));
    }
  }
};
copyScripts(`${root}src`);
