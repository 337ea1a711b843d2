// Bundles the `realise` command (src/cli/main.ts and everything it imports from src/) into one CommonJS
// file, dist/bundle/main.cjs, with esbuild, so that starting the command costs Node one file to read and
// compile instead of a hundred modules, and so that V8 can cache that file's compiled code between runs
// (bin/realise.js runs it through `vm.Script` with a code cache; Node 20 has no compile cache for ES
// modules). npm packages stay external (native addons must), and are required by the code that uses them,
// when it first runs; except better-sqlite3's JavaScript, which every store command loads (eleven small
// modules): it is bundled, and src/store/sqlite.ts gives it its native addon by path; and the engine's queue
// (BUNDLED_PACKAGES, below). Each of our modules is
// wrapped in its own initialiser (esbuild's lazy ES-module wrappers), which runs when a module that imports
// it statically runs, or when a dynamic import() of it is reached: a command initialises only what it uses.
// `import()` of a package becomes a `require` (Node 20.19 requires ES-module packages), as a CommonJS
// script run by `vm.Script` cannot import(). `import.meta.url` is the bundle's own URL: the files of src/
// that modules read beside themselves (worker-thread scripts, C sources; found through
// `new URL('./x', import.meta.url)`) are copied next to it. bin/realise.js runs dist/bundle/main.cjs when
// it is newer than src/.
//
// Our modules are bundled as free of side effects (esbuild's `sideEffects: false`), so that a module is
// part of the bundle only when something uses one of its exports. A module whose import itself does the
// work (a registration, imported for that alone) is named in IMPORTED_FOR_EFFECT and keeps its side
// effects. And the CLI's imports from the public surface (src/index.ts, a barrel of re-exports) are
// bundled as imports from the modules that define each name, so that running a CLI module initialises the
// modules it uses, not everything the barrel re-exports.
//   node scripts/bundle-cli.mjs          (part of `npm run build` and `prepare`)
//   node scripts/bundle-cli.mjs OUTDIR   (elsewhere; OUTDIR/meta.json is esbuild's metafile)
import { build } from 'esbuild';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyAssets } from './copy-assets.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = path.join(root, 'src') + path.sep;
const IMPORTED_FOR_EFFECT = new Set([path.join(src, 'platform', 'native-xattrs.ts'), path.join(src, 'platform', 'native-optimise.ts')]);

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
/**
 * The npm packages whose JavaScript is bundled; every other package stays external. p-queue (with
 * p-timeout and eventemitter3) is the engine's: an ES-module package, which Node could only load through
 * its ES-module loader (started for it alone, about 10 ms of every command that builds).
 */
const BUNDLED_PACKAGES = new Set(['better-sqlite3', 'p-queue', 'p-timeout', 'eventemitter3']);
const externalPackages = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (a) => {
      if (a.path.startsWith('node:') || BUNDLED_PACKAGES.has(a.path)) return undefined;
      return { path: a.path, external: true };
    });
  },
};
/**
 * `node:crypto` as a module of functions that require it on their first call: loading it (about 3 ms) is
 * then paid by the commands that hash or sign, not by every command whose modules import it. A name our
 * modules import that is missing here fails the build.
 */
const CRYPTO_FUNCTIONS = ['createHash', 'hash', 'randomBytes', 'createPrivateKey', 'createPublicKey', 'generateKeyPairSync', 'sign', 'verify'];
const lazyCrypto = {
  name: 'lazy-crypto',
  setup(b) {
    b.onResolve({ filter: /^node:crypto$/ }, (a) => (a.importer.startsWith(src) ? { path: 'lazy-crypto', namespace: 'lazy-crypto' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'lazy-crypto' }, () => ({
      contents: [
        'let crypto;',
        ...CRYPTO_FUNCTIONS.map((f) => `export function ${f}(...args) { return (crypto ??= require('node:crypto')).${f}(...args); }`),
      ].join('\n'),
      loader: 'js',
    }));
  },
};
const outdir = process.argv[2] ? path.resolve(process.argv[2]) : `${root}dist/bundle`;
rmSync(outdir, { recursive: true, force: true });
const result = await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/main.ts'],
  outfile: path.join(outdir, 'main.cjs'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__bundleUrl' },
  // Our modules are strict (ES modules), and so is better-sqlite3.
  banner: { js: '"use strict"; var __bundleUrl = require("node:url").pathToFileURL(__filename).href;' },
  sourcemap: 'linked',
  // Identifiers are kept, not minified: then functions and classes keep their own names without esbuild's
  // keepNames, which names each closure as it is made (an Object.defineProperty per closure, per call).
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: false,
  keepNames: false,
  logLevel: 'warning',
  metafile: Boolean(process.argv[2]),
  plugins: [flattenPublicImports, sideEffectFree, externalPackages, lazyCrypto],
});
if (process.argv[2]) writeFileSync(path.join(outdir, 'meta.json'), JSON.stringify(result.metafile));

// The worker scripts and C sources, next to the bundle, which names them relative to its own URL.
copyAssets(outdir, ['.cjs', '.c', '.h'], { flat: true });
