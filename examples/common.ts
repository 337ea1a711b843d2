/**
 * Shared by the examples: open the demo store and find a shell for builders.
 *
 * With bubblewrap and a static busybox (Debian: bubblewrap busybox-static) examples build sandboxed in the
 * embedded default store (a chroot store, logical /nix/store, as Nix's). Without them they fall back to an
 * unsandboxed plain store next to it, using the host's /bin/sh, and say so.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { sandboxAvailable, LocalStore, addPath, defaultStoreRoot, nix, type NixString, type Store } from '../src/index.js';

export interface DemoStore {
  readonly store: Store;
  readonly sandboxed: boolean;
  /** The builder to use: busybox's sh from the store (sandboxed), or the host's /bin/sh. */
  readonly sh: string | NixString;
}

export async function openDemoStore(): Promise<DemoStore> {
  const sandboxed = existsSync('/bin/busybox') && (await sandboxAvailable()).ok;
  if (sandboxed) {
    const store = await LocalStore.openDefault();
    return { store, sandboxed, sh: nix`${await busyboxTree(store)}/bin/sh` };
  }
  const base = path.join(path.dirname(defaultStoreRoot()), 'plain');
  console.log(`note: bubblewrap or /bin/busybox is missing, so this builds unsandboxed in the plain store ${base}/store`);
  console.log('      (apt-get install -y bubblewrap busybox-static for the sandboxed default store)');
  const store = await LocalStore.open({ storeDir: path.join(base, 'store'), stateDir: path.join(base, 'state'), logDir: path.join(base, 'log') });
  return { store, sandboxed, sh: '/bin/sh' };
}

/** A tiny tree (bin/busybox, bin/sh -> busybox) added to the store as builtins.path would. */
async function busyboxTree(store: Store): Promise<NixString> {
  const dir = mkdtempSync(path.join(tmpdir(), 'realise-busybox-'));
  mkdirSync(path.join(dir, 'bin'));
  copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  symlinkSync('busybox', path.join(dir, 'bin', 'sh'));
  return addPath(store, dir, { name: 'busybox' });
}
