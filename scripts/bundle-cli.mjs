// Bundles the `realise` command (src/cli/main.ts and everything it imports from src/) into dist/bundle/
// with esbuild, so that starting the command costs Node one file to resolve and compile instead of a
// hundred modules. npm packages stay external (native addons must; the rest are loaded from
// node_modules, most of them only when a command needs them). Code reached only through a dynamic
// import() lands in its own chunk. bin/realise.js runs dist/bundle/main.js when it is newer than src/.
//   node scripts/bundle-cli.mjs          (part of `npm run build` and `prepare`)
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = `${root}dist/bundle`;
rmSync(outdir, { recursive: true, force: true });
await build({
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
});
