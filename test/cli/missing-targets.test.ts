/**
 * Store paths as targets that nothing can provide (no substituter has them), beside derivations, without
 * --keep-going: `realise build` against `nix-store --realise` on twin chroot stores. Nix's worker stops the
 * other targets only for a goal that failed (ecFailed); a path no substituter has (ecNoSubstituters) does
 * not stop them, so the derivations are built and only the missing paths are the error.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';

const SANDBOX = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox'];
const MISSING = ['/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-missing', '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-missing2'];

describe.skipIf(!nixOk())('targets no substituter has, beside derivations, realise vs Nix 2.8', () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(
      dir,
      `let mk = name: extra: derivation ({ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "sleep 1; echo \${name} > $out" ]; } // extra);
       in mk "top" { dep = mk "dep" {}; }`,
    );
  });

  it('without --keep-going the derivations are still built; the error names the missing paths only; exit 1', async () => {
    for (const missing of [MISSING.slice(0, 1), MISSING]) {
      const root = (side: string) => path.join(dir, side);
      const n = runNix('nix-store', ['--store', root('N'), ...SANDBOX, '--realise', drv, ...missing]);
      const o = await realise(['build', '--store', root('O'), ...SANDBOX, drv, ...missing]);
      expect(n.status, n.stderr).toBe(1);
      expect(o.status, o.stderr).toBe(1);
      expect(n.stderr).toContain(`error: build of ${missing.map((p) => `'${p}'`).join(', ')} failed`);
      expect(o.stderr).toBe(n.stderr);
      // The derivation's output is valid on both sides.
      const out = runNix('nix-store', ['--store', root('N'), '-q', '--outputs', drv]).stdout.trim();
      for (const side of ['N', 'O']) expect(runNix('nix-store', ['--store', root(side), '--check-validity', out]).status, side).toBe(0);
      // Deleted, so that the next round builds it again.
      for (const side of ['N', 'O']) runNix('nix-store', ['--store', root(side), '--delete', out]);
    }
  });
});
