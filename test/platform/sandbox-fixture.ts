/**
 * Shared fixture for sandbox tests: a private chroot-store-like directory with static busybox as an
 * input path (`<hash>-busybox/bin/sh`), and a helper to build SandboxRequests over it.
 */
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import type { SandboxRequest } from '../../src/platform/sandbox.js';
import { spawnSync } from 'node:child_process';
import { IN_CI, tempDir } from '../helpers/nix.js';

export const BUSYBOX = '/bin/busybox';
export const STORE_DIR = '/nix/store';

export interface Fixture {
  readonly dir: string;
  readonly root: string;
  readonly realStoreDir: string;
  readonly busyboxPath: string;
  request(name: string, script: string, extra?: Partial<SandboxRequest>): SandboxRequest;
  realPath(storePath: string): string;
}

let counter = 0;
function fakeHash(): string {
  const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
  return Array.from(randomBytes(32), (b) => alphabet[b % 32]).join('');
}

export function storePath(name: string): string {
  return `${STORE_DIR}/${fakeHash()}-${name}`;
}

export function makeFixture(): Fixture {
  const dir = tempDir('realise-sandbox-');
  const root = path.join(dir, 'root');
  const realStoreDir = path.join(root, 'nix/store');
  mkdirSync(realStoreDir, { recursive: true });
  const busyboxPath = storePath('busybox');
  const bb = path.join(realStoreDir, path.basename(busyboxPath));
  mkdirSync(path.join(bb, 'bin'), { recursive: true });
  copyFileSync(BUSYBOX, path.join(bb, 'bin/busybox'));
  symlinkSync('busybox', path.join(bb, 'bin/sh'));
  const realPath = (p: string) => path.join(realStoreDir, path.basename(p));
  return {
    dir,
    root,
    realStoreDir,
    busyboxPath,
    realPath,
    request(name, script, extra = {}) {
      const buildDir = path.join(dir, `build-${name}-${counter++}`);
      mkdirSync(buildDir, { mode: 0o700 });
      const out = storePath(name);
      const drvPath = storePath(`${name}.drv`);
      writeFileSync(path.join(buildDir, 'script.sh'), script);
      return {
        drvPath,
        builder: `${busyboxPath}/bin/sh`,
        args: ['/build/script.sh'],
        env: { PATH: '/path-not-set', HOME: '/homeless-shelter', NIX_STORE: STORE_DIR, NIX_BUILD_TOP: '/build', TMPDIR: '/build', PWD: '/build', out },
        buildDir,
        sandboxBuildDir: '/build',
        storeDir: STORE_DIR,
        realStoreDir,
        inputPaths: [busyboxPath],
        outputPaths: [out],
        network: false,
        ...extra,
      };
    },
  };
}

/** The helper backend needs a C compiler; like Nix and bwrap, a missing one is an error in CI, not a skip. */
export function ccOk(): boolean {
  const ok = spawnSync(process.env.CC ?? 'cc', ['--version'], { stdio: 'ignore' }).status === 0;
  if (!ok && IN_CI) throw new Error('a C compiler is required in CI for the sandbox helper (apt-get install gcc)');
  return ok;
}
