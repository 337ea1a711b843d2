import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkImpureHostDeps, parsePreBuildHookOutput, parseSandboxPaths, splitSandboxPathsOption, useSandbox } from '../../src/platform/sandbox-config.js';
import { SandboxError } from '../../src/platform/sandbox-errors.js';
import { nixSeccompFilter, REFUSED_SYSCALLS } from '../../src/platform/seccomp.js';
import { chooseSandbox, diagnoseUserNamespaces, sandboxAvailable } from '../../src/platform/probe.js';
import { NoSandbox } from '../../src/platform/no-sandbox.js';
import { LinuxSandbox } from '../../src/platform/linux-sandbox.js';
import { bwrapOk, tempDir } from '../helpers/nix.js';
import { ccOk } from './sandbox-fixture.js';

const base = { noChroot: false, impure: false, diverted: false, drvPath: '/nix/store/x-a.drv' };

describe('sandbox modes', () => {
  it('decides per derivation as Nix startBuilder does', () => {
    expect(useSandbox({ ...base, mode: true })).toBe(true);
    expect(useSandbox({ ...base, mode: true, impure: true })).toBe(true);
    expect(useSandbox({ ...base, mode: false })).toBe(false);
    expect(useSandbox({ ...base, mode: 'relaxed' })).toBe(true);
    expect(useSandbox({ ...base, mode: 'relaxed', impure: true })).toBe(false);
    expect(useSandbox({ ...base, mode: 'relaxed', noChroot: true })).toBe(false);
    // a chroot store always builds in the sandbox
    expect(useSandbox({ ...base, mode: false, diverted: true })).toBe(true);
    expect(useSandbox({ ...base, mode: 'relaxed', noChroot: true, diverted: true })).toBe(true);
    const e = (() => {
      try {
        useSandbox({ ...base, mode: true, noChroot: true });
      } catch (err) {
        return err;
      }
    })();
    expect(e).toBeInstanceOf(SandboxError);
    expect((e as SandboxError).code).toBe('sandbox-no-chroot-forbidden');
    expect((e as SandboxError).message).toContain("derivation '/nix/store/x-a.drv' has '__noChroot' set");
  });
});

describe('sandbox-paths', () => {
  it('parses path, target=source and optional entries; entries are a sorted set, so the greater entry for a target wins', () => {
    const m = parseSandboxPaths(splitSandboxPathsOption('/bin/sh=/bin/busybox /etc/ssl? /usr/lib/x=/opt/x? /dev /bin/sh=/bin/dash'));
    expect([...m]).toEqual([
      ['/bin/sh', { source: '/bin/dash', optional: false }],
      ['/dev', { source: '/dev', optional: false }],
      ['/etc/ssl', { source: '/etc/ssl', optional: true }],
      ['/usr/lib/x', { source: '/opt/x', optional: true }],
    ]);
    // Nix keeps sandbox-paths and extra-sandbox-paths in one std::set: order does not matter.
    const r = parseSandboxPaths(['/bin/sh=/bin/dash', '/bin/busybox', '/bin/sh=/bin/busybox']);
    expect(r.get('/bin/sh')).toEqual({ source: '/bin/dash', optional: false });
  });
  it('relative entries as Nix: a missing source is its error (skipped when optional), a relative target is never seen, a relative source is from the cwd', () => {
    expect(() => parseSandboxPaths(['no-such-relative-path'])).toThrow("getting attributes of path 'no-such-relative-path': No such file or directory");
    expect([...parseSandboxPaths(['no-such-relative-path?'])]).toEqual([]);
    expect([...parseSandboxPaths(['bin=/bin', 'node_modules'])]).toEqual([]);
    expect([...parseSandboxPaths(['/pkg=package.json'])]).toEqual([['/pkg', { source: path.resolve('package.json'), optional: false }]]);
  });
});

