/**
 * Which waiting build gets a free build slot, in Nix's order. Nix's worker runs its awake goals in rounds,
 * ordered by goal key (`b$NAME.drv$PATH`: by derivation name, then path); goals that reach tryToBuild
 * while every slot is taken wait, and when a slot frees they all wake up and the first by key takes it.
 * A free slot goes to the waiting build with the lowest key among those that were already waiting when a
 * slot was last given back (Nix wakes them all then; a goal that became ready since comes a round later);
 * before any slot was given back, the builds Nix reaches in fewer rounds come first (roundsToTryToBuild:
 * those closest to the targets, and of those at the same distance the ones without input derivations),
 * then by key. With one slot (Nix's default, where the order
 * of builds and messages is fully determined), goals here reach their slot request at unpredictable
 * moments, so the slot is granted only once the engine is quiescent: no derivation goal is still preparing
 * (reading its .drv, checking outputs, resolving, about to ask for a slot) or finishing (registering outputs,
 * running the post-build hook, failing its dependents) — as Nix starts the next build only after the last
 * one's goal is done. Goals waiting for other goals, substitutions, output locks or remote builders are
 * counted out; FALLBACK_MS only bounds how long a grant can wait for goals that are still busy (long enough
 * for a registration or a post-build hook on a loaded machine, or builds start out of Nix's order). With
 * more slots the order of builds depends on timing in Nix too, and slots are granted at once.
 */
import type PQueue from 'p-queue';
import { Heap } from './heap.js';
import { goalKey } from './paths.js';

const FALLBACK_MS = 250;

/** At most this many waiting builds prepare ahead of their slot. */
const MAX_PREPARED = 8;

/**
 * In which of Nix 2.8's worker rounds a derivation goal reaches tryToBuild when its inputs need no building,
 * counted from the call's start: a goal `depth` references away from the targets is made 3 rounds after its
 * parent (the parent's own output substitution goals take a round to start and one to fail, then it makes
 * its input goals), and reaches tryToBuild 3 rounds after it is made; with input derivations, whose goals
 * find their outputs valid in their first round, 2 rounds later still (their goals are made, then done,
 * then the parent's inputsRealised wakes it).
 */
export function roundsToTryToBuild(depth: number, hasInputDrvs: boolean): number {
  return 3 * depth + 3 + (hasInputDrvs ? 2 : 0);
}

interface Waiter {
  readonly key: string;
  /** In which round Nix's goal asks for a slot, when no slot was given back yet (roundsToTryToBuild). */
  readonly rounds: number;
  /** Runs when the slot is granted; calls `giveBack` (once) to free it. */
  readonly task: (giveBack: () => void) => void;
  /** Called when it becomes one of the next builds in line (see prepareAhead). */
  readonly prepare: (() => void) | undefined;
  /** Whether `prepare` was called. */
  prepared: boolean;
}

export class SlotGate {
  /** Derivation goals currently preparing (not waiting for other goals or for a slot). */
  private preparing = 0;
  /**
   * The waiting builds in two heaps, in the order slots are granted: `woken`, those that were waiting when
   * a slot was last given back (and next rounds, woken with it), come before `fresh`, those that started
   * waiting since. Within each: before any slot was given back, by roundsToTryToBuild, then by key; after,
   * by key alone (`less` reads the epoch: both heaps are rebuilt when it leaves 0).
   */
  private readonly woken: Heap<Waiter>;
  private fresh: Heap<Waiter>;
  /** Slots granted and not given back yet. */
  private running = 0;
  /**
   * Slots promised to builds that a remote machine declined because a slot was free here (reserve), by goal
   * key, until their request: a slot given back goes to one of the builds waiting for a busy machine, as
   * Nix's freed slot goes to one goal, not to every one woken by it.
   */
  private readonly reservations = new Map<string, number>();
  private reserved = 0;
  /** Builds that asked for the slot they reserved while a machine was connected to (hold): run when it ends. */
  private claimed: ((giveBack: () => void) => void)[] = [];
  /** Slots given back so far. */
  private epoch = 0;
  private scheduled = false;
  private fallback: NodeJS.Timeout | undefined;
  /** Waiters whose `prepare` was called. */
  private prepared = 0;
  /** Remote machines being connected to (hold): with one slot, none is granted meanwhile. */
  private held = 0;
  /** Told when a slot is next given back (builds waiting for a remote machine: nextGiveBack). */
  private givenBackWaiters = new Set<() => void>();
  /** A prepareAhead is scheduled (prepareLater). */
  private prepareScheduled = false;

