/**
 * The substitution slots (maxSubstitutionJobs) in Nix's order. Nix's worker wakes every goal waiting for a
 * slot when one frees and runs them in goal-key order (`a$NAME$PATH` for a substitution), so the waiting
 * substitution with the lowest key takes it: by name, then path, whenever it started waiting. A queue in
 * the order of asking would make a path asked for late (the one input source every build of a closure
 * needs) wait behind every substitution asked for before it.
 */
import type { StorePath } from '../store/store-path.js';
import { Heap } from './heap.js';
import { goalKey } from './paths.js';

interface Waiting {
  readonly key: string;
  /** The order of asking, between waiters of the same path (concurrent calls of one engine). */
  readonly seq: number;
  readonly start: () => void;
}

export class SubstitutionSlots {
  private running = 0;
  private seq = 0;
  private readonly waiting = new Heap<Waiting>((a, b) => (a.key !== b.key ? a.key < b.key : a.seq < b.seq));

  constructor(private readonly slots: number) {}

  /** Run `fn` for `path` in a slot: at once when one is free, else when it is the lowest-keyed waiting one. */
  run<T>(path: StorePath, fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = (): void => {
        this.running++;
        const done = (): void => {
          this.running--;
          this.next();
        };
        // (A throw before its first await rejects too, and frees the slot.)
        void (async () => fn())().then(
          (v) => {
            done();
            resolve(v);
          },
          (e: unknown) => {
            done();
            reject(e);
          },
        );
      };
      if (this.running < this.slots && this.waiting.size === 0) return start();
      this.waiting.push({ key: goalKey('substitution', path), seq: this.seq++, start });
    });
  }

  private next(): void {
    while (this.running < this.slots && this.waiting.size > 0) this.waiting.pop()!.start();
  }
}
