/**
 * The C files shipped beside src/platform's modules compile without a single warning: with the flags
 * realise uses at run time plus `-Werror`, so a warning introduced into any of them fails here (at run
 * time warnings are not errors, so that a user's newer compiler cannot take the sandbox away).
 */
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { C_WARNINGS, cSource } from '../../src/platform/compile-c.js';
import { OPTIMISE_ADDON_SOURCE_FILE } from '../../src/platform/native-optimise.js';
import { ADDON_CFLAGS, ADDON_SOURCE_FILE } from '../../src/platform/native-xattrs.js';
import { HELPER_CFLAGS, HELPER_SOURCE_FILE } from '../../src/platform/sandbox-helper.js';
import { tempDir } from '../helpers/nix.js';
import { ccOk } from './sandbox-fixture.js';

const PLATFORM = path.resolve(__dirname, '../../src/platform');

describe.skipIf(!ccOk())('C sources', () => {
  it.each([
    ['the sandbox helper', HELPER_SOURCE_FILE, HELPER_CFLAGS],
    ['the xattr addon', ADDON_SOURCE_FILE, ADDON_CFLAGS],
    ['the optimise addon', OPTIMISE_ADDON_SOURCE_FILE, ADDON_CFLAGS],
  ])('%s compiles warning-free with -Werror', (_what, file, cflags) => {
    expect(cflags).toEqual(expect.arrayContaining([...C_WARNINGS]));
    expect(C_WARNINGS).toEqual(['-Wall', '-Wextra']);
    const dir = tempDir('realise-cc-');
    try {
      const r = spawnSync(process.env.CC ?? 'cc', [...cflags, '-Werror', '-o', path.join(dir, 'out'), path.join(PLATFORM, file)], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads each source from the file beside the module, and names a missing one', () => {
    expect(cSource(HELPER_SOURCE_FILE)).toMatch(/^\/\* realise sandbox helper/);
    expect(cSource(ADDON_SOURCE_FILE)).toMatch(/^\/\* realise xattr addon/);
    expect(cSource(OPTIMISE_ADDON_SOURCE_FILE)).toMatch(/^\/\* realise optimise addon/);
    // The header both include is in their text (they are compiled from elsewhere), once each.
    for (const file of [HELPER_SOURCE_FILE, ADDON_SOURCE_FILE]) {
      expect(cSource(file)).not.toMatch(/^#include "/m);
      expect(cSource(file).match(/^static int skeletonCheckAt\(/gm)).toHaveLength(1);
    }
    expect(() => cSource('no-such.c')).toThrow(
      /the C source no-such\.c is missing beside realise's modules \(.*\/src\/platform\/no-such\.c\): the installation is incomplete/,
    );
  });
});
