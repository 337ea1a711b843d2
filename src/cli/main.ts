/**
 * The `realise` command's entry point (bin/realise.js loads this): answers --help and --version at once,
 * else loads src/cli/run.ts and runs its main; sets the exit status.
 */
import { quickAnswer } from './usage.js';

// A reader that goes away (`realise path-info --all | head -1`) ends nothing: as Nix, which ignores the
// failed writes, the command goes on and exits with its own status, without a stack trace.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

const argv = process.argv.slice(2);
const quick = quickAnswer(argv);
if (quick !== undefined) process.exitCode = quick;
else void import('./run.js').then(async (m) => (process.exitCode = await m.main(argv)));
