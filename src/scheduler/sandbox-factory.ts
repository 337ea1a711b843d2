/** The Linux namespace sandbox, when this machine can run it (bubblewrap present). */
import { LinuxSandbox } from '../platform/linux-sandbox.js';
import type { Sandbox } from '../platform/sandbox.js';
import type { ResolvedOptions } from './options.js';

export function linuxSandboxFactory(_options: ResolvedOptions): Sandbox | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    return new LinuxSandbox();
  } catch {
    return undefined;
  }
}
