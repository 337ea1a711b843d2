/** Shared helpers of the derivation tests: the golden fixtures from real Nix and a tiny fake store. */
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { derivationNameFromPath, parseDerivation, type Derivation, type ReadDerivation } from '../../src/derivation/derivation.js';
import { computeTextPath, type StorePath } from '../../src/store/store-path.js';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'derivation');

export interface Expected {
  nix: string;
  fixtures: Record<string, string[]>;
  derivations: Record<string, { outputs: Record<string, string | null> }>;
  sources: Record<string, string>;
}

export const expected: Expected = JSON.parse(readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8'));

/** `.drv` path → text, for every golden .drv. */
export const goldenDrvs: Map<StorePath, string> = new Map(
  readdirSync(path.join(FIXTURES, 'drv'))
    .sort()
    .map((f) => ['/nix/store/' + f, readFileSync(path.join(FIXTURES, 'drv', f), 'utf8')]),
);

export const readGolden: ReadDerivation = async (p) => {
  const text = goldenDrvs.get(p);
  if (text === undefined) throw new Error(`no golden .drv ${p}`);
  return parseDerivation(text, derivationNameFromPath(p));
};

/** Just enough of a Store to write derivations and text files (paths computed as Nix does). */
export class FakeTextStore {
  readonly storeDir = '/nix/store';
  readonly texts = new Map<StorePath, { text: string; references: StorePath[] }>();
  readonly drvOutputs = new Map<StorePath, Map<string, StorePath>>();

  async addTextToStore(name: string, text: string, references: Iterable<StorePath> = []): Promise<StorePath> {
    const refs = [...references].sort();
    const p = computeTextPath(name, text, refs, this.storeDir);
    this.texts.set(p, { text, references: refs });
    return p;
  }
  async registerDerivationOutputs(drvPath: StorePath, outputs: ReadonlyMap<string, StorePath>): Promise<void> {
    this.drvOutputs.set(drvPath, new Map(outputs));
  }
  async readTextFile(p: StorePath): Promise<string> {
    const t = this.texts.get(p)?.text ?? goldenDrvs.get(p);
    if (t === undefined) throw new Error(`not in the fake store: ${p}`);
    return t;
  }
}

export function drvOf(p: StorePath): Derivation {
  return parseDerivation(goldenDrvs.get(p)!, derivationNameFromPath(p));
}
