/**
 * Run the `realise` command in this process (src/cli/run.ts's main), capturing what it writes to stdout
 * and stderr, optionally with extra environment variables set for the call. Faster than spawning
 * bin/realise.js; tests about the process itself (signals, pipes) spawn it instead.
 */
import { main } from '../../src/cli/run.js';

export interface CliRun {
  stdout: string;
  stderr: string;
  status: number;
  /** What was written, as bytes (builder output that is not UTF-8 passes through unchanged). */
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
}

export async function realiseInProcess(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(env)) {
    saved[k] = process.env[k];
    process.env[k] = env[k];
  }
  const out = process.stdout.write.bind(process.stdout);
  const err = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => {
    stdout.push(Buffer.from(c));
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => {
    stderr.push(Buffer.from(c));
    return true;
  }) as typeof process.stderr.write;
  try {
    const status = await main(args);
    const [stdoutBytes, stderrBytes] = [Buffer.concat(stdout), Buffer.concat(stderr)];
    return { stdout: stdoutBytes.toString(), stderr: stderrBytes.toString(), status, stdoutBytes, stderrBytes };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
    for (const k of Object.keys(saved)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

/**
 * Resolves once the `realise` process `pid` has its interrupt handlers (bin/realise.js installs SIGINT,
 * SIGTERM, then SIGHUP): its SigCgt mask in /proc has SIGHUP's bit. (SIGINT and SIGTERM cannot tell: Node
 * catches them from its start, to restore the terminal before dying of them.) A signal sent after that
 * reaches the command's handler however slowly the process started.
 */
export async function interruptHandlersInstalled(pid: number, timeoutMs = 30_000): Promise<void> {
  const { readFileSync } = await import('node:fs');
  const bit = 1n << BigInt(1 /* SIGHUP */ - 1);
  const until = Date.now() + timeoutMs;
  for (;;) {
    let mask = 0n;
    try {
      mask = BigInt(`0x${/^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '0'}`);
    } catch {
      /* not there yet, or gone */
    }
    if (mask & bit) return;
    if (Date.now() > until) throw new Error(`process ${pid} did not install its interrupt handlers within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
