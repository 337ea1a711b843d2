/**
 * A build waiting for a busy remote machine takes a local build slot that is given back meanwhile, as Nix
 * 2.8's worker asks its hook again when a build ends (the hook declines once this machine is willing). Hand-
 * released fake sandbox builds; a machine that stays busy for the whole call.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { machine } from '../../src/remote/machines.js';
import { SlotGate } from '../../src/scheduler/slot-gate.js';
import type { RemoteBuilder } from '../../src/remote/remote-builder.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, settle, writeTestDrv } from './helpers.js';

let root: string;
let store: LocalStore;

beforeAll(async () => {
  root = tempDir('realise-remote-wait-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
});

afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

/** A machine for x86_64-linux whose one slot is taken for good: every build finds it busy. */
function busyMachine(): RemoteBuilder & { builds: number; waits: number } {
  const m = machine({ storeUri: 'ssh://busy', systemTypes: ['x86_64-linux'], maxJobs: 1 });
  return {
    name: m.storeUri,
    machine: m,
    load: 1,
    builds: 0,
    waits: 0,
    disabledReason: () => undefined,
    waitForSlot(signal?: AbortSignal) {
      this.waits++;
      return new Promise<void>((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason as Error), { once: true }));
    },
    build() {
      this.builds++;
      throw new Error('the busy machine was given a build');
    },
    close: () => Promise.resolve(),
  };
}

/**
 * An engine with maxJobs local slots and the busy machine, `count` fresh derivations, and `call` to build some
 * of them under one abort signal (a build still waiting after 15 s fails the test); the engine is closed after.
 */
async function withBusyEngine(
  maxJobs: number,
  prefix: string,
  count: number,
  body: (t: {
    busy: ReturnType<typeof busyMachine>;
    sandbox: FakeSandbox;
    engine: BuildEngine;
    drvs: string[];
    call: (ds: string[]) => ReturnType<BuildEngine['buildPaths']>;
  }) => Promise<void>,
): Promise<void> {
  const busy = busyMachine();
  const sandbox = new FakeSandbox((p) => store.toRealPath(p));
  const engine = new BuildEngine({ store, sandbox, maxJobs, builders: [busy] });
  const drvs = await Promise.all(Array.from({ length: count }, (_, i) => writeTestDrv(store, `${prefix}-${i}`)));
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error('a build still waits for the busy machine')), 15_000);
  const call = (ds: string[]) =>
    engine.buildPaths(
      ds.map((drvPath) => ({ drvPath, outputs: ['out'] })),
      { signal: ac.signal },
    );
  try {
    await body({ busy, sandbox, engine, drvs, call });
  } finally {
    clearTimeout(timer);
    await engine.close();
  }
}

