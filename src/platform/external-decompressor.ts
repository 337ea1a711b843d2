/**
 * Decompress a byte stream with an external program (e.g. Debian's `bzip2 -dc`). Lives in src/platform
 * because only this layer (and src/remote) may start child processes; src/substituter uses it for
 * bzip2-compressed NARs of old binary caches, where JS decoders are 2–5× slower and buffer everything.
 */
import { Readable } from 'node:stream';

export class ExternalDecompressorError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | undefined,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
    this.name = 'ExternalDecompressorError';
  }
}

/**
 * Pipe `source` through `command args` and yield its stdout. Throws ExternalDecompressorError when the
 * program fails (corrupt or truncated input) or cannot be started; `signal` kills it.
 */
export async function* decompressWithProgram(
  command: string,
  args: readonly string[],
  source: AsyncIterable<Uint8Array>,
  opts: { signal?: AbortSignal } = {},
): AsyncGenerator<Uint8Array> {
  // execa is loaded here, on first use: importing it costs tens of ms of start-up.
  const { execa } = await import('execa');
  const child = execa(command, [...args], {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    encoding: 'buffer',
    reject: false,
    stripFinalNewline: false,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
  });
  const input = Readable.from(source, { objectMode: false });
  let inputError: unknown;
  input.on('error', (e) => {
    inputError = e;
    child.kill();
  });
  child.stdin!.on('error', () => {
    /* EPIPE when the program exits early; reported through its exit code */
  });
  input.pipe(child.stdin!);
  let completed = false;
  try {
    for await (const chunk of child.stdout! as AsyncIterable<Buffer>) yield chunk;
    const r = await child;
    completed = true;
    if (inputError) throw inputError;
    if (r.failed) {
      const stderr = Buffer.isBuffer(r.stderr) ? r.stderr.toString('utf8') : String(r.stderr ?? '');
      throw new ExternalDecompressorError(
        `'${command} ${args.join(' ')}' failed (${r.isCanceled ? 'cancelled' : `exit ${r.exitCode ?? r.signal}`}): ${stderr.trim() || r.shortMessage}`,
        r.exitCode,
        { cause: r.cause },
      );
    }
  } finally {
    if (!completed) {
      input.destroy();
      child.kill();
      await child.catch(() => undefined);
    }
  }
}
