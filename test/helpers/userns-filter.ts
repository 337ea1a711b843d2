/**
 * A seccomp filter (classic BPF, as `bwrap --seccomp` loads it) shaped like a container's profile for an
 * unprivileged process: `unshare` and `clone` with CLONE_NEWUSER fail with EPERM, `clone3` with ENOSYS (so
 * libc falls back to `clone`, whose flags the filter can read), everything else is allowed. For
 * test/helpers/without-userns.sh --seccomp.
 */
const LD_ABS_W = 0x20;
const JEQ_K = 0x15;
const JSET_K = 0x45;
const RET_K = 0x06;
const RET_ALLOW = 0x7fff0000;
const RET_ERRNO = 0x00050000;
const EPERM = 1;
const ENOSYS = 38;
const CLONE_NEWUSER = 0x10000000;

/** The audit architecture and the numbers of unshare, clone and clone3 for Node's `process.arch`. */
const ARCHES: Record<string, { audit: number; unshare: number; clone: number; clone3: number }> = {
  x64: { audit: 0xc000003e, unshare: 272, clone: 56, clone3: 435 },
  arm64: { audit: 0xc00000b7, unshare: 97, clone: 220, clone3: 435 },
};

export function denyUserNamespacesFilter(arch: string = process.arch): Buffer {
  const a = ARCHES[arch];
  if (!a) throw new Error(`no user-namespace filter for architecture '${arch}'`);
  // [code, jump if true, jump if false, k]; jumps count the instructions skipped.
  const prog: [number, number, number, number][] = [
    [LD_ABS_W, 0, 0, 4], // seccomp_data.arch
    [JEQ_K, 1, 0, a.audit],
    [RET_K, 0, 0, RET_ALLOW], // another ABI (e.g. 32-bit): not this test's concern
    [LD_ABS_W, 0, 0, 0], // seccomp_data.nr
    [JEQ_K, 0, 1, a.clone3],
    [RET_K, 0, 0, RET_ERRNO | ENOSYS],
    [JEQ_K, 1, 0, a.unshare],
    [JEQ_K, 0, 3, a.clone],
    [LD_ABS_W, 0, 0, 16], // args[0] (low 32 bits): the flags of both
    [JSET_K, 0, 1, CLONE_NEWUSER],
    [RET_K, 0, 0, RET_ERRNO | EPERM],
    [RET_K, 0, 0, RET_ALLOW],
  ];
  const buf = Buffer.alloc(prog.length * 8);
  prog.forEach(([code, jt, jf, k], i) => {
    buf.writeUInt16LE(code, i * 8);
    buf.writeUInt8(jt, i * 8 + 2);
    buf.writeUInt8(jf, i * 8 + 3);
    buf.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  return buf;
}
