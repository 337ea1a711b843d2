/** The Linux namespace sandbox, when this machine can run it (probed once: C helper or bubblewrap). */
import { LinuxSandbox } from '../platform/linux-sandbox.js';
import { sandboxAvailable } from '../platform/probe.js';
import type { Sandbox } from '../platform/sandbox.js';
import type { ResolvedOptions } from './options.js';

export type LinuxSandboxChoice = { readonly sandbox: Sandbox } | { readonly sandbox: undefined; readonly reason: string; readonly hint: string };

export async function probeLinuxSandbox(options: ResolvedOptions): Promise<LinuxSandboxChoice> {
  const probe = await sandboxAvailable();
  if (!probe.ok) return { sandbox: undefined, reason: probe.reason, hint: probe.hint };
  // Nix runs the pre-build hook for sandboxed builds only: the LinuxSandbox runs it in each build's chroot.
  return {
    sandbox: new LinuxSandbox({
      backend: probe.backend,
      shmSize: options.sandboxShmSize,
      filterSyscalls: options.filterSyscalls,
      ...(options.preBuildHook ? { preBuildHook: options.preBuildHook } : {}),
    }),
  };
}
