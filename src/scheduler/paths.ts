import type { StorePath } from '../store/store-path.js';

export function isDerivationPath(p: StorePath): boolean {
  return p.endsWith('.drv');
}
