import { storePathName, type StorePath } from '../store/store-path.js';
import type { GoalKind } from './events.js';

export function isDerivationPath(p: StorePath): boolean {
  return p.endsWith('.drv');
}

/**
 * Nix's goal key (Goal::key), the order in which its worker keeps and wakes goals: substitutions
 * (`a$`) before derivations (`b$`), each by the path's name, then by the path.
 */
export function goalKey(kind: GoalKind, path: StorePath): string {
  return `${kind === 'substitution' ? 'a' : 'b'}$${storePathName(path)}$${path}`;
}
