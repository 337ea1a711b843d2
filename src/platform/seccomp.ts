/**
 * The seccomp filter of builders, as a classic BPF program we assemble ourselves. It is Nix's
 * setupSeccomp plus the calls Nix 2.8 does not know about (listed in REFUSED_SYSCALLS, each with why):
 * chmod/fchmod/fchmodat(/fchmodat2) with S_ISUID or S_ISGID fail with EPERM; every call that sets an
 * extended attribute fails with ENOTSUP; io_uring fails with ENOSYS. The native architecture and its
 * 32-bit companion (i386 and x32 on x86_64, arm on aarch64) are covered; any other architecture is
 * killed, as libseccomp's default bad-arch action does. Output: `struct sock_filter[]` bytes (little endian).
 */
import { SandboxError } from './sandbox-errors.js';

const AUDIT_ARCH_X86_64 = 0xc000003e;
const AUDIT_ARCH_I386 = 0x40000003;
const AUDIT_ARCH_AARCH64 = 0xc00000b7;
const AUDIT_ARCH_ARM = 0x40000028;
const X32_SYSCALL_BIT = 0x40000000;

const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;
const RET_KILL_PROCESS = 0x80000000;
const EPERM = 1;
const ENOSYS = 38;
const ENOTSUP = 95;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;

type Arch = 'x86_64' | 'i386' | 'aarch64' | 'arm';

/** One system call refused outright: its number per architecture, the errno it fails with, and why. */
export interface RefusedSyscall {
  readonly name: string;
  readonly nr: Readonly<Record<Arch, number>>;
  readonly errno: 'ENOTSUP' | 'ENOSYS';
  readonly why: string;
}

/**
 * The one list of system calls a builder may not make at all (the chmod rules, which depend on the mode
 * argument, are in CHMOD_SYSCALLS). Calls numbered from 424 on have the same number on every architecture.
 */
export const REFUSED_SYSCALLS: readonly RefusedSyscall[] = [
  ...(['setxattr', 'lsetxattr', 'fsetxattr'] as const).map((name, i) => ({
    name,
    nr: { x86_64: 188 + i, i386: 226 + i, aarch64: 5 + i, arm: 226 + i },
    errno: 'ENOTSUP' as const,
    why: 'extended attributes (file capabilities, ACLs) would give a store file privileges that no NAR records (as Nix)',
  })),
  {
    name: 'setxattrat',
    nr: { x86_64: 463, i386: 463, aarch64: 463, arm: 463 },
    errno: 'ENOTSUP',
    why: 'Linux 6.13 added it: the same extended attributes as setxattr (e.g. security.capability from a nested user namespace), which Nix 2.8 does not refuse',
  },
  ...(['io_uring_setup', 'io_uring_enter', 'io_uring_register'] as const).map((name, i) => ({
    name,
    nr: { x86_64: 425 + i, i386: 425 + i, aarch64: 425 + i, arm: 425 + i },
    errno: 'ENOSYS' as const,
    why: 'io_uring operations (IORING_OP_SETXATTR, ...) are not system calls and bypass this filter; ENOSYS makes programs fall back to plain calls (as Lix refuses them)',
  })),
];

/** chmod-like calls and which argument holds the mode: S_ISUID/S_ISGID in it fail with EPERM (as Nix). */
const CHMOD_SYSCALLS: readonly { name: string; nr: Readonly<Record<Arch, number>>; modeArg: 1 | 2 }[] = [
  { name: 'chmod', nr: { x86_64: 90, i386: 15, aarch64: -1, arm: 15 }, modeArg: 1 },
  { name: 'fchmod', nr: { x86_64: 91, i386: 94, aarch64: 52, arm: 94 }, modeArg: 1 },
  { name: 'fchmodat', nr: { x86_64: 268, i386: 306, aarch64: 53, arm: 333 }, modeArg: 2 },
  { name: 'fchmodat2', nr: { x86_64: 452, i386: 452, aarch64: 452, arm: 452 }, modeArg: 2 },
];

const ERRNO: Record<RefusedSyscall['errno'], number> = { ENOTSUP, ENOSYS };

type Insn = { code: number; jt: number | string; jf: number | string; k: number; label?: string };