describe('__impureHostDeps', () => {
  it('allows paths equal to or under an allowed prefix (canonicalised, no symlink resolution)', () => {
    const m = checkImpureHostDeps('/nix/store/x-a.drv', ['/usr/lib/libSystem.dylib', '/bin/sh', '/usr/lib/../lib/x'], ['/usr/lib/', '/bin/sh']);
    expect([...m.keys()]).toEqual(['/usr/lib/libSystem.dylib', '/bin/sh', '/usr/lib/../lib/x']);
  });
  it('rejects others, naming the path, and does not match on string prefix alone', () => {
    expect(() => checkImpureHostDeps('/nix/store/x-a.drv', ['/usr/libexec/x'], ['/usr/lib'])).toThrow(
      "derivation '/nix/store/x-a.drv' requested impure path '/usr/libexec/x', but it was not in allowed-impure-host-deps",
    );
    expect(() => checkImpureHostDeps('/nix/store/x-a.drv', ['/etc/passwd'], [])).toThrow(SandboxError);
  });
});

describe('pre-build hook protocol', () => {
  it('parses extra-sandbox-paths blocks', () => {
    const m = parsePreBuildHookOutput('extra-sandbox-paths\n/a\n/b=/c\n\nextra-chroot-dirs\n/d=/e\n');
    expect([...m]).toEqual([
      ['/a', { source: '/a', optional: false }],
      ['/b', { source: '/c', optional: false }],
      ['/d', { source: '/e', optional: false }],
    ]);
  });
  it('rejects unknown commands', () => {
    expect(() => parsePreBuildHookOutput('something-else\n')).toThrow("unknown pre-build hook command 'something-else'");
  });
});

describe('seccomp filter', () => {
  it('is a well-formed BPF program ending in return instructions', () => {
    for (const arch of ['x64', 'arm64']) {
      const f = nixSeccompFilter(arch);
      expect(f.length % 8).toBe(0);
      expect(f.length / 8).toBeLessThan(64);
      // first instruction loads seccomp_data.arch
      expect(f.readUInt16LE(0)).toBe(0x20);
      expect(f.readUInt32LE(4)).toBe(4);
      // the last instruction kills on an unknown architecture
      expect(f.readUInt16LE(f.length - 8)).toBe(0x06);
      expect(f.readUInt32LE(f.length - 4)).toBe(0x80000000);
    }
  });
  /** Run the classic BPF program over a seccomp_data (only the instructions the filter uses). */
  function evaluate(f: Buffer, arch: number, nr: number, args: number[] = []): number {
    const data = Buffer.alloc(64);
    data.writeUInt32LE(nr, 0);
    data.writeUInt32LE(arch, 4);
    args.forEach((a, i) => data.writeUInt32LE(a, 16 + 8 * i));
    let acc = 0;
    for (let pc = 0; pc < f.length / 8;) {
      const code = f.readUInt16LE(pc * 8),
        jt = f.readUInt8(pc * 8 + 2),
        jf = f.readUInt8(pc * 8 + 3),
        k = f.readUInt32LE(pc * 8 + 4);
      if (code === 0x20) acc = data.readUInt32LE(k);
      else if (code === 0x54) acc = (acc & k) >>> 0;
      else if (code === 0x15) {
        pc += 1 + (acc === k ? jt : jf);
        continue;
      } else if (code === 0x45) {
        pc += 1 + ((acc & k) !== 0 ? jt : jf);
        continue;
      } else if (code === 0x06) return k;
      else throw new Error(`unexpected BPF instruction ${code.toString(16)}`);
      pc++;
    }
    throw new Error('fell off the end');
  }
  const ALLOW = 0x7fff0000,
    ERRNO = 0x00050000;
  const ARCHES = {
    x64: [
      ['x86_64', 0xc000003e],
      ['i386', 0x40000003],
    ],
    arm64: [
      ['aarch64', 0xc00000b7],
      ['arm', 0x40000028],
    ],
  } as const;

  it('refuses every call of REFUSED_SYSCALLS on every architecture it covers, with its errno', () => {
    expect(REFUSED_SYSCALLS.map((c) => c.name)).toEqual([
      'setxattr',
      'lsetxattr',
      'fsetxattr',
      'setxattrat',
      'io_uring_setup',
      'io_uring_enter',
      'io_uring_register',
    ]);
    for (const [nodeArch, pairs] of Object.entries(ARCHES)) {
      const f = nixSeccompFilter(nodeArch);
      for (const [arch, audit] of pairs) {
        for (const c of REFUSED_SYSCALLS) {
          expect(evaluate(f, audit, c.nr[arch]), `${c.name} on ${arch}`).toBe(ERRNO | (c.errno === 'ENOTSUP' ? 95 : 38));
          expect(c.why.length).toBeGreaterThan(20);
        }
        expect(evaluate(f, audit, 0), `syscall 0 on ${arch}`).toBe(ALLOW);
      }
    }
    // x32 (the x32 bit set) is the x86_64 table.
    expect(evaluate(nixSeccompFilter('x64'), 0xc000003e, (463 | 0x40000000) >>> 0)).toBe(ERRNO | 95);
    // chmod-like calls: EPERM only with setuid/setgid bits (fchmodat's mode is its third argument).
    const x = nixSeccompFilter('x64');
    expect(evaluate(x, 0xc000003e, 90, [0, 0o4755])).toBe(ERRNO | 1);
    expect(evaluate(x, 0xc000003e, 90, [0, 0o755])).toBe(ALLOW);
    expect(evaluate(x, 0xc000003e, 268, [0, 0, 0o2755])).toBe(ERRNO | 1);
    expect(evaluate(x, 0xc000003e, 268, [0, 0o4000, 0o755])).toBe(ALLOW);
  });
  it('refuses unknown architectures with a SandboxError', () => {
    expect(() => nixSeccompFilter('mips')).toThrow(/no seccomp filter for architecture 'mips'/);
  });
});

