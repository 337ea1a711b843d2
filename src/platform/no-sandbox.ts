/**
 * NoSandbox: run the builder directly on the host, as Nix does with `sandbox = false`. The builder
 * gets exactly `request.env` (nothing inherited), runs in `request.buildDir`, in its own session and
 * process group, stdin on /dev/null, stdout and stderr merged. Outputs are not at their logical paths
 * unless the store dir is the physical one; the scheduler rewrites hashes (`isolated: false`).
 *
 * Builders are forked from the resident sandbox helper (sandbox-server.ts, a small C process) when it
 * is available: forking a big Node process costs ~10 ms of blocked event loop and kernel time per
 * build. Without a C compiler, or once that server died, they are spawned from Node (spawn-merged.ts).
 */
import * as path from 'node:path';
import { execErrorOf, spawnFailed, type Sandbox, type SandboxExit, type SandboxRequest, type SandboxRunOptions } from './sandbox.js';
import { spawnMerged } from './spawn-merged.js';
import { ensureSandboxHelper, type SandboxHelperOptions } from './sandbox-helper.js';
import { SandboxServer } from './sandbox-server.js';
import { nixSeccompFilter } from './seccomp.js';

export interface NoSandboxOptions {
  /**
   * How builders are started: `'helper'` forks them from the resident sandbox helper process,
   * `'node'` spawns them from Node, `'auto'` uses the helper when it compiles and runs, else Node.
   * With `'helper'`, a helper that cannot be built or started makes builds `spawn-failed`.
   * @default `$REALISE_NOSANDBOX_LAUNCHER` if set (for benchmarks and tests of code that makes its own
   * NoSandbox), else 'auto'
   */
  readonly launcher?: 'auto' | 'helper' | 'node';
  /** Where and with what to compile the helper. */
  readonly helper?: SandboxHelperOptions;
  /**
   * Install Nix's seccomp filter in builders (no setuid/setgid bits, no extended attributes, no new
   * privileges), as Nix does without a sandbox too (`filter-syscalls`). Only with the helper launcher:
   * Node cannot install one in a child it spawns.
   * @default true
   */
  readonly filterSyscalls?: boolean;
}

/** One resident server per helper executable and filter choice, shared by every NoSandbox of the process. */
const servers = new Map<string, SandboxServer>();

export class NoSandbox implements Sandbox {
  readonly name = 'none';
  readonly isolated = false;
  readonly #options: NoSandboxOptions;
  /** Nix's seccomp filter, assembled once (undefined: off, or none for this architecture). */
  readonly #filter: Buffer | undefined;
  /** Set once the helper is known to be unusable (so 'auto' stops trying it). */
  #helperFailed: string | undefined;
  /** The helper's path once it is compiled (finding it again costs a look-up of the cache dir per build). */
  #exe: string | undefined;

  constructor(options: NoSandboxOptions = {}) {
    const env = process.env.REALISE_NOSANDBOX_LAUNCHER;
    const fromEnv = env === 'auto' || env === 'helper' || env === 'node' ? env : undefined;
    this.#options = { ...options, launcher: options.launcher ?? fromEnv ?? 'auto' };
    this.#filter = options.filterSyscalls === false ? undefined : filterOrUndefined();
  }

  /** Which launcher builds use now: 'helper' or 'node' (compiling the helper on first call). */
  async launcher(): Promise<'helper' | 'node'> {
    return (await this.#server()) ? 'helper' : 'node';
  }

  /** The server #server() gives when that needs no waiting (the helper built, its server made and alive); else undefined. */
  #serverNow(): SandboxServer | undefined {
    if ((this.#options.launcher ?? 'auto') === 'node' || this.#exe === undefined || this.#helperFailed !== undefined) return undefined;
    const server = servers.get(`${this.#exe}\0${this.#filter ? 'filtered' : 'plain'}`);
    return server && !server.died ? server : undefined;
  }

  async #server(): Promise<SandboxServer | undefined> {
    const want = this.#options.launcher ?? 'auto';
    if (want === 'node' || (want === 'auto' && this.#helperFailed !== undefined)) return undefined;
    let exe = this.#exe;
    try {
      exe ??= this.#exe = await ensureSandboxHelper(this.#options.helper);
    } catch (e) {
      this.#helperFailed = (e as Error).message.split('\n')[0]!;
      return undefined;
    }
    const filter = this.#filter;
    const key = `${exe}\0${filter ? 'filtered' : 'plain'}`;
    let server = servers.get(key);
    if (server?.died) {
      // It exited without being closed: do not depend on it again.
      this.#helperFailed = 'the sandbox helper server exited unexpectedly';
      if (want === 'auto') return undefined;
      servers.delete(key);
      server = undefined;
    }
    // The server installs the filter in itself once; the builders it forks inherit it.
    if (!server) {
      server = new SandboxServer(exe, filter);
      servers.set(key, server);
    }
    return server;
  }

  async run(request: SandboxRequest, opts: SandboxRunOptions = {}): Promise<SandboxExit> {
    if (request.builder.startsWith('builtin:')) {
      return { kind: 'spawn-failed', message: `builder '${request.builder}' of '${request.drvPath}' is a built-in; the scheduler runs built-ins itself` };
    }
    if (opts.signal?.aborted) return { kind: 'aborted' };
    // No sandbox to set up: the build is under way (Nix announces it before its child's exec, which may fail).
    opts.onSetUp?.();
    // Nix execs the builder path as is (no PATH lookup); a relative name resolves against the build dir.
    const file = path.isAbsolute(request.builder) ? request.builder : path.join(request.buildDir, request.builder);
    const argv0 = path.basename(request.builder); // Nix passes baseNameOf(builder) as argv[0]
    // (The helper built and its server made, the usual case: no promise to wait for.)
    const server = this.#serverNow() ?? (await this.#server());
    if (server) {
      let exit: SandboxExit | undefined;
      try {
        exit = await server.run({
          args: ['--plain', request.buildDir, file, argv0, ...request.args],
          env: request.env,
          signal: opts.signal,
          onOutput: opts.onOutput,
          drvPath: request.drvPath,
        });
      } catch (e) {
        // The server could not be started at all: nothing ran.
        this.#helperFailed = (e as Error).message;
        if ((this.#options.launcher ?? 'auto') === 'helper') {
          return { kind: 'spawn-failed', message: `could not start the sandbox helper to run '${file}': ${(e as Error).message}` };
        }
      }
      if (exit?.kind === 'spawn-failed' && server.died) {
        return {
          kind: 'spawn-failed',
          message: `the sandbox helper server running '${file}' for '${request.drvPath}' exited unexpectedly; the builder was killed`,
        };
      }
      if (exit) {
        if (exit.kind !== 'spawn-failed') return exit;
        return spawnFailed(`could not start '${file}': ${exit.message}`, execErrorOf(exit.message));
      }
    } else if (this.#options.launcher === 'helper') {
      return { kind: 'spawn-failed', message: `could not start '${file}': the sandbox helper is unavailable (${this.#helperFailed ?? 'unknown reason'})` };
    }
    return await spawnMerged({
      file,
      args: request.args,
      argv0,
      env: request.env,
      cwd: request.buildDir,
      signal: opts.signal,
      onOutput: opts.onOutput,
    });
  }
}

/** Nix's filter for this architecture, or none where there is none (builds then run unfiltered, as Nix on such a platform). */
function filterOrUndefined(): Buffer | undefined {
  try {
    return nixSeccompFilter();
  } catch {
    return undefined;
  }
}
