/**
 * The build hook: hand a derivation to a remote machine when one fits. Returns undefined to build locally.
 */
import type { StorePath } from '../store/store-path.js';
import type { DrvView } from './drv-view.js';
import type { BuildResult } from './results.js';
import type { Worker } from './worker.js';

export async function tryRemoteBuild(_w: Worker, _view: DrvView, _inputPaths: Set<StorePath>): Promise<BuildResult | undefined> {
  return undefined;
}
