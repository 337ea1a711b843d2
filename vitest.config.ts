import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Removes each file's temporary directories after it (REALISE_KEEP_TEST_DIRS=1 keeps them).
    setupFiles: ['test/helpers/cleanup.ts'],
  },
});
