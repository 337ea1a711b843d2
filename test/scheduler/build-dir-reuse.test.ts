/**
 * Build directories reused (src/platform/build-dir-pool.ts): a build directory as the engine made it goes
 * into the process's pool and the next build gets the same directory (same inode) under its own name,
 * empty and 0700; one a builder changed (files left, mode, an extended attribute or ACL) is removed;
 * concurrent builds, in one process or two, never share one; keepFailed keeps it; a process killed with
 * -9 leaves nothing after the next sweep, its pool included.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { derivation } from '../../src/derivation/instantiate.js';
import { BUILD_DIR_POOL_PREFIX, buildDirRegistry } from '../../src/platform/build-dirs.js';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import type { BuildEngineOptions } from '../../src/scheduler/options.js';
import { LocalStore } from '../../src/store/local-store.js';
import { bwrapOk, tempDir } from '../helpers/nix.js';
import { ccOk } from '../platform/sandbox-fixture.js';
import { busyboxOk, SANDBOX_PATHS } from './helpers.js';
import { killOnceBuilding } from '../helpers/child.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROBE_SOURCE = path.resolve(HERE, '../fixtures/platform/hostile-probe.c');
const ENGINE_MODULE = path.resolve(HERE, '../../src/scheduler/build-engine.ts');
const STORE_MODULE = path.resolve(HERE, '../../src/store/local-store.ts');
const INSTANTIATE_MODULE = path.resolve(HERE, '../../src/derivation/instantiate.ts');
const system = 'x86_64-linux';

/** What a builder records of its build directory: inode, mode and entries (before writing anything). */
const RECORD = 'd=$NIX_BUILD_TOP; echo "$(stat -c "%i %a %u" $d) [$(ls -A $d)] $d $PWD $TMPDIR" > $out';

const isPool = (n: string) => n.startsWith(BUILD_DIR_POOL_PREFIX);
/** The inodes of the directories waiting for reuse in `base` (`pid`: of that process only). */
const pooledInodes = (base: string, pid?: number) =>
  readdirSync(base)
    .filter((n) => (pid === undefined ? isPool(n) : n.startsWith(`${BUILD_DIR_POOL_PREFIX}${pid}-`)))
    .map((n) => String(lstatSync(path.join(base, n)).ino));

