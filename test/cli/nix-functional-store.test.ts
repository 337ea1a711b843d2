/**
 * Nix 2.8's functional tests of the store's own operations and the built-in fetcher
 * (test/fixtures/nix-tests: gc.sh, optimise-store.sh, fetchurl.sh), run with real Nix (`nix-store --gc`,
 * `--delete`, `--optimise`, `--realise`) and with realise (`realise gc`, `realise store optimise`,
 * `realise build`) on twin stores (test/helpers/twin-store.ts).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nixEnv, nixOk, runNix, runNixAsync } from '../helpers/nix.js';
import { realiseInProcess } from '../helpers/cli.js';
import { fileURLToPath } from 'node:url';
import { keyLines, step, TwinStores, type Side } from '../helpers/twin-store.js';

const sides: Side[] = ['nix', 'ours'];

const BIN = fileURLToPath(new URL('../../bin/realise.js', import.meta.url));

const readlinkOr = (p: string): string => {
  try {
    return readlinkSync(p);
  } catch {
    return '';
  }
};

/** `nix-store ARGS` and `realise ARGS` on both stores, Nix first. */
async function both(t: TwinStores, nix: string[], ours: string[]) {
  const n = await t.command('nix', ['nix-store', ...nix], ours);
  const o = await t.command('ours', ['nix-store', ...nix], ours);
  return { nix: n, ours: o };
}

