/** The caches, keys and path infos that scripts/make-cache-goldens.sh made with real Nix 2.8. */
import { cpSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Hash } from '../../src/store/hash.js';
import type { StorePath } from '../../src/store/store-path.js';
import { parseNarInfo, type NarInfo } from '../../src/substituter/narinfo.js';

export const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/substituter');
export const COMPRESSIONS_WRITTEN_BY_NIX = ['xz', 'zstd', 'bzip2', 'br', 'none'] as const;

export const SECRET_KEY = readFileSync(path.join(FIXTURES, 'test-cache-1.sec'), 'utf8').trim();
export const PUBLIC_KEY = readFileSync(path.join(FIXTURES, 'test-cache-1.pub'), 'utf8').trim();
export const OTHER_SECRET_KEY = readFileSync(path.join(FIXTURES, 'other-cache-1.sec'), 'utf8').trim();
export const OTHER_PUBLIC_KEY = readFileSync(path.join(FIXTURES, 'other-cache-1.pub'), 'utf8').trim();

export const ROOTS = JSON.parse(readFileSync(path.join(FIXTURES, 'roots.json'), 'utf8')) as { top: StorePath; src: StorePath };

export interface NixPathInfo {
  path: StorePath;
  narHash: string;
  narSize: number;
  references: StorePath[];
  deriver?: StorePath;
  ca?: string;
}
export const PATH_INFOS: NixPathInfo[] = JSON.parse(readFileSync(path.join(FIXTURES, 'path-info.json'), 'utf8'));
export const PATH_INFO = new Map(PATH_INFOS.map((p) => [p.path, p]));
export const ALL_PATHS = PATH_INFOS.map((p) => p.path).sort();

/** Paths in an order where references come first. */
export function topoOrder(): StorePath[] {
  const out: StorePath[] = [];
  const seen = new Set<StorePath>();
  const visit = (p: StorePath) => {
    if (seen.has(p)) return;
    seen.add(p);
    for (const r of PATH_INFO.get(p)!.references) if (r !== p) visit(r);
    out.push(p);
  };
  for (const p of ALL_PATHS) visit(p);
  return out;
}

export function cacheDir(compression: string): string {
  return path.join(FIXTURES, `cache-${compression}`);
}

export function cacheUrl(compression: string): string {
  return pathToFileURL(cacheDir(compression)).href;
}

export function narInfos(compression: string): NarInfo[] {
  const dir = cacheDir(compression);
  return readdirSync(dir)
    .filter((f) => f.endsWith('.narinfo'))
    .sort()
    .map((f) => parseNarInfo(readFileSync(path.join(dir, f), 'utf8')));
}

/** The uncompressed NAR of a path, from the `none` cache. */
export function narOf(p: StorePath): Buffer {
  const ni = narInfos('none').find((n) => n.storePath === p)!;
  return readFileSync(path.join(cacheDir('none'), ni.url));
}

export function nixNarHash(p: StorePath): Hash {
  return Hash.parse(PATH_INFO.get(p)!.narHash);
}

/** Copy a fixture cache to `dest` (to tamper with it). */
export function copyCache(compression: string, dest: string): string {
  cpSync(cacheDir(compression), dest, { recursive: true });
  return dest;
}