  constructor(private readonly queue: PQueue) {
    const less = (a: Waiter, b: Waiter): boolean => (this.epoch === 0 && a.rounds !== b.rounds ? a.rounds < b.rounds : a.key < b.key);
    this.woken = new Heap(less);
    this.fresh = new Heap(less);
  }

  /** Builds waiting here for a slot. */
  get waitingCount(): number {
    return this.woken.size + this.fresh.size;
  }

  /** Builds holding a slot. */
  get runningCount(): number {
    return this.running;
  }

  /**
   * Claim a free slot for the build of `drvPath` before it asks for one (request), when nothing waits for a
   * slot: false when every slot is taken or promised. A build that turns local because a slot is free
   * claims it at once, so the other builds woken by the same slot see it taken.
   */
  reserve(drvPath: string, maxJobs: number): boolean {
    if (this.running + this.reserved >= maxJobs || this.waitingCount > 0) return false;
    const key = goalKey('derivation', drvPath);
    this.reservations.set(key, (this.reservations.get(key) ?? 0) + 1);
    this.reserved++;
    return true;
  }

  /** Slots taken or promised (reserve). */
  private get taken(): number {
    return this.running + this.reserved;
  }

  /**
   * Ask for a slot for the build of `drvPath`: `task` runs when it is granted and holds it until it calls
   * `giveBack` (once).
   * `nextRound`: the next round of a build that just gave its slot back (`buildRepeat`): Nix wakes that
   * goal together with the builds the freed slot woke, so it competes with them by key at once.
   * `prepare`: what the build can make before its slot, called when it is one of the next builds in line.
   */
  request(drvPath: string, task: (giveBack: () => void) => void, rounds = 0, nextRound = false, prepare?: () => void): void {
    const key = goalKey('derivation', drvPath);
    const held = this.reservations.get(key);
    if (held !== undefined) {
      // The slot it reserved is its own: it runs in it at once, without a round through the heaps, where a
      // build that started waiting since could come first by key (the reserving one would then wait for
      // a local slot instead of its machine). Taken stays the same: a promise turned into a grant.
      // While a machine is connected to (hold), it waits for that, as every grant does.
      if (held > 1) this.reservations.set(key, held - 1);
      else this.reservations.delete(key);
      this.claimed.push(task);
      if (this.held === 0) this.runClaimed();
      return;
    }
    (nextRound ? this.woken : this.fresh).push({ key, rounds, task, prepare, prepared: false });
    if (this.queue.concurrency > 1) this.grant();
    else this.schedule();
    // (After a grant prepareLater does it.)
    if (!this.prepareScheduled) this.prepareAhead();
  }

  /** The next waiting build in the order slots are granted, taken out of its heap. */
  private takeNext(): { heap: Heap<Waiter>; w: Waiter } | undefined {
    const heap = this.woken.size > 0 ? this.woken : this.fresh;
    const w = heap.pop();
    return w && { heap, w };
  }

  /**
   * Let the next builds in line (as many as there are slots, by the order slots are granted in now)
   * prepare while they wait, so that a freed slot goes to a build that is ready to start. A later waiter
   * can still come first; it then prepares in its slot.
   */
  private prepareAhead(): void {
    const ahead = Math.min(this.queue.concurrency, MAX_PREPARED);
    if (this.prepared >= ahead) return;
    // Walk the line from its head (prepared ones are at most `ahead`), then put back what was looked at.
    const seen: { heap: Heap<Waiter>; w: Waiter }[] = [];
    const toPrepare: Waiter[] = [];
    while (this.prepared + toPrepare.length < ahead) {
      const next = this.takeNext();
      if (!next) break;
      seen.push(next);
      if (next.w.prepare && !next.w.prepared) toPrepare.push(next.w);
    }
    for (const { heap, w } of seen) heap.push(w);
    for (const w of toPrepare) {
      w.prepared = true;
      this.prepared++;
      w.prepare!();
    }
  }

  /**
   * A goal that prepares until `pause` (or `done`); undefined with more than one slot, where slots are
   * granted at once and what goals are doing is not counted (no bookkeeping per goal and per wait).
   */
  goal(): GoalActivity | undefined {
    return this.queue.concurrency === 1 ? new GoalActivity(this) : undefined;
  }

