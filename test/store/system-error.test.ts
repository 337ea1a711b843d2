/** errno errors in Nix's (glibc's) words: strerror, systemErrorMessage, and the messages built on them. */
import { describe, expect, it } from 'vitest';
import { mkdirSync, openSync, symlinkSync } from 'node:fs';
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
