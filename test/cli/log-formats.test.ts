/**
 * `--log-format` as nix-store 2.8 prints each one off a terminal, `realise build` against
 * `nix-store --realise` on twin chroot stores (whole stderr, roots replaced): `raw` and `bar` show no
 * build output (a failure then carries the log's last lines), `bar-with-logs` shows each line after the
 * derivation's name (`hello> …`, the post-build hook's as `hello (post)> …`, blank ones left out), and
 * an error's lines lose their trailing blanks (Nix's showErrorInfo), as with `-Q`.
 */
import { chmodSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { realiseInProcess as realise } from '../helpers/cli.js';

const EXPR = `{ tag }: let mk = name: script: derivation { inherit name tag; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" script]; };
in {
  ok = mk "hello-2.10" "echo one; echo; echo '   '; echo 'trailing   '; printf 'a\\tb\\n'; echo to-stderr >&2; printf 'no newline'; echo > $out";
  fail = mk "lf-fail-0.1" "echo one; echo; echo 'trailing  '; exit 1";
}`;
const SANDBOX = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox'];

describe.skipIf(!nixOk())('--log-format off a terminal, realise vs nix-store 2.8', () => {
  let dir: string;
  let hook: string;
  beforeAll(() => {
    dir = tempDir();
    hook = path.join(dir, 'hook.sh');
    writeFileSync(hook, '#!/bin/sh\necho "hook ran"\necho\necho "second  "\n');
    chmodSync(hook, 0o755);
  });

  async function same(attr: string, tag: string, flags: string[]): Promise<string> {
    const drv = instantiateTwins(dir, EXPR, ['-A', attr, '--argstr', 'tag', tag]);
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, ...flags]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, ...flags]);
    const norm = (s: string, root: string) => s.split(root).join('ROOT');
    expect(norm(o.stderr, path.join(dir, 'O'))).toBe(norm(n.stderr, path.join(dir, 'N')));
    expect([o.stdout, o.status]).toEqual([n.stdout, n.status]);
    return o.stderr;
  }

  for (const format of ['raw', 'bar', 'bar-with-logs', 'raw-with-logs']) {
    it(`--log-format ${format}: a build and a failure`, async () => {
      const ok = await same('ok', format, ['--log-format', format]);
      const fail = await same('fail', format, ['--log-format', format]);
      if (format === 'raw' || format === 'bar') {
        expect(ok).not.toContain('one');
        expect(fail).toContain('last 3 log lines:\n       > one\n       >\n       > trailing\n');
      }
      if (format === 'bar-with-logs') expect(ok).toContain('hello> one\nhello> trailing\nhello> a        b\n');
    });
  }

  it('-Q: the failure carries the log tail without trailing blanks', async () => {
    expect(await same('fail', 'Q', ['-Q'])).toContain('       >\n       > trailing\n       For full logs');
  });

  it("bar-with-logs: the post-build hook's output after the name and (post)", async () => {
    const err = await same('ok', 'hook', ['--log-format', 'bar-with-logs', '--option', 'post-build-hook', hook]);
    expect(err).toContain('hello (post)> hook ran\nhello (post)> second\n');
  });
});
