/**
 * The no-op build (every target already valid) through the CLI against nix-store --realise 2.8 on twin
 * chroot stores: stdout, stderr and exit status byte for byte, for derivations (all outputs, chosen ones, a
 * fixed-output one), opaque paths (`ensure`) and `--add-root`. A no-op opens no substituter, as Nix's: an
 * unreachable binary cache changes nothing (no retries, no warning).
 */
import { lstatSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const SH = '"/bin/sh"';
const EXPR = `rec {
  leaf = derivation { name = "noop-leaf"; system = "x86_64-linux"; builder = ${SH}; args = ["-c" "echo leaf > $out"]; };
  multi = derivation { name = "noop-multi"; system = "x86_64-linux"; builder = ${SH}; outputs = ["out" "dev" "lib"];
    args = ["-c" "echo \${leaf} > $out; echo d > $dev; echo l > $lib"]; };
  fixed = derivation { name = "noop-fixed"; system = "x86_64-linux"; builder = ${SH}; args = ["-c" "echo -n x > $out"];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"; };
  top = derivation { name = "noop-top"; system = "x86_64-linux"; builder = ${SH}; args = ["-c" "cat \${multi.dev} \${fixed} > $out"]; };
}`;
const OPTS = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox', '--option', 'substituters', ''];
// A binary cache nobody answers at: Nix does not open it for a no-op, and neither may we.
const DEAD_CACHE = ['--option', 'substituters', 'http://127.0.0.1:9/cache'];

describe.skipIf(!nixOk())('no-op build: realise vs nix-store --realise 2.8', () => {
  let dir: string;
  const drv: Record<string, string> = {};
  beforeAll(async () => {
    dir = tempDir();
    for (const a of ['leaf', 'multi', 'fixed', 'top']) drv[a] = instantiateTwins(dir, EXPR, ['-A', a]);
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...OPTS, '--realise', drv.top!, drv.multi!]);
    expect(n.status, n.stderr).toBe(0);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...OPTS, drv.top!, drv.multi!]);
    expect(o.status, o.stderr).toBe(0);
  }, 120_000);

  /** Both commands on their twin store (`N` for Nix, `O` for us), `ROOT` standing for the store root or work dir. */
  async function both(nixArgs: string[], ours: string[]) {
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...nixArgs.map((a) => a.replaceAll('ROOT', path.join(dir, 'N')))]);
    const o = await realise(['--store', path.join(dir, 'O'), ...ours.map((a) => a.replaceAll('ROOT', path.join(dir, 'O')))]);
    const norm = (s: string, root: string) => s.split(root).join('ROOT');
    return {
      nix: { stdout: norm(n.stdout, path.join(dir, 'N')), stderr: norm(n.stderr, path.join(dir, 'N')), status: n.status },
      ours: { stdout: norm(o.stdout, path.join(dir, 'O')), stderr: norm(o.stderr, path.join(dir, 'O')), status: o.status },
    };
  }

  it('derivations, all outputs and chosen ones: the same lines, warning and status, with a dead cache configured', async () => {
    const targets = [drv.top!, `${drv.multi!}!dev,lib`, drv.multi!, drv.leaf!, drv.fixed!, `${drv.multi!}!out`];
    const r = await both([...DEAD_CACHE, '--realise', ...targets], ['build', ...DEAD_CACHE, ...targets]);
    expect(r.nix.status).toBe(0);
    expect(r.nix.stdout.trim().split('\n')).toHaveLength(9);
    expect(r.ours).toEqual(r.nix);
  });

  it('opaque paths (ensure): the same', async () => {
    const outs = runNix('nix-store', ['--store', path.join(dir, 'N'), '--query', '--outputs', drv.multi!])
      .stdout.trim()
      .split('\n');
    const r = await both([...DEAD_CACHE, '--realise', ...outs], ['ensure', ...DEAD_CACHE, ...outs]);
    expect(r.nix.stdout.trim().split('\n')).toEqual(outs);
    expect(r.ours).toEqual(r.nix);
  });

  it('--add-root: the same roots printed, pointing at the same paths', async () => {
    const targets = [drv.top!, `${drv.multi!}!dev,lib`, drv.fixed!];
    const r = await both(['--realise', ...targets, '--add-root', 'ROOT-result'], ['build', ...targets, '--add-root', 'ROOT-result']);
    expect(r.nix.status).toBe(0);
    expect(r.ours).toEqual(r.nix);
    for (const l of r.nix.stdout.trim().split('\n')) {
      const [n, o] = [l.replace('ROOT', path.join(dir, 'N')), l.replace('ROOT', path.join(dir, 'O'))];
      expect(lstatSync(o).isSymbolicLink()).toBe(true);
      expect(readlinkSync(o)).toBe(readlinkSync(n));
    }
  });

  it('one target missing among valid ones: built as Nix builds it (the engine runs)', async () => {
    const extra = instantiateTwins(dir, `derivation { name = "noop-extra"; system = "x86_64-linux"; builder = ${SH}; args = ["-c" "echo e > $out"]; }`);
    const r = await both([...OPTS, '--realise', drv.top!, extra], ['build', ...OPTS, drv.top!, extra]);
    expect(r.nix.status).toBe(0);
    expect(r.ours).toEqual(r.nix);
  });
});
