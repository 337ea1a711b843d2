/**
 * Nix's built-in builders (`builtin:fetchurl`, `builtin:buildenv`, `builtin:unpack-channel`) behind the
 * Sandbox call: the scheduler builds a built-in as any other derivation (output locks, scratch paths,
 * build log, time limits, registration and the fixed-output check are its own), and `run()` does the
 * work here, in the engine, instead of in a process. Outputs are written at their physical place
 * (`isolated`), their paths logical in whatever the builder records (symlink targets).
 *
 * As Nix's do, a built-in writes its activities and warnings as `@nix` lines into the build log, and
 * on failure its error, then "exits" with status 1.
 */
import { readFileSync } from 'node:fs';
import type { Agent } from 'undici';
import type { Sandbox, SandboxExit, SandboxRequest, SandboxRunOptions } from '../platform/sandbox.js';
import { builtinBuildenv } from './buildenv.js';
import { fetchurlAgent } from './download.js';
import { builtinFetchurl } from './fetchurl.js';
import { BuiltinFailure, errorLogText, hintfmt, nixErrorWords, plainMessage, warningLogLine, type NixMessage } from './log.js';
import { parseNetrc, type NetrcEntry } from './netrc.js';
import { builtinUnpackChannel } from './unpack-channel.js';

export interface BuiltinBuildersOptions {
  /** Nix's `hashed-mirrors`: tried first for flat fixed-output fetches. @default [] */
  readonly hashedMirrors?: readonly string[];
  /** Nix's `netrc-file`, read at the start of each fetch (a missing file means no credentials). @default '/etc/nix/netrc' */
  readonly netrcFile?: string;
  /** Nix's `download-attempts`. @default 5 */
  readonly downloadAttempts?: number;
  /** First retry delay of a transient download failure, in ms (doubling, as Nix's). @default 250 */
  readonly retryBaseMs?: number;
  /** Download progress: bytes received and bytes announced, as increments. */
  readonly onDownloadProgress?: (doneDelta: number, expectedDelta: number) => void;
  /** A warning of a built-in (also written into its build log as Nix does). */
  readonly onWarning?: (message: string) => void;
}

/** Whether a derivation's builder is one of Nix's built-ins. */
export function isBuiltinBuilder(builder: string): boolean {
  return builder.startsWith('builtin:');
}

/** What the plain and the sandboxed instance share: the connection pool. */
interface Shared {
  agent: Agent | undefined;
}

export class BuiltinBuilders implements Sandbox {
  readonly name = 'builtin';
  readonly isolated = true;
  readonly #options: BuiltinBuildersOptions;
  readonly #shared: Shared;
  readonly #sandboxed: boolean;
  #other: BuiltinBuilders | undefined;

  /**
   * `sandboxed`: the built-in sees what a sandboxed builder would (Nix runs built-ins in the build's
   * sandbox): a `file://` URL can name only the input closure and the extra sandbox paths.
   */
  constructor(options: BuiltinBuildersOptions = {}, sandboxed = false, shared: Shared = { agent: undefined }) {
    this.#options = options;
    this.#sandboxed = sandboxed;
    this.#shared = shared;
  }

  /** The instance for sandboxed (`true`) or unsandboxed builds, sharing this one's options and connections. */
  withSandbox(sandboxed: boolean): BuiltinBuilders {
    if (sandboxed === this.#sandboxed) return this;
    this.#other ??= new BuiltinBuilders(this.#options, sandboxed, this.#shared);
    this.#other.#other = this;
    return this.#other;
  }

  async run(request: SandboxRequest, opts: SandboxRunOptions = {}): Promise<SandboxExit> {
    const signal = opts.signal ?? new AbortController().signal;
    if (signal.aborted) return { kind: 'aborted' };
    opts.onSetUp?.();
    const write = (text: string) => opts.onOutput?.(Buffer.from(text));
    const warn = (m: NixMessage) => {
      write(warningLogLine(m));
      this.#options.onWarning?.(m.plain);
    };
    const { storeDir, realStoreDir } = request;
    const real = (p: string) => (p === storeDir || p.startsWith(storeDir + '/') ? realStoreDir + p.slice(storeDir.length) : p);
    const env = request.env;
    const getAttr = (name: string) => {
      const v = env[name];
      if (v === undefined) throw new BuiltinFailure(hintfmt("attribute '%s' missing", name));
      return v;
    };
    try {
      switch (request.builder) {
        case 'builtin:fetchurl': {
          let lastDone = 0;
          let lastExpected = 0;
          await builtinFetchurl(getAttr, env, {
            signal,
            env,
            real,
            log: write,
            onWarning: warn,
            localPath: this.#sandboxed ? (p) => visibleInSandbox(request, p) : real,
            agent: (this.#shared.agent ??= fetchurlAgent()),
            netrc: readNetrc(this.#options.netrcFile ?? '/etc/nix/netrc'),
            attempts: this.#options.downloadAttempts ?? 5,
            retryBaseMs: this.#options.retryBaseMs ?? 250,
            hashedMirrors: this.#options.hashedMirrors ?? [],
            onProgress: (done, expected) => {
              // A new download (a retry, or the main URL after a mirror) starts from zero again.
              if (done < lastDone) lastDone = lastExpected = 0;
              this.#options.onDownloadProgress?.(done - lastDone, expected - lastExpected);
              lastDone = done;
              lastExpected = expected;
            },
          });
          break;
        }
        case 'builtin:buildenv':
          await builtinBuildenv(getAttr, { real, warn });
          break;
        case 'builtin:unpack-channel':
          await builtinUnpackChannel(getAttr, real, signal);
          break;
        default:
          throw new BuiltinFailure(hintfmt("unsupported builtin builder '%1%'", request.builder.slice('builtin:'.length)));
      }
      return signal.aborted ? { kind: 'aborted' } : { kind: 'exited', code: 0 };
    } catch (e) {
      if (signal.aborted) return { kind: 'aborted' };
      if (e instanceof BuiltinFailure && e.bare) write(`${e.nixMessage.plain}\n`);
      else write(errorLogText(e instanceof BuiltinFailure ? e.nixMessage : nixErrorWords(e)));
      return { kind: 'exited', code: 1 };
    }
  }

  /** Close the connection pool of the downloads. */
  async close(): Promise<void> {
    const a = this.#shared.agent;
    this.#shared.agent = undefined;
    await a?.close();
  }
}

/**
 * The host file a sandboxed builder reads at `p`: in the input closure (at its physical place) or under
 * an extra sandbox path (at its source); anything else does not exist in the sandbox.
 */
function visibleInSandbox(request: SandboxRequest, p: string): string {
  const under = (root: string) => p === root || p.startsWith(root.endsWith('/') ? root : root + '/');
  if (request.inputPaths.some(under)) return request.realStoreDir + p.slice(request.storeDir.length);
  for (const [target, { source }] of request.extraPaths ?? []) {
    if (under(target)) return source + p.slice(target.length);
  }
  throw Object.assign(new Error(`'${p}' is not in the sandbox`), { code: 'ENOENT' });
}

/** Nix reads the netrc file as the build starts; a file it cannot read means no credentials. */
function readNetrc(file: string): NetrcEntry[] {
  try {
    return parseNetrc(readFileSync(file, 'utf8'));
  } catch {
    return [];
  }
}
