/**
 * Floating content-addressed derivations (Nix 2.8's experimental ca-derivations): the output path comes
 * from the content, self-references are hashed modulo the scratch path, and the registered NAR hash is
 * that of the rewritten content. Built by real Nix and by us, sandboxed, in two chroot stores.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { outputsOf } from './helpers.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';

const CA = '--extra-experimental-features';
const EXPR = `
let sh = "/bin/sh"; bb = "/bin/busybox"; in {
  self = derivation { name = "ca-self"; system = "x86_64-linux"; builder = sh; __contentAddressed = true;
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = ["-c" "\${bb} mkdir $out; echo $out > $out/self; echo hi > $out/x"]; };
  flat = derivation { name = "ca-flat"; system = "x86_64-linux"; builder = sh; __contentAddressed = true;
    outputHashMode = "flat"; outputHashAlgo = "sha256"; args = ["-c" "echo flat > $out"]; };
}`;

describe.skipIf(!nixOk())('floating content-addressed outputs vs Nix 2.8', () => {
  let R1: string;
  let R2: string;
  let file: string;
  beforeAll(() => {
    const dir = tempDir();
    R1 = path.join(dir, 'nix');
    R2 = path.join(dir, 'ours');
    file = path.join(dir, 'ca.nix');
    writeFileSync(file, EXPR);
  });
  afterAll(() => {});

  for (const attr of ['self', 'flat']) {
    it(`${attr}: same output path, NAR hash, references and CA field; Nix verifies our store`, async () => {
      const drv1 = nix('nix-instantiate', [CA, 'ca-derivations', '--store', R1, file, '-A', attr]);
      const drv2 = nix('nix-instantiate', [CA, 'ca-derivations', '--store', R2, file, '-A', attr]);
      expect(drv2).toBe(drv1);
      const r = runNix('nix-store', [
        CA,
        'ca-derivations',
        '--store',
        R1,
        '--realise',
        drv1,
        '--option',
        'sandbox',
        'true',
        '--option',
        'sandbox-paths',
        '/bin/sh=/bin/busybox /bin/busybox',
      ]);
      expect(r.status, r.stderr).toBe(0);
      const nixOut = r.stdout.trim();

      const store = await LocalStore.open({ root: R2 });
      try {
        const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: ['/bin/sh=/bin/busybox', '/bin/busybox'] });
        const [res] = await engine.buildPaths([drv1]);
        expect(res!.result.status).toBe('built');
        expect(res!.result.builtOutputs.out).toBe(nixOut);
        expect((await outputsOf(store, drv1)).get('out')).toBe(nixOut);
        await engine.close(); // no chroot is being prepared when the store goes
      } finally {
        await store.close();
      }
      const info = (root: string) => JSON.parse(nix('nix', ['path-info', '--store', root, '--json', nixOut]))[0];
      const a = info(R1);
      const b = info(R2);
      for (const k of ['path', 'narHash', 'narSize', 'references', 'ca', 'deriver']) expect(b[k], k).toEqual(a[k]);
      const v = runNix('nix-store', ['--store', R2, '--verify', '--check-contents']);
      expect(v.status, v.stderr).toBe(0);
      expect(v.stderr).not.toMatch(/modified|error/);
    });
  }
});
