/**
 * Temporary GC roots: a real `nix-store --gc` on the same store keeps what we are adding while our store is
 * open, and collects it after we close; while a collector runs (gc.lock held), roots go over its socket.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import * as path from 'node:path';
import { LocalStore } from '../../src/store/local-store.js';
import { nix, nixOk, tempDirs } from '../helpers/nix.js';

const tmp = tempDirs('realise-troots-');

/**
 * A stand-in collector on the store `root`: a server on `<state>/gc-socket/socket` that records each root it is
 * told (a line) and calls `onLine(socket)` for it, and another process holding `gc.lock` exclusively (as a running
 * collector does). Resolves once the lock is held; `stop()` ends both.
 */
async function fakeCollector(root: string, onLine: (c: Socket) => void) {
  const state = path.join(root, 'nix/var/nix');
  mkdirSync(path.join(state, 'gc-socket'), { recursive: true });
  const got: string[] = [];
  const server = createServer((c) => {
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        got.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        onLine(c);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path.join(state, 'gc-socket/socket'), r));
  const holder = spawn('flock', ['-x', path.join(state, 'gc.lock'), 'sleep', '30'], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const r = spawn('flock', ['-n', '-s', path.join(state, 'gc.lock'), 'true']);
    const code = await new Promise((res) => r.on('exit', res));
    if (code !== 0) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  return {
    state,
    got,
    stop: () => {
      holder.kill('SIGKILL');
      server.close();
    },
  };
}

describe('temporary GC roots', () => {
  it('writes <state>/temproots/<pid> with NUL-terminated paths, shared by store objects, removed on the last close', async () => {
    const root = tmp();
    const a = await LocalStore.open({ root });
    const b = await LocalStore.open({ root });
    const p = await a.addTextToStore('one.txt', 'one');
    await b.addTempRoot('/nix/store/00000000000000000000000000000000-other');
    const file = path.join(root, 'nix/var/nix/temproots', String(process.pid));
    // The first addition also roots the store object's temporary directory (`<hash>-realise-tmp`).
    expect(readFileSync(file, 'utf8')).toMatch(new RegExp(`^${p}\0/nix/store/[0-9a-z]{32}-realise-tmp\0/nix/store/00000000000000000000000000000000-other\0$`));
    // Many roots at once, in one write while no collector runs; each once.
    const many = ['1', '2', '3'].map((c) => `/nix/store/${c.repeat(32)}-many`);
    await a.addTempRoots([...many, p, many[0]!]);
    expect(readFileSync(file, 'utf8')).toMatch(new RegExp(`-other\0${many.join('\0')}\0$`));
    await a.close();
    expect(existsSync(file)).toBe(true);
    await b.close();
    expect(existsSync(file)).toBe(false);
  });

  it("roots asked for together (by two store objects) are each in the file when its asker's promise resolves, and written once", async () => {
    const root = tmp();
    const a = await LocalStore.open({ root });
    const b = await LocalStore.open({ root });
    await a.addTempRoot('/nix/store/00000000000000000000000000000000-first');
    const file = path.join(root, 'nix/var/nix/temproots', String(process.pid));
    const before = readFileSync(file, 'utf8');
    const x = ['x', 'y'].map((c) => `/nix/store/${c.repeat(32)}-a`);
    const y = ['y', 'z'].map((c) => `/nix/store/${c.repeat(32)}-a`);
    const seen: string[] = [];
    const inFile = (paths: string[]) => () => seen.push(paths.every((p) => readFileSync(file, 'utf8').includes(`${p}\0`)) ? 'in' : 'missing');
    await Promise.all([a.addTempRoots(x).then(inFile(x)), b.addTempRoots(y).then(inFile(y)), a.addTempRoot(x[0]!).then(inFile([x[0]!]))]);
    expect(seen).toEqual(['in', 'in', 'in']);
    expect(readFileSync(file, 'utf8')).toBe(`${before}${x[0]}\0${x[1]}\0${y[1]}\0`);
    await a.close();
    await b.close();
  });

  it('while a collector holds gc.lock, a root is sent to <state>/gc-socket/socket as "path\\n" and acknowledged with "1"', async () => {
    const root = tmp();
    const store = await LocalStore.open({ root });
    const { state, got, stop } = await fakeCollector(root, (c) => c.write('1'));
    try {
      const p = await store.addTextToStore('during-gc.txt', 'during gc');
      // The path, and the store object's temporary directory made for adding it.
      expect(got).toHaveLength(2);
      expect(got[0]).toBe(p);
      expect(got[1]).toMatch(/^\/nix\/store\/[0-9a-z]{32}-realise-tmp$/);
      expect(readFileSync(path.join(state, 'temproots', String(process.pid)), 'utf8')).toBe(`${p}\0${got[1]}\0`);
      // Many at once: each new one is told to the collector, then all are recorded (a root already held is not).
      const [x, y] = ['/nix/store/00000000000000000000000000000000-x', '/nix/store/11111111111111111111111111111111-y'];
      await store.addTempRoots([x, p, y, x]);
      expect(got.slice(2)).toEqual([x, y]);
      expect(readFileSync(path.join(state, 'temproots', String(process.pid)), 'utf8')).toBe(`${p}\0${got[1]}\0${x}\0${y}\0`);
    } finally {
      stop();
      await store.close();
    }
  });

  it("two batches telling a slow collector at once: each resolves only after its own root's '1'", async () => {
    const root = tmp();
    const store = await LocalStore.open({ root });
    let sock: Socket | undefined;
    let received = () => {};
    const { state, got, stop } = await fakeCollector(root, (c) => {
      sock = c;
      received();
    });
    const nextLine = () => new Promise<void>((r) => (received = r));
    try {
      const [x, y] = ['/nix/store/00000000000000000000000000000000-x', '/nix/store/11111111111111111111111111111111-y'];
      const done: string[] = [];
      let line = nextLine();
      const first = store.addTempRoot(x).then(() => done.push(x));
      await line; // the collector has x and answers nothing yet
      line = nextLine();
      const second = store.addTempRoot(y).then(() => done.push(y));
      await new Promise((r) => setTimeout(r, 50));
      sock!.write('1'); // acknowledges x only
      await first;
      await new Promise((r) => setTimeout(r, 100));
      expect(done).toEqual([x]);
      await line;
      expect(got).toEqual([x, y]);
      sock!.write('1');
      await second;
      expect(done).toEqual([x, y]);
      expect(readFileSync(path.join(state, 'temproots', String(process.pid)), 'utf8')).toBe(`${x}\0${y}\0`);
    } finally {
      stop();
      await store.close();
    }
  });

  it.skipIf(!nixOk())('a real nix-store --gc keeps our unrooted paths while the store is open and collects them after', async () => {
    const root = tmp();
    const store = await LocalStore.open({ root });
    const p = await store.addTextToStore('gc-me.txt', 'collect me later');
    expect(nix('nix-store', ['--store', root, '--gc', '--print-dead']).split('\n')).not.toContain(p);
    nix('nix-store', ['--store', root, '--gc']);
    expect(await store.isValidPath(p)).toBe(true);
    expect(existsSync(store.toRealPath(p))).toBe(true);
    await store.close();
    expect(nix('nix-store', ['--store', root, '--gc', '--print-dead']).split('\n')).toContain(p);
  });
});
