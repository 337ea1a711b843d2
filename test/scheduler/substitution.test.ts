/**
 * The engine with a real binary cache written by real Nix 2.8 (`nix copy --to file://…?secret-key=…`):
 * outputs are substituted instead of built, references first; a corrupt cache fails as Nix does
 * (transient failure naming the substituter, unless fallback builds instead); queryMissing reports it.
 */
import { promises as fsp, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { BuildFailedError } from '../../src/scheduler/errors.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { isStoreTempDirName, LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';

const EXPR = `
let dep = derivation { name = "sub-dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo dep > $out"]; };
in derivation { name = "sub-top"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo \${dep} > $out"]; }`;
const SANDBOX = ['/bin/sh=/bin/busybox'];

describe.skipIf(!nixOk())('substitution from a cache real Nix wrote', () => {
  let dir: string;
  let drv: string;
  let top: string;
  let dep: string;
  let cache: string;
  let publicKey: string;
  let file: string;

  beforeAll(() => {
    dir = tempDir();
    file = path.join(dir, 'sub.nix');
    writeFileSync(file, EXPR);
    const R1 = path.join(dir, 'R1');
    drv = nix('nix-instantiate', ['--store', R1, file]);
    const r = runNix('nix-store', ['--store', R1, '--realise', drv, '--option', 'sandbox', 'true', '--option', 'sandbox-paths', SANDBOX.join(' ')]);
    expect(r.status, r.stderr).toBe(0);
    top = r.stdout.trim();
    dep = nix('nix-store', ['--store', R1, '-q', '--references', top]);
    nix('nix-store', ['--store', R1, '--generate-binary-cache-key', 'test-cache-1', path.join(dir, 'sk'), path.join(dir, 'pk')]);
    publicKey = nix('cat', [path.join(dir, 'pk')]);
    cache = path.join(dir, 'cache');
    nix('nix', ['copy', '--store', R1, '--to', `file://${cache}?secret-key=${path.join(dir, 'sk')}`, top]);
  });

  const fresh = async (name: string) => {
    const root = path.join(dir, name);
    nix('nix-instantiate', ['--store', root, file]);
    return LocalStore.open({ root });
  };

  it('substitutes the outputs (references first) instead of building, and reports it in queryMissing', async () => {
    const store = await fresh('R2');
    const sub = new BinaryCacheSubstituter(`file://${cache}`, { trustedPublicKeys: [publicKey] });
    const engine = new BuildEngine({ store, substituters: [sub], sandboxPaths: SANDBOX });
    const missing = await engine.queryMissing([drv]);
    expect(missing.willBuild).toEqual([]);
    expect(missing.willSubstitute).toEqual([dep, top].sort());
    expect(missing.narSize).toBeGreaterThan(0);
    const order: string[] = [];
    let built = 0;
    engine.on('substitution-started', (e) => order.push(e.path));
    engine.on('build-started', () => built++);
    const [r] = await engine.buildPaths([drv]);
    expect(r!.result.status).toBe('substituted');
    expect(r!.result.builtOutputs.out).toBe(top);
    expect(built).toBe(0);
    expect(order).toEqual([dep, top]);
    expect(engine.progress().substitutions.done).toBe(2);
    await store.close();
    const v = runNix('nix-store', ['--store', path.join(dir, 'R2'), '--verify', '--check-contents']);
    expect(v.status, v.stderr).toBe(0);
  });

  it("skips substitutes not signed by a trusted key, with Nix's warning, and builds instead (no fallback needed)", async () => {
    const store = await fresh('R3');
    const sub = new BinaryCacheSubstituter(`file://${cache}`, { trustedPublicKeys: [] });
    const engine = new BuildEngine({ store, substituters: [sub], sandboxPaths: SANDBOX });
    const warnings: string[] = [];
    const substituted: string[] = [];
    engine.on('warning', (e) => warnings.push(e.message));
    engine.on('substitution-started', (e) => substituted.push(e.path));
    const [r] = await engine.buildPaths([drv]);
    expect(r!.result.status).toBe('built');
    expect(r!.result.builtOutputs.out).toBe(top);
    expect(substituted).toEqual([]); // nothing was downloaded
    expect(warnings).toContain(`the substitute for '${top}' from 'file://${cache}' is not signed by any of the keys in 'trusted-public-keys'`);
    expect(await store.isValidPath(dep)).toBe(true);
    await store.close();
  });

  it("a substitute whose NAR file is gone is reported and built instead, as if it never existed (Nix's SubstituteGone)", async () => {
    const gone = path.join(dir, 'gone-cache');
    await fsp.cp(cache, gone, { recursive: true });
    for (const f of readdirSync(path.join(gone, 'nar'))) await fsp.rm(path.join(gone, 'nar', f));
    const store = await fresh('R5');
    const sub = new BinaryCacheSubstituter(`file://${gone}`, { trustedPublicKeys: [publicKey] });
    const engine = new BuildEngine({ store, substituters: [sub], sandboxPaths: SANDBOX });
    const errors: string[] = [];
    engine.on('warning', (e) => {
      if (e.level === 'error') errors.push(e.message);
    });
    const [r] = await engine.buildPaths([drv]);
    expect(r!.result.status).toBe('built');
    expect(r!.result.builtOutputs.out).toBe(top);
    expect(errors.length).toBeGreaterThan(0);
    expect(await store.isValidPath(dep)).toBe(true);
    await store.close();
  });

  it('a corrupt NAR in the cache registers nothing and leaves no stray files', async () => {
    const broken = path.join(dir, 'broken-cache');
    await fsp.cp(cache, broken, { recursive: true });
    const nars = path.join(broken, 'nar');
    for (const f of readdirSync(nars)) {
      const p = path.join(nars, f);
      const buf = await fsp.readFile(p);
      buf[Math.floor(buf.length / 2)]! ^= 0xff;
      await fsp.writeFile(p, buf);
    }
    const store = await fresh('R4');
    const sub = new BinaryCacheSubstituter(`file://${broken}`, { trustedPublicKeys: [publicKey] });
    const e = await new BuildEngine({ store, substituters: [sub], sandboxPaths: SANDBOX }).buildPaths([drv]).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(BuildFailedError);
    expect(await store.isValidPath(dep)).toBe(false);
    expect(await store.isValidPath(top)).toBe(false);
    const left = readdirSync(store.realStoreDir).filter((n) => !n.startsWith('.') && !isStoreTempDirName(n) && !n.endsWith('.drv') && !n.endsWith('.lock'));
    expect(left).toEqual([]);
    await store.close();
  });
});
