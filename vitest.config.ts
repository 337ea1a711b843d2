import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

/**
 * Files run alone, after the others. test/cli/nix-functional.test.ts: its post-hook.sh step compares the
 * order of realise's lines with Nix's, which a loaded machine can change (the next build's 'building' line
 * can come before the post-build hook's output). test/remote/ssh.test.ts: two of its comparisons of a remote
 * build's lines with Nix's failed once beside other files under heavy load (they pass alone).
 */
const ALONE = ['test/cli/nix-functional.test.ts', 'test/remote/ssh.test.ts'];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Removes each file's temporary directories after it (REALISE_KEEP_TEST_DIRS=1 keeps them).
    setupFiles: ['test/helpers/cleanup.ts'],
    projects: [
      {
        extends: true,
        test: {
          name: 'files',
          include: ['test/**/*.test.ts'],
          exclude: ALONE,
          // Two files at a time on a 2-core machine (vitest's default, one fewer than the cores, runs one):
          // most files wait on real Nix, builders and sockets as much as they compute. Files must not see each
          // other: their own temporary directories, ports and markers (no fixed names, no scans for another
          // file's processes).
          maxWorkers: Math.max(2, availableParallelism() - 1),
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: { name: 'alone', include: ALONE, maxWorkers: 1, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
