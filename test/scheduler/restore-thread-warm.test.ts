/**
 * The restore thread started ahead of the restores it will serve: a build after queryMissing found substitutes
 * it will restore in one batch (one whose NAR is larger than the main thread restores, or several) starts it, so
 * that the first of them (and every substitution waiting for that path) does not wait for the thread's
 * start; one small substitute does not (a command that substitutes one small path starts no thread).
 * Its own file: the restore thread is the process's (vitest runs each file in a process).
 */
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { Hash } from '../../src/store/hash.js';
import { LocalStore } from '../../src/store/local-store.js';
import { narOfRegularFile, restoreThreadOnline } from '../../src/store/nar.js';
import type { StorePath } from '../../src/store/store-path.js';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { BinaryCacheWriter } from '../../src/substituter/binary-cache-writer.js';
import { tempDir } from '../helpers/nix.js';
import { PUBLIC_KEY, SECRET_KEY } from '../substituter/fixtures.js';

const at = (name: string) => `/nix/store/${Hash.of('sha256', name).base32.slice(0, 32)}-${name}` as StorePath;
const small = at('small');
const large = at('large');
const huge = at('huge');

const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of closers) await c();
});

/** A file:// cache with a path of each size. */
async function cache(): Promise<string> {
  const dir = tempDir('realise-warm-');
  const w = await BinaryCacheWriter.open(pathToFileURL(dir).href, { storeDir: '/nix/store' });
  for (const [p, bytes] of [
    [small, 100],
    [large, 200 * 1024],
    [huge, 17 * 1024 * 1024],
  ] as const) {
    const nar = narOfRegularFile(Buffer.alloc(bytes, 'x'));
    await w.addPath(
      { path: p, narHash: Hash.of('sha256', nar), narSize: nar.length, references: [] },
      (async function* () {
        yield nar;
      })(),
      { compression: 'none', secretKey: SECRET_KEY },
    );
  }
  return dir;
}

async function engineFor(dir: string): Promise<BuildEngine> {
  const store = await LocalStore.open({ root: tempDir('realise-warm-store-') });
  const engine = new BuildEngine({ store, substituters: [new BinaryCacheSubstituter(pathToFileURL(dir).href, { trustedPublicKeys: [PUBLIC_KEY] })] });
  closers.push(
    () => engine.close(),
    () => store.close(),
  );
  return engine;
}

/** Whether the restore thread comes online within `ms`. */
async function online(ms: number): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (restoreThreadOnline()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return restoreThreadOnline();
}

describe('the restore thread, started ahead of the restores queryMissing found', () => {
  it('is not started for one small substitute, nor for one too large to be restored in one batch', async () => {
    const engine = await engineFor(await cache());
    expect((await engine.queryMissing([small])).willSubstitute).toEqual([small]);
    expect((await engine.queryMissing([huge])).willSubstitute).toEqual([huge]);
    expect(await online(500)).toBe(false);
  });

  it('is started by the build that follows queryMissing, before anything is restored; not by queryMissing alone', async () => {
    const engine = await engineFor(await cache());
    expect((await engine.queryMissing([large])).willSubstitute).toEqual([large]);
    // A caller that only asks (a dry run, path-info) restores nothing: no thread for it.
    expect(await online(500)).toBe(false);
    // A build stopped before its first goal runs restores nothing either, but the hint has gone out.
    const results = await engine.buildPaths([large], { signal: AbortSignal.abort() }).catch(() => []);
    expect(results.every((r) => r.result.status !== 'substituted')).toBe(true);
    expect(await online(30_000)).toBe(true);
    expect(await engine.store().then((s) => s.isValidPath(large))).toBe(false);
  });
});
