// A thread of a whole-store optimisation (optimise.ts, optimiseStorePaths): plain JavaScript that
// imports nothing of ours but optimise-links.cjs beside it (it runs the same from src/ and dist/). The
// first task brings the store and the inodes already in `.links`; each task is a batch of store paths
// (real locations), optimised with synchronous calls; the reply carries what the batch linked, its
// warnings, and the error that stopped it.
'use strict';
const { parentPort } = require('node:worker_threads');
const { Optimiser } = require('./optimise-links.cjs');

let opt;
let warnings = [];
parentPort.on('message', (m) => {
  if (m.drain) return void (opt ? opt.drain() : Promise.resolve()).then(() => parentPort.postMessage({ id: m.id })); // (no batch if aborted at once)
  if (m.realStoreDir) opt = new Optimiser(m.realStoreDir, new Set(m.inodes), (w) => warnings.push(w), true);
  const before = { ...opt.stats };
  const reply = { id: m.id };
  try {
    for (const p of m.paths) {
      try {
        opt.optimisePath(p);
      } catch (e) {
        if (e.code !== 'ENOENT') throw e; // contents missing: nothing to optimise
      }
    }
  } catch (e) {
    reply.error = { message: String((e && e.message) || e), code: e && e.code, path: e && e.path };
  }
  reply.filesLinked = opt.stats.filesLinked - before.filesLinked;
  reply.bytesFreed = opt.stats.bytesFreed - before.bytesFreed;
  reply.blocksFreed = opt.stats.blocksFreed - before.blocksFreed;
  reply.warnings = warnings;
  warnings = [];
  parentPort.postMessage(reply);
});
