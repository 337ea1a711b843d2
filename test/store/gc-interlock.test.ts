/**
 * The GC lock and temporary roots between our collector and real Nix 2.8, both ways, on one store:
 * while a collector holds gc.lock, new temporary roots go over its gc-socket (ours serves Nix's
 * clients; Nix's serves ours), a running build's temporary roots are never collected, and a collection
 * racing builds loses nothing. `_NIX_TEST_GC_SYNC` (a FIFO) holds either collector after it found its
 * roots, as Nix's own tests/gc-concurrent.sh does.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { LocalStore } from '../../src/store/local-store.js';
import { lockPlainFile } from '../../src/store/locks.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { nix, nixOk, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { busyboxOk, nixSandboxArgs, SANDBOX_PATHS } from '../scheduler/helpers.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const nonce = `${process.pid}-${Date.now()}`;

function fresh(prefix: string): { dir: string; root: string; state: string; fifo: string } {
  const dir = tempDir(prefix);
  dirs.push(dir);
  const fifo = path.join(dir, 'sync');
  spawnSync('mkfifo', [fifo]);
  return { dir, root: path.join(dir, 'root'), state: path.join(dir, 'root/nix/var/nix'), fifo };
}

async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Whether someone holds `<state>/gc.lock` exclusively. */
function gcLockHeld(state: string): boolean {
  return spawnSync('flock', ['-n', '-s', path.join(state, 'gc.lock'), 'true']).status !== 0;
}

const busyboxExpr = (body: string, name: string) => `derivation { name = "${name}"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "${nonce}";
  args = ["-c" ''${body}''] ; }`;

