/**
 * A builder's `@nix {"action":"msg",…}` lines: Nix prints their messages (at Nix's default verbosity,
 * levels 0 to 3; one more with each `-v`, one fewer with each `--quiet`) and keeps them out of the log lines; `realise build` against `nix-store --realise` on
 * twin chroot stores, in the plain display and in `--log-format internal-json`.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';

const MSG = (level: number) => `echo '@nix {"action":"msg","level":${level},"msg":"message at level ${level}"}'`;
const EXPR = `derivation { name = "builder-messages"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" ''${[0, 1, 2, 3, 4, 5].map(MSG).join('; ')}; echo '@nix {"action":"setPhase","phase":"buildPhase"}'; echo a plain line; echo x > $out''];
}`;
const SANDBOX = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox'];

describe.skipIf(!nixOk())("a builder's @nix messages, realise vs Nix 2.8", () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(dir, EXPR);
  });
  /** The lines both print for the build (not Nix's --add-root warning). */
  const lines = (stderr: string) => stderr.split('\n').filter((l) => /^(message at|a plain line|building)/.test(l));
  /** The internal-json messages and log lines of the build. */
  const jsonLines = (stderr: string) =>
    stderr
      .split('\n')
      .filter((l) => l.includes('message at level') || l.includes('"type":101,'))
      .map((l) => l.replace(/"id":\d+/, '"id":0'));

  it('the messages of levels 0 to 3 are printed, not as log lines; the same in internal-json', async () => {
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(lines(n.stderr)).toContain('message at level 3');
    expect(lines(n.stderr)).not.toContain('message at level 4');
    expect(lines(o.stderr)).toEqual(lines(n.stderr));

    const nj = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--check', '--log-format', 'internal-json']);
    const oj = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--check', '--log-format', 'internal-json']);
    expect(nj.status, nj.stderr).toBe(0);
    expect(jsonLines(nj.stderr).join('\n')).toContain('message at level 0');
    expect(jsonLines(oj.stderr)).toEqual(jsonLines(nj.stderr));
  });

  it('the verbosity flags move the cut: -v shows level 4, --quiet hides level 3', async () => {
    for (const [flag, shown, hidden] of [
      ['-v', 'message at level 4', 'message at level 5'],
      ['--quiet', 'message at level 2', 'message at level 3'],
    ] as const) {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--check', flag]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--check', flag]);
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      expect(lines(n.stderr), flag).toContain(shown);
      expect(lines(n.stderr), flag).not.toContain(hidden);
      expect(lines(o.stderr), flag).toEqual(lines(n.stderr));
    }
  });
});
