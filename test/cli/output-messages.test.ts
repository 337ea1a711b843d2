/**
 * Messages that name an output's location, `realise build` against `nix-store --realise` on twin chroot
 * stores (where builds run sandboxed): Nix names the output inside the build's chroot (a missing output, a
 * writable one, an executable flat fixed output),
 * `<store>/<drv>.chroot/nix/store/<output>`. Compared with the roots replaced by ROOT. And a builder that
 * closes its output early, which Nix kills.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const EXPR = `{
  noout = derivation { name = "om-noout"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo none"]; };
  writable = derivation { name = "om-writable"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo x > $out; chmod 666 $out"]; };
  fodexec = derivation { name = "om-fodexec"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo -n x > $out; chmod +x $out"];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"; };
  closes = derivation { name = "om-closes"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo bye; exec >&- 2>&-; /bin/busybox sleep 20; echo > $out"]; };
}`;

describe.skipIf(!nixOk())('output locations in messages, realise vs Nix 2.8 (sandboxed)', () => {
  let dir: string;
  const drvs: Record<string, string> = {};
  beforeAll(() => {
    dir = tempDir();
    for (const a of ['noout', 'writable', 'fodexec', 'closes']) drvs[a] = instantiateTwins(dir, EXPR, ['-A', a]);
  });
  const errors = (stderr: string, root: string) =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('error:'))
      .map((l) => l.split(root).join('ROOT'));

  // closes: a builder that closes its stdout and stderr and runs on is killed, as the end of its output
  // is the end of the build: "failed due to signal 9 (Killed)", exit 100 (not a 20 s wait and success).
  for (const a of ['noout', 'writable', 'fodexec', 'closes']) {
    it(`${a}: the same error line and status`, async () => {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), '--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox', '--realise', drvs[a]!]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), '--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox', drvs[a]!]);
      if (a !== 'closes') expect(errors(n.stderr, path.join(dir, 'N'))[0]).toContain(`.drv.chroot/nix/store/`);
      expect(errors(o.stderr, path.join(dir, 'O')), o.stderr).toEqual(errors(n.stderr, path.join(dir, 'N')));
      expect(o.status).toBe(n.status);
    });
  }

  it('a sandbox that cannot be set up (a missing sandbox path): the error alone, no "building" line, as Nix', async () => {
    const args = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox /nonexistent-sandbox-path', drvs.noout!];
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...args.slice(0, 2), args[2]!, '--realise', args[3]!]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...args]);
    const key = (s: string) => s.split('\n').filter((l) => l.startsWith('error:') || l.startsWith('building'));
    expect(key(n.stderr)).toEqual(["error: getting attributes of path '/nonexistent-sandbox-path': No such file or directory"]);
    expect(key(o.stderr), o.stderr).toEqual(key(n.stderr));
    expect(o.status).toBe(n.status);
  });

  it("the same setup error's trace: pointed at without --show-trace, shown with it, as Nix", async () => {
    for (const flags of [[], ['--show-trace']]) {
      const args = [...flags, '--option', 'sandbox-paths', '/bin/sh=/bin/busybox /nonexistent-sandbox-path', drvs.noout!];
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', ...args]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...args]);
      const tail = (s: string) => s.slice(s.indexOf('error:'));
      expect(tail(n.stderr)).toMatch(
        flags.length ? /\n\n {7}\u2026 while setting up the build environment\n$/ : /\n\(use '--show-trace' to show detailed location information\)\n$/,
      );
      expect(tail(o.stderr), o.stderr).toBe(tail(n.stderr));
    }
  });
});