  /** @internal */
  change(delta: 1 | -1): void {
    this.preparing += delta;
    if (this.preparing === 0 && this.waitingCount > 0) this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.dispatch();
    });
  }

  /**
   * A remote machine is being connected to for a build, or a post-build hook runs: with one slot, no slot is
   * granted until the returned function is called (once the machine took the build or failed; once the hook
   * has exited), as Nix's worker waits for its hook's answer, which comes after the connection, and runs the
   * post-build hook itself, before it starts anything else: the machine's "building '…' on '…'" and the
   * hook's output come before a local build that was waiting.
   */
  hold(): () => void {
    if (this.queue.concurrency !== 1) return () => {};
    this.held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held--;
      if (this.held === 0) this.runClaimed();
      if (this.held === 0 && this.waitingCount > 0) this.schedule();
    };
  }

  /** Run the builds in the slots they reserved (claimed): each promise turns into a grant. */
  private runClaimed(): void {
    if (this.claimed.length === 0) return;
    const claimed = this.claimed;
    this.claimed = [];
    for (const task of claimed) {
      this.reserved--;
      this.running++;
      task(this.giveBack);
    }
    this.prepareLater();
  }

  private dispatch(): void {
    if (this.waitingCount === 0 || this.taken >= this.queue.concurrency || this.held > 0) return;
    if (this.preparing > 0 && this.queue.concurrency === 1) {
      this.fallback ??= setTimeout(() => {
        this.fallback = undefined;
        this.grant();
      }, FALLBACK_MS);
      return;
    }
    this.grant();
  }

  /** A slot was given back: every build waiting now is woken (it comes before those that start waiting later). */
  private slotGivenBack(): void {
    this.running--;
    const fresh = this.fresh.drain();
    // Leaving epoch 0 changes the order (by key alone from now on): the woken heap is rebuilt with it.
    const all = this.epoch++ === 0 ? [...this.woken.drain(), ...fresh] : fresh;
    for (const w of all) this.woken.push(w);
  }

  private grant(): void {
    if (this.fallback) {
      clearTimeout(this.fallback);
      this.fallback = undefined;
    }
    if (this.held > 0) return;
    // The slots are counted here (the queue only says how many there are): each grant runs its task at once.
    let granted = false;
    while (this.taken < this.queue.concurrency) {
      const next = this.takeNext();
      if (!next) break;
      const { w } = next;
      if (w.prepared) this.prepared--;
      this.running++;
      granted = true;
      w.task(this.giveBack);
    }
    if (granted) this.prepareLater();
    else this.prepareAhead();
  }

  /**
   * prepareAhead once the builds just granted have gone as far as they can without waiting (in the usual
   * case, to their builder's start): a grant comes between a builder's exit and the next one's start, where
   * the next builds' lock files, log directory and build directory would only hold it up.
   */
  private prepareLater(): void {
    if (this.prepareScheduled) return;
    this.prepareScheduled = true;
    setImmediate(() => {
      this.prepareScheduled = false;
      this.prepareAhead();
    });
  }

  /** A granted slot is free again (one function for every grant: its task calls it once). */
  private readonly giveBack = (): void => {
    this.slotGivenBack();
    if (this.queue.concurrency > 1) this.grant();
    else this.schedule();
    const told = this.givenBackWaiters;
    if (told.size) {
      this.givenBackWaiters = new Set();
      for (const f of told) f();
    }
  };

  /**
   * Resolves when a slot is next given back, after the builds waiting here had their chance at it (with
   * more than one slot they are granted first; with one, later in this turn of the event loop): a build
   * waiting for a busy remote machine then asks again, as Nix's postponed hook goal does when a build ends.
   */
  nextGiveBack(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        this.givenBackWaiters.delete(wake);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.givenBackWaiters.add(wake);
    });
  }
}

/** One goal's share of the gate's count of preparing goals. */
export class GoalActivity {
  private active = true;
  private finished = false;

  constructor(private readonly gate: SlotGate) {
    gate.change(1);
  }

  /** The goal waits (for other goals, substitutions, or a slot): it is no longer preparing or finishing. */
  pause(): void {
    if (!this.active) return;
    this.active = false;
    this.gate.change(-1);
  }

  resume(): void {
    if (this.active || this.finished) return;
    this.active = true;
    this.gate.change(1);
  }

  /** Await `p` as a waiting goal. */
  async blocked<T>(p: Promise<T>): Promise<T> {
    this.pause();
    try {
      return await p;
    } finally {
      this.resume();
    }
  }

  /** The goal ended: it counts no more, whatever resumes it later. */
  done(): void {
    this.pause();
    this.finished = true;
  }
}

const gates = new WeakMap<PQueue, SlotGate>();

/** The gate of an engine's build slots. */
export function slotGate(queue: PQueue): SlotGate {
  let g = gates.get(queue);
  if (!g) gates.set(queue, (g = new SlotGate(queue)));
  return g;
}
