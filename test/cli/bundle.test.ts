/**
 * The bundled CLI (scripts/bundle-cli.mjs, what `npm run build` and `npm ci` make for bin/realise.js):
 * it runs, and its start-up loads no npm package a command may not need. Bundled here into a fresh
 * directory inside the checkout (so its external packages resolve from node_modules), not into dist/.
 * A sandboxed build from it compiles the sandbox helper from the C source copied beside the chunks.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix, nixOk, removeTreeSync, tempDir } from '../helpers/nix.js';

const ROOT = path.resolve(__dirname, '../..');

interface Meta {
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

  /** What loading a chunk loads: it and the chunks it imports statically, their npm packages and source modules. */
  const staticClosure = (chunk: string): { packages: Set<string>; sources: Set<string> } => {
    const seen = new Set<string>();
    const packages = new Set<string>();
    const sources = new Set<string>();
    const visit = (out: string): void => {
      if (seen.has(out)) return;
      seen.add(out);
      for (const [src, { bytesInOutput }] of Object.entries(meta.outputs[out]!.inputs)) if (bytesInOutput > 0) sources.add(src);
      for (const i of meta.outputs[out]!.imports) {
        if (i.kind !== 'import-statement') continue;
        if (i.path in meta.outputs) visit(i.path);
        else if (!i.path.startsWith('node:')) packages.add(i.path);
      }
    };
    visit(chunk);
    return { packages, sources };
  };
  const staticPackages = (chunk: string): Set<string> => staticClosure(chunk).packages;
  const staticSources = (chunk: string): Set<string> => staticClosure(chunk).sources;
  const chunk = (re: RegExp): string => Object.keys(meta.outputs).find((k) => re.test(path.basename(k)) && k.endsWith('.js'))!;

  it('answers --version and --help from its entry alone, which loads no npm package', () => {
    expect([...staticPackages(chunk(/^main\.js$/))]).toEqual([]);
    const version = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
    const r = spawnSync(process.execPath, [path.join(dir, 'main.js'), '--version'], { encoding: 'utf8' });
    expect(r.stdout).toBe(`realise (realise) ${version}, mirroring nix-store (Nix) 2.8.0\n`);
    expect(r.status).toBe(0);
    const h = spawnSync(process.execPath, [path.join(dir, 'main.js'), '--help'], { encoding: 'utf8' });
    expect(h.stdout).toMatch(/^usage: realise COMMAND/);
  });

  it('loads the HTTP client, execa, the xz/zstd codecs and fast-glob only when a command uses them', () => {
    const run = chunk(/^run-.*\.js$/);
    expect(run).toBeDefined();
    const loaded = staticPackages(run);
    for (const lazy of ['undici', 'execa', 'node-liblzma', 'zstd-napi', 'fast-glob']) expect(loaded.has(lazy), lazy).toBe(false);
    // What a store command does need is there.
    expect(loaded.has('better-sqlite3')).toBe(true);
  });

  it('starts a no-op build without the engine: the build command loads no scheduler, substituter or observer code', () => {
    const build = chunk(/^build-.*\.js$/);
    expect(build).toBeDefined();
    expect([...staticPackages(build)].sort()).toEqual(['better-sqlite3']);
    const sources = staticSources(build);
    expect(sources.has('src/scheduler/already-valid.ts')).toBe(true);
    for (const heavy of ['src/scheduler/build-engine.ts', 'src/substituter/binary-cache.ts', 'src/observe/nix-json.ts', 'src/remote/daemon-store.ts']) {
      expect(sources.has(heavy), heavy).toBe(false);
    }
  });

  it('runs a store command', () => {
    const store = tempDir('realise-bundle-store-');
    try {
      const r = spawnSync(process.execPath, [path.join(dir, 'main.js'), 'gc', '--print-dead', '--store', store], { encoding: 'utf8' });
      expect(r.stderr).toBe('finding garbage collector roots...\ndetermining live/dead paths...\n');
      expect(r.status).toBe(0);
    } finally {
      rmSync(store, { recursive: true, force: true });
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
      const r = spawnSync(process.execPath, [path.join(dir, 'main.js'), ...args], { encoding: 'utf8', env });
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
