/**
 * Every example in examples/ runs with one command and does what its header says, on a fresh embedded
 * default store ($REALISE_STORE pointed at a temporary directory). Sandboxed when bubblewrap and
 * /bin/busybox are there (always in CI), else on the unsandboxed fallback store.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { removeTreeSync, tempDir } from '../helpers/nix.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = tempDir('realise-examples-');
afterAll(() => removeTreeSync(dir));

function runExample(name: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'examples', `${name}.ts`)], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, REALISE_STORE: path.join(dir, 'root'), XDG_DATA_HOME: path.join(dir, 'xdg') },
  });
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

// (example, what its output must show)
const EXAMPLES: [string, RegExp][] = [
  ['hello', /Hello, world! \(built by hello\)/],
  ['dag', /-> \/nix\/store\/[0-9a-z]{32}-demo-top \((built|already-valid)/],
  ['multiple-outputs', /int greet\(void\);/],
  ['fixed-output', /hash mismatch in fixed-output derivation/],
  ['cancel', /valid: false/],
  ['custom-substituter', /substituted -> \/nix\/store\/[0-9a-z]{32}-substituted-hello/],
  ['content-addressed', /app using: a library \(from \/nix\/store\/[0-9a-z]{32}-ca-lib\)/],
  ['progress', /./],
  ['fetchurl', /bin -> \/nix\/store\/[0-9a-z]{32}-hello\/bin\n/],
  [
    'observe',
    /critical path \([0-9.]+ (ms|s)\):\n {2}\/nix\/store\/[0-9a-z]{32}-observe-base\.drv\n {2}\/nix\/store\/[0-9a-z]{32}-observe-left\.drv\n {2}\/nix\/store\/[0-9a-z]{32}-observe-top\.drv/,
  ],
  ['gc', /kept output still valid: true; dropped output valid: false\noptimised: 1 files hard-linked/],
];

describe('examples', () => {
  for (const [name, shows] of EXAMPLES) {
    it(`${name}.ts runs and shows what it should`, () => {
      const r = runExample(name);
      expect(r.status, r.out).toBe(0);
      expect(r.out).toMatch(shows);
    }, 150_000);
  }
});
