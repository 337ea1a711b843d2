import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MachineSpecError, NoMachineError } from '../../src/remote/errors.js';
import { formatMachines, machine, parseMachines, parseStoreUri, selectMachine, type Machine } from '../../src/remote/machines.js';
import { remoteCommand } from '../../src/remote/remote-builder.js';
import { tempDir } from '../helpers/nix.js';

const hostKey = Buffer.from('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderKeyForTests0000000000000000').toString('base64');

describe('machines file', () => {
  it('parses every column, defaults, separators, comments and @file includes as Nix does', () => {
    const dir = tempDir('realise-machines-');
    const inc = path.join(dir, 'more');
    writeFileSync(inc, '# included\nssh-ng://inc@host3 aarch64-linux\n');
    const ms = parseMachines(
      `ssh://a@host1 x86_64-linux,i686-linux /k/id 4 2 kvm,big-parallel benchmark ${hostKey} # comment\n` +
        `host2 - - - - - - -;  \n\n@${inc}\n@${path.join(dir, 'missing')}\n` +
        `ssh-ng://h4?remote-store=local%3Froot%3D/srv/root&compress=true x86_64-linux`,
      { thisSystem: 'riscv64-linux' },
    );
    expect(ms).toHaveLength(4);
    expect(ms[0]).toEqual({
      storeUri: 'ssh://a@host1',
      systemTypes: ['x86_64-linux', 'i686-linux'],
      sshKey: '/k/id',
      maxJobs: 4,
      speedFactor: 2,
      supportedFeatures: ['big-parallel', 'kvm'],
      mandatoryFeatures: ['benchmark'],
      sshPublicHostKey: hostKey,
    });
    // A bare host becomes ssh://; '-' means the default everywhere.
    expect(ms[1]).toEqual({
      storeUri: 'ssh://host2',
      systemTypes: ['riscv64-linux'],
      sshKey: '',
      maxJobs: 1,
      speedFactor: 1,
      supportedFeatures: [],
      mandatoryFeatures: [],
      sshPublicHostKey: '',
    });
    expect(ms[2]!.storeUri).toBe('ssh-ng://inc@host3');
    expect(ms[3]!.storeUri).toBe('ssh-ng://h4?remote-store=local%3Froot%3D/srv/root&compress=true');
    // Round trip through the text form.
    expect(parseMachines(formatMachines(ms), { thisSystem: 'riscv64-linux' })).toEqual(ms);
  });

  it('explains bad lines', () => {
    expect(() => parseMachines('host x86_64-linux - four')).toThrow(MachineSpecError);
    // Nix's message (its columns count from 0), where and what in the hint.
    const bad = (spec: string): MachineSpecError => {
      try {
        parseMachines(spec);
      } catch (e) {
        return e as MachineSpecError;
      }
      throw new Error(`'${spec}' was accepted`);
    };
    expect(bad('host x86_64-linux - four').shortMessage).toBe(
      "bad machine specification: failed to convert column #3 in a row: 'host x86_64-linux - four' to 'unsigned int'",
    );
    expect(bad('host x86_64-linux - four').hint).toBe("column 4 (max jobs) of a machine in builders should be a whole number, got 'four'");
    expect(bad('host - - 1 1 - - not*base64').shortMessage).toBe(
      "bad machine specification: a column #7 in a row: 'host - - 1 1 - - not*base64' is not valid base64 string",
    );
    expect(() => machine({ storeUri: 'ssh://x', maxJobs: -1 })).toThrow('Expected `maxJobs` to be an integer from 0 and up, got `-1` (number)');
  });

  it('parses store URIs with Nix query parameters', () => {
    const u = parseStoreUri('ssh-ng://root@host?remote-store=local%3Froot%3D/srv/root&remote-program=/opt/nix/bin/nix-daemon&ssh-key=/k&compress=true');
    expect(u.scheme).toBe('ssh-ng');
    expect(u.authority).toBe('root@host');
    expect(u.params.get('remote-store')).toBe('local?root=/srv/root');
    expect(u.params.get('remote-program')).toBe('/opt/nix/bin/nix-daemon');
    expect(u.params.get('ssh-key')).toBe('/k');
  });

  it('turns a machine into the command Nix runs', () => {
    const m = machine({ storeUri: 'ssh-ng://root@host?remote-store=local%3Froot%3D/srv/root&compress=true', sshKey: '/k/id' });
    const c = remoteCommand(m, { sshOptions: ['-p', '2222'], env: { NIX_SSHOPTS: '-oBatchMode=yes' } });
    expect(c.command).toBe('ssh');
    expect(c.protocol).toBe('worker');
    expect(c.args).toEqual([
      'root@host',
      '-x',
      '-a',
      '-oBatchMode=yes',
      '-p',
      '2222',
      '-i',
      '/k/id',
      '-C',
      "nix-daemon --stdio --store 'local?root=/srv/root'",
    ]);
    const legacy = remoteCommand(machine({ storeUri: 'ssh://h?remote-program=/bin/nix-store', sshPublicHostKey: hostKey }), { env: {} });
    expect(legacy.protocol).toBe('serve');
    expect(legacy.args.at(-1)).toBe('/bin/nix-store --serve --write');
    expect(legacy.args.some((a) => a.startsWith('-oUserKnownHostsFile='))).toBe(true);
    legacy.cleanup?.();
    // localhost runs locally, as Nix's fake SSH does.
    expect(remoteCommand(machine({ storeUri: 'ssh-ng://localhost' }))).toMatchObject({ command: 'bash', args: ['-c', 'nix-daemon --stdio'] });
  });
});

