/**
 * Directory creation and removal on the thread pool through Node's callback API: one promise per call,
 * where `fs/promises` makes several (and more JavaScript) for the same request. Build directories and log
 * directories are made and removed once per build, and each goal's promises add up over a call.
 */
import { mkdir, rmdir, type MakeDirectoryOptions } from 'node:fs';

export function mkdirOnPool(dir: string, mode: number | MakeDirectoryOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => mkdir(dir, mode, (e) => (e ? reject(e) : resolve())));
}

export function rmdirOnPool(dir: string): Promise<void> {
  return new Promise<void>((resolve, reject) => rmdir(dir, (e) => (e ? reject(e) : resolve())));
}
