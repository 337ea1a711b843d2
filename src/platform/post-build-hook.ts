/**
 * Run Nix's post-build hook: the program gets DRV_PATH and OUT_PATHS in its environment; its merged
 * output is reported line by line. A non-zero exit is an error.
 */
import { spawnMerged } from './spawn-merged.js';
import { RealiseError } from '../store/errors.js';

export async function runPostBuildHook(
  program: string,
  opts: { env: Record<string, string>; onLine?: (line: string) => void; signal?: AbortSignal },
): Promise<void> {
  let pending = '';
  const exit = await spawnMerged({
    file: program,
    args: [],
    env: opts.env,
    signal: opts.signal,
    onOutput: (chunk) => {
      pending += chunk.toString('utf8');
      let i;
      while ((i = pending.indexOf('\n')) >= 0) {
        opts.onLine?.(pending.slice(0, i));
        pending = pending.slice(i + 1);
      }
    },
  });
  if (pending) opts.onLine?.(pending);
  if (exit.kind === 'exited' && exit.code === 0) return;
  const why =
    exit.kind === 'exited'
      ? `exit code ${exit.code}`
      : exit.kind === 'signalled'
        ? `signal ${exit.signal}`
        : exit.kind === 'spawn-failed'
          ? exit.message
          : 'aborted';
  throw new RealiseError('post-build-hook-failed', `program '${program}' failed with ${why}`);
}
