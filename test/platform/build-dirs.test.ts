/**
 * The record of build directories in use (src/platform/build-dirs.ts), across a process killed with -9:
 * the next sweep removes exactly the directories that process still had, including after its list got
 * shorter (the file is padded with empty lines rather than truncated), and those it renamed within their
 * base after recording them (a rename is not written: the sweep finds them by device, inode and birth time).
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildDirRegistry } from '../../src/platform/build-dirs.js';
import { tempDirs } from '../helpers/nix.js';

const tmp = tempDirs('realise-build-dirs-');
const MODULE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/platform/build-dirs.ts');

describe('build directory record', () => {
  it('a killed process leaves only the directories it still had, and the next sweep removes those', async () => {
    const base = tmp();
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((n) => path.join(base, `nix-build-${n}.drv-0`));
    for (const x of [a!, b!, c!, d!]) mkdirSync(x);
    // d is renamed into the pool and out again under another name, as a reused build directory is.
    const pooled = path.join(base, '.realise-build-pool-1-0');
    const dAgain = path.join(base, 'nix-build-e.drv-0');
    // b is recorded, then given up (its line is overwritten); a and c stay recorded. b's line is the
    // longest, so a leftover of it would still be a line of its own after a shorter list.
    const script = `
      import { mkdirSync, renameSync } from 'node:fs';
      import { buildDirRegistry } from ${JSON.stringify(MODULE)};
      const r = buildDirRegistry();
      r.add(${JSON.stringify(b + '-with-a-longer-name')});
      r.add(${JSON.stringify(a)});
      r.delete(${JSON.stringify(b + '-with-a-longer-name')});
      r.add(${JSON.stringify(c)});
      r.delete(${JSON.stringify(c)});
      r.add(${JSON.stringify(c)});
      r.add(${JSON.stringify(d)});
      renameSync(${JSON.stringify(d)}, ${JSON.stringify(pooled)});
      r.rename(${JSON.stringify(d)}, ${JSON.stringify(pooled)});
      renameSync(${JSON.stringify(pooled)}, ${JSON.stringify(dAgain)});
      r.rename(${JSON.stringify(pooled)}, ${JSON.stringify(dAgain)});
      // A directory of the recorded name again, not the same one: left alone.
      mkdirSync(${JSON.stringify(d)});
      process.stdout.write('READY\\n');
      setInterval(() => {}, 1000);`;
    mkdirSync(b + '-with-a-longer-name');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        if (d.toString().includes('READY')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`the child exited (${code})`)));
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const removed = await buildDirRegistry().sweep({});
    expect(removed.filter((x) => x.startsWith(base)).sort()).toEqual([a, c, dAgain].sort());
    expect(existsSync(a!) || existsSync(c!) || existsSync(dAgain)).toBe(false);
    expect(readdirSync(base).sort()).toEqual([path.basename(b!), path.basename(b!) + '-with-a-longer-name', path.basename(d!)].sort());
    expect(existsSync(b + '-with-a-longer-name')).toBe(true);
    expect(existsSync(b!)).toBe(true);
  });
});
