/**
 * Child process for optimise.test.ts: optimises the whole store at argv[2], printing WARNING at each
 * warning (every path of the test's store has a writable file), until it is killed (or DONE when it
 * finishes first).
 */
import '../../src/platform/native-optimise.js'; // (REALISE_NATIVE_OPTIMISE=0 in the environment: the JavaScript loop)
import { LocalStore } from '../../src/store/local-store.js';

const store = await LocalStore.open({ root: process.argv[2]! });
await store.optimiseStore({ onWarning: () => process.stdout.write('WARNING\n') });
await store.close();
process.stdout.write('DONE\n');
