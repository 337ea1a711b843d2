/**
 * Nix 2.8's functional tests of remote builds (test/fixtures/nix-tests: build-remote-input-addressed.sh,
 * build-remote-content-addressed-fixed.sh, build-remote-content-addressed-floating.sh, all running
 * build-remote.sh): `nix-store --realise -j0 --builders …` and `realise build -j0 --builders …` on twin chroot
 * stores (machine0), each side with its own three machines, Nix's chroot stores reached as the script reaches
 * them: `ssh://localhost?remote-store=…` (nix-store --serve), a bare path (a local store the hook opens itself),
 * `ssh-ng://localhost?remote-store=…` (nix-daemon --stdio). Each input requires the feature only one machine
 * has; which machine built what, the outputs, the hook's lines, the post-build hook's runs, the logs and
 * `--keep-failed` are compared.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { realiseInProcess } from '../helpers/cli.js';
import { bwrapOk, nixOk, removeTreeSync, runNix } from '../helpers/nix.js';
import { keyLines, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

describe.skipIf(!nixOk() || !bwrapOk())('Nix 2.8 functional tests (remote builds): realise vs nix-store on twin stores', () => {
  it.each([
    ['build-remote-input-addressed.sh', 'build-hook.nix', false],
    ['build-remote-content-addressed-fixed.sh', 'build-hook-ca-fixed.nix', false],
    ['build-remote-content-addressed-floating.sh', 'build-hook-ca-floating.nix', true],
  ] as const)(
    '%s: each input built on the one machine with its feature (ssh://, a local store, ssh-ng://), the output back in machine0',
    async (script, file, ca) => {
      // The script's busybox is a store path; here /bin/busybox, let into the machines' sandboxes.
      const t = new TwinStores('sandbox = true\nextra-sandbox-paths = /bin/busybox\n');
      const dir = (side: Side) => `${t.root}/${side}`;
      const features = (f: string) => (ca ? [f, 'ca-derivations'] : [f]);
      const builders = (side: Side) =>
        [
          `ssh://localhost?remote-store=${dir(side)}/machine1?system-features=${features('foo').join('%20')} - - 1 1 ${features('foo').join(',')}`,
          `${dir(side)}/machine2 - - 1 1 ${features('bar').join(',')}`,
          `ssh-ng://localhost?remote-store=${dir(side)}/machine3?system-features=${features('baz').join('%20')} - - 1 1 ${features('baz').join(',')}`,
        ].join('; ');
      const nixOn = (side: Side, cmd: string, args: string[]) =>
        runNix(cmd, ['--store', `${dir(side)}/${args[0]}`, ...args.slice(1)], { env: t.env, cwd: t.tests });
      const realise = async (side: Side, args: string[]) => {
        const full = ['--store', `${dir(side)}/machine0`, ...args, '-j0', '--builders', builders(side)];
        if (side === 'nix') return nixOn('nix', 'nix-store', ['machine0', '--realise', ...args, '-j0', '--builders', builders(side)]);
        return realiseInProcess(['build', ...full], t.env);
      };
      const instantiate = (f: string) => {
        const drvs = sides.map((side) => nixOn(side, 'nix-instantiate', ['machine0', `${t.tests}/${f}`, '--argstr', 'busybox', '/bin/busybox']));
        for (const r of drvs) expect(r.status, r.stderr).toBe(0);
        expect(drvs[1]!.stdout).toBe(drvs[0]!.stdout);
        return drvs[0]!.stdout.trim();
      };
      const logs = (side: Side) => {
        const top = `${dir(side)}/machine0/nix/var/log/nix/drvs`;
        return readdirSync(top)
          .flatMap((d) => readdirSync(`${top}/${d}`).map((f) => `${d}/${f}`))
          .sort()
          .map((f) => [f, execFileSync('bzip2', ['-dc', `${top}/${f}`], { encoding: 'utf8' })]);
      };
      /** The hook's lines of both sides, the side's directory written alike; builds on different machines run at once, so as sets. */
      const lines = (side: Side, stderr: string) => keyLines(stderr.replaceAll(dir(side), 'DIR')).sort();

      const buildRemote = async () => {
        for (const side of sides) for (const m of [0, 1, 2, 3]) removeTreeSync(`${dir(side)}/machine${m}`);
        const drv = instantiate(file);
        const [n, o] = [await realise('nix', [drv]), await realise('ours', [drv])];
        expect(n.status, n.stderr).toBe(0);
        expect(o.status, o.stderr).toBe(0);
        expect(o.stdout).toBe(n.stdout);
        expect(lines('ours', o.stderr)).toEqual(lines('nix', n.stderr));
        const out = n.stdout.trim();
        for (const side of sides) {
          expect(readFileSync(`${dir(side)}/machine0${out}`, 'utf8')).toBe('FOO BAR BAZ\n');
          // Which machine built which input: each has its own builder script only.
          for (const m of [1, 2, 3]) {
            const all = nixOn(side, 'nix', [`machine${m}`, 'path-info', '--all']).stdout;
            for (const i of [1, 2, 3]) expect(all.includes(`builder-build-remote-input-${i}.sh`), `machine${m}, input ${i}`).toBe(i === m);
          }
        }
        const valid = (side: Side) => nixOn(side, 'nix', ['machine0', 'path-info', '--all']).stdout.split('\n').sort();
        expect(valid('ours')).toEqual(valid('nix'));
        // The logs kept here (an empty one for the builder that prints nothing), as `nix log` reads them.
        expect(logs('ours')).toEqual(logs('nix'));
        if (!ca)
          for (const i of ['input1', 'input3']) {
            const log = (side: Side) =>
              nixOn(side, 'nix', ['machine0', 'log', '--file', `${t.tests}/${file}`, '--argstr', 'busybox', '/bin/busybox', `passthru.${i}`]);
            expect(log('ours').stdout).toBe(log('nix').stdout);
            // (Nix 2.8 finds no log for a fixed output's build: its installable is the output path.)
            if (script === 'build-remote-input-addressed.sh') expect(log('ours').stdout).toContain(`hi-${i}`);
          }
      };
      await buildRemote();

      // Behaviour of keep-failed: the build directory kept (on the machine that ran it) holds the builder's file.
      const failing = instantiate('failing.nix');
      for (const side of sides) {
        const r = await realise(side, [failing, '--keep-failed']);
        expect(r.status, r.stderr).not.toBe(0);
        const kept = /note: keeping build directory '([^']*)'/.exec(r.stderr)?.[1];
        expect(kept, r.stderr).toBeDefined();
        expect(readFileSync(`${kept}/bar`, 'utf8')).toBe('foo\n');
        removeTreeSync(kept!);
      }

      if (script === 'build-remote-input-addressed.sh') {
        // A post-build hook in the configuration the machines share: it runs on the machine and here, for each of the four.
        const hook = `${t.root}/post-build-hook.sh`;
        writeFileSync(hook, `#!/bin/sh\necho "Post hook ran successfully"\necho "" >> ${t.root}/post-hook-counter-$HOOK_SIDE\n`, { mode: 0o755 });
        t.env.NIX_CONFIG += `post-build-hook = ${hook}\n`;
        await buildRemoteWithCounter();
      }

      async function buildRemoteWithCounter() {
        for (const side of sides) for (const m of [0, 1, 2, 3]) removeTreeSync(`${dir(side)}/machine${m}`);
        const drv = instantiate(file);
        for (const side of sides) {
          t.env.HOOK_SIDE = side;
          const r = await realise(side, [drv]);
          expect(r.status, r.stderr).toBe(0);
          expect(readFileSync(`${t.root}/post-hook-counter-${side}`, 'utf8').split('\n').length - 1, side).toBe(8);
        }
      }
    },
    180_000,
  );
});
