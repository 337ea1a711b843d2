/** errno errors in Nix's (glibc's) words: strerror, systemErrorMessage, and the messages built on them. */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, openSync, symlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { getSystemErrorName } from 'node:util';
import * as path from 'node:path';
import { strerror, systemErrorMessage } from '../../src/store/system-error.js';
import { lockFiles } from '../../src/store/locks.js';
import { tempDirs } from '../helpers/nix.js';

const tmp = tempDirs('realise-syserr-');

const thrown = (f: () => unknown): unknown => {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('nothing thrown');
};

describe('strerror', () => {
  it("words an errno as glibc does: libuv's text with a capital, or glibc's where libuv's differs", () => {
    const d = tmp();
    expect(strerror(thrown(() => openSync(path.join(d, 'missing'), 'r')))).toBe('No such file or directory');
    mkdirSync(path.join(d, 'x'));
    // libuv: "file already exists"; glibc: "File exists".
    expect(strerror(thrown(() => mkdirSync(path.join(d, 'x'))))).toBe('File exists');
    symlinkSync('loop', path.join(d, 'loop'));
    // libuv: "too many symbolic links encountered".
    expect(strerror(thrown(() => openSync(path.join(d, 'loop'), 'r')))).toBe('Too many levels of symbolic links');
  });
  it("words every errno Node knows as glibc's strerror does (perl's $! is the oracle), libuv's code named or not", () => {
    const numbers = [...new Set(Object.values(constants.errno))].sort((a, b) => a - b);
    const glibc = execFileSync('perl', ['-e', 'for (@ARGV) { $! = $_; print "$!\\n" }', ...numbers.map(String)], {
      encoding: 'utf8',
      env: { ...process.env, LC_ALL: 'C' },
    }).split('\n');
    const ours = numbers.map((n) => {
      // As Node makes one: a negative errno, and libuv's name ("Unknown system error -122" for EDQUOT).
      const e = Object.assign(new Error('x'), { errno: -n, code: getSystemErrorName(-n) });
      return strerror(e);
    });
    expect(ours).toEqual(glibc.slice(0, numbers.length));
    expect(glibc.slice(0, numbers.length)).toContain('Disk quota exceeded');
  });
  it('is undefined for an error without an errno', () => {
    expect(strerror(new Error('plain'))).toBeUndefined();
    expect(strerror('a string')).toBeUndefined();
    expect(strerror(undefined)).toBeUndefined();
  });
  it("systemErrorMessage and the lock file's message use it, whatever the path holds", async () => {
    const d = path.join(tmp(), "a': b");
    const e = thrown(() => openSync(path.join(d, 'f'), 'r'));
    expect(systemErrorMessage(e)).toBe(`opening file '${d}/f': No such file or directory`);
    await expect(lockFiles([path.join(d, 'f')])).rejects.toThrow(`opening lock file '${d}/f.lock': No such file or directory`);
  });
});
