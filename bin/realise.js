#!/usr/bin/env node
// The `realise` command (bin/realise, the package's bin, runs this after moving NODE_EXTRA_CA_CERTS aside;
// `node bin/realise.js` runs it directly). Runs the bundled CLI (dist/bundle/main.cjs, made by `npm run
// build`: one file for Node to load, with V8's compiled code cached between runs, see runBundle) or else the
// compiled one (dist/cli/main.js) when it is newer than the sources, else the TypeScript sources through tsx.
// A CommonJS script (bin/package.json says so): Node starts it without its ES-module loader, which a
// command run from the bundle never needs.
'use strict';
const {
  closeSync,
  existsSync,
  fchmodSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} = require('node:fs');
const { createRequire } = require('node:module');
const { homedir } = require('node:os');
const { dirname, join } = require('node:path');
const { pathToFileURL } = require('node:url');
const { Script } = require('node:vm');

/** The commands whose runs compile different parts of the bundle: each has its own code cache. */
const COMMANDS = ['build', 'ensure', 'repair', 'path-info', 'copy', 'gc', 'store', 'report'];
/** How many code caches the cache directory keeps (of every bundle and command); the oldest go first. */
const KEEP_CACHES = 24;

/**
 * The file of V8's code cache for the bundle whose stat is `st` (identified by device, inode, size,
 * modification and change times: a rebuilt or replaced bundle has another) and for this command line's
 * command, in `$XDG_CACHE_HOME/realise` or `~/.cache/realise`. `-engine` when made by a run that ran a
 * BuildEngine, `-engine-subst` by one that also made substituters (see ranLevel), `-wasm` when made with
 * V8's flag of firstTierWasm (V8 takes a code cache only under the flags that made it).
 */
function codeCacheFile(st, { level, wasm }) {
  const argv = process.argv.slice(2);
  const quick = argv.some((a) => a === '--help' || a === '-h' || a === '--version');
  const command = quick ? 'quick' : (COMMANDS.find((c) => argv.includes(c)) ?? 'other');
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  const kind = `${command}${level >= 1 ? '-engine' : ''}${level >= 2 ? '-subst' : ''}${wasm ? '-wasm' : ''}`;
  return join(base, 'realise', `cli-v8-${st.dev}-${st.ino}-${st.size}-${st.mtimeNs}-${st.ctimeNs}-${kind}.bin`);
}

/**
 * What of the bundle a run ran beyond the command's own code, each level holding the one below: 1 when the
 * command runs a BuildEngine (src/cli/engine-build.ts calls the `engineRuns` hook), 2 when it also made
 * substituters (the binary caches' code: narinfo, signatures, NAR restores; engineOptions calls the
 * `substitutersRun` hook). A code cache made by a run of a lower level holds none of those functions,
 * which each later run would compile again (some 30 ms of a 200-derivation build's CPU for the engine's,
 * about 40 ms of its main thread's for the substituters' when its 200 `.drv` files come from a binary
 * cache); such a run writes a cache of its own level, which the command's later runs take.
 */
let engineRan = false;
let substitutersRan = false;
globalThis[Symbol.for('realise.cli.engineRuns')] = () => {
  engineRan = true;
};
globalThis[Symbol.for('realise.cli.substitutersRun')] = () => {
  substitutersRan = true;
};
function ranLevel() {
  return substitutersRan ? 2 : engineRan ? 1 : 0;
}

/**
 * V8's optimising compiler (TurboFan) is off for the first second of an engine's builds (from its first
 * `build-started`; src/cli/engine-build.ts calls the `buildsRun` hook), then on again. It compiles the
 * functions that ran most on V8's background threads: in a build of 200 derivations, some twenty of them,
 * the engine's largest async functions among them, 60-80 ms of CPU (up to ~100 ms for one function under
 * load), for a run that ends soon after, on a machine whose other CPU runs the builders and the sandbox
 * helper. It stays on before the builds: the parsing of every `.drv` file (queryMissing) is the hottest
 * loop of a big build, and a 2,000-derivation build's main thread took ~10% longer with the compiler off
 * from the engine's start. A longer run has its functions optimised from its builds' second second on.
 * `--no-turbofan` is a V8 flag, and V8 takes a code cache only under the flags that made it: Node's cache
 * of its built-in modules is rejected for a module first loaded while the flag is set (compiled from source
 * instead; Node's `crypto`, which every build loads to hash its outputs, is loaded before), and this file's
 * code cache is made once it is unset again (at exit, before the cache is written). So is a worker thread's
 * (NAR restores, zstd decoding) that starts while the flag is set: it compiles each of Node's modules it loads
 * from source, ~25 ms of its own CPU. A run with substituters holds the compiler too: its restore thread has
 * started with the first NAR restored, before the first build, and the compiler's threads took some 130 ms of
 * CPU of a 200-derivation build whose `.drv` files come from a binary cache.
 */
