/**
 * A wave: items added until the wave comes to its turn, handled together then by one `run` of them all.
 * Every adder of the wave gets that one result (or its error) and looks its own items up in it. The turn
 * is `schedule`'s: `queueMicrotask` gathers the askers of one run of microtasks (goals that start together
 * ask one after the other in it), `setImmediate` those of one turn of the event loop.
 */
export class TurnWave<T, R> {
  private items: T[] | undefined;
  private result: Promise<R> | undefined;

  constructor(
    private readonly run: (items: readonly T[]) => Promise<R>,
    private readonly schedule: (turn: () => void) => void,
  ) {}

  add(item: T): Promise<R> {
    this.open().push(item);
    return this.result!;
  }

  addAll(items: Iterable<T>): Promise<R> {
    const wave = this.open();
    for (const item of items) wave.push(item);
    return this.result!;
  }

  /** The items of the wave to come, starting it if none is. */
  private open(): T[] {
    if (this.items) return this.items;
    const wave: T[] = (this.items = []);
    const schedule = this.schedule;
    this.result = new Promise<R>((resolve, reject) => {
      schedule(() => {
        this.items = undefined;
        try {
          this.run(wave).then(resolve, reject);
        } catch (e) {
          reject(e);
        }
      });
    });
    return wave;
  }
}
