/**
 * The command's standard output and error as its hot paths write them (results, messages, --help and
 * --version). In the `realise` process (src/cli/main.ts calls writeDirectly()) they are written with
 * write(2) on descriptors 1 and 2: making process.stdout or process.stderr loads Node's stream machinery
 * (and `net` for a pipe, `tty` for a terminal), 1.5-3.5 ms each at every start on a quiet machine, several
 * times that under load, for a command that writes a few lines. Anywhere else (run.ts's main called in
 * process, as the tests do) they go through process.stdout and process.stderr, as any other code's output.
 *
 * Something may make one of the streams (another command's code, a library warning; Node's own net module
 * asks for process.stderr whenever a socket, such as a builder's output pipe, is destroyed). Its writes
 * are still made directly while the stream has nothing waiting to be written (a write through it that a
 * full pipe held back): output keeps its order, as every direct write was complete when it returned, and a
 * build's 200 `building '…'...` lines do not each go through the stream's machinery. A descriptor that would block (a non-blocking pipe that is
 * full) hands the rest to the stream too, which waits for it. A reader that went away (EPIPE) or any other
 * failed write ends nothing: as Nix, which ignores them, the command goes on and exits with its own status.
 */
import { fstatSync, writeSync } from 'node:fs';

/** One output: descriptor `fd`, whose stream `stream()` returns (made when first asked for). */
export class Output {
  /** Written with write(2) (while the stream, once made, has nothing waiting). */
  direct = false;
  /** The stream, once something made it (writeDirectly's getter tells). */
  private made: { readonly writableLength: number } | undefined;
  /** The reader went away (or the descriptor failed): later output is dropped, as the stream would. */
  private failed = false;

  constructor(
    private readonly fd: number,
    readonly stream: () => NodeJS.WritableStream & { isTTY?: boolean },
  ) {}

  write(data: string | Uint8Array): void {
    if (!this.direct || (this.made !== undefined && this.made.writableLength > 0)) {
      this.stream().write(data);
      return;
    }
    if (this.failed) return;
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    try {
      while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') {
        this.failed = true;
        return;
      }
      this.direct = false;
      this.stream().write(bytes.subarray(off));
    }
  }

  /** Something made the stream: direct writes go on only while it has nothing waiting to be written. */
  streamMade(stream: { readonly writableLength: number }): void {
    this.made = stream;
  }

  /**
   * Whether the descriptor is a terminal. Written directly, a descriptor that is not a character device
   * (a pipe, a file) is not one, and no stream is made to say so; otherwise the stream is asked.
   */
  get isTTY(): boolean {
    if (this.direct) {
      try {
        if (!fstatSync(this.fd).isCharacterDevice()) return false;
      } catch {
        return false;
      }
    }
    return !!this.stream().isTTY;
  }

  /** The terminal's width (the stream's), for a status line. */
  get columns(): number | undefined {
    return (this.stream() as { columns?: number }).columns;
  }
}

export const stdout = new Output(1, () => process.stdout);
export const stderr = new Output(2, () => process.stderr);

/**
 * For the `realise` process: write stdout and stderr directly (see Output). Each
 * stream, once made by anyone, ignores write errors (EPIPE: a reader that went away, as `| head -1`).
 */
export function writeDirectly(): void {
  for (const [out, name] of [
    [stdout, 'stdout'],
    [stderr, 'stderr'],
  ] as const) {
    const d = Object.getOwnPropertyDescriptor(process, name);
    const get = d?.get;
    if (!d?.configurable || !get) continue;
    let made: NodeJS.WriteStream | undefined;
    Object.defineProperty(process, name, {
      configurable: true,
      enumerable: d.enumerable ?? true,
      get() {
        if (!made) {
          made = get.call(process) as NodeJS.WriteStream;
          made.on('error', () => {});
          out.streamMade(made);
        }
        return made;
      },
    });
    out.direct = true;
  }
}