const TURBOFAN_OFF_MS = 1000;
let turbofanHeld = false;
globalThis[Symbol.for('realise.cli.buildsRun')] = holdOptimisingCompiler;
function holdOptimisingCompiler() {
  if (turbofanHeld) return;
  turbofanHeld = true;
  require('node:crypto');
  require('node:v8').setFlagsFromString('--no-turbofan');
  setTimeout(releaseOptimisingCompiler, TURBOFAN_OFF_MS).unref();
}
function releaseOptimisingCompiler() {
  if (!turbofanHeld) return;
  turbofanHeld = false;
  require('node:v8').setFlagsFromString('--turbofan');
}

/**
 * WebAssembly in this process is undici's HTTP parser (llhttp), compiled when the first HTTP connection is
 * made. V8 compiles it quickly for a first tier and then again, optimised, on its background threads, and
 * a process does not exit before those compilations end: about 25 ms of a one-path substitution from an
 * HTTP cache, for code a command of this length never profits from. V8's `--liftoff-only` keeps the first
 * tier. It is set only when undici is about to be loaded (src/substituter/undici.ts calls this through
 * `globalThis`), not on Node's command line: with any V8 flag changed, Node rejects its own code cache of
 * its built-in modules (their flags differ) and compiles each one it loads, 15–20 ms of a build's CPU.
 */
let wasmFirstTier = false;
function firstTierWasm() {
  if (wasmFirstTier) return;
  wasmFirstTier = true;
  require('node:v8').setFlagsFromString('--liftoff-only');
}
globalThis[Symbol.for('realise.cli.firstTierWasm')] = firstTierWasm;

/** Write `data` to `file` atomically (a private file renamed into place), then keep the newest caches only. */
function saveCodeCache(file, data) {
  const dir = dirname(file);
  // Each missing directory from the root down, one mkdir each: a file system that answers mkdir strangely
  // (procfs) fails here, where a recursive mkdirSync can loop for ever.
  const missing = [];
  for (let d = dir; !existsSync(d) && dirname(d) !== d; d = dirname(d)) missing.unshift(d);
  for (const d of missing) mkdirSync(d, { mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    unlinkSync(tmp); // a crashed process's of the same pid
  } catch {
    // none
  }
  // Created, never followed or reused (O_EXCL), and only the user may write it (whatever the umask).
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    try {
      fchmodSync(fd, 0o644);
      for (let off = 0; off < data.length;) off += writeSync(fd, data, off);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // gone already
    }
    throw e;
  }
  const caches = readdirSync(dir)
    .filter((f) => f.startsWith('cli-v8-') && f.endsWith('.bin'))
    .map((f) => ({ f, t: statSync(join(dir, f), { throwIfNoEntry: false })?.mtimeMs ?? 0 }))
    .sort((a, b) => b.t - a.t);
  for (const { f } of caches.slice(KEEP_CACHES)) unlinkSync(join(dir, f));
}

/**
 * The code cache in `file` (its bytes, `data`, and its inode), when there is one that this user wrote and
 * nobody else can change: V8 runs what it holds without checking it against the source, so a cache another
 * user could write (in a shared $XDG_CACHE_HOME) would run their code in this process. Undefined for
 * anything else.
 */