describe.skipIf(!nixOk())('the GC lock and gc-socket between our collector and Nix', () => {
  it('our collector serves its socket: a nix-store --add during our collection is acknowledged and survives it', async () => {
    const { dir, root, state, fifo } = fresh('realise-gcsock-');
    const store = await LocalStore.open({ root });
    const dead = await store.addTextToStore('dead', `dead ${nonce}`);
    await store.close();
    const file = path.join(dir, 'added.txt');
    writeFileSync(file, `added by nix ${nonce}`);
    const s = await LocalStore.open({ root });
    const sent: string[] = [];
    process.env._NIX_TEST_GC_SYNC = fifo;
    try {
      const gc = s.collectGarbage({
        onEvent: (e) => {
          if (e.type === 'temp-root') sent.push(e.path);
        },
      });
      await until(() => existsSync(path.join(state, 'gc-socket/socket')) && gcLockHeld(state), 'our collector to hold gc.lock');
      const add = await runNixAsync('nix-store', ['--store', root, '--add', file]);
      expect(add.status, add.stderr).toBe(0);
      const added = add.stdout.trim();
      expect(sent).toContain(added);
      await writeFile(fifo, 'go');
      const r = await gc;
      expect(r.paths).toContain(dead);
      expect(r.paths).not.toContain(added);
      expect(await s.isValidPath(added)).toBe(true);
      expect(existsSync(s.toRealPath(added))).toBe(true);
    } finally {
      delete process.env._NIX_TEST_GC_SYNC;
      await s.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
  });

  it("our socket's name outlives our collection, as Nix's does: a Nix client that finds the lock held waits for a collector instead of going on unheard", async () => {
    const { dir, root, state } = fresh('realise-gcname-');
    const s = await LocalStore.open({ root });
    try {
      await s.collectGarbage();
      // Nix 2.8's client (addTempRoot) retries the lock when the connection is refused, but takes a missing
      // socket as "sent", and never reaches a collector again: its roots made during a collection go unheard.
      expect(existsSync(path.join(state, 'gc-socket/socket'))).toBe(true);
      const file = path.join(dir, 'added.txt');
      writeFileSync(file, `added while the lock is held ${nonce}`);
      // The GC lock held by a collector that is not listening yet: nix-store --add must wait.
      const release = await lockPlainFile(path.join(state, 'gc.lock'), 'exclusive');
      let exited = false;
      const add = runNixAsync('nix-store', ['--store', root, '--add', file]).finally(() => (exited = true));
      try {
        await new Promise((r) => setTimeout(r, 1000));
        expect(exited).toBe(false);
      } finally {
        release();
      }
      const r = await add;
      expect(r.status, r.stderr).toBe(0);
      expect(await s.isValidPath(r.stdout.trim())).toBe(true);
    } finally {
      await s.close();
    }
  });

  it("Nix's collector gets our temporary roots over its socket: a path we add during its collection survives it", async () => {
    const { root, state, fifo } = fresh('realise-nixsock-');
    const store = await LocalStore.open({ root });
    try {
      const old = await store.addTextToStore('old', `old ${nonce}`);
      const gc = runNixAsync('nix-store', ['--store', root, '--gc'], { env: { _NIX_TEST_GC_SYNC: fifo } });
      await until(() => existsSync(path.join(state, 'gc-socket/socket')) && gcLockHeld(state), 'nix-store --gc to hold gc.lock');
      const added = await store.addTextToStore('during', `added during Nix's collection ${nonce}`);
      await writeFile(fifo, 'go');
      const r = await gc;
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).not.toContain(`deleting '${added}'`);
      expect(r.stderr).not.toContain(`deleting '${old}'`);
      expect(await store.isValidPath(added)).toBe(true);
      expect(existsSync(store.toRealPath(added))).toBe(true);
      expect(readFileSync(store.toRealPath(added), 'utf8')).toContain('added during');
    } finally {
      await store.close();
    }
    // Once we are gone, they are garbage for Nix.
    expect(nix('nix-store', ['--store', root, '--gc', '--print-dead'])).toContain('-during');
  });

  it.skipIf(!busyboxOk())('our collector keeps what a running real-Nix build holds; the build succeeds', async () => {
    const { dir, root, state } = fresh('realise-gc-nixbuild-');
    const flag = path.join(dir, 'go');
    const file = path.join(dir, 'e.nix');
    writeFileSync(file, busyboxExpr(`while [ ! -e ${flag} ]; do /bin/busybox sleep 0.05; done; echo built > $out`, 'slow'));
    const drv = nix('nix-instantiate', ['--store', root, file]);
    const build = runNixAsync('nix-store', [
      '--store',
      root,
      '--realise',
      drv,
      ...nixSandboxArgs(),
      '--option',
      'sandbox-paths',
      `${SANDBOX_PATHS.join(' ')} ${dir}`,
    ]);
    // Nix has made the .drv a temporary root once its roots file names it.
    await until(
      () =>
        readdirSync(path.join(state, 'temproots')).some((f) => {
          try {
            return readFileSync(path.join(state, 'temproots', f), 'latin1').includes(drv);
          } catch {
            return false;
          }
        }),
      'the Nix build to hold its temporary roots',
    );
    const s = await LocalStore.open({ root });
    try {
      const r = await s.collectGarbage();
      expect(r.paths).not.toContain(drv);
      expect(await s.isValidPath(drv)).toBe(true);
    } finally {
      await s.close();
    }
    writeFileSync(flag, '');
    const done = await build;
    expect(done.status, done.stderr).toBe(0);
    expect(readFileSync(path.join(root, done.stdout.trim()), 'utf8')).toBe('built\n');
  });

  it.skipIf(!busyboxOk())("a realise build during Nix's collection registers its roots over the socket and loses nothing", async () => {
    const { dir, root, state, fifo } = fresh('realise-build-nixgc-');
    const file = path.join(dir, 'e.nix');
    writeFileSync(file, `let a = ${busyboxExpr('echo a > $out', 'a')}; in ${busyboxExpr('/bin/busybox cat ${a} > $out', 'b')}`);
    const drv = nix('nix-instantiate', ['--store', root, file]);
    const gc = runNixAsync('nix-store', ['--store', root, '--gc'], { env: { _NIX_TEST_GC_SYNC: fifo } });
    await until(() => existsSync(path.join(state, 'gc-socket/socket')) && gcLockHeld(state), 'nix-store --gc to hold gc.lock');
    const store = await LocalStore.open({ root });
    const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS });
    try {
      const build = engine.buildPaths([drv]);
      // Let the build register its roots with the waiting collector, then let the collector go on.
      await new Promise((r) => setTimeout(r, 300));
      await writeFile(fifo, 'go');
      const [res] = await build;
      expect(res!.result.status, res!.result.errorMsg).toBe('built');
      const r = await gc;
      expect(r.status, r.stderr).toBe(0);
      const out = res!.result.builtOutputs.out!;
      expect(await store.isValidPath(out)).toBe(true);
      expect(readFileSync(store.toRealPath(out), 'utf8')).toBe('a\n');
      expect(await store.isValidPath(drv)).toBe(true);
      await engine.close();
    } finally {
      await store.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
  });
});

