#!/usr/bin/env node
// The `realise` command. Runs the bundled CLI (dist/bundle/main.js, made by `npm run build`: one file for
// Node to load) or else the compiled one (dist/cli/main.js) when it is newer than the sources, else the
// TypeScript sources through tsx.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// Interrupts: while a build runs, the CLI turns SIGINT/SIGTERM/SIGHUP into cancellation (builders killed,
// locks released, nothing half-registered): it sets `cancel` below for that window. Outside it (loading,
// opening the store, before or after the build) nothing is in flight, so an interrupt ends the command at
// once, as Nix ends: "error: interrupted by the user", exit status 1 (not a death by signal). Only this
// handler decides: other listeners (execa's child clean-up registers some) never keep the process alive.
const interrupts = { cancel: undefined };
globalThis[Symbol.for('realise.cli.interrupts')] = interrupts;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (interrupts.cancel) return interrupts.cancel(sig);
    process.stderr.write('error: interrupted by the user\n');
    process.exit(1);
  });
}

const bundle = new URL('../dist/bundle/main.js', import.meta.url);
const compiled = new URL('../dist/cli/main.js', import.meta.url);
const src = fileURLToPath(new URL('../src', import.meta.url));

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

let sourcesTime;
const fresh = (built) => {
  if (!existsSync(built)) return false;
  sourcesTime ??= existsSync(src) ? newestSource(src) : 0;
  return statSync(built).mtimeMs >= sourcesTime;
};
if (fresh(bundle)) {
  await import(bundle.href);
} else if (fresh(compiled)) {
  await import(compiled.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../src/cli/main.ts', import.meta.url).href);
}
