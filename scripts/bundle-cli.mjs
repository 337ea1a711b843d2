// Bundles the `realise` command (src/cli/main.ts and everything it imports from src/) into dist/bundle/
// with esbuild, so that starting the command costs Node one file to resolve and compile instead of a
// hundred modules. npm packages stay external (native addons must; the rest are loaded from
// node_modules, most of them only when a command needs them). Code reached only through a dynamic
// import() lands in its own chunk. The files of src/ that modules read beside themselves (worker-thread
// scripts, C sources; found through `new URL('./x', import.meta.url)`) are copied next to the bundle. bin/realise.js runs
// dist/bundle/main.js when it is newer than src/.
//
// Our modules are bundled as free of side effects (esbuild's `sideEffects: false`), so that a module is
// part of a chunk only when something there uses one of its exports. A module whose import itself does the
// work (a registration, imported for that alone) is named in IMPORTED_FOR_EFFECT and keeps its side
// effects. And the CLI's imports from the public surface (src/index.ts, a barrel of re-exports) are
// bundled as imports from the modules that define each name: with code splitting, esbuild puts everything
// a barrel re-exports in the chunk of the barrel, which every command chunk would then load.
//   node scripts/bundle-cli.mjs          (part of `npm run build` and `prepare`)
//   node scripts/bundle-cli.mjs OUTDIR   (elsewhere; OUTDIR/meta.json is esbuild's metafile)
import { build } from 'esbuild';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyAssets } from './copy-assets.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = path.join(root, 'src') + path.sep;
const IMPORTED_FOR_EFFECT = new Set([path.join(src, 'platform', 'native-xattrs.ts')]);

const tsOf = (from, spec) => path.resolve(path.dirname(from), spec.replace(/\.js$/, '.ts'));

/** Name → the module that defines it, of a barrel (a module of `export … from` lines only), recursively. */
function barrelExports(file) {
  const names = new Map();
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(/export\s+(?:type\s+)?\{([^}]*)\}\s+from\s+'([^']+)'/g)) {
    for (const spec of m[1].split(',').map((x) => x.trim().replace(/^type\s+/, ''))) if (spec) names.set(spec, tsOf(file, m[2]));
  }
  for (const m of text.matchAll(/export\s+\*\s+from\s+'([^']+)'/g)) for (const [k, v] of barrelExports(tsOf(file, m[1]))) names.set(k, v);
  return names;
}
const publicNames = barrelExports(path.join(src, 'index.ts'));

/** A CLI module with its imports from '../index.js' made imports from the defining modules. */
const flattenPublicImports = {
  name: 'flatten-public-imports',
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/]cli[\\/][^\\/]+\.ts$/ }, (a) => {
      const text = readFileSync(a.path, 'utf8');
      const contents = text.replace(/import\s+(type\s+)?\{([^}]*)\}\s+from\s+'\.\.\/index\.js';/g, (_, typeOnly, list) => {
        if (typeOnly) return '';
        const byModule = new Map();
        for (const spec of list.split(',').map((x) => x.trim())) {
          if (!spec || spec.startsWith('type ')) continue;
          const file = publicNames.get(spec);
          if (!file) throw new Error(`bundle-cli: '${spec}' (imported by ${a.path}) is not exported by src/index.ts`);
          byModule.set(file, [...(byModule.get(file) ?? []), spec]);
        }
        return [...byModule]
          .map(([file, specs]) => `import { ${specs.join(', ')} } from './${path.relative(path.dirname(a.path), file).replace(/\.ts$/, '.js')}';`)
          .join(' ');
      });
      return { contents, loader: 'ts' };
    });
  },
};

/** Relative imports of src/ modules (`./x.js`, which is `./x.ts`) resolve to side-effect-free modules. */
const sideEffectFree = {
  name: 'side-effect-free-src',
  setup(b) {
    b.onResolve({ filter: /^\.\.?\/.*\.js$/ }, (a) => {
      if (!a.importer.startsWith(src)) return undefined;
      const file = path.resolve(path.dirname(a.importer), a.path.slice(0, -3) + '.ts');
      if (!file.startsWith(src) || !existsSync(file)) return undefined;
      return { path: file, sideEffects: IMPORTED_FOR_EFFECT.has(file) };
    });
  },
};
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
  plugins: [flattenPublicImports, sideEffectFree],
});
if (process.argv[2]) writeFileSync(path.join(outdir, 'meta.json'), JSON.stringify(result.metafile));

// The worker scripts and C sources, next to the chunks that name them relative to import.meta.url.
copyAssets(outdir, ['.cjs', '.c'], { flat: true });
