/**
 * The `realise` command side by side with real Nix 2.8 on chroot stores: printed output paths, exit
 * statuses (0, 100 build failure, 101 timeout, 102 hash mismatch, 1 usage), and path-info JSON.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';

const BIN = path.resolve(__dirname, '../../bin/realise.js');
const SANDBOX = '/bin/sh=/bin/busybox /bin/busybox';
const EXPR = `
let mk = name: script: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" script]; };
in {
  ok = derivation { name = "cli-ok"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "dev"];
    args = ["-c" "echo out > $out; echo $out > $dev"]; };
  fail = mk "cli-fail" "echo about to fail; exit 3";
  slow = mk "cli-slow" "/bin/busybox sleep 30; echo > $out";
  fod = derivation { name = "cli-fod"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo -n x > $out"];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "0000000000000000000000000000000000000000000000000000"; };
}`;

function realise(args: string[]): { stdout: string; stderr: string; status: number } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, NIX_REMOTE: '' } });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

describe.skipIf(!nixOk())('realise CLI vs nix-store', () => {
  let file: string;
  let R1: string;
  let R2: string;
  const drvs: Record<string, string> = {};
  beforeAll(() => {
    const dir = tempDir();
    file = path.join(dir, 'cli.nix');
    writeFileSync(file, EXPR);
    R1 = path.join(dir, 'R1');
    R2 = path.join(dir, 'R2');
    for (const a of ['ok', 'fail', 'slow', 'fod']) {
      drvs[a] = nix('nix-instantiate', ['--store', R1, file, '-A', a]);
      expect(nix('nix-instantiate', ['--store', R2, file, '-A', a])).toBe(drvs[a]);
    }
  });
  const nixStore = (args: string[]) => runNix('nix-store', ['--store', R1, '--option', 'sandbox', 'true', '--option', 'sandbox-paths', SANDBOX, ...args]);
  const ours = (args: string[]) => realise([args[0]!, '--store', R2, '--option', 'sandbox-paths', SANDBOX, ...args.slice(1)]);

  it('build prints the wanted output paths, as nix-store --realise', () => {
    for (const target of [drvs.ok!, `${drvs.ok}^dev`]) {
      const n = nixStore(['--realise', target.replace('^', '!')]);
      const o = ours(['build', target]);
      expect(o.status, o.stderr).toBe(0);
      expect(n.status).toBe(0);
      expect(o.stdout.trim().split('\n').sort()).toEqual(n.stdout.trim().split('\n').sort());
    }
  });

  it('path-info --json -r gives what nix path-info gives (but the registration time)', () => {
    const out = ours(['build', drvs.ok!]).stdout.trim().split('\n')[0]!;
    const o = JSON.parse(realise(['path-info', '--store', R2, '--json', '-r', out]).stdout);
    const n = JSON.parse(nix('nix', ['path-info', '--store', R2, '--json', '-r', out]));
    const strip = (xs: Record<string, unknown>[]) => xs.map(({ registrationTime: _, ...rest }) => rest);
    expect(strip(o)).toEqual(strip(n));
  });

  it('exit statuses match: build failure 100, timeout 101, hash mismatch 102', () => {
    const cases: [string, string[], number][] = [['fail', [], 100], ['slow', ['--timeout', '1'], 101], ['fod', [], 102]];
    for (const [attr, flags, want] of cases) {
      const n = nixStore(['--realise', drvs[attr]!, ...flags]);
      const o = ours(['build', drvs[attr]!, ...flags]);
      expect(n.status, `nix ${attr}`).toBe(want);
      expect(o.status, `ours ${attr}: ${o.stderr}`).toBe(want);
      expect(o.stderr).toMatch(/^error: /m);
    }
    expect(ours(['build', drvs.fail!]).stderr).toContain('about to fail');
  });

  it('usage errors exit 1 with a hint', () => {
    const o = realise(['frobnicate']);
    expect(o.status).toBe(1);
    expect(o.stderr).toContain("unknown command 'frobnicate'");
    expect(realise(['build', '--max-jobs']).status).toBe(1);
  });
});
