/**
 * Spawn one process in its own process group with stdout and stderr joined into one stream, stdin on
 * /dev/null, as Nix runs a builder (one `builderOut` for both). Shared by NoSandbox and LinuxSandbox.
 *
 * Node has no pipe(2); its stdio "pipes" are already Unix socket pairs (libuv). To give the child one
 * descriptor on fds 1 and 2 we make our own connected Unix socket pair (an abstract-namespace listener,
 * so nothing touches the file system) and hand the same end to the child for both.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { spawnFailed, type SandboxExit } from './sandbox.js';
import { strerror } from '../store/system-error.js';

export interface SpawnMergedOptions {
  readonly file: string;
  readonly args: readonly string[];
  /** argv[0] as the program sees it. */
  readonly argv0?: string;
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly signal?: AbortSignal | undefined;
  readonly onOutput?: ((chunk: Buffer) => void) | undefined;
  /** Extra descriptors for the child (index 3 onward), e.g. a pipe for bwrap's `--info-fd`. */
  readonly extraStdio?: readonly ('pipe' | 'ignore')[];
  /** Called right after a successful spawn with the child's extra stdio streams. */
  readonly onSpawn?: (child: import('node:child_process').ChildProcess) => void;
}

/** A connected pair of Unix stream sockets: `[ours, theirs]`. */
export async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const name = `\0realise-${process.pid}-${randomBytes(8).toString('hex')}`;
  // Abstract sockets are visible to every process in the network namespace: only the connection that
  // presents our random token is ours.
  const token = randomBytes(16);
  const server = net.createServer();
  try {
    const accepted = new Promise<net.Socket>((resolve, reject) => {
      server.on('connection', (sock) => {
        let buf = Buffer.alloc(0);
        const onData = (d: Buffer): void => {
          buf = Buffer.concat([buf, d]);
          if (buf.length < token.length) return;
          sock.off('data', onData);
          sock.pause();
          if (buf.length === token.length && buf.equals(token)) resolve(sock);
          else sock.destroy();
        };
        sock.on('data', onData);
        sock.on('error', () => {});
      });
      server.once('error', reject);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(name, () => resolve());
    });
    const client = net.connect(name);
    await new Promise<void>((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
    });
    client.write(token);
    const ours = await accepted;
    return [ours, client];
  } finally {
    server.close();
  }
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/**
 * Run the process to completion: until it has exited and its output has ended, as Nix waits for a
 * builder's log to end (a background process that keeps the output open is waited for, and logged).
 * Then its process group is killed (stragglers), as Nix does. Abort kills the whole process group with
 * SIGKILL and resolves `{ kind: 'aborted' }`; a failure to start resolves `spawn-failed`.
 */
export async function spawnMerged(opts: SpawnMergedOptions): Promise<SandboxExit> {
  if (opts.signal?.aborted) return { kind: 'aborted' };
  const [ours, theirs] = await socketPair();
  // We only read; the child only writes.
  let child: import('node:child_process').ChildProcess;
  // Nix opens /dev/null read-write for the builder's stdin.
  const devNull = openSync('/dev/null', 'r+');
  try {
    child = spawn(opts.file, [...opts.args], {
      argv0: opts.argv0 ?? opts.file,
      env: { ...opts.env },
      cwd: opts.cwd,
      detached: true, // setsid(): own session and process group
      stdio: [devNull, theirs, theirs, ...(opts.extraStdio ?? [])],
    });
  } catch (e) {
    ours.destroy();
    theirs.destroy();
    return { kind: 'spawn-failed', message: `could not start '${opts.file}': ${(e as Error).message}` };
  } finally {
    closeSync(devNull);
  }
  theirs.destroy(); // the child holds its own copy

  return await new Promise<SandboxExit>((resolve) => {
    let settled = false;
    let aborted = false;
    let exit: SandboxExit | undefined;
    let eof = false;

    const finish = (r: SandboxExit): void => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      ours.destroy();
      resolve(r);
    };
    const maybeDone = (): void => {
      if (exit && (eof || aborted)) finish(aborted ? { kind: 'aborted' } : exit);
    };
    const onAbort = (): void => {
      aborted = true;
      killGroup(child.pid);
      maybeDone();
    };

    // As Nix: the end of the output is the end of the build. A process still running then (it closed its
    // stdout and stderr) is killed with its group, and its status says so; what the process left running
    // in its group is killed too.
    const onEof = (): void => {
      if (eof) return;
      eof = true;
      if (!settled) killGroup(child.pid);
      maybeDone();
    };
    ours.on('data', (chunk: Buffer) => {
      if (!aborted) opts.onOutput?.(chunk);
    });
    ours.on('end', onEof);
    ours.on('close', onEof);
    ours.on('error', onEof);
    ours.resume();

    child.once('error', (e: NodeJS.ErrnoException) => {
      // Emitted when the exec fails (ENOENT, EACCES, ...); no 'exit' follows in that case.
      if (child.pid === undefined) {
        finish(aborted ? { kind: 'aborted' } : spawnFailed(`could not start '${opts.file}': ${e.message}`, execErrorFrom(e, opts.file, opts.cwd)));
      }
    });
    child.once('exit', (code, sig) => {
      exit = sig !== null ? { kind: 'signalled', signal: sig } : { kind: 'exited', code: code ?? -1 };
      maybeDone();
    });
    if (child.pid !== undefined) opts.onSpawn?.(child);

    if (opts.signal) {
      if (opts.signal.aborted) onAbort();
      else opts.signal.addEventListener('abort', onAbort, { once: true });
    }
  });
}

/** errno codes with which the child's execve fails (rather than its fork or set-up). */
const EXEC_ERRNOS = new Set(['ENOENT', 'EACCES', 'ENOEXEC', 'ENOTDIR', 'ELOOP', 'ETXTBSY', 'ENAMETOOLONG', 'E2BIG', 'EISDIR', 'EPERM']);

/**
 * Nix's wording of a failed exec of the builder (`executing '<file>': <strerror>`), when `e` is one; a
 * missing working directory fails with ENOENT too, so that case (and a fork failure) is not one.
 */
function execErrorFrom(e: NodeJS.ErrnoException, file: string, cwd: string | undefined): string | undefined {
  if (!e.code || !EXEC_ERRNOS.has(e.code)) return undefined;
  if (cwd !== undefined && !existsSync(cwd)) return undefined;
  const text = strerror(e);
  return text && `executing '${file}': ${text}`;
}
