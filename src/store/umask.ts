/**
 * The process's umask, read without changing it. `process.umask()` with no argument sets the umask to 0 and
 * back, and a file another thread creates in between (the thread pool, the restore thread, SQLite) gets
 * its mode unmasked: a log or database world-writable. Linux shows the umask in /proc/self/status (since
 * 4.7); it is read there once per process and kept, as nothing of ours changes it. Where that file has
 * no `Umask:` line, the read-and-restore is the fallback.
 */
import { readFileSync } from 'node:fs';

let known: number | undefined;

/** The umask (read once per process). */
export function processUmask(): number {
  known ??= fromProcStatus() ?? process.umask();
  return known;
}

function fromProcStatus(): number | undefined {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'latin1'));
    return m ? parseInt(m[1]!, 8) : undefined;
  } catch {
    return undefined;
  }
}
