import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** processUmask() in a fresh Node process started with `umask MASK`, with process.umask counted. */
function inChild(mask: string): { value: number; after: number; umaskCalls: number } {
  const script = `
    let calls = 0;
    const real = process.umask.bind(process);
    process.umask = (...a) => { calls++; return real(...a); };
    const { processUmask } = await import('./src/store/umask.ts');
    const value = processUmask();
    real(0o002);
    const after = processUmask();
    console.log(JSON.stringify({ value, after, umaskCalls: calls }));`;
  const r = spawnSync('sh', ['-c', `umask ${mask}; exec node --import tsx --input-type=module -e "$0"`, script], {
    cwd: root,
    encoding: 'utf8',
  });
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout) as { value: number; after: number; umaskCalls: number };
}

describe('processUmask', () => {
  it('reads the umask from /proc/self/status without setting it (process.umask() would set 0 for a moment), as it is now', () => {
    expect(inChild('027')).toEqual({ value: 0o027, after: 0o002, umaskCalls: 0 });
    expect(inChild('077')).toEqual({ value: 0o077, after: 0o002, umaskCalls: 0 });
  });
});