describe.skipIf(!ccOk() || !busyboxOk())('build directories reused', () => {
  let dir: string;
  let store: LocalStore;
  let probe: string;
  const engines: BuildEngine[] = [];

  beforeAll(async () => {
    dir = tempDir('realise-dir-reuse-');
    probe = path.join(dir, 'probe');
    execFileSync(process.env.CC ?? 'cc', ['-static', '-O2', '-o', probe, PROBE_SOURCE]);
    store = await LocalStore.open({ storeDir: path.join(dir, 'store'), stateDir: path.join(dir, 'state'), logDir: path.join(dir, 'log') });
  });
  afterAll(async () => {
    for (const e of engines) await e.close();
    await store?.close();
  });

  const base = (name: string) => {
    const b = path.join(dir, name);
    mkdirSync(b, { recursive: true });
    return b;
  };
  const engine = (o: BuildEngineOptions) => {
    const e = new BuildEngine({ store, sandbox: false, ...o });
    engines.push(e);
    return e;
  };
  async function build(e: BuildEngine, name: string, script: string): Promise<string> {
    const d = await derivation(store, { name, system, builder: '/bin/busybox', args: ['sh', '-c', script] });
    const [r] = await e.buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
    expect(r!.result.status, r!.result.errorMsg).toBe('built');
    return readFileSync(String(d.out), 'utf8');
  }
  const inode = (record: string) => record.split(' ')[0]!;

  it('the next build gets the same directory under its own name, empty and 0700; the builder sees what Nix gives', async () => {
    const b = base('plain');
    const e = engine({ buildDir: b });
    const first = await build(e, 'first', RECORD);
    const second = await build(e, 'second', RECORD);
    const top = path.join(b, 'nix-build-second.drv-0');
    expect(second).toBe(`${inode(first)} 700 ${process.getuid!()} [] ${top} ${top} ${top}\n`);
    expect(first).toBe(
      `${inode(first)} 700 ${process.getuid!()} [] ${path.join(b, 'nix-build-first.drv-0')} ${path.join(b, 'nix-build-first.drv-0')} ${path.join(b, 'nix-build-first.drv-0')}\n`,
    );
    // Between builds the directory waits under a name of this process, the only thing left in the base.
    const left = readdirSync(b);
    expect(left).toEqual([expect.stringMatching(new RegExp(`^\\${BUILD_DIR_POOL_PREFIX}${process.pid}-\\d+$`))]);
    expect(lstatSync(path.join(b, left[0]!)).mode & 0o7777).toBe(0o700);
    expect(readdirSync(path.join(b, left[0]!))).toEqual([]);
    expect(pooledInodes(b)).toEqual([inode(first)]);
  });

  it("an engine's close removes the directories waiting for reuse in its base (left as Nix leaves it)", async () => {
    const b = base('closed');
    const e = new BuildEngine({ store, sandbox: false, buildDir: b });
    await build(e, 'before-close', RECORD);
    expect(pooledInodes(b)).toHaveLength(1);
    await e.close();
    expect(readdirSync(b)).toEqual([]);
  });

  it("an engine's close also removes a pooled directory written into after it was pooled (a builder's lingering process)", async () => {
    const b = base('closed-written');
    const e = new BuildEngine({ store, sandbox: false, buildDir: b });
    await build(e, 'before-close-written', RECORD);
    const [entry] = readdirSync(b);
    mkdirSync(path.join(b, entry!, 'late/deeper'), { recursive: true });
    writeFileSync(path.join(b, entry!, 'late/deeper/file'), 'x');
    await e.close();
    expect(readdirSync(b)).toEqual([]);
  });

  it.each([
    ['left a file', 'touch $NIX_BUILD_TOP/debris'],
    ['changed its mode', 'chmod 755 $NIX_BUILD_TOP'],
    ['added an extended attribute', 'P setxattr $NIX_BUILD_TOP user.x v'],
    ['added a default ACL', 'P acl $NIX_BUILD_TOP'],
  ])('a directory whose builder %s is removed, not reused', async (what, change) => {
    const tag = what.replace(/ /g, '-');
    const b = base(`changed-${tag}`);
    // (Without the seccomp filter, which refuses a builder's extended attributes altogether.)
    const e = engine({ buildDir: b, filterSyscalls: false });
    const script = `${RECORD}; r=$(${change.replace(/^P /, `${probe} `)}) || exit 1; [ -z "$r" ] || [ "$r" = ok ] || { echo "$r" >&2; exit 1; }`;
    await build(e, `changer-${tag}`, script);
    // Removed, not pooled. (Not compared by inode: ext4 may give a freed inode number to the next directory made.)
    expect(readdirSync(b)).toEqual([]);
    const second = await build(e, `after-${tag}`, RECORD);
    expect(second).toMatch(/^\d+ 700 \d+ \[\] /);
    expect(pooledInodes(b)).toEqual([inode(second)]);
  });

  it('builds running at once never share a directory; those of one name get -0, -1, ... as Nix numbers them', async () => {
    const b = base('concurrent');
    const e = engine({ buildDir: b, maxJobs: 4 });
    // Fill the pool with four directories.
    const gate = path.join(dir, 'gate-1');
    const waiting = (n: string) => `touch ${gate}.${n}; while [ ! -e ${gate} ]; do sleep 0.05; done; ${RECORD}`;
    const names = ['w', 'x', 'y', 'z'];
    const run = async (g: string) => {
      const drvs = await Promise.all(
        names.map((n) => derivation(store, { name: 'same', system, builder: '/bin/busybox', args: ['sh', '-c', waiting(n).replaceAll(gate, g)], n })),
      );
      const done = e.buildPaths(drvs.map((d) => d.drvPath));
      for (let i = 0; i < 600 && !names.every((n) => existsSync(`${g}.${n}`)); i++) await new Promise((r) => setTimeout(r, 50));
      writeFileSync(g, '');
      await done;
      return drvs.map((d) => readFileSync(String(d.out), 'utf8'));
    };
    const firstRound = await run(gate);
    const secondRound = await run(path.join(dir, 'gate-2'));
    for (const round of [firstRound, secondRound]) {
      expect(new Set(round.map(inode)).size).toBe(4);
      expect(round.map((r) => r.split(' ')[4]).sort()).toEqual([0, 1, 2, 3].map((n) => path.join(b, `nix-build-same.drv-${n}`)));
    }
    // The second round got the first round's directories back.
    expect(new Set(secondRound.map(inode))).toEqual(new Set(firstRound.map(inode)));
  });

  it('another process building in the same base at the same time gets other directories', async () => {
    const b = base('two-processes');
    const e = engine({ buildDir: b });
    const gate = path.join(dir, 'gate-proc');
    const script = (who: string) => `touch ${gate}.${who}; while [ ! -e ${gate} ]; do sleep 0.05; done; ${RECORD}`;
    // Each process has a directory pooled first.
    await build(e, 'warm', RECORD);
    const childCode = `
      import { BuildEngine } from ${JSON.stringify(ENGINE_MODULE)};
      import { LocalStore } from ${JSON.stringify(STORE_MODULE)};
      import { derivation } from ${JSON.stringify(INSTANTIATE_MODULE)};
      import { readFileSync } from 'node:fs';
      const store = await LocalStore.open(${JSON.stringify({ storeDir: path.join(dir, 'store'), stateDir: path.join(dir, 'state'), logDir: path.join(dir, 'log') })});
      const e = new BuildEngine({ store, sandbox: false, buildDir: ${JSON.stringify(b)} });
      const mk = (name, script) => derivation(store, { name, system: ${JSON.stringify(system)}, builder: '/bin/busybox', args: ['sh', '-c', script] });
      await e.buildPaths([(await mk('warm-child', ${JSON.stringify(RECORD)})).drvPath]);
      const d = await mk('shared', ${JSON.stringify(script('child'))});
      await e.buildPaths([d.drvPath]);
      process.stdout.write('OUT ' + readFileSync(String(d.out), 'utf8'));
      await e.close();
      await store.close();`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', childCode], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const d = await derivation(store, { name: 'shared', system, builder: '/bin/busybox', args: ['sh', '-c', script('parent')], who: 'parent' });
    const ours = e.buildPaths([d.drvPath]);
    for (let i = 0; i < 1200 && !(existsSync(`${gate}.child`) && existsSync(`${gate}.parent`)); i++) await new Promise((r) => setTimeout(r, 50));
    writeFileSync(gate, '');
    await ours;
    expect(await exited).toBe(0);
    const theirs = /OUT (.*)\n/.exec(out)![1]!;
    const mine = readFileSync(String(d.out), 'utf8').trim();
    expect(inode(mine)).not.toBe(inode(theirs));
    expect([mine, theirs].map((r) => r.split(' ')[4]).sort()).toEqual([path.join(b, 'nix-build-shared.drv-0'), path.join(b, 'nix-build-shared.drv-1')]);
    // The child's pooled directories went with it; ours waits.
    expect(readdirSync(b).filter(isPool)).toHaveLength(1);
    expect(pooledInodes(b, process.pid)).toEqual([inode(mine)]);
  });

  it('keepFailed keeps a failed build directory where it is, not in the pool', async () => {
    const b = base('kept');
    const e = engine({ buildDir: b, keepFailed: true });
    await build(e, 'pooled', RECORD);
    const d = await derivation(store, { name: 'fails', system, builder: '/bin/busybox', args: ['sh', '-c', 'exit 1'] });
    const [r] = await e.buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
    expect(r!.result.status).toBe('permanent-failure');
    const kept = path.join(b, 'nix-build-fails.drv-0');
    expect(lstatSync(kept).mode & 0o7777).toBe(0o755);
    const again = await build(e, 'next', RECORD);
    expect(inode(again)).not.toBe(String(lstatSync(kept).ino));
    expect(existsSync(kept)).toBe(true);
  });

  it('a process killed with -9 leaves nothing after the next sweep, its pool included', async () => {
    const b = base('killed');
    const childCode = `
      import { BuildEngine } from ${JSON.stringify(ENGINE_MODULE)};
      import { LocalStore } from ${JSON.stringify(STORE_MODULE)};
      import { derivation } from ${JSON.stringify(INSTANTIATE_MODULE)};
      const store = await LocalStore.open(${JSON.stringify({ storeDir: path.join(dir, 'store'), stateDir: path.join(dir, 'state'), logDir: path.join(dir, 'log') })});
      const e = new BuildEngine({ store, sandbox: false, buildDir: ${JSON.stringify(b)}, maxJobs: 2 });
      const mk = (name, script) => derivation(store, { name, system: ${JSON.stringify(system)}, builder: '/bin/busybox', args: ['sh', '-c', script] });
      // Two at once (each waits for the other), so two directories are pooled; the sleeper takes one.
      const both = (me) => 'touch ' + ${JSON.stringify(path.join(dir, 'killed-gate'))} + '.' + me + '; while [ ! -e ' + ${JSON.stringify(path.join(dir, 'killed-gate'))} + '.a ] || [ ! -e ' + ${JSON.stringify(path.join(dir, 'killed-gate'))} + '.b ]; do sleep 0.02; done; ' + ${JSON.stringify(RECORD)};
      await e.buildPaths([(await mk('pooled-a', both('a'))).drvPath, (await mk('pooled-b', both('b'))).drvPath]);
      e.on('build-started', () => process.stdout.write('BUILDING\\n'));
      await e.buildPaths([(await mk('sleeper', 'sleep 60')).drvPath]);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', childCode], { stdio: ['ignore', 'pipe', 'inherit'] });
    await killOnceBuilding(child);
    const left = readdirSync(b).sort();
    expect(left.filter((n) => !isPool(n))).toEqual(['nix-build-sleeper.drv-0']);
    expect(left.filter(isPool)).toEqual([expect.stringMatching(new RegExp(`^\\${BUILD_DIR_POOL_PREFIX}${child.pid}-\\d+$`))]);
    const removed = await buildDirRegistry().sweep({});
    expect(removed.filter((p) => p.startsWith(b)).sort()).toEqual(left.map((n) => path.join(b, n)).sort());
    expect(readdirSync(b)).toEqual([]);
  });

  it.skipIf(!bwrapOk())('a sandboxed build gets its directory back with its build inside (one rename moves both)', async () => {
    const b = base('sandboxed');
    const e = engine({ buildDir: b, sandbox: true, sandboxPaths: SANDBOX_PATHS });
    const seen: string[] = [];
    e.on('build-started', () => {
      for (const n of readdirSync(b).filter((x) => !isPool(x))) {
        const top = path.join(b, n);
        seen.push(`${n} ${lstatSync(top).ino} ${lstatSync(path.join(top, 'build')).ino} ${readdirSync(top).join(',')}`);
      }
    });
    const rec = 'echo "$(stat -c "%a" /build) [$(ls -A /build)] $NIX_BUILD_TOP $PWD $TMPDIR" > $out';
    for (const name of ['sb-one', 'sb-two']) {
      const d = await derivation(store, { name, system, builder: '/bin/sh', args: ['-c', rec] });
      const [r] = await e.buildPathsWithResults([{ drvPath: d.drvPath, outputs: ['out'] }]);
      expect(r!.result.status, r!.result.errorMsg).toBe('built');
      expect(readFileSync(store.toRealPath(String(d.out)), 'utf8')).toBe('700 [] /build /build /build\n');
    }
    expect(seen).toHaveLength(2);
    const [one, two] = seen.map((s) => s.split(' '));
    expect([one![0], two![0]]).toEqual(['nix-build-sb-one.drv-0', 'nix-build-sb-two.drv-0']);
    expect(two!.slice(1)).toEqual(one!.slice(1));
    expect(one![3]).toBe('build');
    // The close removes the pooled directory with its build inside.
    expect(readdirSync(b).filter(isPool)).toHaveLength(1);
    await e.close();
    expect(readdirSync(b)).toEqual([]);
  });
});
