/**
 * The seccomp filter Nix installs in builders (setupSeccomp), as a classic BPF program we assemble
 * ourselves: chmod/fchmod/fchmodat(/fchmodat2) with S_ISUID or S_ISGID fail with EPERM, and
 * setxattr/lsetxattr/fsetxattr fail with ENOTSUP. The native architecture and its 32-bit companion
 * (i386 and x32 on x86_64, arm on aarch64) are covered; any other architecture is killed, as
 * libseccomp's default bad-arch action does. Output: `struct sock_filter[]` bytes (little endian).
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
const ENOTSUP = 95;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;

interface SyscallTable { readonly chmodArg1: number[]; readonly chmodArg2: number[]; readonly xattr: number[] }

// Syscall numbers per architecture (fchmodat2 = 452 everywhere; newer than Nix 2.8, blocked too).
const X86_64: SyscallTable = { chmodArg1: [90, 91], chmodArg2: [268, 452], xattr: [188, 189, 190] };
const I386: SyscallTable = { chmodArg1: [15, 94], chmodArg2: [306, 452], xattr: [226, 227, 228] };
const AARCH64: SyscallTable = { chmodArg1: [52], chmodArg2: [53, 452], xattr: [5, 6, 7] };
const ARM: SyscallTable = { chmodArg1: [15, 94], chmodArg2: [333, 452], xattr: [226, 227, 228] };

type Insn = { code: number; jt: number | string; jf: number | string; k: number; label?: string };

const LD_ABS = 0x20, JEQ = 0x15, JSET = 0x45, RET = 0x06, AND = 0x54;

function assemble(prog: Insn[]): Buffer {
  const labels = new Map<string, number>();
  prog.forEach((ins, i) => { if (ins.label) labels.set(ins.label, i); });
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

function section(label: string, table: SyscallTable, clearX32: boolean): Insn[] {
  const out: Insn[] = [{ label, code: LD_ABS, jt: 0, jf: 0, k: 0 }];
  if (clearX32) out.push({ code: AND, jt: 0, jf: 0, k: ~X32_SYSCALL_BIT >>> 0 });
  for (const nr of table.chmodArg1) out.push({ code: JEQ, jt: 'mode1', jf: 0, k: nr });
  for (const nr of table.chmodArg2) out.push({ code: JEQ, jt: 'mode2', jf: 0, k: nr });
  for (const nr of table.xattr) out.push({ code: JEQ, jt: 'enotsup', jf: 0, k: nr });
  out.push({ code: RET, jt: 0, jf: 0, k: RET_ALLOW });
  return out;
}

/** The filter for `arch` (Node's `process.arch`), or throws `sandbox-unavailable` for other architectures. */
export function nixSeccompFilter(arch: string = process.arch): Buffer {
  let native: [number, SyscallTable, boolean];
  let compat: [number, SyscallTable];
  if (arch === 'x64') { native = [AUDIT_ARCH_X86_64, X86_64, true]; compat = [AUDIT_ARCH_I386, I386]; }
  else if (arch === 'arm64') { native = [AUDIT_ARCH_AARCH64, AARCH64, false]; compat = [AUDIT_ARCH_ARM, ARM]; }
  else {
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
    { label: 'enotsup', code: RET, jt: 0, jf: 0, k: RET_ERRNO | ENOTSUP },
    { label: 'kill', code: RET, jt: 0, jf: 0, k: RET_KILL_PROCESS },
  ];
  return assemble(prog);
}
