// The thread of a batched NAR restore (nar.ts, restorePath with `batch`): plain JavaScript that imports
// nothing of ours (it runs the same from src/ and dist/). It makes the steps it is given with synchronous
// calls, in order, with the same flags and modes as the canonical thread-pool restore, and replies with
// the index of a failed step. nar.ts also runs `runOps` on the main thread, for a small NAR while the
// thread is not running.
'use strict';
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const C = fs.constants;

/** Make the steps of request `m`; the reply: `{ id }`, or with the failed step's index, code and message. */
function runOps(m) {
  let i = 0;
  try {
    for (; i < m.ops.length; i++) {
      const o = m.ops[i];
      if (o.k === 'd') {
        fs.mkdirSync(o.p, 0o755);
        // Writable by its owner whatever the umask (one chmod here rather than a read of the umask by
        // the caller), until its end makes it 0555.
        fs.chmodSync(o.p, 0o755);
      } else if (o.k === 'e') {
        fs.chmodSync(o.p, 0o555);
        fs.lutimesSync(o.p, m.now, 1);
      } else if (o.k === 'l') {
        fs.symlinkSync(Buffer.from(o.t.buffer, o.t.byteOffset, o.t.length), o.p);
        fs.lutimesSync(o.p, m.now, 1);
      } else {
        const fd = fs.openSync(o.p, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, o.mode);
        try {
          for (const c of o.data) {
            const b = new Uint8Array(c.sab, c.off, c.len);
            let off = 0;
            while (off < b.length) off += fs.writeSync(fd, b, off, b.length - off);
          }
          fs.fchmodSync(fd, o.mode); // (the creation mode lost the umask's bits, if any)
          fs.futimesSync(fd, m.now, 1);
        } finally {
          fs.closeSync(fd);
        }
      }
    }
    return { id: m.id };
  } catch (e) {
    return { id: m.id, op: i, code: e && e.code, message: String((e && e.message) || e) };
  }
}

module.exports = { runOps };
// The thread's own script (not a module required by nar.ts, on the main thread or in another thread).
// A message is one request, or an array of them (ThreadTasks.runTogether), answered in kind.
if (parentPort && require.main === module) parentPort.on('message', (m) => parentPort.postMessage(Array.isArray(m) ? m.map(runOps) : runOps(m)));
