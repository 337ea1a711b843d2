/**
 * Child process for the crash-debris test of hostile-builders.test.ts: builds a derivation whose builder
 * sleeps (in the sandbox, chroot pool on), prints BUILDING once the builder runs and a pooled chroot skeleton
 * waits, and is killed with -9.
 * Argv: STORE_ROOT BUILD_DIR_BASE DRV_PATH
 */
import { readdirSync } from 'node:fs';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { SANDBOX_PATHS } from '../scheduler/helpers.js';

const [root, buildDir, drvPath] = process.argv.slice(2) as [string, string, string];
const store = await LocalStore.open({ root });
const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir });
// Killed once the build runs and the chroot pool (filled in the background) has a skeleton of ours waiting.
engine.on('build-started', () => {
  const poll = () => {
    if (readdirSync(store.realStoreDir).some((n) => n.includes(`-realise-chroot-${process.pid}-`))) process.stdout.write('BUILDING\n');
    else setTimeout(poll, 20);
  };
  poll();
});
await engine.buildPaths([drvPath]);
