/**
 * Writes docs/api-exports.txt: the runtime exports of the public entry point (src/index.ts), one per line.
 * test/api-report.test.ts fails when the file is out of date, so accidental exports show up in review.
 *   npx tsx scripts/api-report.ts
 */
import { writeFileSync } from 'node:fs';

const api = await import('../src/index.js');
const lines = Object.keys(api)
  .sort()
  .map((k) => `${k}: ${typeof (api as Record<string, unknown>)[k]}`);
writeFileSync(new URL('../docs/api-exports.txt', import.meta.url), lines.join('\n') + '\n');
console.log(`${lines.length} exports written to docs/api-exports.txt`);
