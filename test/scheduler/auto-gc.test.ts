/**
 * Auto-GC from the engine (Nix's min-free / max-free): with little free space (Nix's
 * _NIX_TEST_FREE_SPACE_FILE), a call starts a background collection that deletes garbage while the
 * builds run, and never what the builds use (their temporary roots); the results are intact.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, runNix, tempDir } from '../helpers/nix.js';
import { busyboxOk, SANDBOX_PATHS } from './helpers.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const nonce = `${process.pid}-${Date.now()}`;

describe.skipIf(!nixOk() || !busyboxOk())('auto-GC while builds run', () => {
  it('below min-free, a collection deletes the garbage during the call and keeps everything the builds use', async () => {
    const dir = tempDir('realise-autogc-');
    dirs.push(dir);
    const root = path.join(dir, 'root');
    const file = path.join(dir, 'e.nix');
    const mk = (name: string, body: string) =>
      `derivation { name = "${name}"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "${nonce}"; args = ["-c" ''${body}'']; }`;
    writeFileSync(
      file,
      `let a = ${mk('a', '/bin/busybox sleep 0.3; echo a > $out')}; b = ${mk('b', '/bin/busybox sleep 0.3; /bin/busybox cat ${a} > $out; echo b >> $out')}; in ${mk('c', '/bin/busybox cat ${b} > $out; echo c >> $out')}`,
    );
    // The .drv is rooted (nix-instantiate --add-root prints the link); the garbage below is not.
    const drv = readlinkSync(nix('nix-instantiate', ['--store', root, file, '--add-root', path.join(dir, 'drv')]));
    const store = await LocalStore.open({ root });
    const garbage: string[] = [];
    for (let i = 0; i < 5; i++) garbage.push(await store.addTextToStore(`garbage${i}`, `garbage ${i} ${nonce}`));
    await store.close(); // its temporary roots go: the texts are garbage now
    const free = path.join(dir, 'free');
    writeFileSync(free, '1000');
    process.env._NIX_TEST_FREE_SPACE_FILE = free;
    const s = await LocalStore.open({ root });
    const messages: string[] = [];
    try {
      const engine = new BuildEngine({ store: s, sandbox: true, sandboxPaths: SANDBOX_PATHS, minFree: 5000, maxFree: 1_000_000, minFreeCheckInterval: 1 });
      engine.on('warning', (e) => messages.push(e.message));
      const [r] = await engine.buildPaths([drv]);
      expect(r!.result.status, r!.result.errorMsg).toBe('built');
      await s.autoGC({ minFree: 0, maxFree: 0, checkInterval: 0 }); // wait for a collection still running
      expect(messages).toContain(`running auto-GC to free ${1_000_000 - 1000} bytes`);
      for (const g of garbage) {
        expect(messages).toContain(`deleting '${g}'`);
        expect(await s.isValidPath(g)).toBe(false);
      }
      const out = r!.result.builtOutputs.out!;
      expect(readFileSync(s.toRealPath(out), 'utf8')).toBe('a\nb\nc\n');
      expect(existsSync(s.toRealPath(drv))).toBe(true);
      await engine.close();
    } finally {
      delete process.env._NIX_TEST_FREE_SPACE_FILE;
      await s.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
  });
  it('a target that is not rooted (its .drv and inputs are garbage) is kept by the collection the call starts, as in Nix', async () => {
    const dir = tempDir('realise-autogc-');
    dirs.push(dir);
    const file = path.join(dir, 'e.nix');
    const mk = (name: string, body: string) =>
      `derivation { name = "${name}"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "${nonce}"; args = ["-c" ''${body}'']; }`;
    writeFileSync(file, `let a = ${mk('in', 'echo a > $out')}; in ${mk('top', '/bin/busybox cat ${a} > $out')}`);
    const free = path.join(dir, 'free');
    writeFileSync(free, '1000');
    const gc = ['--option', 'min-free', '5000', '--option', 'max-free', '100000000'];
    // Nix: everything but the target's closure is deleted, the target built.
    const N = path.join(dir, 'N');
    const drv = nix('nix-instantiate', ['--store', N, file]);
    const theirs = runNix('nix-store', ['--store', N, '--realise', drv, ...gc, '--option', 'sandbox-paths', SANDBOX_PATHS.join(' ')], {
      env: { _NIX_TEST_FREE_SPACE_FILE: free },
    });
    expect(theirs.status, theirs.stderr).toBe(0);
    expect(theirs.stderr).toContain('running auto-GC to free');
    const O = path.join(dir, 'O');
    expect(nix('nix-instantiate', ['--store', O, file])).toBe(drv);
    process.env._NIX_TEST_FREE_SPACE_FILE = free;
    const s = await LocalStore.open({ root: O });
    try {
      const engine = new BuildEngine({ store: s, sandbox: true, sandboxPaths: SANDBOX_PATHS, minFree: 5000, maxFree: 100_000_000 });
      const [r] = await engine.buildPaths([drv]);
      expect(r!.result.status, r!.result.errorMsg).toBe('built');
      await s.autoGC({ minFree: 0, maxFree: 0, checkInterval: 0 }); // wait for a collection still running
      await engine.close();
      expect(r!.result.builtOutputs.out).toBe(theirs.stdout.trim());
    } finally {
      delete process.env._NIX_TEST_FREE_SPACE_FILE;
      await s.close();
    }
    expect(runNix('nix-store', ['--store', O, '--verify', '--check-contents']).status).toBe(0);
  });
});