describe.skipIf(!nixOk())('Nix 2.8 functional tests (store operations): realise vs nix-store on twin stores', () => {
  it.each([
    ['gc.sh', '0'],
    ['ca/gc.sh', '1'],
  ])(
    '%s: roots, --print-roots/--print-live/--print-dead, --delete of live paths refused, collections with and without the root',
    async (_script, ca) => {
      const t = new TwinStores();
      const [drv] = t.instantiate('dependencies.nix', [], { NIX_TESTS_CA_BY_DEFAULT: ca });
      const { nix: built } = await step(t, [drv!], 0);
      const out = built.stdout.trim();
      const gcroot = (side: Side) => `${t.root}/${side}/state/gcroots/foo`;
      for (const side of sides) symlinkSync(out, gcroot(side));

      const roots = await both(t, ['--gc', '--print-roots'], ['gc', '--print-roots']);
      for (const side of sides) expect(roots[side].stdout).toBe(`${gcroot(side)} -> ${out}\n`);
      const live = await both(t, ['--gc', '--print-live'], ['gc', '--print-live']);
      expect(live.ours.stdout).toBe(live.nix.stdout);
      expect(live.nix.stdout).toContain(out);
      const dead = await both(t, ['--gc', '--print-dead'], ['gc', '--print-dead']);
      expect(dead.ours.stdout).toBe(dead.nix.stdout);
      expect(dead.nix.stdout).toContain(drv);
      expect(dead.nix.stdout).not.toMatch(new RegExp(`${out}$`, 'm'));

      const inUse = runNix('readlink', [`${(t.use('nix'), out)}/reference-to-input-2`]).stdout.trim();
      for (const p of [inUse, out]) {
        const del = await both(t, ['--delete', p], ['gc', '--delete', p]);
        for (const side of sides) expect(del[side].status, del[side].stderr).toBe(1);
        expect(keyLines(del.ours.stderr)).toEqual(keyLines(del.nix.stderr));
        for (const side of sides) expect((t.use(side), existsSync(p))).toBe(true);
      }

      let locks = 0;
      for (const side of sides) {
        t.use(side);
        for (const name of readdirSync(t.storeDir)) {
          if (name === '.links') continue;
          if (side === 'nix') locks++;
          writeFileSync(`${t.storeDir}/${name}.lock`, '');
          writeFileSync(`${t.storeDir}/${name}.chroot`, '');
        }
      }
      const listing = (side: Side) => (t.use(side), readdirSync(t.storeDir).sort());
      const deleted = (stdout: string) => Number(/^(\d+) store paths deleted, /.exec(stdout)?.[1]);
      // Opening our store removes the lock files nobody holds (docs/store.md): Nix's collection deletes them.
      const collect = async (lockFiles: number) => {
        const r = await both(t, ['--gc'], ['gc']);
        for (const side of sides) expect(r[side].status, r[side].stderr).toBe(0);
        expect(deleted(r.ours.stdout)).toBe(deleted(r.nix.stdout) - lockFiles);
        expect(listing('ours')).toEqual(listing('nix'));
        expect(t.rows('ours')).toEqual(t.rows('nix'));
      };
      await collect(locks);
      for (const side of sides) {
        expect(t.read(side, `${out}/foobar`)).toBe('FOOBAR\n');
        expect(t.read(side, `${out}/reference-to-input-2/bar`)).toBe('BAR\n');
        expect(existsSync(drv!)).toBe(false);
      }
      for (const side of sides) execFileSync('rm', [gcroot(side)]);
      await collect(0);
      for (const side of sides) expect(listing(side)).toEqual(['.links']);
    },
    120_000,
  );

  it('optimise-store.sh: auto-optimise-store links equal files at build time, optimise links the rest, a collection empties .links', async () => {
    const t = new TwinStores();
    const expr = (n: number) =>
      `with import ./config.nix; mkDerivation { name = "foo${n}"; builder = builtins.toFile "builder" "mkdir $out; echo hello > $out/foo"; }`;
    const auto = ['--option', 'auto-optimise-store', 'true'];
    const { nix: b1 } = await step(t, [...t.instantiateExpr(expr(1)), ...auto], 0);
    const { nix: b2 } = await step(t, [...t.instantiateExpr(expr(2)), ...auto], 0);
    const { nix: b3 } = await step(t, t.instantiateExpr(expr(3)), 0);
    const [o1, o2, o3] = [b1, b2, b3].map((b) => `${b.stdout.trim()}/foo`);
    const st = (side: Side, p: string) => (t.use(side), statSync(p));
    for (const side of sides) {
      expect(st(side, o1!).ino).toBe(st(side, o2!).ino);
      expect(st(side, o1!).nlink).toBe(3);
      expect(st(side, o3!).ino).not.toBe(st(side, o1!).ino);
    }
    const opt = await both(t, ['--optimise'], ['store', 'optimise']);
    for (const side of sides) expect(opt[side].status, opt[side].stderr).toBe(0);
    expect(opt.ours.stderr).toBe(opt.nix.stderr);
    for (const side of sides) expect(st(side, o3!).ino).toBe(st(side, o1!).ino);
    const gc = await both(t, ['--gc'], ['gc']);
    expect(gc.ours.stdout).toBe(gc.nix.stdout);
    for (const side of sides) expect((t.use(side), readdirSync(`${t.storeDir}/.links`))).toEqual([]);
  }, 120_000);

  it('fetchurl.sh: builtin:fetchurl of a file:// URL (sha256 base-32, sha512 base-64, SRI), not fetched again once valid, from a cache of another store directory, a NAR and an xz NAR unpacked', async () => {
    const t = new TwinStores();
    writeFileSync(`${t.tests}/fetchurl-expr.nix`, 'import <nix/fetchurl.nix>\n');
    const script = `${t.tests}/fetchurl.sh`;
    const fetch = async (args: string[], extra: string[] = []) => {
      const { nix } = await step(t, [...t.instantiate('fetchurl-expr.nix', args), ...extra], 0);
      return nix.stdout.trim();
    };
    const nixHash = (args: string[]) => runNix('nix', args, { env: t.env }).stdout.trim();
    const sha256 = runNix('nix-hash', ['--flat', '--type', 'sha256', script]).stdout.trim();
    const out = await fetch(['--argstr', 'url', `file://${script}`, '--argstr', 'sha256', sha256]);
    for (const side of sides) expect(t.read(side, out)).toBe(readFileSync(script, 'utf8'));
    expect(await fetch(['--argstr', 'url', 'file:///does-not-exist/must-remain-unused/fetchurl.sh', '--argstr', 'sha256', sha256])).toBe(out);

    for (const args of [
      ['--argstr', 'sha512', nixHash(['hash', 'file', '--type', 'sha512', '--base64', script])],
      ['--argstr', 'hash', nixHash(['hash', 'file', script])],
    ]) {
      t.clear();
      const p = await fetch(['--argstr', 'url', `file://${script}`, ...args]);
      for (const side of sides) expect(t.read(side, p)).toBe(readFileSync(script, 'utf8'));
    }

    // A binary cache whose store directory is another one: the fixed output is substituted by its content address.
    t.clear();
    const cache = `file://${t.root}/other_store?store=/fnord/store`;
    runNix('nix', ['--store', cache, 'store', 'add-file', script], { env: t.env });
    const base16 = nixHash(['hash', 'file', '--type', 'sha256', '--base16', script]);
    const url = ['--argstr', 'url', 'file:///no-such-dir/fetchurl.sh'];
    await fetch([...url, '--argstr', 'sha256', base16], ['--option', 'substituters', cache]);
    await fetch([...url, '--argstr', 'hash', nixHash(['hash', 'to-sri', '--type', 'sha256', base16])], ['--option', 'substituters', cache]);

    // A NAR, and the same compressed with xz, unpacked.
    const archive = `${t.root}/archive`;
    mkdirSync(archive);
    cpSync(script, `${archive}/fetchurl.sh`);
    chmodSync(`${archive}/fetchurl.sh`, 0o755);
    symlinkSync('foo', `${archive}/symlink`);
    const nar = `${t.root}/archive.nar`;
    writeFileSync(nar, execFileSync('nix-store', ['--dump', archive]));
    const narHash = runNix('nix-hash', ['--flat', '--type', 'sha256', nar]).stdout.trim();
    const unpack = ['--argstr', 'sha256', narHash, '--arg', 'unpack', 'true', '--argstr', 'name', 'xyzzy'];
    const unpacked = await fetch(['--argstr', 'url', `file://${nar}`, ...unpack]);
    expect(unpacked).toMatch(/-xyzzy$/);
    const check = () => {
      for (const side of sides) {
        t.use(side);
        expect(statSync(`${unpacked}/fetchurl.sh`).mode & 0o111).toBe(0o111);
        expect(runNix('readlink', [`${unpacked}/symlink`]).stdout.trim()).toBe('foo');
      }
    };
    check();
    await step(t, ['--delete'], 0, { run: (side) => t.command(side, ['nix-store', '--delete', unpacked], ['gc', '--delete', unpacked]) });
    execFileSync('xz', ['--keep', nar]);
    expect(await fetch(['--argstr', 'url', `file://${nar}.xz`, ...unpack])).toBe(unpacked);
    check();
  }, 120_000);

  it('referrers.sh: 500 paths registered by nix-store --register-validity, each referring to the next, collected with only the last one rooted: no Refs row left', async () => {
    const t = new TwinStores();
    const max = 500;
    const reference = `${t.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bla`;
    let regInfo = '';
    for (let n = 0; n < max; n++) {
      const ref2 = n + 1 === max ? reference : `${t.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-${n + 1}`;
      regInfo += `${t.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-${n}\n\n2\n${reference}\n${ref2}\n`;
    }
    for (const side of sides) {
      t.use(side);
      writeFileSync(reference, '');
      for (let n = 0; n < max; n++) writeFileSync(`${t.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-${n}`, '');
      for (const input of [`${reference}\n\n0\n`, regInfo]) {
        const r = runNix('nix-store', ['--store', t.uri(side), '--register-validity'], { env: t.env, input });
        expect(r.status, r.stderr).toBe(0);
      }
      symlinkSync(reference, `${t.root}/${side}/state/gcroots/ref`);
    }
    expect(t.rows('ours').refs).toHaveLength(2 * max - 1); // (the last one's two references are the same path)
    await step(t, ['--gc'], 0, { run: (side) => t.command(side, ['nix-store', '--gc'], ['gc']) });
    expect(t.rows('ours').refs).toEqual([]);
    expect(t.rows('ours').validPaths).toHaveLength(1);
  }, 120_000);
  it('gc-runtime.sh: a program running from an unrooted store path keeps it through a collection', async () => {
    const t = new TwinStores();
    const { nix: built } = await step(t, t.instantiate('gc-runtime.nix'), 0);
    const out = built.stdout.trim();
    const collect = async (side: Side) => {
      t.use(side);
      const program = spawn(`${out}/program`, [], { stdio: 'ignore', detached: true });
      try {
        // Running once bash has the script open (its /proc/PID/fd names the store path).
        for (let i = 0; i < 500 && !readdirSync(`/proc/${program.pid}/fd`).some((fd) => readlinkOr(`/proc/${program.pid}/fd/${fd}`).startsWith(out)); i++)
          await new Promise((r) => setTimeout(r, 20));
        return await t.command(side, ['nix-store', '--gc'], ['gc']);
      } finally {
        process.kill(-program.pid!, 'SIGKILL');
      }
    };
    await step(t, ['--gc'], 0, { run: collect });
    for (const side of sides) expect((t.use(side), existsSync(`${out}/program`))).toBe(true);
  }, 120_000);
  it('gc-non-blocking.sh: a build runs while a collection waits at its synchronisation point, and the collection then keeps its output', async () => {
    const t = new TwinStores();
    const fifo = `${t.root}/test.fifo`;
    const running = `${t.root}/running`;
    execFileSync('mkfifo', [fifo]);
    const [drv] = t.instantiateExpr(
      `with import ./config.nix; mkDerivation { name = "non-blocking"; buildCommand = "set -x; test -e ${running}; mkdir $out; echo > ${fifo}"; }`,
    );
    const outs: Partial<Record<Side, string>> = {};
    const run = async (side: Side) => {
      t.use(side);
      const dummy = runNix('nix', ['--store', t.uri(side), 'store', 'add-path', `${t.tests}/simple.nix`], { env: t.env }).stdout.trim();
      writeFileSync(running, '');
      const env = { ...t.env, _NIX_TEST_GC_SYNC: fifo };
      const gc =
        side === 'nix'
          ? runNixAsync('nix-store', ['--store', t.uri(side), '--gc'], { env, cwd: t.tests })
          : runNixAsync(process.execPath, [BIN, 'gc', '--store', t.uri(side)], { env, cwd: t.tests });
      const done = gc.then((r) => (rmSync(running), r));
      // The collection has begun once it holds the GC lock (it then waits at the FIFO, the lock held).
      const held = () => spawnSync('flock', ['-n', `${t.root}/${side}/state/gc.lock`, 'true']).status !== 0;
      for (let i = 0; i < 600 && !held(); i++) await new Promise((r) => setTimeout(r, 50));
      expect(held()).toBe(true);
      const built = await t.build(side, [drv!, '--max-silent-time', '60']);
      expect(built.status, built.stderr).toBe(0);
      outs[side] = built.stdout.trim();
      const collected = await done;
      expect(collected.status, collected.stderr).toBe(0);
      expect(existsSync(running)).toBe(false);
      expect(existsSync(dummy)).toBe(false);
      expect(existsSync(outs[side]!)).toBe(true);
      return collected;
    };
    await step(t, ['--gc'], 0, { run });
    expect(outs.ours).toBe(outs.nix);
  }, 120_000);
  it('gc-concurrent.sh: a collection while a build runs keeps its inputs, its output and its lock; a rooted .drv still builds after it', async () => {
    const t = new TwinStores();
    const fifo = `${t.root}/test1.fifo`;
    execFileSync('mkfifo', [fifo]);
    const [drv1] = t.instantiate('gc-concurrent.nix', ['-A', 'test1', '--argstr', 'lockFifo', fifo]);
    const [drv2] = t.instantiate('gc-concurrent.nix', ['-A', 'test2']);
    const { nix: simple } = await step(t, t.instantiate('simple.nix'), 0);
    const out3 = simple.stdout.trim();
    const outs: Partial<Record<Side, string[]>> = {};
    const run = async (side: Side) => {
      t.use(side);
      expect(existsSync(`${out3}.lock`)).toBe(false);
      writeFileSync(`${out3}.lock`, '');
      symlinkSync(drv2!, `${t.root}/${side}/state/gcroots/foo`);
      symlinkSync(out3, `${t.root}/${side}/state/gcroots/foo2`);
      // Build 1 in the background; the collection runs once its builder says it started, and the builder
      // goes on (links input-2 into its output) once the collection is over.
      const started = runNixAsync('cat', [fifo]);
      const [build1] = [t.buildConcurrently(side, 1, [drv1!]).then((r) => r[0]!)];
      expect((await started).stdout).toBe('Build started\n');
      const gc = await t.command(side, ['nix-store', '--gc'], ['gc']);
      expect(gc.status, gc.stderr).toBe(0);
      const unlocked = await runNixAsync('sh', ['-c', `echo > ${fifo}`]);
      expect(unlocked.status).toBe(0);
      const built1 = await build1;
      expect(built1.status, built1.stderr).toBe(0);
      const out1 = built1.stdout.trim();
      expect(readFileSync(`${out1}/foobar`, 'utf8')).toBe('FOOBAR\n');
      expect(readFileSync(`${out1}/input-2/bar`, 'utf8')).toBe('BAR\n');
      // The .drv is a root: it builds after the collection.
      const built2 = await t.build(side, [drv2!]);
      expect(built2.status, built2.stderr).toBe(0);
      const out2 = built2.stdout.trim();
      expect(readFileSync(`${out2}/foobar`, 'utf8')).toBe('FOOBARxyzzy\n');
      rmSync(`${t.root}/${side}/state/gcroots/foo`);
      rmSync(`${t.root}/${side}/state/gcroots/foo2`);
      expect(existsSync(`${out3}.lock`)).toBe(false);
      const last = await t.command(side, ['nix-store', '--gc'], ['gc']);
      expect(last.status, last.stderr).toBe(0);
      for (const p of [out1, out2]) expect(existsSync(p)).toBe(false);
      // The lock file made above: Nix's collection deletes it (one more path deleted), opening our store
      // removes it (README: gc.sh).
      const deleted = Number(/^(\d+) store paths deleted, /.exec(gc.stdout)?.[1]) - (side === 'nix' ? 1 : 0);
      outs[side] = [String(deleted), built1.stdout, built2.stdout, last.stdout];
      return built2;
    };
    await step(t, ['gc-concurrent'], 0, { run });
    expect(outs.ours).toEqual(outs.nix);
    expect((t.use('ours'), readdirSync(t.storeDir).sort())).toEqual((t.use('nix'), readdirSync(t.storeDir).sort()));
  }, 120_000);
  it('local-store.sh: a chroot store of another store directory ($NIX_STORE_DIR) named as ./x, $PWD/x and local?root=$PWD/x', async () => {
    const t = new TwinStores();
    writeFileSync(`${t.root}/example.txt`, 'example\n');
    mkdirSync(`${t.root}/x`);
    const env = { ...t.env, NIX_STORE_DIR: `${t.root}/x` };
    const added = runNix('nix-store', ['--store', './x', '--add', 'example.txt'], { env, cwd: t.root });
    expect(added.status, added.stderr).toBe(0);
    const correct = added.stdout.trim();
    expect(correct.startsWith(`${t.root}/x/`)).toBe(true);
    for (const store of ['./x', `${t.root}/x`, `local?root=${t.root}/x`]) {
      const theirs = runNix('nix', ['path-info', '--store', store, correct], { env, cwd: t.root });
      const ours = spawnSync(process.execPath, [BIN, 'path-info', '--store', store, correct], { env: nixEnv(env), cwd: t.root, encoding: 'utf8' });
      expect([ours.status, ours.stdout, ours.stderr]).toEqual([theirs.status, theirs.stdout, theirs.stderr]);
      expect(ours.stdout).toBe(`${correct}\n`);
    }
  }, 60_000);
  it("Nix's test environment: NIX_STORE_DIR, NIX_STATE_DIR and NIX_LOG_DIR without --store name the local store", async () => {
    const t = new TwinStores();
    const [drv] = t.instantiate('dependencies.nix');
    const env = (side: Side) => ({ ...t.env, NIX_STORE_DIR: t.storeDir, NIX_STATE_DIR: `${t.root}/${side}/state`, NIX_LOG_DIR: `${t.root}/${side}/log` });
    const run = async (side: Side) => {
      t.use(side);
      if (side === 'nix') return runNix('nix-store', ['--realise', drv!], { env: env(side), cwd: t.tests });
      return realiseInProcess(['build', drv!], env(side));
    };
    const { nix } = await step(t, [drv!], 0, { run });
    for (const side of sides) expect(t.read(side, `${nix.stdout.trim()}/foobar`)).toBe('FOOBAR\n');
    // The build logs went to NIX_LOG_DIR.
    const logs = (side: Side) => readdirSync(`${t.root}/${side}/log/drvs`, { recursive: true }).map(String).sort();
    expect(logs('ours')).toEqual(logs('nix'));
    expect(logs('ours').length).toBeGreaterThan(0);
  }, 60_000);
  it('nix-build.sh: --add-root keeps the output through a collection until the link goes; DRV!out; outputs in the order of the arguments', async () => {
    const t = new TwinStores();
    const [drv] = t.instantiate('dependencies.nix');
    const result = `${t.root}/result`;
    const gc = (side: Side) => t.command(side, ['nix-store', '--gc'], ['gc']);
    // (One link for both sides, made by each in turn: the same output path in both stores.)
    const { nix } = await step(t, [drv!, '--add-root', result], 0);
    expect(nix.stdout).toBe(`${result}\n`);
    const target = readlinkSync(result);
    await step(t, ['--gc'], 0, { run: gc });
    for (const side of sides) expect(t.read(side, `${target}/foobar`)).toBe('FOOBAR\n');
    rmSync(result);
    await step(t, ['--gc'], 0, { run: gc });
    for (const side of sides) expect((t.use(side), existsSync(target))).toBe(false);
    const again = await step(t, t.instantiate('dependencies.nix'), 0);
    expect(again.nix.stdout).toBe(`${target}\n`);
    expect((await step(t, [`${drv}!out`], 0)).nix.stdout).toBe(`${target}\n`);
    // The order of the paths on stdout is the order of the arguments.
    const examples = (attrs: string[]) =>
      t.instantiate(
        'nix-build-examples.nix',
        attrs.flatMap((a) => ['-A', a]),
      );
    const one = async (a: string) => (await step(t, examples([a]), 0)).nix.stdout.trim();
    const [input0, input1, input2, body] = [await one('input0'), await one('input1'), await one('input2'), await one('body')];
    expect((await step(t, examples(['input0', 'input1', 'input2', 'body']), 0)).nix.stdout).toBe(`${input0}\n${input1}\n${input2}\n${body}\n`);
    expect((await step(t, examples(['body', 'input1', 'input2', 'input0']), 0)).nix.stdout).toBe(`${body}\n${input1}\n${input2}\n${input0}\n`);
  }, 120_000);
  it('gc-auto.sh: a build that makes free space drop below min-free gets garbage collected while it runs, down to max-free', async () => {
    const t = new TwinStores();
    const fakeFree = `${t.root}/fake-free`;
    const [drv] = t.instantiateExpr(`with import ./config.nix; mkDerivation {
  name = "gc-A";
  buildCommand = ''
    set -x
    [[ $(ls $NIX_STORE/*-garbage? | wc -l) = 3 ]]
    mkdir $out
    echo foo > $out/bar
    echo 100 > ${fakeFree}.tmp1
    mv ${fakeFree}.tmp1 ${fakeFree}
    for i in {1..20}; do
      if [[ $(ls $NIX_STORE/*-garbage? | wc -l) = 1 ]]; then exit 0; fi
      sleep 1
    done
    exit 1
  '';
}`);
    const garbage = (side: Side) => (t.use(side), readdirSync(t.storeDir).filter((n) => /-garbage\d$/.test(n)));
    const run = async (side: Side) => {
      t.use(side);
      for (const n of [1, 2, 3]) {
        const r = runNix('nix', ['--store', t.uri(side), 'store', 'add-path', '--name', `garbage${n}`, `${t.tests}/nar-access.sh`], { env: t.env });
        expect(r.status, r.stderr).toBe(0);
      }
      writeFileSync(fakeFree, '1100');
      t.env._NIX_TEST_FREE_SPACE_FILE = fakeFree;
      try {
        return await t.build(side, [drv!, '--option', 'min-free', '1000', '--option', 'max-free', '3100', '--option', 'min-free-check-interval', '1']);
      } finally {
        delete t.env._NIX_TEST_FREE_SPACE_FILE;
      }
    };
    const n = await run('nix');
    const o = await run('ours');
    for (const r of [n, o]) expect(r.status, r.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    for (const side of sides) expect(garbage(side)).toHaveLength(1);
  }, 120_000);
});