describe.skipIf(!nixOk() || !busyboxOk())('a collection racing builds', () => {
  it("our collector and Nix's, running over and over while our engine builds a DAG, and ours while Nix builds one, lose nothing", async () => {
    const { dir, root } = fresh('realise-gc-race-');
    // `n` layers of `n` derivations, each layer reading every output of the one below; returns the top
    // layer's .drv files, rooted (as nix-instantiate --add-root does): the outputs are held only by the
    // temporary roots of whoever builds them.
    const dag = (prefix: string, n: number): string[] => {
      const file = path.join(dir, `${prefix}.nix`);
      const layers: string[][] = [];
      let expr = 'let\n';
      for (let l = 0; l < n; l++) {
        layers.push([]);
        for (let i = 0; i < n; i++) {
          const name = `${prefix}l${l}n${i}`;
          const deps = l === 0 ? '' : layers[l - 1]!.map((d) => `/bin/busybox cat \${${d}} >> $out;`).join(' ');
          expr += `  ${name} = ${busyboxExpr(`echo ${name} > $out; ${deps}`, name)};\n`;
          layers[l]!.push(name);
        }
      }
      writeFileSync(file, expr + `in { inherit ${layers.flat().join(' ')}; }`);
      return layers[n - 1]!.map((a) => nix('nix-instantiate', ['--store', root, file, '-A', a, '--add-root', path.join(dir, `drv-${a}`)]));
    };
    const tops = dag('', 4);
    const nixTops = dag('x', 3);
    for (const t of [...tops, ...nixTops]) expect(t.startsWith(dir)).toBe(true);
    const store = await LocalStore.open({ root });
    const collector = await LocalStore.open({ root });
    const engine = new BuildEngine({ store, sandbox: true, sandboxPaths: SANDBOX_PATHS, maxJobs: 2 });
    // One collection first, as on any store that has seen one: Nix 2.8's client takes a missing gc-socket
    // (a fresh store's first collector between taking the lock and binding it) as "root sent", and from
    // then on never reaches a collector again; Nix's own collector would then lose that build's roots.
    await collector.collectGarbage({ runtimeRoots: false });
    let building = true;
    // What each collection found and deleted, said when something is missing.
    const gcLog: string[] = [];
    const t0 = Date.now();
    let ours = 0;
    let theirs = 0;
    // A short pause between our collections: back to back, the GC lock would almost never be free, and a
    // client whose root reaches a collector just as it ends retries with the lock (as with Nix's collector).
    const ourLoop = (async () => {
      while (building) {
        const t = Date.now();
        await collector.collectGarbage({
          runtimeRoots: false,
          onEvent: (e) => {
            if (e.type === 'deleted') gcLog.push(`ours#${ours} t=${Date.now() - t0} (started ${t - t0}): ${e.path}`);
            if (e.type === 'roots-found') gcLog.push(`ours#${ours} t=${Date.now() - t0} (started ${t - t0}): ${JSON.stringify(e)}`);
          },
        });
        ours++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    // Nix's collector runs only while our engine builds: Nix 2.8's client against Nix 2.8's collector loses roots
    // on its own (the collector unlinks its socket and binds it again; a client connecting in between gets
    // ENOENT, takes the root as sent, and from then on never reaches a collector), so that pair is not tested.
    let nixCollects = true;
    const nixLoop = (async () => {
      while (building && nixCollects) {
        const t = Date.now();
        const r = await runNixAsync('nix-store', ['--store', root, '--gc']);
        for (const m of r.stderr.matchAll(/deleting '(.*)'/g)) gcLog.push(`nix#${theirs} (started ${t - t0}, ended ${Date.now() - t0}): ${m[1]}`);
        expect(r.status, r.stderr).toBe(0);
        theirs++;
      }
    })();
    try {
      // First our engine builds, with both collectors running over and over.
      const res = await engine.buildPaths(tops.map((t) => readlinkSync(t)));
      nixCollects = false;
      await nixLoop;
      // Then Nix builds, with our collector running over and over.
      const oursBefore = ours;
      const nixRes = await runNixAsync('nix-store', [
        '--store',
        root,
        '--realise',
        ...nixTops.map((t) => readlinkSync(t)),
        '--add-root',
        path.join(dir, 'nix-out'),
        '-j',
        '2',
        ...nixSandboxArgs(),
        '--option',
        'sandbox-paths',
        SANDBOX_PATHS.join(' '),
      ]);
      gcLog.push(`nix build ended ${Date.now() - t0}`);
      building = false;
      await Promise.all([ourLoop, nixLoop]);
      expect(res.map((r) => r.result.status)).toEqual(['built', 'built', 'built', 'built']);
      expect(nixRes.status, nixRes.stderr).toBe(0);
      const nixBuilt = [...nixRes.stderr.matchAll(/^building '(.*)'\.\.\.$/gm)].map((m) => m[1]);
      expect(new Set(nixBuilt).size, nixRes.stderr).toBe(9); // each of its derivations built once: no input went missing
      expect(nixBuilt).toHaveLength(9);
      // Nix prints the roots it made (nix-out, nix-out-1, …), which keep its outputs once it has exited.
      const nixOuts = nixRes.stdout
        .trim()
        .split('\n')
        .map((r) => readlinkSync(r));
      expect(nixOuts).toHaveLength(3);
      for (const out of nixOuts) {
        expect(await store.isValidPath(out), `${out} deleted by ${gcLog.filter((d) => d.includes(out)).join('; ')}; collections:\n${gcLog.join('\n')}`).toBe(
          true,
        );
        expect(
          readFileSync(store.toRealPath(out), 'utf8')
            .split('\n')
            .filter((l) => l === 'xl0n0'),
        ).toHaveLength(3);
      }
      expect(ours).toBeGreaterThan(oursBefore);
      expect(theirs).toBeGreaterThan(0);
      for (const r of res) {
        const out = r.result.builtOutputs.out!;
        expect(await store.isValidPath(out)).toBe(true);
        // Every layer-0 output was read by each layer above: the content shows the whole DAG was there.
        expect(
          readFileSync(store.toRealPath(out), 'utf8')
            .split('\n')
            .filter((l) => l === 'l0n0'),
        ).toHaveLength(4 * 4);
      }
      await engine.close();
    } finally {
      building = false;
      await Promise.allSettled([ourLoop, nixLoop]);
      await collector.close();
      await store.close();
    }
    expect(runNix('nix-store', ['--store', root, '--verify', '--check-contents']).status).toBe(0);
  }, 120_000);
});
