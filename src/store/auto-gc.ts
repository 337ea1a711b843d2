/**
 * Nix's autoGC (gc.cc): while builds run, when the free space of the store's file system drops below
 * `min-free`, collect garbage in the background until `max-free` is free again. Checked at most every
 * `min-free-check-interval` seconds; one collection at a time; after a collection that freed too little
 * (less than 3 % more space than the previous one left), no new one starts until space shrinks again.
 * `_NIX_TEST_FREE_SPACE_FILE` (a file holding a number) stands for the free space, as in Nix's tests.
 */
import { readFileSync, statfsSync } from 'node:fs';
import type { GcEvent, GcOptions, GcResult } from './gc.js';

/** When to collect (Nix's min-free, max-free, min-free-check-interval). */
export interface AutoGcSettings {
  /** Collect when fewer bytes than this are free. 0 disables auto-GC. */
  readonly minFree: number;
  /** Free up to this many bytes. */
  readonly maxFree: number;
  /** Seconds between checks of the free space. */
  readonly checkInterval: number;
  /** The collection's events (its first is an `info` "running auto-GC to free N bytes"). */
  readonly onEvent?: ((e: GcEvent) => void) | undefined;
}

/** Bytes available to us on the file system of `dir`. */
export function freeSpace(dir: string): number {
  const fake = process.env._NIX_TEST_FREE_SPACE_FILE;
  if (fake) return Number(readFileSync(fake, 'utf8').trim());
  const st = statfsSync(dir);
  return st.bavail * st.bsize;
}

/** The auto-GC state of one store object. */
export class AutoGc {
  private lastCheck = -Infinity;
  private availAfterGc = Infinity;
  private running: Promise<void> | undefined;

  constructor(
    private readonly realStoreDir: string,
    private readonly collect: (opts: GcOptions) => Promise<GcResult>,
  ) {}

  /**
   * Start a background collection if the settings call for one. Returns the running collection (also
   * one already running), or undefined; it never rejects (a failed auto-GC is only reported).
   */
  check(s: AutoGcSettings): Promise<void> | undefined {
    if (this.running) return this.running;
    if (!(s.minFree > 0)) return undefined;
    const now = Date.now();
    if (now < this.lastCheck + s.checkInterval * 1000) return undefined;
    const avail = freeSpace(this.realStoreDir);
    this.lastCheck = now;
    if (avail >= s.minFree || avail >= s.maxFree) return undefined;
    if (avail > this.availAfterGc * 0.97) return undefined;
    const maxFreed = s.maxFree - avail;
    s.onEvent?.({ type: 'info', message: `running auto-GC to free ${maxFreed} bytes` });
    this.running = this.collect({ maxFreed, onEvent: s.onEvent })
      .then(() => {
        this.availAfterGc = freeSpace(this.realStoreDir);
      })
      .catch((e: unknown) => {
        s.onEvent?.({ type: 'info', message: `warning: auto-GC failed: ${(e as Error).message}` });
      })
      .finally(() => {
        this.running = undefined;
        this.lastCheck = Date.now();
      });
    return this.running;
  }
}
