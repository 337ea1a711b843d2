/**
 * NoSandbox: run the builder directly on the host, as Nix does with `sandbox = false`. The builder
 * gets exactly `request.env` (nothing inherited), runs in `request.buildDir`, in its own process group,
 * stdin on /dev/null, stdout and stderr merged. Outputs are not at their logical paths unless the store
 * dir is the physical one; the scheduler rewrites hashes (`isolated: false`).
 */
import * as path from 'node:path';
import type { Sandbox, SandboxExit, SandboxRequest, SandboxRunOptions } from './sandbox.js';
import { spawnMerged } from './spawn-merged.js';

export class NoSandbox implements Sandbox {
  readonly name = 'none';
  readonly isolated = false;

  async run(request: SandboxRequest, opts: SandboxRunOptions = {}): Promise<SandboxExit> {
    if (request.builder.startsWith('builtin:')) {
      return { kind: 'spawn-failed', message: `builder '${request.builder}' of '${request.drvPath}' is a built-in; the scheduler runs built-ins itself` };
    }
    if (!path.isAbsolute(request.builder)) {
      // Nix execs the builder path as is (no PATH lookup); a relative name resolves against the build dir.
      return await spawnMerged({
        file: path.join(request.buildDir, request.builder), args: request.args, argv0: path.basename(request.builder),
        env: request.env, cwd: request.buildDir, signal: opts.signal, onOutput: opts.onOutput,
      });
    }
    return await spawnMerged({
      file: request.builder,
      args: request.args,
      argv0: path.basename(request.builder), // Nix passes baseNameOf(builder) as argv[0]
      env: request.env,
      cwd: request.buildDir,
      signal: opts.signal,
      onOutput: opts.onOutput,
    });
  }
}
