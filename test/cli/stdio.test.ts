/**
 * The `realise` process writes its results and messages straight to descriptors 1 and 2 (src/cli/stdio.ts)
 * rather than through Node's streams, which cost milliseconds to make at every start. What must hold:
 * a descriptor that would block hands the rest, and everything after it, to the stream (in order); a
 * reader that went away ends nothing; and in the real process the output is byte for byte what it was,
 * whatever stdout and stderr are (a file, a pipe, a closed pipe).
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Output } from '../../src/cli/stdio.js';
import { tempDir } from '../helpers/nix.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const LAUNCHER = path.join(REPO, 'bin/realise');

/** A stream that records what it is given. */
function recorder(): { stream: Writable; chunks: Buffer[] } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      cb();
    },
  });
  return { stream, chunks };
}

describe('src/cli/stdio.ts: direct writes', () => {
  it('a full non-blocking pipe (EAGAIN): the rest and every later write go to the stream, in order', () => {
    const fifo = path.join(tempDir('realise-stdio-'), 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    try {
      // Fill the pipe, then read one page out of it: room for one page.
      for (const page = Buffer.alloc(4096, 0x2e); ;) {
        try {
          writeSync(writer, page);
        } catch (e) {
          expect((e as NodeJS.ErrnoException).code).toBe('EAGAIN');
          break;
        }
      }
      const buf = Buffer.alloc(65536);
      expect(readSync(reader, buf, 0, 4096, null)).toBe(4096);
      const { stream, chunks } = recorder();
      const out = new Output(writer, () => stream);
      out.direct = true;
      const text = 'x'.repeat(10_000);
      out.write(text);
      out.write('after');
      expect(out.direct).toBe(false);
      // Everything in the pipe (a non-blocking reader: EAGAIN once it is empty).
      let piped = '';
      const readSome = () => {
        try {
          return readSync(reader, buf, 0, buf.length, null);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
          throw e;
        }
      };
      for (let n; (n = readSome()) > 0;) piped += buf.subarray(0, n).toString('latin1');
      const direct = piped.replace(/^\.+/, '');
      const streamed = Buffer.concat(chunks).toString();
      // What fitted went to the pipe, the rest and the next write to the stream.
      expect(direct.length).toBeGreaterThan(0);
      expect(streamed.length).toBeGreaterThan('after'.length);
      expect(direct + streamed).toBe(text + 'after');
    } finally {
      closeSync(writer);
      closeSync(reader);
    }
  });

  it('a reader that went away (EPIPE): the write and later ones are dropped, nothing thrown, the stream is not made', () => {
    const fifo = path.join(tempDir('realise-stdio-'), 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    closeSync(reader);
    let made = false;
    const out = new Output(writer, () => {
      made = true;
      return recorder().stream;
    });
    out.direct = true;
    try {
      out.write('lost\n');
      out.write('lost too\n');
    } finally {
      closeSync(writer);
    }
    expect(made).toBe(false);
  });

  it('a stream something made: direct writes go on while it has nothing waiting, and queue behind a write it holds back', () => {
    const file = path.join(tempDir('realise-stdio-'), 'out');
    const fd = openSync(file, 'w');
    const held: (() => void)[] = [];
    const chunks: Buffer[] = [];
    // A stream whose writes complete only when released (as a full pipe holds them back).
    const stream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        held.push(() => {
          writeSync(fd, chunk);
          chunks.push(Buffer.from(chunk));
          cb();
        });
      },
    });
    try {
      const out = new Output(fd, () => stream);
      out.direct = true;
      out.write('a');
      out.streamMade(stream);
      out.write('b');
      expect([readFileSync(file, 'utf8'), chunks.length]).toEqual(['ab', 0]);
      // Something writes through the stream, which holds it back: later writes go behind it.
      stream.write('c');
      out.write('d');
      expect(readFileSync(file, 'utf8')).toBe('ab');
      while (held.length) held.shift()!();
      expect(stream.writableLength).toBe(0);
      out.write('e');
      expect(readFileSync(file, 'utf8')).toBe('abcde');
      expect(Buffer.concat(chunks).toString()).toBe('cd');
    } finally {
      closeSync(fd);
    }
  });

  it('not direct (run.ts in process, as the tests run it): through the stream, as before', () => {
    const { stream, chunks } = recorder();
    const out = new Output(1, () => stream);
    out.write('a');
    out.write(Buffer.from('b'));
    expect(Buffer.concat(chunks).toString()).toBe('ab');
  });
});

describe('the realise process: output on files, pipes and closed pipes', () => {
  const help = spawnSync(process.execPath, [path.join(REPO, 'bin/realise.js'), '--help'], { encoding: 'utf8' });

  it('--help and --version: the same bytes to a file and to a pipe, nothing on stderr', () => {
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^usage: realise COMMAND/);
    const file = path.join(tempDir('realise-stdio-'), 'out');
    const fd = openSync(file, 'w');
    const toFile = spawnSync(LAUNCHER, ['--help'], { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8' });
    closeSync(fd);
    expect([toFile.status, toFile.stderr, readFileSync(file, 'utf8')]).toEqual([0, '', help.stdout]);
    const v = spawnSync(LAUNCHER, ['--version'], { encoding: 'utf8' });
    expect([v.status, v.stderr, v.stdout]).toEqual([0, '', 'realise (realise) 0.1.0, mirroring nix-store (Nix) 2.8.0\n']);
  });

  it('stdout closed by its reader before the answer: exit status 0, no error, no stack trace', async () => {
    const ended = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(LAUNCHER, ['--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      child.on('close', (status) => resolve({ status, stderr }));
    });
    expect(ended).toEqual({ status: 0, stderr: '' });
  });

  it('a usage error: its message on stderr (a pipe, then a file), exit status 1', () => {
    const r = spawnSync(LAUNCHER, ['--no-such-flag'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe("error: unknown flag '--no-such-flag'\nTry 'realise --help' for more information.\n");
    const file = path.join(tempDir('realise-stdio-'), 'err');
    const fd = openSync(file, 'w');
    const toFile = spawnSync(LAUNCHER, ['--no-such-flag'], { stdio: ['ignore', 'pipe', fd] });
    closeSync(fd);
    expect([toFile.status, readFileSync(file, 'utf8')]).toEqual([1, r.stderr]);
  });
});
