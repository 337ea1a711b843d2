/**
 * A stream passed on through a check of each step, as a plain async iterator rather than an async
 * generator: a generator layer costs several microseconds of CPU per NAR, most of a small one's handling.
 * It behaves as the generator would: the source is opened on the first next(), nothing is taken from it
 * once the stream has ended, failed or been closed, and it is closed when a check stops the stream.
 */
export type Step<T> = (r: IteratorResult<T>, stop: () => void) => IteratorResult<T>;

/**
 * `open()`'s stream with each result through `step` (which may throw, after calling `stop` to close the
 * source, or return `{ done: true }`); a failure of the source's, or one `step` throws, goes out through
 * `failure` (which may convert it).
 */
export function checkedStream<T>(open: () => AsyncIterable<T>, step: Step<T>, failure: (e: unknown) => unknown = (e) => e): AsyncIterableIterator<T> {
  let it: AsyncIterator<T> | undefined;
  let over = false;
  const ended: IteratorReturnResult<undefined> = { done: true, value: undefined };
  const stop = (): void => {
    void Promise.resolve(it!.return?.()).catch(() => {});
  };
  const take = (r: IteratorResult<T>): IteratorResult<T> => {
    if (r.done) over = true;
    try {
      const out = step(r, stop);
      if (out.done) over = true;
      return out.done ? ended : out;
    } catch (e) {
      over = true;
      throw failure(e);
    }
  };
  const failed = (e: unknown): never => {
    over = true;
    throw failure(e);
  };
  const iterator: AsyncIterableIterator<T> = {
    next: () => {
      if (over) return Promise.resolve(ended);
      try {
        it ??= open()[Symbol.asyncIterator]();
        return it.next().then(take, failed);
      } catch (e) {
        over = true;
        return Promise.reject(failure(e));
      }
    },
    return: async () => {
      if (!over && it) {
        over = true;
        await it.return?.();
      }
      over = true;
      return ended;
    },
    [Symbol.asyncIterator]() {
      return iterator;
    },
  };
  return iterator;
}