const LD_ABS = 0x20,
  JEQ = 0x15,
  JSET = 0x45,
  RET = 0x06,
  AND = 0x54;

function assemble(prog: Insn[]): Buffer {
  const labels = new Map<string, number>();
  prog.forEach((ins, i) => {
    if (ins.label) labels.set(ins.label, i);
  });
  const buf = Buffer.alloc(prog.length * 8);
  prog.forEach((ins, i) => {
    const off = (t: number | string): number => {
      if (typeof t === 'number') return t;
      const target = labels.get(t);
      if (target === undefined || target <= i || target - i - 1 > 255) throw new Error(`bad BPF jump to ${t}`);
      return target - i - 1;
    };
    buf.writeUInt16LE(ins.code, i * 8);
    buf.writeUInt8(off(ins.jt), i * 8 + 2);
    buf.writeUInt8(off(ins.jf), i * 8 + 3);
    buf.writeUInt32LE(ins.k >>> 0, i * 8 + 4);
  });
  return buf;
}

function section(label: string, arch: Arch, clearX32: boolean): Insn[] {
  const out: Insn[] = [{ label, code: LD_ABS, jt: 0, jf: 0, k: 0 }];
  if (clearX32) out.push({ code: AND, jt: 0, jf: 0, k: ~X32_SYSCALL_BIT >>> 0 });
  for (const c of CHMOD_SYSCALLS) if (c.nr[arch] >= 0) out.push({ code: JEQ, jt: `mode${c.modeArg}`, jf: 0, k: c.nr[arch] });
  for (const c of REFUSED_SYSCALLS) out.push({ code: JEQ, jt: c.errno, jf: 0, k: c.nr[arch] });
  out.push({ code: RET, jt: 0, jf: 0, k: RET_ALLOW });
  return out;
}

/** The filter for `arch` (Node's `process.arch`), or throws `sandbox-unavailable` for other architectures. */
export function nixSeccompFilter(arch: string = process.arch): Buffer {
  let native: [number, Arch, boolean];
  let compat: [number, Arch];
  if (arch === 'x64') {
    native = [AUDIT_ARCH_X86_64, 'x86_64', true];
    compat = [AUDIT_ARCH_I386, 'i386'];
  } else if (arch === 'arm64') {
    native = [AUDIT_ARCH_AARCH64, 'aarch64', false];
    compat = [AUDIT_ARCH_ARM, 'arm'];
  } else {
    throw new SandboxError('sandbox-unavailable', `no seccomp filter for architecture '${arch}'`, {
      hint: "set 'filterSyscalls: false' to build without it (builders could then create setuid files)",
    });
  }
  const MODE_MASK = S_ISUID | S_ISGID;
  const prog: Insn[] = [
    { code: LD_ABS, jt: 0, jf: 0, k: 4 }, // seccomp_data.arch
    { code: JEQ, jt: 'native', jf: 0, k: native[0] },
    { code: JEQ, jt: 'compat', jf: 'kill', k: compat[0] },
    ...section('native', native[1], native[2]),
    ...section('compat', compat[1], false),
    // args[i] lives at 16 + 8 i; the mode bits are in the low 32 bits (little endian).
    { label: 'mode1', code: LD_ABS, jt: 0, jf: 0, k: 16 + 8 * 1 },
    { code: JSET, jt: 'eperm', jf: 'allow', k: MODE_MASK },
    { label: 'mode2', code: LD_ABS, jt: 0, jf: 0, k: 16 + 8 * 2 },
    { code: JSET, jt: 'eperm', jf: 'allow', k: MODE_MASK },
    { label: 'eperm', code: RET, jt: 0, jf: 0, k: RET_ERRNO | EPERM },
    { label: 'allow', code: RET, jt: 0, jf: 0, k: RET_ALLOW },
    ...(Object.keys(ERRNO) as RefusedSyscall['errno'][]).map((e): Insn => ({ label: e, code: RET, jt: 0, jf: 0, k: RET_ERRNO | ERRNO[e] })),
    { label: 'kill', code: RET, jt: 0, jf: 0, k: RET_KILL_PROCESS },
  ];
  return assemble(prog);
}
