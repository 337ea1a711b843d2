/**
 * A StdioTransport spawned after `loadExeca()` works under tsx, whose loader compiles an ES module loaded
 * by require() into CommonJS and then fails on execa's dependencies ("No exports main defined"): the
 * remote builders load execa with import() before they spawn (bench/remote.ts runs under tsx).
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/nix.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

describe('StdioTransport under tsx', () => {
  it('spawns and reports the exit of its command after loadExeca()', () => {
    const dir = tempDir('realise-transport-loader-');
    const script = path.join(dir, 'spawn.mts');
    writeFileSync(
      script,
      [
        `import { loadExeca, StdioTransport } from ${JSON.stringify(path.join(ROOT, 'src/remote/transport.ts'))};`,
        `await loadExeca();`,
        `const t = StdioTransport.spawn('sh', ['-c', 'echo to-stderr >&2; exit 3']);`,
        `const exit = await t.closed;`,
        `console.log(JSON.stringify({ code: exit.code, tail: t.stderrTail() }));`,
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout.trim())).toEqual({ code: 3, tail: 'to-stderr' });
  });
});
