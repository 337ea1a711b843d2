/**
 * The build-directory pool (src/platform/build-dir-pool.ts): which directories it takes (the addon's
 * pristineDir), and its drain: the pooled directories are removed and given up in the process's record
 * (build-dirs.ts) with one write of the record for all of them.
 */
import { describe, expect, it, vi } from 'vitest';
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildDirPool } from '../../src/platform/build-dir-pool.js';
import { buildDirRegistry, BUILD_DIR_POOL_PREFIX } from '../../src/platform/build-dirs.js';
import { defaultHelperCacheDir } from '../../src/platform/sandbox-helper.js';
import { nativeDirOps } from '../../src/platform/native-xattrs.js';
import { tempDirs } from '../helpers/nix.js';

// Every write of the record file is counted (build-dirs.ts writes it with writeSync at offset 0).
const writes = vi.hoisted(() => ({ fds: [] as number[] }));
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const writeSync = ((fd: number, ...rest: unknown[]) => {
    writes.fds.push(fd);
    return (real.writeSync as (...a: unknown[]) => number)(fd, ...rest);
  }) as typeof real.writeSync;
  return { ...real, default: { ...real, writeSync }, writeSync };
});

const tmp = tempDirs('realise-build-dir-pool-');
const RECORD = path.join(defaultHelperCacheDir(), 'build-dirs', String(process.pid));

/** The record file's writes among those counted since `from`. */
function recordWrites(from: number): number {
  return writes.fds.slice(from).filter((fd) => fs.readlinkSync(`/proc/self/fd/${fd}`) === RECORD).length;
}

describe('build directory pool', () => {
  it('takes only a directory exactly as made: empty (or holding only an empty `build`), 0700, ours, no extended attributes', async () => {
    const ops = await nativeDirOps();
    if (!ops) return; // (no C compiler: nothing is pooled)
    const base = tmp();
    let k = 0;
    const make = (mode = 0o700, inner?: number) => {
      const d = path.join(base, `d${k++}`);
      fs.mkdirSync(d, { mode });
      fs.chmodSync(d, mode);
      if (inner !== undefined) {
        fs.mkdirSync(path.join(d, 'build'));
        fs.chmodSync(path.join(d, 'build'), inner);
      }
      return d;
    };
    const uid = process.getuid!();
    expect(ops.pristineDir(make(), uid)).toBe(true);
    expect(ops.pristineDir(make(0o755), uid)).toBe(false);
    expect(ops.pristineDir(make(), uid + 1)).toBe(false);
    const withFile = make();
    fs.writeFileSync(path.join(withFile, 'f'), '');
    expect(ops.pristineDir(withFile, uid)).toBe(false);
    expect(ops.pristineDir(make(0o700, 0o700), uid, 'build')).toBe(true);
    expect(ops.pristineDir(make(0o700, 0o700), uid)).toBe(false); // a `build` where none is expected
    expect(ops.pristineDir(make(), uid, 'build')).toBe(false); // no `build`
    expect(ops.pristineDir(make(0o700, 0o755), uid, 'build')).toBe(false);
    const innerFile = make(0o700, 0o700);
    fs.writeFileSync(path.join(innerFile, 'build', 'f'), '');
    expect(ops.pristineDir(innerFile, uid, 'build')).toBe(false);
    const beside = make(0o700, 0o700);
    fs.mkdirSync(path.join(beside, 'other'), { mode: 0o700 });
    expect(ops.pristineDir(beside, uid, 'build')).toBe(false);
    // Many entries (more than one read of the directory): still not pristine, and nothing leaks.
    const many = make(0o700, 0o700);
    for (let i = 0; i < 500; i++) fs.writeFileSync(path.join(many, `${'x'.repeat(100)}${i}`), '');
    expect(ops.pristineDir(many, uid, 'build')).toBe(false);
    const link = path.join(base, 'link');
    fs.symlinkSync(make(), link);
    expect(ops.pristineDir(link, uid)).toBe(false);
    const xattr = make();
    const set = spawnSync('setfattr', ['-n', 'user.x', '-v', '1', xattr]);
    if (set.status === 0) expect(ops.pristineDir(xattr, uid)).toBe(false);
  });

  it('reads paths longer than the room on its stack for them whole (pristineDir, renameNoReplace)', async () => {
    const ops = await nativeDirOps();
    if (!ops) return;
    // Two paths of ~2,500 bytes each (under PATH_MAX): together more than the addon's 2 kB of stack room.
    let deep = tmp();
    for (let i = 0; i < 12; i++) deep = path.join(deep, `${i}${'d'.repeat(200)}`);
    fs.mkdirSync(deep, { recursive: true, mode: 0o700 });
    const from = path.join(deep, 'from');
    const to = path.join(deep, 'to');
    fs.mkdirSync(from, { mode: 0o700 });
    fs.chmodSync(from, 0o700);
    expect(from.length).toBeGreaterThan(2048);
    expect(ops.pristineDir(from, process.getuid!())).toBe(true);
    expect(ops.renameNoReplace(from, to)).toBe(0);
    expect(fs.existsSync(to) && !fs.existsSync(from)).toBe(true);
    fs.mkdirSync(from);
    expect(ops.renameNoReplace(from, to)).toBe(os.constants.errno.EEXIST);
  });

  it('drain removes every pooled directory and writes the record once for them all', async () => {
    if (!(await nativeDirOps())) return; // (no C compiler: nothing is pooled)
    const base = tmp();
    const pool = buildDirPool(base);
    const registry = buildDirRegistry();
    const dirs = [0, 1, 2, 3].map((i) => path.join(base, `nix-build-x${i}.drv-0`));
    for (const [i, d] of dirs.entries()) {
      fs.mkdirSync(d, { mode: 0o700 });
      if (i % 2) fs.mkdirSync(path.join(d, 'build'), { mode: 0o700 });
      registry.add(d);
      expect(await pool.put(d, i % 2 === 1)).toBe(true);
    }
    const pooled = fs.readdirSync(base).filter((n) => n.startsWith(BUILD_DIR_POOL_PREFIX));
    expect(pooled).toHaveLength(4);
    expect(
      fs
        .readFileSync(RECORD, 'utf8')
        .split('\n')
        .filter((l) => l.includes(base)),
    ).toHaveLength(4);
    const from = writes.fds.length;
    await pool.drain();
    expect(recordWrites(from)).toBe(1);
    expect(fs.readdirSync(base)).toEqual([]);
    expect(fs.readFileSync(RECORD, 'utf8')).not.toContain(base);
    expect(pool.size).toBe(0);
  });
});
