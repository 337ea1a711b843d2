/**
 * Child process for the crash-debris test of hostile-builders.test.ts: builds a derivation whose builder
 * sleeps and a quick one beside it (in the sandbox, chroot pool on), prints BUILDING once the sleeper runs
 * and the quick build's chroot skeleton waits in the pool, and is killed with -9.
 * Argv: STORE_ROOT BUILD_DIR_BASE DRV_PATH QUICK_DRV_PATH
 */
import { readdirSync } from 'node:fs';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { SANDBOX_PATHS } from '../scheduler/helpers.js';

const [root, buildDir, drvPath, quickDrvPath] = process.argv.slice(2) as [string, string, string, string];
const store = await LocalStore.open({ root });
const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, buildDir, maxJobs: 2 });
// Killed once the builds run and the chroot pool has a skeleton of ours waiting (the quick build's, back from it).
engine.on('build-started', () => {
  const poll = () => {
    if (readdirSync(store.realStoreDir).some((n) => n.includes(`-realise-chroot-${process.pid}-`))) process.stdout.write('BUILDING\n');
    else setTimeout(poll, 20);
  };
  poll();
});
await engine.buildPaths([drvPath, quickDrvPath]);
