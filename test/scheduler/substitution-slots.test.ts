import { describe, expect, it } from 'vitest';
import { SubstitutionSlots } from '../../src/scheduler/substitution-slots.js';

const p = (hash: string, name: string) => `/nix/store/${hash.padEnd(32, '0')}-${name}`;

describe('SubstitutionSlots', () => {
  it("gives a free slot to the waiting substitution with the lowest goal key (Nix's order), not the first to ask", async () => {
    const slots = new SubstitutionSlots(2);
    const order: string[] = [];
    const gates = new Map<string, () => void>();
    const run = (path: string) =>
      slots.run(path, async () => {
        order.push(path);
        await new Promise<void>((r) => gates.set(path, r));
        return path;
      });
    const first = [run(p('1', 'dag-1-0.drv')), run(p('2', 'dag-0-5.drv'))];
    // Every slot is taken: these wait, asked for in this order.
    const waiting = [p('3', 'dag-2-1.drv'), p('4', 'dag-1-7.drv'), p('5', 'busybox'), p('0', 'dag-1-7.drv')].map(run);
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([p('1', 'dag-1-0.drv'), p('2', 'dag-0-5.drv')]);
    gates.get(p('1', 'dag-1-0.drv'))!();
    await first[0];
    await new Promise((r) => setImmediate(r));
    // By name, then by path: the input source asked for last goes first.
    expect(order.at(-1)).toBe(p('5', 'busybox'));
    for (const path of [p('2', 'dag-0-5.drv'), p('5', 'busybox')]) gates.get(path)!();
    await new Promise((r) => setImmediate(r));
    expect(order.slice(3)).toEqual([p('0', 'dag-1-7.drv'), p('4', 'dag-1-7.drv')]);
    for (const path of [p('0', 'dag-1-7.drv'), p('4', 'dag-1-7.drv')]) gates.get(path)!();
    await new Promise((r) => setImmediate(r));
    gates.get(p('3', 'dag-2-1.drv'))!();
    expect(await Promise.all([...first, ...waiting])).toEqual([
      p('1', 'dag-1-0.drv'),
      p('2', 'dag-0-5.drv'),
      p('3', 'dag-2-1.drv'),
      p('4', 'dag-1-7.drv'),
      p('5', 'busybox'),
      p('0', 'dag-1-7.drv'),
    ]);
    expect(order).toHaveLength(6);
  });

  it('a substitution that throws, even before its first await, rejects and frees its slot', async () => {
    const slots = new SubstitutionSlots(1);
    const failed = slots.run(p('1', 'a'), () => {
      throw new Error('boom');
    });
    const next = slots.run(p('2', 'b'), async () => 'ran');
    await expect(failed).rejects.toThrow('boom');
    expect(await next).toBe('ran');
  });
});
