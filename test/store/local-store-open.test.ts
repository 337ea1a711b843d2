import { describe, expect, it } from 'vitest';
import { LocalStore } from '../../src/store/local-store.js';
import { StoreError } from '../../src/store/errors.js';

describe('LocalStore.open on a root it cannot create', () => {
  it('is a store-open-failed StoreError naming the directory, not a hang (Node\'s recursive mkdir loops under /proc)', async () => {
    const e = await LocalStore.open({ root: '/proc/nonexistent/x' }).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('store-open-failed');
    expect((e as Error).message).toContain("mkdir '/proc/nonexistent'");
  }, 10_000);

  it('a regular file in the way is a store-open-failed StoreError', async () => {
    const e = await LocalStore.open({ storeDir: '/etc/hostname/store', stateDir: '/etc/hostname/state', logDir: '/etc/hostname/log' })
      .then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('store-open-failed');
  });
});