describe.skipIf(process.arch !== 'x64')('a build waiting for a busy machine', () => {
  for (const maxJobs of [1, 2]) {
    it(`takes a local slot given back meanwhile (maxJobs ${maxJobs})`, async () => {
      // One more build than local slots: the last one finds the machine busy and every local slot taken.
      await withBusyEngine(maxJobs, 'wait', maxJobs + 1, async ({ busy, sandbox, drvs, call }) => {
        // The local slots are taken (the machine is busy, so those builds are here), then one more build comes.
        const running = call(drvs.slice(0, maxJobs));
        const first = await sandbox.waitPending(maxJobs);
        const waiting = call(drvs.slice(maxJobs));
        for (let i = 0; i < 100 && busy.waits === 0; i++) await settle(50);
        expect(busy.waits).toBeGreaterThan(0);
        expect(sandbox.pending).toHaveLength(maxJobs);
        // A slot is given back: the waiting build is built here.
        await first[0]!.finish(0);
        const next = await sandbox.waitPending(maxJobs);
        for (const r of next) await r.finish(0);
        const rs = [...(await running), ...(await waiting)];
        expect(rs.map((r) => r.result.status)).toEqual(drvs.map(() => 'built'));
        expect(sandbox.started).toHaveLength(maxJobs + 1);
        expect(busy.builds).toBe(0);
      });
    }, 30_000);
  }

  it('a slot given back turns one of the builds waiting for the machine local, not all of them', async () => {
    const turnedLocal: string[] = [];
    let machineWaits = 0;
    await withBusyEngine(1, 'one-of', 4, async ({ busy, sandbox, engine, drvs, call }) => {
      const running = call(drvs.slice(0, 1));
      const [first] = await sandbox.waitPending(1);
      // Three builds wait for the busy machine while the one local slot is taken.
      const waiting = call(drvs.slice(1));
      for (let i = 0; i < 100 && busy.waits < 3; i++) await settle(50);
      expect(busy.waits).toBe(3);
      machineWaits = busy.waits;
      // The freed slot goes to one of them; the other two find it taken and wait for the machine again.
      engine.on('build-started', (e) => turnedLocal.push(e.drvPath));
      await first!.finish(0);
      const [second] = await sandbox.waitPending(1);
      await settle(100);
      expect(turnedLocal).toHaveLength(1);
      expect(busy.waits - machineWaits).toBe(2);
      expect(sandbox.pending).toHaveLength(1);
      // And so on, one at a time, until every build is done here.
      await second!.finish(0);
      const [third] = await sandbox.waitPending(1);
      await settle(100);
      expect(busy.waits - machineWaits).toBe(3);
      await third!.finish(0);
      const [fourth] = await sandbox.waitPending(1);
      await fourth!.finish(0);
      const rs = [...(await running), ...(await waiting)];
      expect(rs.map((r) => r.result.status)).toEqual(drvs.map(() => 'built'));
      expect(turnedLocal).toHaveLength(3);
      expect(busy.builds).toBe(0);
    });
  }, 30_000);

  it('a build that reserved a local slot runs in it, before a build that started waiting since (maxJobs 2)', async () => {
    await withBusyEngine(2, 'reserve', 2, async ({ busy, sandbox, engine, drvs, call }) => {
      const started: string[] = [];
      engine.on('build-started', (e) => started.push(e.drvPath));
      // The reserving build's key comes after the other's: by key, the other would take the slot.
      const reserving = await writeTestDrv(store, 'zz-reserving');
      const other = await writeTestDrv(store, 'aa-prefers-local', [], { env: { preferLocalBuild: '1' } });
      // The reserving build asks for its slot only once the other build waits for one (as when its own way
      // from the machine's answer to its request is the longer one).
      let reservingAsked = false;
      let otherAsked!: () => void;
      const otherWaits = new Promise<void>((r) => (otherAsked = r));
      const request = SlotGate.prototype.request;
      const spy = vi.spyOn(SlotGate.prototype, 'request').mockImplementation(function (this: SlotGate, ...args: Parameters<SlotGate['request']>) {
        if (args[0] === reserving) {
          reservingAsked = true;
          void otherWaits.then(() => request.apply(this, args));
          return;
        }
        request.apply(this, args);
        if (args[0] === other) otherAsked();
      });
      try {
        // Both local slots are taken; the reserving build waits for the busy machine.
        const running = call(drvs);
        const [first, second] = await sandbox.waitPending(2);
        const waiting = call([reserving]);
        for (let i = 0; i < 100 && busy.waits === 0; i++) await settle(50);
        expect(busy.waits).toBeGreaterThan(0);
        // A slot is given back: the waiting build reserves it (the machine is still busy) and goes local.
        await first!.finish(0);
        for (let i = 0; i < 100 && !reservingAsked; i++) await settle(20);
        expect(reservingAsked).toBe(true);
        // Meanwhile a build that prefers local builds asks for a slot: none is free, it waits.
        const local = call([other]);
        await otherWaits;
        const third = (await sandbox.waitPending(2)).find((r) => r !== second);
        expect(started.slice(2)).toEqual([reserving]);
        // The next slot given back is the other build's.
        await third!.finish(0);
        for (const r of await sandbox.waitPending(2)) await r.finish(0);
        expect(started.slice(2)).toEqual([reserving, other]);
        const rs = [...(await running), ...(await waiting), ...(await local)];
        expect(rs.map((r) => r.result.status)).toEqual(['built', 'built', 'built', 'built']);
        expect(busy.builds).toBe(0);
      } finally {
        spy.mockRestore();
      }
    });
  }, 30_000);
});
