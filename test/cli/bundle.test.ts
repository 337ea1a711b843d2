/**
 * The bundled CLI (scripts/bundle-cli.mjs, what `npm run build` and `npm ci` make for bin/realise.js): one
 * CommonJS file that runs, and whose start-up initialises no module and loads no npm package a command may
 * not need. Bundled here into a fresh directory inside the checkout (so its external packages resolve from
 * node_modules), not into dist/. A sandboxed build from it compiles the sandbox helper from the C source
 * copied beside it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, removeTreeSync, tempDir } from '../helpers/nix.js';
import { cacheDir, cacheUrl, narInfos } from '../substituter/fixtures.js';
import { serveCache } from '../substituter/http-server.js';

const ROOT = path.resolve(__dirname, '../..');

interface Meta {
  inputs: Record<string, { imports: { path: string; kind: string; external?: boolean }[] }>;
  outputs: Record<string, { imports: { path: string; kind: string; external?: boolean }[]; inputs: Record<string, { bytesInOutput: number }> }>;
}

describe('the bundled CLI', () => {
  let dir: string;
  let meta: Meta;
  beforeAll(() => {
    mkdirSync(path.join(ROOT, 'tmp'), { recursive: true });
    dir = mkdtempSync(path.join(ROOT, 'tmp', 'bundle-'));
    const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts/bundle-cli.mjs'), dir], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    meta = JSON.parse(readFileSync(path.join(dir, 'meta.json'), 'utf8')) as Meta;
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /**
   * What running a module of the bundle initialises: it and the modules it imports statically, recursively
   * (each of our modules is a lazy initialiser that runs those of its static imports; a dynamic import()
   * runs when it is reached), among the modules the bundle holds; and the npm packages they import.
   */
  const staticClosure = (entry: string): { packages: Set<string>; sources: Set<string> } => {
    const output = Object.values(meta.outputs).find((o) => 'src/cli/main.ts' in o.inputs)!;
    const held = new Set(Object.keys(output.inputs).filter((k) => output.inputs[k]!.bytesInOutput > 0));
    const sources = new Set<string>();
    const packages = new Set<string>();
    const visit = (input: string): void => {
      if (sources.has(input)) return;
      sources.add(input);
      for (const i of meta.inputs[input]!.imports) {
        if (i.kind !== 'import-statement' && i.kind !== 'require-call') continue;
        if (i.external) {
          if (i.path !== '<runtime>' && !isBuiltin(i.path)) packages.add(i.path);
        } else if (held.has(i.path)) visit(i.path);
      }
    };
    visit(entry);
    return { packages, sources };
  };
  /** The npm package a bundled file is of (its path goes through node_modules), else undefined. */
  const npmOf = (p: string) => /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(p)?.[1];

  /**
   * The npm packages and the built-in modules the bundle requires while a command runs (a preload records
   * them), and the command's stdout and status.
   */
  const required = (args: string[]): { packages: string[]; builtins: string[]; stdout: string; status: number | null } => {
    const log = path.join(dir, `required-${process.hrtime.bigint()}.txt`);
    const hook = path.join(dir, 'record-requires.cjs');
    writeFileSync(
      hook,
      `const M = require('node:module'); const load = M._load; const seen = new Set();
M._load = function (request, parent) {
  if (parent && parent.filename === ${JSON.stringify(path.join(dir, 'main.cjs'))} && !/^[.\\/]/.test(request)) seen.add(request);
  return load.apply(this, arguments);
};
process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, [...seen].sort().join('\\n')));`,
    );
    const r = spawnSync(process.execPath, ['--require', hook, path.join(dir, 'main.cjs'), ...args], { encoding: 'utf8' });
    const all = readFileSync(log, 'utf8').split('\n').filter(Boolean);
    return { packages: all.filter((m) => !isBuiltin(m)), builtins: all.filter((m) => isBuiltin(m)), stdout: r.stdout, status: r.status };
  };

  it("is one CommonJS file, which holds better-sqlite3's and the engine queue's JavaScript and leaves every other npm package outside", () => {
    const outputs = Object.keys(meta.outputs).filter((k) => k.endsWith('.cjs'));
    expect(outputs.map((k) => path.basename(k))).toEqual(['main.cjs']);
    const bundledPackages = new Set(Object.keys(meta.outputs[outputs[0]!]!.inputs).flatMap((k) => npmOf(k) ?? []));
    // p-queue is an ES-module package: required from outside, it would start Node's ES-module loader.
    expect([...bundledPackages].sort()).toEqual(['better-sqlite3', 'eventemitter3', 'p-queue', 'p-timeout']);
  });

  it("keeps every error class's own name (RealiseError takes its name from new.target, and the bundle keeps identifiers rather than naming each function)", () => {
    const code = readFileSync(path.join(dir, 'main.cjs'), 'utf8');
    // esbuild renames one of two top-level classes of one name (FooError2): its errors would say so.
    // A class assigned to its variable (RealiseError=class extends …) takes the variable's name.
    expect(code.match(/\bclass \w*Error\d+\b|\b\w*Error\d+ ?= ?class\b/g) ?? []).toEqual([]);
    expect(code).toMatch(/\bRealiseError ?= ?class extends Error\b/);
    expect(code).toMatch(/\bBuildFailedError ?= ?class extends RealiseError\b/);
  });

  it('answers --version and --help from its entry alone, which loads no npm package', () => {
    const { packages, sources } = staticClosure('src/cli/main.ts');
    expect([...packages]).toEqual([]);
    expect(sources.has('src/cli/run.ts')).toBe(false);
    const version = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
    const r = required(['--version']);
    expect(r.stdout).toBe(`realise (realise) ${version}, mirroring nix-store (Nix) 2.8.0\n`);
    expect(r.status).toBe(0);
    expect(r.packages).toEqual([]);
    const h = spawnSync(process.execPath, [path.join(dir, 'main.cjs'), '--help'], { encoding: 'utf8' });
    expect(h.stdout).toMatch(/^usage: realise COMMAND/);
  });

  it('loads the HTTP client, execa, the xz/zstd codecs and fast-glob only when a command uses them', () => {
    const { packages, sources } = staticClosure('src/cli/run.ts');
    for (const lazy of ['undici', 'execa', 'node-liblzma', 'zstd-napi', 'fast-glob']) expect(packages.has(lazy), lazy).toBe(false);
    // What a store command does need is there.
    expect(sources.has('src/store/local-store.ts')).toBe(true);
  });

  it('starts a no-op build without the engine: the build command initialises no scheduler, substituter or observer code', () => {
    const { packages, sources } = staticClosure('src/cli/build.ts');
    // better-sqlite3 names `bindings` in the function that finds its addon when it is given none
    // (src/store/sqlite.ts gives it one); nothing else.
    expect([...packages]).toEqual(['bindings']);
    expect(sources.has('src/scheduler/already-valid.ts')).toBe(true);
    for (const heavy of ['src/scheduler/build-engine.ts', 'src/substituter/binary-cache.ts', 'src/observe/nix-json.ts', 'src/remote/daemon-store.ts']) {
      expect(sources.has(heavy), heavy).toBe(false);
    }
    expect([...new Set([...sources].flatMap((s) => npmOf(s) ?? []))]).toEqual(['better-sqlite3']);
  });

  it("runs through bin/realise.js's loader from V8's code cache of the same bundle and command, made by the first run", () => {
    const cache = path.join(dir, 'xdg');
    const runner = path.join(dir, 'run-cached.cjs');
    writeFileSync(runner, `require(${JSON.stringify(path.join(ROOT, 'bin/realise.js'))}).runBundle(${JSON.stringify(path.join(dir, 'main.cjs'))});`);
    const run = (args: string[], env: NodeJS.ProcessEnv = { XDG_CACHE_HOME: cache }) =>
      spawnSync(process.execPath, [runner, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
    const caches = () => (existsSync(path.join(cache, 'realise')) ? readdirSync(path.join(cache, 'realise')).sort() : []);
    const version = run(['--version']);
    expect(version.stdout).toMatch(/^realise \(realise\) /);
    expect(version.stderr).toBe('');
    // One cache per bundle and command, named by the bundle's identity.
    expect(caches()).toEqual([expect.stringMatching(/^cli-v8-\d+-\d+-\d+-\d+-\d+-quick\.bin$/)]);
    const file = path.join(cache, 'realise', caches()[0]!);
    const made = statSync(file);
    // The next run takes it (V8 accepts it: it is not written again) and answers the same.
    expect(run(['--help']).stdout).toBe(spawnSync(process.execPath, [path.join(dir, 'main.cjs'), '--help'], { encoding: 'utf8' }).stdout);
    expect(run(['--version']).stdout).toBe(version.stdout);
    expect(statSync(file).mtimeMs).toBe(made.mtimeMs);
    expect(statSync(file).ino).toBe(made.ino);
    // A cache V8 rejects (here: not one at all) costs a compile and is replaced by a good one.
    writeFileSync(file, 'not a code cache');
    expect(run(['--version'])).toMatchObject({ stdout: version.stdout, stderr: '', status: 0 });
    const remade = statSync(file);
    expect(remade.size).toBeGreaterThan(made.size / 2);
    expect(run(['--version']).stdout).toBe(version.stdout);
    expect(statSync(file).mtimeMs).toBe(remade.mtimeMs);
    // One that others could have written is not taken (V8 would run what it holds): it is made again, the
    // user's alone.
    chmodSync(file, 0o666);
    expect(run(['--version']).stdout).toBe(version.stdout);
    expect(statSync(file).mode & 0o777).toBe(0o644);
    expect(statSync(file).ino).not.toBe(remade.ino);
    // Another command has its own; a home where nothing can be written only means no cache.
    expect(run(['gc', '--print-dead', '--store', path.join(dir, 'store')]).status).toBe(0);
    expect(caches()).toHaveLength(2);
    expect(run(['--version'], { XDG_CACHE_HOME: '/proc/no-such-dir' })).toMatchObject({ stdout: version.stdout, stderr: '', status: 0 });
  });

  it('runs a store command', () => {
    const store = tempDir('realise-bundle-store-');
    try {
      const r = required(['gc', '--print-dead', '--store', store]);
      expect(r.status).toBe(0);
      // The store's database through the bundled better-sqlite3 (its addon by path); no package it does not use.
      expect(r.packages).toContain('fs-ext');
      for (const p of ['better-sqlite3', 'undici', 'execa', 'node-liblzma', 'zstd-napi']) expect(r.packages).not.toContain(p);
      // node:crypto is loaded by the first hash or signature, not by every store command (its modules import
      // it from a stand-in of functions that require it when called).
      expect(r.builtins).toContain('node:fs');
      expect(r.builtins).not.toContain('node:crypto');
      const importers = Object.keys(meta.inputs).filter((k) => meta.inputs[k]!.imports.some((i) => i.path === 'node:crypto'));
      expect(importers).toEqual(['lazy-crypto:lazy-crypto']);
    } finally {
      rmSync(store, { recursive: true, force: true });
    }
  });

  it('substitutes from a file:// cache and exits: no thread or database lookup of the bundle keeps it running', () => {
    const store = tempDir('realise-bundle-subst-');
    try {
      const target = narInfos('none')[0]!.storePath;
      const args = ['build', '--store', store, '--option', 'substituters', cacheUrl('none'), '--option', 'require-sigs', 'false', target];
      const hook = path.join(dir, 'loaded-file.cjs');
      const log = path.join(dir, 'loaded-file.txt');
      writeFileSync(hook, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, process.moduleLoadList.join('\\n')));`);
      const r = spawnSync(process.execPath, ['--require', hook, path.join(dir, 'main.cjs'), ...args], { encoding: 'utf8', timeout: 60_000 });
      expect(r.signal, 'still running after 60 s').toBeNull();
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(target);
      expect(existsSync(path.join(store, target))).toBe(true);
      // No HTTP client here, and no codec: node:http (its status texts name HTTP errors) and node:zlib (br, gzip) are not loaded.
      expect(
        readFileSync(log, 'utf8')
          .split('\n')
          .filter((m) => /^NativeModule (http|http2|tls|zlib)$/.test(m)),
      ).toEqual([]);
    } finally {
      removeTreeSync(store);
    }
  });

  it('substitutes from an http:// cache without loading node:http2 or node:tls (undici is told not to offer HTTP/2) or node:zlib', async () => {
    const server = await serveCache(cacheDir('none'));
    const work = tempDir('realise-bundle-http-');
    try {
      const target = narInfos('none')[0]!.storePath;
      const hook = path.join(work, 'loaded.cjs');
      const log = path.join(work, 'loaded.txt');
      writeFileSync(hook, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, process.moduleLoadList.join('\\n')));`);
      const args = ['build', '--store', path.join(work, 'store'), '--option', 'substituters', server.url, '--option', 'require-sigs', 'false', target];
      const child = spawn(process.execPath, ['--require', hook, path.join(dir, 'main.cjs'), ...args], {
        env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'xdg') },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(status, stderr).toBe(0);
      expect(stdout.trim()).toBe(target);
      expect(server.requests.some((r) => r.endsWith('.narinfo'))).toBe(true);
      const loaded = readFileSync(log, 'utf8').split('\n');
      // Nor node:zlib (br and gzip caches). (undici loads node:http.)
      expect(loaded.filter((m) => /^NativeModule (http2|tls|zlib)$/.test(m))).toEqual([]);
    } finally {
      await server.close();
      removeTreeSync(work);
    }
  });

  it("keeps a code cache by what the command's runs did: a run of the engine replaces a no-op's, one with a substituter an engine run's; one that reaches an HTTP cache sets V8's --liftoff-only as it loads undici and makes the flag's, with which the next runs start; a build without substituters holds V8's optimising compiler from its first build to its first second's end or its exit", async () => {
    const server = await serveCache(cacheDir('none'));
    const work = tempDir('realise-bundle-caches-');
    try {
      const xdg = path.join(work, 'xdg');
      const runner = path.join(work, 'run-cached.cjs');
      const log = path.join(work, 'v8.txt');
      // bin/realise.js's loader, as the launcher runs it; at exit (after the loader's own exit listener, which
      // writes the code cache), the V8 flags the run set, in order.
      writeFileSync(
        runner,
        `const v8 = require('node:v8');
const setFlags = v8.setFlagsFromString;
const flags = [];
v8.setFlagsFromString = (f) => (flags.push(f), setFlags.call(v8, f));
require(${JSON.stringify(path.join(ROOT, 'bin/realise.js'))}).runBundle(${JSON.stringify(path.join(dir, 'main.cjs'))});
process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(log)}, flags.join(' ')));`,
      );
      const target = narInfos('none')[0]!.storePath;
      /** Each code cache's kind (what follows the bundle's identity) and its inode and modification time. */
      const caches = () =>
        Object.fromEntries(
          readdirSync(path.join(xdg, 'realise'))
            .filter((f) => f.startsWith('cli-v8-'))
            .map((f) => {
              const st = statSync(path.join(xdg, 'realise', f));
              return [f.replace(/^cli-v8-(\d+-){5}/, ''), `${st.ino}@${st.mtimeMs}`];
            }),
        );
      const run = async (args: string[], want = 0) => {
        const child = spawn(process.execPath, [runner, ...args], { env: { ...process.env, XDG_CACHE_HOME: xdg } });
        let stderr = '';
        child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
        expect(status, stderr).toBe(want);
        return readFileSync(log, 'utf8');
      };
      const store = (n: number) => ['--store', path.join(work, `store${n}`)];
      expect(await run(['gc', '--print-dead', ...store(0)])).toBe('');
      // A build with nothing to do runs no engine; one of a path nothing can provide does (and fails).
      expect(await run(['build', ...store(0)])).toBe('');
      expect(Object.keys(caches()).sort()).toEqual(['build.bin', 'gc.bin']);
      expect(await run(['build', ...store(0), `${path.dirname(target)}/${'0'.repeat(32)}-nowhere`], 1)).toBe('');
      const engine = caches();
      expect(Object.keys(engine).sort()).toEqual(['build-engine.bin', 'build.bin', 'gc.bin']);
      // Taken by the next runs, whatever they do (not written again: V8 accepted it).
      expect(await run(['build', ...store(0)])).toBe('');
      expect(caches()).toEqual(engine);
      let checkHeld: string[] | undefined;
      if (nixOk()) {
        // A build that builds holds the optimising compiler from its first build; the compiler is back at exit
        // (the cache made under V8's own flags, which the next run takes: not written again).
        const file = path.join(work, 'e.nix');
        writeFileSync(file, 'derivation { name = "held"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }');
        const drv = nix('nix-instantiate', ['--store', path.join(work, 'store5'), file]);
        const sandboxed = ['--option', 'sandbox', 'true', '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', drv];
        expect(await run(['build', ...store(5), ...sandboxed])).toBe('--no-turbofan --turbofan');
        expect(caches()).toEqual(engine);
        expect(await run(['build', ...store(5), '--check', ...sandboxed])).toBe('--no-turbofan --turbofan');
        expect(caches()).toEqual(engine);
        checkHeld = ['build', ...store(5), '--check', ...sandboxed];
      }
      // A build with a substituter (a file:// cache: no HTTP) runs the binary caches' code, which the engine
      // run's cache lacks: its own cache, which every later run takes (an engine run's too, not written again).
      const fromFile = (n: number) => run(['build', ...store(n), '--option', 'substituters', cacheUrl('none'), '--option', 'require-sigs', 'false', target]);
      // (Nothing is built: the compiler is not held.)
      expect(await fromFile(3)).toBe('');
      const subst = caches();
      expect(Object.keys(subst).sort()).toEqual(['build-engine-subst.bin', 'build-engine.bin', 'build.bin', 'gc.bin']);
      expect(await fromFile(4)).toBe('');
      expect(await run(['build', ...store(0), `${path.dirname(target)}/${'0'.repeat(32)}-nowhere`], 1)).toBe('');
      expect(caches()).toEqual(subst);
      if (checkHeld) {
        // A build with substituters holds the compiler as well (and takes the substituters' cache).
        expect(await run([...checkHeld, '--option', 'substituters', cacheUrl('none')])).toBe('--no-turbofan --turbofan');
        expect(caches()).toEqual(subst);
      }
      // HTTP: the flag, and the flag's cache; the next run starts with the flag and takes it.
      const build = (n: number) => run(['build', ...store(n), '--option', 'substituters', server.url, '--option', 'require-sigs', 'false', target]);
      expect(await build(1)).toBe('--liftoff-only');
      const wasm = caches();
      expect(Object.keys(wasm).sort()).toEqual(['build-engine-subst-wasm.bin', 'build-engine-subst.bin', 'build-engine.bin', 'build.bin', 'gc.bin']);
      expect(await build(2)).toBe('--liftoff-only');
      expect(caches()).toEqual(wasm);
      // A cache V8 rejects (as another Node version's) is removed by the run that took it, here a no-op,
      // which writes its own level's cache: the next no-op takes that one, not the rejected one again.
      const wasmCache = readdirSync(path.join(xdg, 'realise')).find((f) => f.endsWith('-build-engine-subst-wasm.bin'))!;
      writeFileSync(path.join(xdg, 'realise', wasmCache), 'not a code cache');
      await run(['build', ...store(0)]);
      const remade = caches();
      expect(Object.keys(remade).sort()).toEqual(['build-engine-subst.bin', 'build-engine.bin', 'build-wasm.bin', 'build.bin', 'gc.bin']);
      await run(['build', ...store(0)]);
      expect(caches()).toEqual(remade);
    } finally {
      await server.close();
      removeTreeSync(work);
    }
  });

  it.skipIf(!nixOk())('runs a sandboxed build, compiling the sandbox helper and the xattr addon from the C sources beside it', () => {
    const work = tempDir('realise-bundle-build-');
    try {
      const store = path.join(work, 'store');
      const file = path.join(work, 'e.nix');
      writeFileSync(file, 'derivation { name = "bundled"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo $$ > $out" ]; }');
      const drv = nix('nix-instantiate', ['--store', store, file]);
      const cache = path.join(work, 'cache');
      const env = { ...process.env, XDG_CACHE_HOME: cache };
      const args = ['build', '--store', store, '--option', 'sandbox', 'true', '--option', 'sandbox-paths', '/bin/sh=/bin/busybox', drv];
      const r = spawnSync(process.execPath, [path.join(dir, 'main.cjs'), ...args], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      const out = r.stdout.trim();
      // The builder ran as PID 1 of its own PID namespace (sandboxed), and by the helper built from the
      // bundle's copy of its source (without it, the sandbox falls back to bwrap).
      expect(readFileSync(path.join(store, out), 'utf8')).toBe('1\n');
      const built = readdirSync(path.join(cache, 'realise'));
      expect(built.some((f) => /^sandbox-helper-[0-9a-f]{16}$/.test(f))).toBe(true);
      expect(built.some((f) => /^xattr-[0-9a-f]{16}\.node$/.test(f))).toBe(true);
    } finally {
      removeTreeSync(work);
    }
  });
});
