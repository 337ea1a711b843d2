/**
 * The machine's own defaults, as Nix 2.8 computes them for whoever runs it (compared with real Nix run by
 * the same user): system features (`kvm` when /dev/kvm is readable and writable, so root may have it and an
 * ordinary user not), cores, the build directory's root, and /dev/kvm in the sandbox when `kvm` is a
 * feature. Passes on machines with and without /dev/kvm, as root and as an ordinary user.
 */
import { accessSync, constants, mkdirSync, readFileSync, realpathSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultSystemFeatures, DEFAULT_SYSTEM_FEATURES } from '../../src/derivation/parsed-attrs.js';
import { defaultBuildDir, resolveOptions } from '../../src/scheduler/options.js';
import { busyboxTree, instantiateTwins, nix, nixOk, nixRealise, removeTreeSync, tempDir } from '../helpers/nix.js';
import { realiseInProcess } from '../helpers/cli.js';

function kvmUsable(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** A setting from `nix show-config`, as Nix computes it for this user. */
function nixSetting(name: string): string {
  const line = nix('nix', ['show-config'])
    .split('\n')
    .find((l) => l.startsWith(`${name} = `));
  return line!.slice(name.length + 3);
}

describe('machine defaults', () => {
  it("system features: Nix's defaults, plus kvm exactly when /dev/kvm is readable and writable by this user", () => {
    const f = defaultSystemFeatures();
    expect(f).toEqual([...DEFAULT_SYSTEM_FEATURES, ...(kvmUsable() ? ['kvm'] : [])].sort());
    expect(resolveOptions({}, true).systemFeatures).toEqual(f);
  });

  it('the build directory root: $TMPDIR (symlinks resolved, as Nix), else /tmp', () => {
    const saved = process.env.TMPDIR;
    const dir = tempDir();
    try {
      mkdirSync(path.join(dir, 'real'));
      symlinkSync('real', path.join(dir, 'link'));
      process.env.TMPDIR = path.join(dir, 'link') + '/';
      expect(defaultBuildDir()).toBe(realpathSync(path.join(dir, 'real')));
      expect(resolveOptions({}, true).buildDir).toBe(realpathSync(path.join(dir, 'real')));
      delete process.env.TMPDIR;
      expect(defaultBuildDir()).toBe(realpathSync('/tmp'));
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      removeTreeSync(dir);
    }
  });

  describe.skipIf(!nixOk())('vs Nix 2.8, run by the same user', () => {
    it('system-features and cores are what `nix show-config` says', () => {
      expect(defaultSystemFeatures().join(' ')).toBe(nixSetting('system-features'));
      expect(String(resolveOptions({}, true).cores)).toBe(nixSetting('cores'));
    });

    describe('a derivation that requires kvm, on twin chroot stores', () => {
      let dir: string;
      let drv: string;
      beforeAll(() => {
        dir = tempDir('realise-kvm-');
        busyboxTree(path.join(dir, 'bb'));
        drv = instantiateTwins(
          dir,
          'derivation { name = "kvm-user"; system = "x86_64-linux"; builder = "${./bb}/bin/sh"; requiredSystemFeatures = [ "kvm" ];\n' +
            '  args = [ "-c" "${./bb}/bin/busybox ls /dev > $out; ${./bb}/bin/busybox test -c /dev/kvm && echo kvm-is-a-device >> $out; true" ]; }\n',
        );
      });
      afterAll(() => {
        if (dir) removeTreeSync(dir);
      });

      it.runIf(kvmUsable())('with /dev/kvm usable: both build it, /dev/kvm in the sandbox, the same output', async () => {
        const n = nixRealise(path.join(dir, 'N'), [drv], { sandbox: true });
        expect(n.status, n.stderr).toBe(0);
        const o = await realiseInProcess(['build', '--store', path.join(dir, 'O'), drv, '--option', 'sandbox', 'true']);
        expect(o.status, o.stderr).toBe(0);
        const out = n.stdout.trim();
        expect(o.stdout.trim()).toBe(out);
        const ours = readFileSync(path.join(dir, 'O', out), 'utf8');
        expect(ours).toBe(readFileSync(path.join(dir, 'N', out), 'utf8'));
        expect(ours.split('\n')).toContain('kvm');
        expect(ours).toContain('kvm-is-a-device');
      });

      it.runIf(!kvmUsable())('without /dev/kvm usable: neither can build it, the same message', async () => {
        const n = nixRealise(path.join(dir, 'N'), [drv], { sandbox: true });
        expect(n.status).toBe(1);
        const o = await realiseInProcess(['build', '--store', path.join(dir, 'O'), drv, '--option', 'sandbox', 'true']);
        expect(o.status).toBe(1);
        const errors = (s: string) => s.split('\n').filter((l) => l.startsWith('error: '));
        expect(errors(o.stderr)).toEqual(errors(n.stderr));
        expect(errors(o.stderr)[0]).toContain("but I am a 'x86_64-linux' with features {benchmark, big-parallel, nixos-test}");
      });
    });
  });
});
