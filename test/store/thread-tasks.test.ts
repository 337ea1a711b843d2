import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ThreadTasks } from '../../src/store/thread-tasks.js';

const SOURCE = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', (m) => {
  if (m.die) process.exit(3);
  if (m.throw) setImmediate(() => { throw new Error('boom'); });
  else parentPort.postMessage({ id: m.id, twice: m.n * 2 });
});
`;

describe('ThreadTasks', () => {
  it('answers each task by id, concurrently', async () => {
    const t = new ThreadTasks<{ id: number; twice: number }>(SOURCE);
    const r = await Promise.all([1, 2, 3, 4].map((n) => t.run({ n })));
    expect(r.map((x) => x.twice)).toEqual([2, 4, 6, 8]);
  });

  it('runTogether: the tasks given in one turn go as one message, and their replies come back to each', async () => {
    // The thread replies to an array with an array, and says how many messages it got so far.
    const source = `
const { parentPort } = require('node:worker_threads');
let messages = 0;
parentPort.on('message', (m) => {
  messages++;
  const one = (r) => ({ id: r.id, twice: r.n * 2, messages });
  parentPort.postMessage(Array.isArray(m) ? m.map(one) : one(m));
});
`;
    const t = new ThreadTasks<{ id: number; twice: number; messages: number }>(source);
    const first = await Promise.all([1, 2, 3].map((n) => t.runTogether({ n })));
    expect(first.map((x) => x.twice)).toEqual([2, 4, 6]);
    expect(first.map((x) => x.messages)).toEqual([1, 1, 1]);
    // A later turn is another message; a task alone goes as itself.
    const [alone] = await Promise.all([t.runTogether({ n: 5 })]);
    expect(alone).toMatchObject({ twice: 10, messages: 2 });
    await t.terminate();
  });

  it('a thread that dies rejects its pending tasks; the next task gets a new thread', async () => {
    const t = new ThreadTasks<{ id: number; twice: number }>(SOURCE);
    await expect(t.run({ die: true })).rejects.toThrow(/exited with code 3/);
    expect((await t.run({ n: 21 })).twice).toBe(42);
  });

  it('an uncaught error in the thread is reported to onError and rejects', async () => {
    const seen: unknown[] = [];
    const t = new ThreadTasks<{ id: number; twice: number }>(SOURCE, (e) => seen.push(e));
    await expect(t.run({ throw: true })).rejects.toThrow(/boom/);
    expect(seen).toHaveLength(1);
    expect((await t.run({ n: 5 })).twice).toBe(10);
  });

  it('a thread that was started and answered keeps no process alive, nor one that was only warmed', () => {
    const module = fileURLToPath(new URL('../../src/store/thread-tasks.ts', import.meta.url));
    for (const use of ['t.warm();', 'await t.run({ n: 1 }); t.warm();']) {
      const script = `import { ThreadTasks } from ${JSON.stringify(module)};
        const t = new ThreadTasks(${JSON.stringify(SOURCE)}); ${use} console.log('end of script');`;
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
      expect(r.signal, `${use}: the process did not exit by itself`).toBeNull();
      expect(r.stdout).toContain('end of script');
      expect(r.status, r.stderr).toBe(0);
    }
  });
});
