/**
 * moveOutputsOut, on its own (no sandbox needed): what the builder left in the chroot's store dir goes to
 * the physical store path, replacing whatever is there, whatever the kinds of both; an output the builder
 * did not make is not reported and leaves the physical path alone. A read-only output directory moves too
 * (as an ordinary user, rename needs it writable for a moment).
 */
import { chmodSync, lstatSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync, readlinkSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { moveOutputsOut, type ChrootLayout } from '../../src/platform/chroot.js';
import { tempDir } from '../helpers/nix.js';

function setup(): { layout: ChrootLayout; real: string; inside: (b: string) => string; dest: (b: string) => string } {
  const dir = tempDir('realise-move-outputs-');
  const real = path.join(dir, 'store');
  const root = path.join(real, 'x.drv.chroot');
  const layout = { root, storeDir: path.join(root, 'nix/store') };
  mkdirSync(layout.storeDir, { recursive: true });
  return { layout, real, inside: (b) => path.join(layout.storeDir, b), dest: (b) => path.join(real, b) };
}

describe('moveOutputsOut', () => {
  it('moves file, directory and symlink outputs over nothing, files, and non-empty directories', () => {
    const { layout, real, inside, dest } = setup();
    writeFileSync(inside('a-file'), 'new file\n');
    mkdirSync(inside('b-dir'));
    writeFileSync(path.join(inside('b-dir'), 'x'), 'new x\n');
    symlinkSync('a-file', inside('c-link'));
    writeFileSync(inside('d-file-over-dir'), 'new d\n');
    mkdirSync(inside('e-dir-over-file'));
    writeFileSync(inside('f-file-over-file'), 'new f\n');
    // What a stale output left at the physical paths.
    mkdirSync(dest('b-dir'));
    writeFileSync(path.join(dest('b-dir'), 'old'), 'old\n');
    mkdirSync(path.join(dest('d-file-over-dir'), 'sub'), { recursive: true });
    writeFileSync(dest('e-dir-over-file'), 'old e\n');
    writeFileSync(dest('f-file-over-file'), 'old f\n');
    writeFileSync(dest('g-not-built'), 'stays\n');
    const outs = ['a-file', 'b-dir', 'c-link', 'd-file-over-dir', 'e-dir-over-file', 'f-file-over-file', 'g-not-built'].map((b) => `/nix/store/${b}`);
    expect(moveOutputsOut(layout, outs, real)).toEqual(outs.slice(0, 6));
    expect(readFileSync(dest('a-file'), 'utf8')).toBe('new file\n');
    expect(readdirSync(dest('b-dir'))).toEqual(['x']);
    expect(readlinkSync(dest('c-link'))).toBe('a-file');
    expect(readFileSync(dest('d-file-over-dir'), 'utf8')).toBe('new d\n');
    expect(lstatSync(dest('e-dir-over-file')).isDirectory()).toBe(true);
    expect(readFileSync(dest('f-file-over-file'), 'utf8')).toBe('new f\n');
    expect(readFileSync(dest('g-not-built'), 'utf8')).toBe('stays\n');
    expect(readdirSync(layout.storeDir)).toEqual([]);
  });

  it('moves a read-only output directory and keeps its mode', () => {
    const { layout, real, inside, dest } = setup();
    mkdirSync(path.join(inside('ro-out'), 'sub'), { recursive: true });
    writeFileSync(path.join(inside('ro-out'), 'sub/f'), 'f\n');
    chmodSync(path.join(inside('ro-out'), 'sub'), 0o555);
    chmodSync(inside('ro-out'), 0o555);
    mkdirSync(dest('ro-out'));
    writeFileSync(path.join(dest('ro-out'), 'old'), 'old\n');
    expect(moveOutputsOut(layout, ['/nix/store/ro-out'], real)).toEqual(['/nix/store/ro-out']);
    expect(lstatSync(dest('ro-out')).mode & 0o777).toBe(0o555);
    expect(readFileSync(path.join(dest('ro-out'), 'sub/f'), 'utf8')).toBe('f\n');
    expect(existsSync(inside('ro-out'))).toBe(false);
    chmodSync(path.join(dest('ro-out'), 'sub'), 0o755);
    chmodSync(dest('ro-out'), 0o755);
  });
});
