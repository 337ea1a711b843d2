/**
 * Run before every test file (vitest `setupFiles`): once the file's own hooks have run, the temporary
 * directories it made with tempDir() are removed, so repeated runs do not fill the disk with stores,
 * caches and build trees. (A file's afterAll hooks run last-registered first, so this one runs after
 * the file's own, which stop the daemons and servers that use those directories.)
 */
import { afterAll } from 'vitest';
import { madeTempDirs, removeTreeSync } from './nix.js';

afterAll(() => {
  if (process.env.REALISE_KEEP_TEST_DIRS) return;
  for (const d of madeTempDirs.splice(0)) removeTreeSync(d);
});