describe.skipIf(!bwrapOk() || !ccOk())('availability and choice', () => {
  it('probes both backends', async () => {
    expect(await sandboxAvailable()).toEqual({ ok: true, backend: 'helper' });
    expect(await sandboxAvailable({ backend: 'bwrap' })).toEqual({ ok: true, backend: 'bwrap' });
    const missing = await sandboxAvailable({ backend: 'bwrap', bwrapPath: '/nonexistent/bwrap' });
    expect(missing.ok).toBe(false);
  }, 30_000);

  it('chooses per mode and fallback', async () => {
    expect(await chooseSandbox({ mode: false })).toBeInstanceOf(NoSandbox);
    expect(await chooseSandbox({ mode: true })).toBeInstanceOf(LinuxSandbox);
    const warnings: string[] = [];
    const broken = { backend: 'helper' as const, helper: { cc: '/nonexistent/cc', cacheDir: path.join(tempDir(), 'no-helper-here') } };
    expect(await chooseSandbox({ ...broken, mode: true, warn: (m) => warnings.push(m) })).toBeInstanceOf(NoSandbox);
    expect(warnings[0]).toMatch(/^warning: sandboxing is not available \(.*\/nonexistent\/cc.*\); building without a sandbox$/);
    await expect(chooseSandbox({ ...broken, mode: true, fallback: false })).rejects.toMatchObject({ code: 'sandbox-unavailable' });
    await expect(chooseSandbox({ ...broken, mode: false, chrootStore: true })).rejects.toThrow(/the store is a chroot store/);
  }, 30_000);
});

describe('why user namespaces cannot be made (diagnoseUserNamespaces)', () => {
  const max = readFileSync('/proc/sys/user/max_user_namespaces', 'utf8').trim();
  it.runIf(max !== '0')('ENOSPC and EPERM from the backends: a limit reached, or a policy; each with a fix', () => {
    const limit = diagnoseUserNamespaces('creating namespaces (unshare): No space left on device');
    expect(limit?.reason).toMatch(/^no more user namespaces may be created here/);
    expect(limit?.hint).toContain('sysctl -w user.max_user_namespaces=');
    const bwrap = diagnoseUserNamespaces('bwrap: Creating new namespace failed: nesting depth or /proc/sys/user/max_*_namespaces exceeded (ENOSPC)');
    expect(bwrap?.reason).toBe(limit?.reason);
    if (process.getuid?.() === 0) {
      expect(diagnoseUserNamespaces('creating namespaces (unshare): Operation not permitted')?.reason).toMatch(
        /^creating user namespaces is not permitted here/,
      );
    }
  });
  it('other problems are not about namespaces', () => {
    expect(diagnoseUserNamespaces('cannot build the sandbox helper: spawn /nonexistent/cc ENOENT')).toBeUndefined();
  });
});
