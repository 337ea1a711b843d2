/**
 * The `realise` command's entry point (bin/realise.js loads this): runs src/cli/run.ts's main and sets
 * the exit status.
 */
import { main } from './run.js';

process.exitCode = await main(process.argv.slice(2));
