/**
 * The `realise` command's entry point (bin/realise.js loads this): runs src/cli/run.ts's main and sets
 * the exit status.
 */
import { main } from './run.js';

// A reader that goes away (`realise path-info --all | head -1`) ends nothing: as Nix, which ignores the
// failed writes, the command goes on and exits with its own status, without a stack trace.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

process.exitCode = await main(process.argv.slice(2));
