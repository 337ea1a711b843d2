import PQueue from 'p-queue';
import { describe, expect, it } from 'vitest';
import { SlotGate } from '../../src/scheduler/slot-gate.js';

const drv = (hash: string, name: string) => `/nix/store/${hash.padEnd(32, '0')}-${name}.drv`;
const turn = () => new Promise<void>((r) => setImmediate(r));

describe('SlotGate', () => {
  it('lets the next builds in line prepare while they wait, and a freed slot goes first to the granted build, then to the preparations', async () => {
    const gate = new SlotGate(new PQueue({ concurrency: 2 }));
    const log: string[] = [];
    const giveBacks = new Map<string, () => void>();
    const ask = (name: string) =>
      gate.request(
        drv(name, name),
        (giveBack) => {
          log.push(`start ${name}`);
          giveBacks.set(name, giveBack);
        },
        0,
        false,
        () => log.push(`prepare ${name}`),
      );
    for (const name of ['a', 'b', 'c', 'd', 'e']) ask(name);
    // a and b run; c and d (the next two in line) prepare while they wait, e does not yet.
    await turn();
    expect(log).toEqual(['start a', 'start b', 'prepare c', 'prepare d']);
    log.length = 0;
    giveBacks.get('a')!();
    // The freed slot goes to c at once; e, now next in line with d, prepares only a turn of the event loop later.
    expect(log).toEqual(['start c']);
    await turn();
    expect(log).toEqual(['start c', 'prepare e']);
    expect(gate.runningCount).toBe(2);
    expect(gate.waitingCount).toBe(2);
  });

  it('a build runs in the slot it reserved when it asks, once a machine being connected to is (one slot)', async () => {
    const gate = new SlotGate(new PQueue({ concurrency: 1 }));
    const log: string[] = [];
    const ask = (name: string) => gate.request(drv(name, name), () => log.push(`start ${name}`));
    // A machine is connected to for another build; b reserves the free slot and asks for it.
    const release = gate.hold();
    expect(gate.reserve(drv('b', 'b'), 1)).toBe(true);
    ask('b');
    await turn();
    expect(log).toEqual([]);
    // A build that asks since, first by key, waits: the slot is b's.
    ask('a');
    release();
    expect(log).toEqual(['start b']);
    await turn();
    expect(log).toEqual(['start b']);
    expect([gate.runningCount, gate.waitingCount]).toEqual([1, 1]);
  });
});
