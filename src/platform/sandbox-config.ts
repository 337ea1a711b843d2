/**
 * Nix's sandbox settings as pure functions: `sandbox` modes, `sandbox-paths` syntax, `__impureHostDeps`
 * against `allowed-impure-host-deps`, and the pre-build hook's `extra-sandbox-paths` protocol.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxError } from './sandbox-errors.js';

/** Nix's `sandbox` setting: `true`, `false` or `'relaxed'`. */
export type SandboxMode = boolean | 'relaxed';

/** One exposed host path: `target` inside the sandbox, `source` on the host. */
export interface SandboxPath {
  readonly source: string;
  readonly optional: boolean;
}

export interface UseSandboxInput {
  readonly mode: SandboxMode;
  /** The derivation's `__noChroot` attribute. */
  readonly noChroot: boolean;
  /** Fixed-output (or otherwise impure) derivations may skip the sandbox in relaxed mode. */
  readonly impure: boolean;
  /** The store's logical directory differs from its physical one (a chroot store): it always builds sandboxed on Linux. */
  readonly diverted: boolean;
  readonly drvPath: string;
}

/**
 * Whether a build runs in the sandbox, exactly as Nix's startBuilder decides: `true` always (and
 * `__noChroot` is an error), `false` never, `'relaxed'` unless the derivation is impure (fixed-output)
 * or sets `__noChroot`. A store whose logical dir differs from its physical dir always uses it.
 */
export function useSandbox(input: UseSandboxInput): boolean {
  let use: boolean;
  if (input.mode === true) {
    if (input.noChroot) {
      throw new SandboxError(
        'sandbox-no-chroot-forbidden',
        `derivation '${input.drvPath}' has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'`,
        {
          hint: "set the option 'sandbox' to 'relaxed' to let such derivations build outside the sandbox",
        },
      );
    }
    use = true;
  } else if (input.mode === false) use = false;
  else use = !input.impure && !input.noChroot;
  return use || input.diverted;
}

/**
 * Parse `sandbox-paths` / `extra-sandbox-paths` entries: `path`, `target=source`, and a trailing `?`
 * making it optional (skipped when the source does not exist). As in Nix, the entries are a set: taken
 * once each, in sorted order, so of two entries for one target the greater string wins, whatever their
 * order. A relative source is taken from the working directory (a missing one is Nix's error, or skipped
 * when optional); an entry with a relative target is skipped (Nix mounts it beside the chroot, unseen).
 */
export function parseSandboxPaths(entries: Iterable<string>): Map<string, SandboxPath> {
  const out = new Map<string, SandboxPath>();
  for (let entry of [...new Set(entries)].sort()) {
    if (entry === '') continue;
    let optional = false;
    if (entry.endsWith('?')) {
      optional = true;
      entry = entry.slice(0, -1);
    }
    const eq = entry.indexOf('=');
    const target = eq === -1 ? entry : entry.slice(0, eq);
    const source = eq === -1 ? entry : entry.slice(eq + 1);
    if (!path.isAbsolute(target) || !path.isAbsolute(source)) {
      // Nix takes a relative source from its working directory, and appends a relative target to the
      // chroot's name (a directory beside the chroot, which the builder never sees).
      if (!fs.existsSync(source)) {
        if (optional) continue;
        throw new SandboxError('sandbox-bad-config', `getting attributes of path '${source}': No such file or directory`, {
          hint: "sandbox paths are absolute: '/path', '/target=/source', or with a trailing '?' for optional ones",
        });
      }
      if (!path.isAbsolute(target)) continue;
    }
    out.set(target, { source: path.resolve(source), optional });
  }
  return out;
}

/** Split Nix's whitespace-separated `sandbox-paths` option value into entries. */
export function splitSandboxPathsOption(value: string): string[] {
  return value.split(/\s+/).filter(Boolean);
}

/** Nix's canonPath without resolving symlinks: absolute, no `.`/`..`/double slashes, no trailing slash. */
function canon(p: string): string {
  return path.posix.normalize('/' + p).replace(/\/+$/, '') || '/';
}

function isInDir(p: string, dir: string): boolean {
  return dir === '/' ? p !== '/' : p.startsWith(dir + '/');
}

/**
 * Check a derivation's `__impureHostDeps` against `allowed-impure-host-deps` (canonical paths, no
 * symlink resolution, a dep is allowed when equal to or under an allowed prefix) and return them as
 * sandbox paths. Throws `sandbox-path-not-allowed` naming the first offending path.
 */
export function checkImpureHostDeps(drvPath: string, impureHostDeps: readonly string[], allowedPrefixes: readonly string[]): Map<string, SandboxPath> {
  const allowed = allowedPrefixes.map(canon);
  const out = new Map<string, SandboxPath>();
  for (const dep of impureHostDeps) {
    const c = canon(dep);
    if (!allowed.some((a) => c === a || isInDir(c, a))) {
      throw new SandboxError('sandbox-path-not-allowed', `derivation '${drvPath}' requested impure path '${dep}', but it was not in allowed-impure-host-deps`, {
        hint: `add a prefix of '${dep}' to the 'allowed-impure-host-deps' option if the build may use it`,
      });
    }
    out.set(dep, { source: dep, optional: false });
  }
  return out;
}

/**
 * Parse the output of a pre-build hook (Nix's protocol): blocks starting with a line
 * `extra-sandbox-paths` (or `extra-chroot-dirs`) followed by `target[=source]` lines, ended by an
 * empty line. Any other command is an error.
 */
export function parsePreBuildHookOutput(output: string): Map<string, SandboxPath> {
  const out = new Map<string, SandboxPath>();
  let inPaths = false;
  const lines = output.split('\n');
  lines.pop(); // Nix only looks at complete lines
  for (const line of lines) {
    if (!inPaths) {
      if (line === 'extra-sandbox-paths' || line === 'extra-chroot-dirs') inPaths = true;
      else
        throw new SandboxError('sandbox-bad-config', `unknown pre-build hook command '${line}'`, {
          hint: "the hook may only print 'extra-sandbox-paths' blocks",
        });
    } else if (line === '') inPaths = false;
    else {
      const eq = line.indexOf('=');
      if (eq === -1) out.set(line, { source: line, optional: false });
      else out.set(line.slice(0, eq), { source: line.slice(eq + 1), optional: false });
    }
  }
  return out;
}
