/** checkedStream behaves as the async generator it replaces would. */
import { describe, expect, it } from 'vitest';
import { checkedStream } from '../../src/store/checked-stream.js';

function source(items: number[], log: string[]): AsyncIterable<number> {
  return {
    [Symbol.asyncIterator]() {
      log.push('open');
      let i = 0;
      return {
        next: () => Promise.resolve(i < items.length ? { done: false as const, value: items[i++]! } : { done: true as const, value: undefined }),
        return: () => {
          log.push('closed');
          return Promise.resolve({ done: true as const, value: undefined });
        },
      };
    },
  };
}

describe('checkedStream', () => {
  it('opens the source on the first next, passes each step through the check, and ends', async () => {
    const log: string[] = [];
    const s = checkedStream(
      () => source([1, 2], log),
      (r) => r,
    );
    expect(log).toEqual([]);
    const got: number[] = [];
    for await (const x of s) got.push(x);
    expect(got).toEqual([1, 2]);
    expect(await s.next()).toEqual({ done: true, value: undefined });
    expect(log).toEqual(['open']);
  });

  it('a check that stops the stream closes the source, throws through failure, and takes nothing after', async () => {
    const log: string[] = [];
    const s = checkedStream(
      () => source([1, 2, 3], log),
      (r, stop) => {
        if (!r.done && r.value === 2) {
          stop();
          throw new Error('two');
        }
        return r;
      },
      (e) => new Error(`converted: ${(e as Error).message}`),
    );
    expect(await s.next()).toEqual({ done: false, value: 1 });
    await expect(s.next()).rejects.toThrow('converted: two');
    expect(await s.next()).toEqual({ done: true, value: undefined });
    await Promise.resolve();
    expect(log).toEqual(['open', 'closed']);
  });

  it('a source that cannot be opened fails the first next through failure; return() before any next opens nothing', async () => {
    const s = checkedStream<number>(
      () => {
        throw new Error('no');
      },
      (r) => r,
      (e) => new Error(`converted: ${(e as Error).message}`),
    );
    await expect(s.next()).rejects.toThrow('converted: no');
    expect(await s.next()).toEqual({ done: true, value: undefined });
    const log: string[] = [];
    const t = checkedStream(
      () => source([1], log),
      (r) => r,
    );
    expect(await t.return!()).toEqual({ done: true, value: undefined });
    expect(log).toEqual([]);
  });
});
