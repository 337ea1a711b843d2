import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalStore } from '../../src/store/local-store.js';
import { StoreError } from '../../src/store/errors.js';

describe('LocalStore.open on a root it cannot create', () => {
  it("is a store-open-failed StoreError naming the directory, not a hang (Node's recursive mkdir loops under /proc)", async () => {
    const e = await LocalStore.open({ root: '/proc/nonexistent/x' }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('store-open-failed');
    expect((e as StoreError).shortMessage).toBe("creating directory '/proc/nonexistent': No such file or directory");
  }, 10_000);

  it('a regular file in the way is a store-open-failed StoreError', async () => {
    const e = await LocalStore.open({ storeDir: '/etc/hostname/store', stateDir: '/etc/hostname/state', logDir: '/etc/hostname/log' }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(StoreError);
    expect((e as StoreError).code).toBe('store-open-failed');
  });
});

describe('LocalStore.addBuildLog', () => {
  /** `fn` on a plain store in a fresh temporary directory (its log dir `<dir>/log`), closed and removed after. */
  async function withStore(fn: (store: LocalStore, dir: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(path.join(tmpdir(), 'realise-log-'));
    const store = await LocalStore.open({ storeDir: path.join(dir, 'store'), stateDir: path.join(dir, 'state'), logDir: path.join(dir, 'log') });
    try {
      await fn(store, dir);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('writes logs again after the log directory was removed behind its back', async () => {
    await withStore(async (store, dir) => {
      const drv = `${store.storeDir}/${'a'.repeat(32)}-x.drv`;
      await store.addBuildLog(drv, 'first\n');
      expect(await store.readBuildLog(drv)).toBe('first\n');
      rmSync(path.join(dir, 'log', 'drvs'), { recursive: true, force: true });
      await store.addBuildLog(drv, 'second\n');
      expect(await store.readBuildLog(drv)).toBe('second\n');
    });
  });

  it("prepareBuildLog makes the log directory ahead; the write then needs only its file, and a failure ahead is the write's to report", async () => {
    await withStore(async (store) => {
      const drv = `${store.storeDir}/${'b'.repeat(32)}-x.drv`;
      const logDir = path.dirname(store.logPath(drv));
      expect(existsSync(logDir)).toBe(false);
      await store.prepareBuildLog(drv);
      expect(existsSync(logDir)).toBe(true);
      expect(existsSync(store.logPath(drv) + '.bz2')).toBe(false); // only the directory
      await store.addBuildLog(drv, 'ahead\n');
      expect(await store.readBuildLog(drv)).toBe('ahead\n');

      // A write given while the directory is still being made waits for it (no second creation racing it).
      const other = `${store.storeDir}/${'c'.repeat(32)}-y.drv`;
      const prepared = store.prepareBuildLog(other);
      await store.addBuildLog(other, 'together\n');
      await prepared;
      expect(await store.readBuildLog(other)).toBe('together\n');

      // Made ahead where it cannot be (a file in the way): prepare resolves, the write fails as it would have.
      const blocked = `${store.storeDir}/${'d'.repeat(32)}-z.drv`;
      writeFileSync(path.dirname(store.logPath(blocked)), 'not a directory');
      await expect(store.prepareBuildLog(blocked)).resolves.toBeUndefined();
      await expect(store.addBuildLog(blocked, 'x\n')).rejects.toMatchObject({ code: 'EEXIST' });
    });
  });
});
