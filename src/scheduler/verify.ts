/** Content checks used by repair mode: does a valid path's NAR still hash to its registered narHash? */
import { hashNar } from '../store/nar.js';
import type { Store } from '../store/store-api.js';
import type { StorePath } from '../store/store-path.js';

export async function pathContentsGood(store: Store, path: StorePath): Promise<boolean> {
  const info = await store.queryPathInfo(path);
  if (!info) return false;
  try {
    const { hash } = await hashNar(store.narFromPath(path), info.narHash.algorithm as 'sha256');
    return hash.equals(info.narHash);
  } catch {
    return false;
  }
}
