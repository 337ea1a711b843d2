/**
 * Shared setup for the remote-build tests and bench: a "local" Nix chroot store holding the derivations
 * (and the dependency already built), remote chroot stores, a reference build by real Nix, and a wrapper
 * script that runs Nix's remote programs against a private store with the settings a chroot store needs.
 */
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseDerivation, derivationNameFromPath, type Derivation } from '../../src/derivation/derivation.js';
import { nix, nixEnv, nixInstantiate, tempDir } from '../helpers/nix.js';
import { LocalStore } from '../../src/store/local-store.js';
import type { PathInfo, Store } from '../../src/store/store-api.js';
import { topoSortPaths } from '../../src/remote/protocol-common.js';

/** Nix settings every private store in these tests uses (sandboxed chroot builds need a /bin/sh). */
export const NIX_CONF = 'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\nsandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\n';

export function remoteEnv(): Record<string, string> {
  return { ...(nixEnv() as Record<string, string>), NIX_CONFIG: NIX_CONF };
}

export const EXPR = `
let
  sys = builtins.currentSystem;
  mk = name: script: extra: derivation ({ inherit name; system = sys; builder = "/bin/sh"; args = [ "-c" script ]; } // extra);
  dep = mk "dep" "echo building dep; mkdir $out; echo dep-content > $out/data" {};
  helper = builtins.toFile "helper.sh" "echo from-helper";
in {
  inherit dep;
  top = mk "top" ''
    echo building top
    mkdir $out $dev
    cat \${dep}/data > $out/copy
    . \${helper} > $out/helper
    echo $out > $dev/out-path
    ln -s \${dep} $out/dep-link
  '' { outputs = [ "out" "dev" ]; };
  fail = mk "fail" "echo about to fail; exit 3" {};
  chatty = mk "chatty" "i=1; while [ $i -le 200 ]; do echo line $i; i=$((i+1)); done; echo last line >&2; exit 1" {};
  slow = mk "slow" "echo sleeping; sleep 30; mkdir $out; : MARK" {};
  slow2 = mk "slow2" "echo sleeping; sleep 3; echo slow2 > $out" {};
  slow3 = mk "slow3" "echo sleeping; sleep 3; echo slow3 > $out" {};
  many = builtins.genList (i: mk "triv-\${toString i}" "echo \${toString i} > $out" { salt = SALT; }) COUNT;
}
`;

export interface Fixture {
  dir: string;
  localRoot: string;
  /** In the command line of `slow`'s builder, and no other fixture's: tells its process among all on the machine. */
  marker: string;
  drvs: Record<'dep' | 'top' | 'fail' | 'chatty' | 'slow' | 'slow2' | 'slow3', string>;
  many: string[];
  /** A program for remote-program= that runs Nix with NIX_CONF and writes its pid to `<dir>/pids/<name>`. */
  wrapper(name: string, program: 'nix-daemon' | 'nix-store'): string;
  readDrv(drvPath: string): Derivation;
}

export function makeFixture(opts: { count?: number; salt?: string; prebuildDep?: boolean } = {}): Fixture {
  const dir = tempDir('realise-remote-');
  const localRoot = path.join(dir, 'local');
  const exprFile = path.join(dir, 'default.nix');
  const marker = `realise-fixture-${path.basename(dir)}`;
  writeFileSync(
    exprFile,
    EXPR.replace('SALT', JSON.stringify(opts.salt ?? 'x'))
      .replace('COUNT', String(opts.count ?? 0))
      .replace('MARK', marker),
  );
  const inst = (attr: string): string[] => nixInstantiate(localRoot, exprFile, { file: true, attr });
  const drvs = {
    dep: inst('dep')[0]!,
    top: inst('top')[0]!,
    fail: inst('fail')[0]!,
    chatty: inst('chatty')[0]!,
    slow: inst('slow')[0]!,
    slow2: inst('slow2')[0]!,
    slow3: inst('slow3')[0]!,
  };
  const many = opts.count ? inst('many') : [];
  // The dependency is built locally, so a remote build of `top` must copy it over.
  if (opts.prebuildDep ?? true) nix('nix-store', ['--store', localRoot, '--realise', drvs.dep], { env: { NIX_CONFIG: NIX_CONF } });
  let n = 0;
  return {
    dir,
    localRoot,
    marker,
    drvs,
    many,
    wrapper(name, program) {
      const file = path.join(dir, `wrap-${name}-${n++}.sh`);
      const conf = NIX_CONF.replace(/\n/g, '\\n');
      writeFileSync(
        file,
        `#!/bin/sh\nmkdir -p ${dir}/pids ${dir}/tmp\necho $$ > ${dir}/pids/${name}\nexport NIX_REMOTE= NIX_USER_CONF_FILES=/dev/null TMPDIR=${dir}/tmp\nexport NIX_CONFIG="$(printf '${conf}')"\nexec ${program} "$@"\n`,
      );
      chmodSync(file, 0o755);
      return file;
    },
    readDrv(drvPath) {
      const text = readFileSync(path.join(localRoot, drvPath), 'utf8');
      return parseDerivation(text, derivationNameFromPath(drvPath));
    },
  };
}

/** Build `attr` with real Nix in a fresh store; returns output name → { path, narHash (nix32 with sha256:) }. */
export function referenceBuild(fx: Fixture, attr: 'top'): Map<string, { path: string; narHash: string }> {
  const root = path.join(fx.dir, `ref-${attr}`);
  const drv = nixInstantiate(root, path.join(fx.dir, 'default.nix'), { file: true, attr })[0]!;
  const outs = nix('nix-store', ['--store', root, '--realise', drv], { env: { NIX_CONFIG: NIX_CONF } }).split('\n');
  const res = new Map<string, { path: string; narHash: string }>();
  const names = nix('nix-store', ['--store', root, '-q', '--outputs', drv]).split('\n');
  for (const p of outs) {
    const name = names.includes(p) ? (p.endsWith('-dev') ? 'dev' : 'out') : 'out';
    res.set(name, { path: p, narHash: nix('nix-store', ['--store', root, '-q', '--hash', p]) });
  }
  return res;
}

/**
 * A second local store holding what `store` has for building `top` (its .drv closure and the built
 * dependency), copied with the stores' own NAR streams: a fresh place for outputs to be copied back to.
 */
export async function cloneLocal(fx: Fixture, store: Store, name: string): Promise<LocalStore> {
  const depOut = (await store.queryDerivationOutputs(fx.drvs.dep)).get('out')!;
  const closure = await store.computeClosure([fx.drvs.top, depOut]);
  const infos = new Map<string, PathInfo>();
  for (const p of closure) infos.set(p, (await store.queryPathInfo(p))!);
  const copy = await LocalStore.open({ root: path.join(fx.dir, name) });
  for (const p of topoSortPaths(infos)) await copy.addToStore(infos.get(p)!, store.narFromPath(p));
  await copy.registerDerivationOutputs(fx.drvs.dep, await store.queryDerivationOutputs(fx.drvs.dep));
  return copy;
}
