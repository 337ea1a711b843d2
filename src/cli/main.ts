/**
 * The `realise` command's entry point (bin/realise.js loads this): puts back what the launcher moved aside,
 * answers --help and --version at once, else loads src/cli/run.ts and runs its main; sets the exit status.
 */
import { trustExtraCaCerts } from '../index.js';
import { stderr, writeDirectly } from './stdio.js';
import { quickAnswer } from './usage.js';

// The launcher (bin/realise) starts Node with NODE_EXTRA_CA_CERTS moved to REALISE_NODE_EXTRA_CA_CERTS:
// Node's start would otherwise read that file and build its whole root store, some 40 ms before any of our
// code, in every run. It goes back into the environment here, as it was, for the processes we start (the
// Nix daemon, ssh, hooks, builders' environment rules), and our HTTPS client adds its certificates to Node's
// roots when a binary cache is reached over https.
const moved = process.env.REALISE_NODE_EXTRA_CA_CERTS;
if (moved !== undefined) {
  delete process.env.REALISE_NODE_EXTRA_CA_CERTS;
  if (process.env.NODE_EXTRA_CA_CERTS === undefined) {
    process.env.NODE_EXTRA_CA_CERTS = moved;
    // As Node: an empty value names no file.
    if (moved !== '') trustExtraCaCerts(moved, (m) => stderr.write(`Warning: ${m}\n`));
  }
}

// Output written directly to descriptors 1 and 2 until something makes Node's streams for them (see
// stdio.ts). A reader that goes away (`realise path-info --all | head -1`) ends nothing: as Nix, which
// ignores the failed writes, the command goes on and exits with its own status, without a stack trace.
writeDirectly();

const argv = process.argv.slice(2);
const quick = quickAnswer(argv);
if (quick !== undefined) process.exitCode = quick;
else {
  void import('./run.js').then(async (m) => {
    process.exitCode = await m.main(argv);
    // When nothing is left to do (no handle, request, timer or child left: 'beforeExit'), the process ends
    // there, as nix-store ends: Node's own end would then free every object of the heap and the environment
    // one by one before exiting (10-20 ms after a 200-node build), for nothing. The 'exit' listeners run as
    // they would (the code cache, the build-dir registry's file).
    process.once('beforeExit', () => process.exit());
  });
}
