/**
 * The process's umask, read without changing it. `process.umask()` with no argument sets the umask to 0 and
 * back, and a file another thread creates in between (the thread pool, the restore thread, SQLite) gets
 * its mode unmasked: a log file world-writable. Linux shows the umask in /proc/self/status (since 4.7):
 * it is read there at each call (about 13 µs; the embedding program may change its umask at any time).
 * Where that file has no `Umask:` line, the read-and-restore is the fallback.
 */
import { closeSync, openSync, readSync } from 'node:fs';

const buf = Buffer.alloc(4096);
let procHasUmask = true;

/** The umask, now. */
export function processUmask(): number {
  return (procHasUmask ? fromProcStatus() : undefined) ?? process.umask();
}

function fromProcStatus(): number | undefined {
  let fd: number | undefined;
  try {
    fd = openSync('/proc/self/status', 'r');
    const text = buf.toString('latin1', 0, readSync(fd, buf, 0, buf.length, 0));
    const at = text.indexOf('\nUmask:');
    if (at >= 0) return parseInt(text.slice(at + 7, text.indexOf('\n', at + 7)).trim(), 8);
  } catch {
    // no procfs
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  procHasUmask = false;
  return undefined;
}