describe('selectMachine', () => {
  const m = (storeUri: string, o: Partial<Machine> = {}): Machine => machine({ storeUri, systemTypes: ['x86_64-linux'], ...o });

  it('prefers the least loaded by speedFactor, then the faster, then the less loaded', () => {
    const slow = m('ssh://slow', { maxJobs: 4, speedFactor: 1 });
    const fast = m('ssh://fast', { maxJobs: 4, speedFactor: 4 });
    const loads = new Map<Machine, number>([
      [slow, 0],
      [fast, 0],
    ]);
    const pick = (): string => {
      const c = selectMachine([slow, fast], { system: 'x86_64-linux' }, (x) => loads.get(x)!);
      return c.kind === 'selected' ? c.machine.storeUri : c.kind;
    };
    expect(pick()).toBe('ssh://fast'); // tie at 0 → faster
    loads.set(fast, 1);
    expect(pick()).toBe('ssh://slow'); // 0/1 < 1/4
    loads.set(slow, 1);
    expect(pick()).toBe('ssh://fast'); // 1/4 < 1/1
    loads.set(fast, 4);
    expect(pick()).toBe('ssh://slow'); // fast is full
    loads.set(slow, 4);
    expect(pick()).toBe('busy');
  });

  it('respects systems, supported and mandatory features, disabled machines and preferLocalBuild', () => {
    const kvm = m('ssh://kvm', { supportedFeatures: ['kvm'] });
    const bench = m('ssh://bench', { mandatoryFeatures: ['benchmark'] });
    const arm = m('ssh://arm', { systemTypes: ['aarch64-linux'] });
    const off = m('ssh://off', { maxJobs: 0 });
    const all = [kvm, bench, arm, off];
    const sel = (req: Parameters<typeof selectMachine>[1], disabled?: (x: Machine) => string | undefined) => selectMachine(all, req, () => 0, disabled);
    expect(sel({ system: 'x86_64-linux', requiredFeatures: ['kvm'] })).toMatchObject({ kind: 'selected', machine: kvm });
    expect(sel({ system: 'x86_64-linux', requiredFeatures: ['benchmark'] })).toMatchObject({ kind: 'selected', machine: bench });
    expect(sel({ system: 'aarch64-linux' })).toMatchObject({ kind: 'selected', machine: arm });
    // A plain derivation never goes to the benchmark-only machine.
    expect(sel({ system: 'x86_64-linux' })).toMatchObject({ kind: 'selected', machine: kvm });
    expect(sel({ system: 'x86_64-linux', preferLocalBuild: true }).kind).toBe('declined');
    const none = sel({ system: 'x86_64-linux', requiredFeatures: ['kvm', 'cuda'], drvPath: '/nix/store/abc-x.drv' }, (x) =>
      x === kvm ? undefined : undefined,
    );
    expect(none.kind).toBe('declined');
    if (none.kind !== 'declined') return;
    expect(none.error).toBeInstanceOf(NoMachineError);
    const msg = none.error.message;
    expect(msg).toContain("no remote machine can build '/nix/store/abc-x.drv' (system 'x86_64-linux', features 'cuda', 'kvm')");
    expect(msg).toContain("ssh://kvm: lacks required feature 'cuda'");
    expect(msg).toContain("ssh://bench: lacks required features 'cuda', 'kvm'; only takes derivations that require 'benchmark'");
    expect(msg).toContain("ssh://arm: does not build for 'x86_64-linux' (it builds for 'aarch64-linux')");
    expect(msg).toContain('ssh://off: maxJobs is 0 (disabled)');
    expect(none.error.rejections).toHaveLength(4);
    const down = sel({ system: 'x86_64-linux', requiredFeatures: ['kvm'] }, (x) => (x === kvm ? 'unreachable: connection refused' : undefined));
    expect(down.kind === 'declined' && down.error.message).toContain('ssh://kvm: unreachable: connection refused');
    expect(selectMachine([], { system: 'x86_64-linux' }, () => 0)).toMatchObject({ kind: 'declined' });
  });
});
