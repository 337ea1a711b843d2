/**
 * The realise CLI on a chroot store that real Nix 2.8 made and built into, run by the same user (CI runs
 * this as root and as an ordinary user: then the store is rootless Nix's, every path read-only to its
 * owner). Our builds register next to Nix's, a corrupted path is repaired, and Nix verifies the result.
 */
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxTree, nix, nixOk, removeTreeSync, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const EXPR = `
let
  sh = "\${./bb}/bin/sh";
  bb = "\${./bb}/bin/busybox";
  base = derivation { name = "by-nix"; system = "x86_64-linux"; builder = sh; args = [ "-c" "\${bb} mkdir -p $out/d; echo nix > $out/d/f" ]; };
in {
  inherit base;
  # Leaves its output and a directory in /tmp read-only: to be moved out of the chroot and deleted by
  # whoever runs the build, root or not.
  locked = derivation { name = "locked"; system = "x86_64-linux"; builder = sh; args = [ "-c" "\${bb} mkdir -p $out/d /tmp/t/u; echo x > $out/d/f; \${bb} chmod -R a-w $out /tmp/t" ]; };
  top = derivation { name = "by-realise"; system = "x86_64-linux"; builder = sh; args = [ "-c" "\${bb} cat \${base}/d/f > $out; echo \${base} >> $out" ]; };
}
`;

describe.skipIf(!nixOk())('the CLI on a store real Nix made (as whoever runs the tests)', () => {
  let dir: string;
  let root: string;
  const drv: Record<string, string> = {};
  const out: Record<string, string> = {};

  beforeAll(() => {
    dir = tempDir('realise-nix-made-');
    root = path.join(dir, 'root');
    busyboxTree(path.join(dir, 'bb'));
    writeFileSync(path.join(dir, 'e.nix'), EXPR);
    for (const a of ['base', 'top', 'locked']) {
      drv[a] = nix('nix-instantiate', ['--store', root, path.join(dir, 'e.nix'), '-A', a]);
      out[a] = nix('nix-store', ['--store', root, '-q', '--outputs', drv[a]!]);
    }
    const r = runNix('nix-store', ['--store', root, '--realise', drv.base!, '--option', 'sandbox', 'true']);
    expect(r.status, r.stderr).toBe(0);
  });
  afterAll(() => {
    if (dir) removeTreeSync(dir);
  });

  it("reads Nix's registrations: path-info and an already valid build", async () => {
    const info = await realise(['path-info', '--store', root, '--json', out.base!]);
    expect(info.status, info.stderr).toBe(0);
    const nixInfo = JSON.parse(nix('nix', ['path-info', '--store', root, '--json', out.base!]));
    expect(JSON.parse(info.stdout)[0]).toMatchObject({ path: out.base, narHash: nixInfo[0].narHash, narSize: nixInfo[0].narSize });
    const b = await realise(['build', '--store', root, drv.base!]);
    expect([b.status, b.stdout.trim()]).toEqual([0, out.base]);
  });

  it("builds on Nix's output in Nix's store, sandboxed; Nix verifies the store and sees the same references", async () => {
    const b = await realise(['build', '--store', root, drv.top!, '--option', 'sandbox', 'true']);
    expect(b.status, b.stderr).toBe(0);
    expect(b.stdout.trim(), b.stderr).toBe(out.top);
    expect(readFileSync(path.join(root, out.top!), 'utf8')).toBe(`nix\n${out.base}\n`);
    expect(nix('nix-store', ['--store', root, '-q', '--references', out.top!])).toBe(out.base);
    const v = runNix('nix-store', ['--store', root, '--verify', '--check-contents']);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stderr).not.toMatch(/corrupt|invalid|error/);
  });

  it('an output the builder leaves read-only: built by both (Nix in its store, ours in a twin), the same NAR hash', async () => {
    const twin = path.join(dir, 'twin');
    expect(nix('nix-instantiate', ['--store', twin, path.join(dir, 'e.nix'), '-A', 'locked'])).toBe(drv.locked);
    const n = runNix('nix-store', ['--store', root, '--realise', drv.locked!, '--option', 'sandbox', 'true']);
    expect(n.status, n.stderr).toBe(0);
    const o = await realise(['build', '--store', twin, drv.locked!, '--option', 'sandbox', 'true']);
    expect(o.status, o.stderr).toBe(0);
    const hash = (r: string) => nix('nix-store', ['--store', r, '-q', '--hash', out.locked!]);
    expect(hash(twin)).toBe(hash(root));
    expect(readFileSync(path.join(twin, out.locked!, 'd', 'f'), 'utf8')).toBe('x\n');
  });

  it("repairs a corrupted path in Nix's store by rebuilding it (files and directories read-only to their owner)", async () => {
    const f = path.join(root, out.base!, 'd', 'f');
    chmodSync(path.join(root, out.base!, 'd'), 0o755);
    chmodSync(f, 0o644);
    writeFileSync(f, 'corrupted\n');
    chmodSync(path.join(root, out.base!, 'd'), 0o555);
    expect(runNix('nix-store', ['--store', root, '--verify-path', out.base!]).status).not.toBe(0);
    const r = await realise(['repair', '--store', root, out.base!]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(f, 'utf8')).toBe('nix\n');
    expect(runNix('nix-store', ['--store', root, '--verify-path', out.base!]).status).toBe(0);
    const v = runNix('nix-store', ['--store', root, '--verify', '--check-contents']);
    expect(v.status, v.stderr).toBe(0);
  });
});
