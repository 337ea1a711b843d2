/**
 * ssh-ng:// and ssh:// end to end through a real OpenSSH server on 127.0.0.1 (system `ssh` client,
 * key authentication, host key pinned by the machines file's base64 column) to real Nix 2.8.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore } from '../../src/store/local-store.js';
import { RemoteBuildError } from '../../src/remote/errors.js';
import { parseMachines } from '../../src/remote/machines.js';
import { MachineBuilder, createRemoteBuilders } from '../../src/remote/remote-builder.js';
import { realiseInProcess } from '../helpers/cli.js';
import { nix, nixOk, runNix } from '../helpers/nix.js';
import { cloneLocal, makeFixture, NIX_CONF, referenceBuild, type Fixture } from './fixture.js';
import { sshdOk, startSshd, type Sshd } from './sshd.js';

describe.skipIf(!nixOk() || !sshdOk())('remote builds over a real sshd', () => {
  let fx: Fixture;
  let sshd: Sshd;
  let store: LocalStore;
  let ref: Map<string, { path: string; narHash: string }>;
  const builders: MachineBuilder[] = [];
  const locals: LocalStore[] = [];

  beforeAll(async () => {
    fx = makeFixture();
    ref = referenceBuild(fx, 'top');
    sshd = await startSshd();
    store = await LocalStore.open({ root: fx.localRoot });
  });
  afterAll(async () => {
    await Promise.all(builders.map((b) => b.close()));
    await Promise.all(locals.map((l) => l.close()));
    await store?.close();
    await sshd?.stop();
  });

  function machinesLine(scheme: 'ssh' | 'ssh-ng', remoteRoot: string, hostKey: string): string {
    const program = fx.wrapper(scheme, scheme === 'ssh' ? 'nix-store' : 'nix-daemon');
    const uri = `${scheme}://${sshd.user}@127.0.0.1?remote-store=${encodeURIComponent(remoteRoot)}&remote-program=${encodeURIComponent(program)}&compress=true`;
    return `${uri} - ${sshd.clientKey} 2 1 - - ${hostKey}`;
  }

  for (const scheme of ['ssh-ng', 'ssh'] as const) {
    it(`${scheme}:// builds, streams the log and copies back outputs equal to real Nix's`, async () => {
      const remoteRoot = path.join(fx.dir, `remote-${scheme}`);
      const [b] = createRemoteBuilders(machinesLine(scheme, remoteRoot, sshd.hostKeyBase64), { sshOptions: sshd.sshOptions });
      builders.push(b!);
      const lines: string[] = [];
      // A fresh local store per scheme, so the outputs are copied back each time.
      const local = await cloneLocal(fx, store, `local-${scheme}`);
      locals.push(local);
      const r = await b!.build(fx.drvs.top, fx.readDrv(fx.drvs.top), { store: local, onLog: (l) => lines.push(l) });
      expect(r.errorMsg).toBe('');
      expect(r.status).toBe('built');
      expect(lines.join('\n')).toContain('building top');
      for (const [name, want] of ref) {
        expect(r.builtOutputs.get(name)).toBe(want.path);
        expect((await local.queryPathInfo(want.path))?.narHash.toString('base32')).toBe(want.narHash);
      }
      // The same ssh session serves the next build.
      const f = await b!.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store: local });
      expect(f.status).toBe('permanent-failure');
      expect(b!.connectionCount).toBe(1);
    });
  }

  it('refuses a host whose key does not match the pinned one', async () => {
    const other = Buffer.from('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ4qPNe1gLX4dz0f/8y2GxLbNsGyCsAbb4G4SP6GB3T').toString('base64');
    const m = parseMachines(machinesLine('ssh-ng', path.join(fx.dir, 'remote-x'), other))[0]!;
    const b = new MachineBuilder(m, { sshOptions: sshd.sshOptions });
    builders.push(b);
    const err = await b.build(fx.drvs.fail, fx.readDrv(fx.drvs.fail), { store }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RemoteBuildError);
    expect((err as RemoteBuildError).kind).toBe('connection');
    expect((err as Error).message).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/);
  });

  it("a machine that cannot be used (unreachable, login refused, no Nix program there): Nix 2.8's lines and exit status, as `--builders` of realise and nix-store", async () => {
    const file = path.join(fx.dir, 'down.nix');
    writeFileSync(file, 'derivation { name = "down"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo down > $out" ]; }');
    const badKey = path.join(fx.dir, 'bad_key');
    expect(spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', badKey]).status).toBe(0);
    const env = { NIX_CONFIG: NIX_CONF, NIX_USER_CONF_FILES: '/dev/null' };
    const viaSshd = sshd.sshOptions.join(' ');
    const cases = [
      { name: 'unreachable', spec: (h: string) => `${h} - - 1 1`, sshOpts: '-oPort=1 -oBatchMode=yes' },
      { name: 'login refused', spec: (h: string) => `${h} - ${badKey} 1 1 - - ${sshd.hostKeyBase64}`, sshOpts: viaSshd },
      {
        name: 'no such program',
        spec: (h: string) => `${h}?remote-program=no-such-nix-program - ${sshd.clientKey} 1 1 - - ${sshd.hostKeyBase64}`,
        sshOpts: viaSshd,
      },
    ];
    const connecting = (stderr: string): string[] => {
      const lines = stderr.split('\n').map((l) => l.replace(/"id":\d+/, '"id":0'));
      return lines.slice(
        lines.findIndex((l) => l.includes('"text":"connecting to ')),
        lines.findIndex((l) => l.includes('"msg":"cannot build on ')) + 1,
      );
    };
    let n = 0;
    for (const c of cases)
      for (const scheme of ['ssh', 'ssh-ng'])
        for (const [jobs, json] of [
          ['1', false],
          ['0', false],
          ['1', true],
        ] as const) {
          const at = n++;
          const root = (side: string) => path.join(fx.dir, `down-${at}-${side}`);
          const drv = nix('nix-instantiate', ['--store', root('N'), file], { env });
          expect(nix('nix-instantiate', ['--store', root('O'), file], { env })).toBe(drv);
          const args = ['-j', jobs, '--builders', c.spec(`${scheme}://${sshd.user}@127.0.0.1`), drv, ...(json ? ['--log-format', 'internal-json'] : [])];
          const theirs = runNix('nix-store', ['--store', root('N'), '--realise', ...args], { env: { ...env, NIX_SSHOPTS: c.sshOpts } });
          const ours = await realiseInProcess(['build', '--store', root('O'), ...args], { ...env, NIX_SSHOPTS: c.sshOpts });
          const what = `${c.name}, ${scheme}://, -j ${jobs}${json ? ', internal-json' : ''}:\n--- nix-store:\n${theirs.stderr}--- realise:\n${ours.stderr}`;
          expect(theirs.stderr, what).toMatch(json ? /"msg":"cannot build on / : /^cannot build on /m);
          expect([ours.status, theirs.status], what).toEqual(jobs === '1' ? [0, 0] : [1, 1]);
          // internal-json: from the connection's activity to the machine's error, ssh's own lines raw (not as
          // JSON messages) before the activity's stop, the error in Nix's colours.
          if (json) expect(connecting(ours.stderr), what).toEqual(connecting(theirs.stderr));
          // Built here (-j 1): the same lines. With -j 0 Nix's lines are in ours, in order (ours add a reason per machine).
          else if (jobs === '1') expect(ours.stderr, what).toBe(theirs.stderr);
          else {
            const got = ours.stderr.split('\n');
            let at = 0;
            for (const line of theirs.stderr.split('\n')) {
              const i = got.indexOf(line, at);
              expect(i, `${JSON.stringify(line)} in ${what}`).toBeGreaterThanOrEqual(0);
              at = i + 1;
            }
          }
        }
  }, 180_000);
  it("a remote builder's @nix msg and setPhase lines, over ssh:// and ssh-ng://, plain and internal-json: as Nix 2.8's hook passes them on", async () => {
    const file = path.join(fx.dir, 'nix-lines.nix');
    writeFileSync(
      file,
      `derivation { name = "nix-lines"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ''echo '@nix {"action":"msg","level":0,"msg":"hello from the builder"}'; echo '@nix {"action":"setPhase","phase":"buildPhase"}'; echo plain; echo x > $out'' ]; }`,
    );
    const env = { NIX_CONFIG: NIX_CONF, NIX_USER_CONF_FILES: '/dev/null', NIX_SSHOPTS: sshd.sshOptions.join(' ') };
    // The machine's URI names a store of each side's own: lines that name it are left out.
    const plain = (stderr: string) => stderr.split('\n').filter((l) => !l.includes('remote-store='));
    const json = (stderr: string) =>
      stderr
        .split('\n')
        .filter((l) => l.includes('"level":0') || l.includes('"type":101}') || l.includes('"type":104}'))
        .map((l) => l.replace(/"id":\d+/, '"id":0'));
    let n = 0;
    for (const scheme of ['ssh', 'ssh-ng'] as const)
      for (const format of ['plain', 'internal-json']) {
        const at = n++;
        const root = (side: string) => path.join(fx.dir, `nix-lines-${at}-${side}`);
        const drv = nix('nix-instantiate', ['--store', root('N'), file], { env });
        expect(nix('nix-instantiate', ['--store', root('O'), file], { env })).toBe(drv);
        const args = (side: string) => [
          '-j0',
          '--builders',
          machinesLine(scheme, root(`remote-${side}`), sshd.hostKeyBase64),
          drv,
          ...(format === 'plain' ? [] : ['--log-format', format]),
        ];
        const theirs = runNix('nix-store', ['--store', root('N'), '--realise', ...args('N')], { env });
        const ours = await realiseInProcess(['build', '--store', root('O'), ...args('O')], env);
        const what = `${scheme}://, ${format}:\n--- nix-store:\n${theirs.stderr}--- realise:\n${ours.stderr}`;
        expect([ours.status, theirs.status], what).toEqual([0, 0]);
        if (format === 'plain') {
          expect(theirs.stderr, what).toContain('\nhello from the builder\n');
          expect(plain(ours.stderr), what).toEqual(plain(theirs.stderr));
        } else {
          expect(json(theirs.stderr).length, what).toBeGreaterThanOrEqual(3);
          expect(json(ours.stderr), what).toEqual(json(theirs.stderr));
        }
      }
  }, 120_000);
  it("the machine's own stderr and a build that fails there, over ssh:// and ssh-ng://, plain and internal-json: as Nix 2.8's hook shows them", async () => {
    const file = path.join(fx.dir, 'talk.nix');
    writeFileSync(
      file,
      `{ ok = derivation { name = "talk-ok"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hi; echo err >&2; echo x > $out" ]; };
         bad = derivation { name = "talk-bad"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo line one; echo line two >&2; exit 3" ]; }; }`,
    );
    const env = { NIX_CONFIG: NIX_CONF, NIX_USER_CONF_FILES: '/dev/null', NIX_SSHOPTS: sshd.sshOptions.join(' ') };
    let n = 0;
    for (const scheme of ['ssh', 'ssh-ng'] as const)
      for (const attr of ['ok', 'bad'])
        for (const format of ['plain', 'internal-json']) {
          const at = n++;
          const root = (side: string) => path.join(fx.dir, `talk-${at}-${side}`);
          const drv = nix('nix-instantiate', ['--store', root('N'), file, '-A', attr], { env });
          expect(nix('nix-instantiate', ['--store', root('O'), file, '-A', attr], { env })).toBe(drv);
          // The machine's program says something on stderr before it serves.
          const program = path.join(fx.dir, `talk-${at}.sh`);
          writeFileSync(
            program,
            `#!/bin/sh\necho "the machine's own stderr" >&2\nexec ${fx.wrapper(`talk-${at}`, scheme === 'ssh' ? 'nix-store' : 'nix-daemon')} "$@"\n`,
          );
          chmodSync(program, 0o755);
          const uri = (side: string) =>
            `${scheme}://${sshd.user}@127.0.0.1?remote-store=${encodeURIComponent(root(`remote-${side}`))}&remote-program=${encodeURIComponent(program)}`;
          const args = (side: string) => [
            '-j0',
            '--builders',
            `${uri(side)} - ${sshd.clientKey} 1 1 - - ${sshd.hostKeyBase64}`,
            drv,
            ...(format === 'plain' ? [] : ['--log-format', format]),
          ];
          const theirs = runNix('nix-store', ['--store', root('N'), '--realise', ...args('N')], { env });
          const ours = await realiseInProcess(['build', '--store', root('O'), ...args('O')], env);
          const what = `${scheme}://, ${attr}, ${format}:\n--- nix-store:\n${theirs.stderr}--- realise:\n${ours.stderr}`;
          expect(theirs.status, what).toBe(attr === 'ok' ? 0 : 1);
          expect(ours.status, what).toBe(theirs.status);
          // Everything but the progress results (their number may differ), ids numbered in order, the machine
          // named alike; the log lines (BuildLogLine) apart, in their order, as Nix reads its hook's log pipe
          // when its event loop gets to it (among the hook's steps: a race); in the plain display too.
          const norm = (stderr: string, side: string) => {
            const ids = new Map<string, number>();
            const lines = stderr
              .split(uri(side))
              .join('MACHINE')
              .split('\n')
              .filter((l) => !/"action":"result",.*"type":10[56]\}$/.test(l) && !l.includes('querying info about missing paths'))
              .map((l) => l.replace(/"id":(\d+)/, (_, id: string) => `"id":${ids.get(id) ?? ids.set(id, ids.size).get(id)}`));
            // (An ssh-ng:// machine's own stderr is no log line: it comes before Nix's hook accepts the build.)
            const isLog = (l: string) =>
              l.endsWith('"type":101}') || /^(hi|err|line one|line two)$/.test(l) || (scheme === 'ssh' && l === "the machine's own stderr");
            return { stream: lines.filter((l) => !isLog(l)), logs: lines.filter(isLog) };
          };
          const want = norm(theirs.stderr, 'N');
          expect(theirs.stderr, what).toContain("the machine's own stderr");
          expect(norm(ours.stderr, 'O'), what).toEqual(want);
        }
  }, 180_000);
});
