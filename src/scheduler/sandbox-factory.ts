/** The Linux namespace sandbox, when this machine can run it. */
import type { Sandbox } from '../platform/sandbox.js';
import type { ResolvedOptions } from './options.js';

export function linuxSandboxFactory(_options: ResolvedOptions): Sandbox | undefined {
  return undefined;
}
