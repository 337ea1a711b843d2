/**
 * A failed system call (Node's errno error: `code`, `syscall`, `path`) in Nix's words, as its SysError
 * prints one.
 */
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';

/**
 * glibc's strerror() for the codes where libuv's description differs from it by more than the first
 * letter's case, or where libuv has none (its code is then "Unknown system error -N").
 */
const STRERROR: Record<string, string> = {
  EADDRNOTAVAIL: 'Cannot assign requested address',
  EAFNOSUPPORT: 'Address family not supported by protocol',
  EALREADY: 'Operation already in progress',
  EBADMSG: 'Bad message',
  EBUSY: 'Device or resource busy',
  ECHILD: 'No child processes',
  EDEADLK: 'Resource deadlock avoided',
  EDOM: 'Numerical argument out of domain',
  EDQUOT: 'Disk quota exceeded',
  EEXIST: 'File exists',
  EFAULT: 'Bad address',
  EHOSTUNREACH: 'No route to host',
  EIDRM: 'Identifier removed',
  EILSEQ: 'Invalid or incomplete multibyte or wide character',
  EINPROGRESS: 'Operation now in progress',
  EIO: 'Input/output error',
  EISCONN: 'Transport endpoint is already connected',
  EISDIR: 'Is a directory',
  ELOOP: 'Too many levels of symbolic links',
  EMULTIHOP: 'Multihop attempted',
  ENAMETOOLONG: 'File name too long',
  ENETRESET: 'Network dropped connection on reset',
  ENFILE: 'Too many open files in system',
  ENOEXEC: 'Exec format error',
  ENOLCK: 'No locks available',
  ENOLINK: 'Link has been severed',
  ENOMEM: 'Cannot allocate memory',
  ENOMSG: 'No message of desired type',
  ENOSR: 'Out of streams resources',
  ENOSTR: 'Device not a stream',
  ENOTCONN: 'Transport endpoint is not connected',
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  ERANGE: 'Numerical result out of range',
  ESPIPE: 'Illegal seek',
  ESTALE: 'Stale file handle',
  ETIME: 'Timer expired',
  ETXTBSY: 'Text file busy',
  EXDEV: 'Invalid cross-device link',
};

/** STRERROR by the errno's (positive) number, for the errors whose code libuv does not name. */
const BY_NUMBER = new Map<number, string>(
  Object.entries(STRERROR).flatMap(([name, text]) => {
    const n = (constants.errno as Record<string, number | undefined>)[name];
    return n === undefined ? [] : [[n, text] as const];
  }),
);

/**
 * An errno as Nix words it (glibc's strerror: `No such file or directory`), or undefined for an error that
 * has none. Node's errors carry libuv's description, which is glibc's with a small first letter but for
 * the codes of STRERROR.
 */
export function strerror(e: unknown): string | undefined {
  if (!(e instanceof Error)) return undefined;
  const { code, errno } = e as NodeJS.ErrnoException;
  if (code !== undefined && Object.prototype.hasOwnProperty.call(STRERROR, code)) return STRERROR[code];
  const known = errno === undefined ? undefined : BY_NUMBER.get(Math.abs(errno));
  if (known !== undefined) return known;
  const text = errno === undefined ? undefined : getSystemErrorMap().get(errno)?.[1];
  return text ? `${text[0]!.toUpperCase()}${text.slice(1)}` : undefined;
}

/** What Nix says about the system call it was making (SysError's context) for Node's syscall names. */
const SYSCALL: Record<string, (p: string, dest: string | undefined) => string> = {
  open: (p) => `opening file '${p}'`,
  read: (p) => `reading file '${p}'`,
  write: (p) => `writing to file '${p}'`,
  mkdir: (p) => `creating directory '${p}'`,
  stat: (p) => `getting status of '${p}'`,
  lstat: (p) => `getting status of '${p}'`,
  scandir: (p) => `opening directory '${p}'`,
  opendir: (p) => `opening directory '${p}'`,
  unlink: (p) => `removing '${p}'`,
  rmdir: (p) => `removing directory '${p}'`,
  rename: (p, d) => `renaming '${p}' to '${d}'`,
  readlink: (p) => `reading symbolic link '${p}'`,
  symlink: (p, d) => `creating symlink from '${d}' to '${p}'`,
  chmod: (p) => `changing mode of '${p}'`,
  access: (p) => `checking access to '${p}'`,
  connect: (p) => `cannot connect to socket at '${p}'`,
};

/** The same for a call on a file descriptor, which Node's error names no path for (Nix's readFull, writeFull). */
const FD_SYSCALL: Record<string, string> = { read: 'reading from file', write: 'writing to file' };

/**
 * A failed system call (Node's errno error: `code`, `syscall`, `path`) in Nix's words, as its SysError
 * prints one: `opening file '/x': No such file or directory`. Undefined for any other error.
 */
export function systemErrorMessage(e: unknown): string | undefined {
  const err = e as NodeJS.ErrnoException & { dest?: string };
  if (!(e instanceof Error) || typeof err.code !== 'string' || typeof err.syscall !== 'string' || typeof err.errno !== 'number') return undefined;
  const reason = strerror(e) ?? err.code;
  const what =
    err.path !== undefined ? (SYSCALL[err.syscall]?.(err.path, err.dest) ?? `${err.syscall} '${err.path}'`) : (FD_SYSCALL[err.syscall] ?? err.syscall);
  return `${what}: ${reason}`;
}