function readCodeCache(file) {
  let fd;
  try {
    fd = openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== process.getuid() || (st.mode & 0o022) !== 0) return undefined;
    const data = Buffer.allocUnsafe(st.size);
    let off = 0;
    for (let n = 1; off < st.size && n > 0; off += n) n = readSync(fd, data, off, st.size - off, off);
    return off === st.size ? { data, ino: st.ino } : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Remove the code cache `file` when it is still the one of inode `ino` (not another run's since). */
function removeCodeCache(file, ino) {
  try {
    if (statSync(file).ino === ino) unlinkSync(file);
  } catch {
    // Gone already, or not ours to remove.
  }
}

/**
 * Run the CommonJS bundle `file` as Node runs a module, compiled by V8 from the code cache of an earlier run
 * of the same bundle and command when there is one: V8 then neither parses nor compiles the functions that
 * ran then. V8 itself rejects a cache made by another V8 version or with other flags. A command that found
 * no usable cache writes one when the process exits, with every function compiled by then, and removes the
 * one V8 rejected (the next runs take the cache of their own level, not that one again). A cache that
 * cannot be read or written (a read-only or missing home) only costs the compile. A command whose last run
 * made an HTTP connection has a `-wasm` cache, made with the flag of firstTierWasm: it starts with the flag
 * (and Node's cache of its modules rejected, as it would be from that connection on), so that the cache
 * holds its whole run; a run that sets the flag makes that cache. Likewise a run that ran more of the
 * bundle than the cache it took was made by (ranLevel) writes a cache of that level, which holds the
 * functions of both (those the taken cache gave, and those compiled since).
 */
function runBundle(file, st = statSync(file, { bigint: true })) {
  // The fullest cache there is: made with the flag (then set now), by the run of the highest level.
  let cachedData;
  let made;
  for (const wasm of [true, false]) {
    for (const level of [2, 1, 0]) {
      const cacheFile = codeCacheFile(st, { level, wasm });
      cachedData = readCodeCache(cacheFile);
      if (cachedData) {
        made = { level, wasm, file: cacheFile, ino: cachedData.ino };
        cachedData = cachedData.data;
        break;
      }
    }
    if (cachedData) break;
  }
  if (made?.wasm) firstTierWasm();
  // The function Node wraps a CommonJS module's text in.
  const text = `(function (exports, require, module, __filename, __dirname) { ${readFileSync(file, 'utf8')}\n})`;
  const script = new Script(text, { filename: file, cachedData });
  const usable = cachedData !== undefined && !script.cachedDataRejected;
  process.once('exit', () => {
    releaseOptimisingCompiler();
    const ran = ranLevel();
    if (usable && wasmFirstTier === made.wasm && made.level >= ran) return;
    const level = usable ? Math.max(ran, made.level) : ran;
    const file = codeCacheFile(st, { level, wasm: wasmFirstTier });
    // A rejected cache (another Node's, after an upgrade) goes, unless this run replaces it: else, of a
    // level above this run's, it would be taken and rejected again by each run until one reaches it.
    if (made && !usable && made.file !== file) removeCodeCache(made.file, made.ino);
    try {
      saveCodeCache(file, script.createCachedData());
    } catch {
      // No cache this time.
    }
  });
  const module = { exports: {}, filename: file, id: file, loaded: false };
  script.runInThisContext().call(module.exports, module.exports, createRequire(file), module, file, dirname(file));
}

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function main() {
  // Interrupts: while a build runs, the CLI turns SIGINT/SIGTERM/SIGHUP into cancellation (builders killed,
  // locks released, nothing half-registered): it sets `cancel` below for that window. Outside it (loading,
  // opening the store, before or after the build) nothing is in flight, so an interrupt ends the command at
  // once, as Nix ends: "error: interrupted by the user", exit status 1 (not a death by signal). Only this
  // handler decides: other listeners (execa's child clean-up registers some) never keep the process alive.
  const interrupts = { cancel: undefined };
  globalThis[Symbol.for('realise.cli.interrupts')] = interrupts;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      if (interrupts.cancel) return interrupts.cancel(sig);
      process.stderr.write('error: interrupted by the user\n');
      process.exit(1);
    });
  }

  const root = dirname(__dirname);
  const src = join(root, 'src');
  let sourcesTime;
  /** The stat of `built` when it exists and no source is newer (an installed package has no src/), else undefined. */
  const fresh = (built) => {
    const st = statSync(built, { throwIfNoEntry: false, bigint: true });
    if (!st) return undefined;
    sourcesTime ??= existsSync(src) ? newestSource(src) : 0;
    return Number(st.mtimeMs) >= sourcesTime ? st : undefined;
  };
  const bundle = join(root, 'dist', 'bundle', 'main.cjs');
  const compiled = join(root, 'dist', 'cli', 'main.js');
  const bundled = fresh(bundle);
  if (bundled) runBundle(bundle, bundled);
  else if (fresh(compiled)) void import(pathToFileURL(compiled).href);
  else {
    void import('tsx/esm/api').then(({ register }) => {
      register();
      return import(pathToFileURL(join(src, 'cli', 'main.ts')).href);
    });
  }
}

module.exports = { main, runBundle };
if (require.main === module) main();
