import { describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { MemoryStore } from '../../src/store/memory-store.js';
import { storeConformance } from './conformance.js';

storeConformance('MemoryStore', async () => new MemoryStore());

describe('MemoryStore specifics', () => {
  it('materialises valid paths under its own temp dir and removes it on close', async () => {
    const s = new MemoryStore();
    const p = await s.addTextToStore('m.txt', 'in memory');
    expect(existsSync(s.toRealPath(p))).toBe(true);
    expect(s.toRealPath(p).startsWith(s.realStoreDir)).toBe(true);
    expect(s.realStoreDir).not.toBe(s.storeDir);
    await s.close();
    expect(existsSync(s.realStoreDir)).toBe(false);
    await expect(s.isValidPath(p)).rejects.toMatchObject({ code: 'store-closed' });
  });
});
