import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

describe('public API report', () => {
  it('docs/api-exports.txt lists exactly the runtime exports of src/index.ts (run scripts/api-report.ts after a deliberate change)', async () => {
    const api = await import('../../src/index.js');
    const actual = Object.keys(api)
      .sort()
      .map((k) => `${k}: ${typeof (api as Record<string, unknown>)[k]}`);
    const recorded = readFileSync(new URL('../../docs/api-exports.txt', import.meta.url), 'utf8')
      .trim()
      .split('\n');
    expect(actual).toEqual(recorded);
  });
});
