/**
 * The life of Nix 2.8's build-hook processes in one call (its worker's `hook`), told as `hook-started`:
 * a program that repeats what Nix's hook says as it starts (it reads the configuration again and warns
 * about the settings it does not know) listens to that event. Kept apart from remote-build.ts, which a
 * call without builders never loads: Nix starts a hook for such a call too.
 */
import type { StorePath } from '../store/store-path.js';

/**
 * Nix's worker starts a hook before the first build it offers it and keeps it while it declines or
 * postpones builds. A remote machine that takes a build takes the hook with it; the next offer starts
 * another: at once when other offered builds wait for the hook's answer (Nix offers them the next build
 * then), else at that offer.
 */
export class BuildHookLife {
  /** A hook is running and free for the next offer. */
  private running = false;
  /** Builds offered to the hook that no machine took, that did not start here and that did not end. */
  private readonly waiting = new Set<StorePath>();

  constructor(private readonly started: () => void) {}

  /** `drvPath` is offered to the hook (the engine's `hook-asked`). */
  offer(drvPath: StorePath): void {
    this.waiting.add(drvPath);
    this.start();
  }

  /** A remote machine takes `drvPath` (its first machine; a later one finds it gone from the waiting). */
  taken(drvPath: StorePath): void {
    if (!this.waiting.delete(drvPath)) return;
    this.running = false;
    if (this.waiting.size > 0) this.start();
  }

  /** `drvPath` starts here, or its goal ends: it waits for no answer of the hook. */
  settled(drvPath: StorePath): void {
    this.waiting.delete(drvPath);
  }

  private start(): void {
    if (this.running) return;
    this.running = true;
    this.started();
  }
}
