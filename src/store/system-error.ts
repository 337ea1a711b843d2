/**
 * A failed system call (Node's errno error: `code`, `syscall`, `path`) in Nix's words, as its SysError
 * prints one.
 */
import { getSystemErrorMap } from 'node:util';

/** glibc's strerror() where libuv's description differs from it by more than the first letter's case. */
const STRERROR: Record<string, string> = {
  EEXIST: 'File exists',
  EISDIR: 'Is a directory',
  ELOOP: 'Too many levels of symbolic links',
  EXDEV: 'Invalid cross-device link',
  EMFILE: 'Too many open files',
  ENAMETOOLONG: 'File name too long',
  ETXTBSY: 'Text file busy',
  EBUSY: 'Device or resource busy',
};

/**
 * An errno as Nix words it (glibc's strerror: `No such file or directory`), or undefined for an error that
 * has none. Node's errors carry libuv's description, which is glibc's with a small first letter but for
 * the codes of STRERROR.
 */
export function strerror(e: unknown): string | undefined {
  if (!(e instanceof Error)) return undefined;
  const { code, errno } = e as NodeJS.ErrnoException;
  if (code !== undefined && Object.prototype.hasOwnProperty.call(STRERROR, code)) return STRERROR[code];
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
