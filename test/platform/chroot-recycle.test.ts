/**
 * Chroot skeletons are reused across builds only when provably unchanged: a builder must never see
 * anything an earlier builder left or changed, nor a mount point of an input it does not have.
 * The chroot root's inode number (`stat -c %i /` inside) tells whether a skeleton was reused.
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chrootDirFor, flushRemovals } from '../../src/platform/chroot.js';
import { LinuxSandbox } from '../../src/platform/linux-sandbox.js';
import type { SandboxRequest } from '../../src/platform/sandbox.js';
import { bwrapOk, sandboxIdLine } from '../helpers/nix.js';
import { ccOk, makeFixture, storePath, type Fixture } from './sandbox-fixture.js';

describe.skipIf(!ccOk())('LinuxSandbox (helper): chroot skeleton reuse', () => {
  let fx: Fixture;
  let sb: LinuxSandbox;
  beforeAll(() => {
    fx = makeFixture();
    sb = new LinuxSandbox({ backend: 'helper', chrootPool: 1 });
  });
  afterAll(() => sb?.close());

  /** Run a build; its output file holds what the script printed. */
  async function run(name: string, script: string, extra: Partial<SandboxRequest> = {}): Promise<string> {
    await new Promise((r) => setImmediate(r)); // a skeleton goes back to the pool on the next loop turn
    const req = fx.request(name, `{ ${script}\n} > $out 2>&1`, extra);
    const exit = await sb.run(req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    return readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8');
  }
  const rootIno = 'stat -c %i /';

  it('an untouched skeleton is reused; one whose /tmp was written is not, and the next builder sees a clean /tmp', async () => {
    const a = await run('a', rootIno);
    const b = await run('b', rootIno);
    expect(b).toBe(a); // reused
    const c = await run('c', `${rootIno}; echo x > /tmp/left; ls -a /tmp | tr '\\n' ' '`);
    expect(c).toBe(`${a.trim()}\n. .. left `);
    const d = await run('d', `${rootIno}; ls -a /tmp | tr '\\n' ' '`);
    expect(d.split('\n')[0]).not.toBe(a.trim()); // a fresh skeleton
    expect(d.split('\n')[1]).toBe('. .. ');
  });

  it('on the helper server, the build process checks the skeleton: with file and directory inputs it is back in the pool, their links gone, when run() resolves', async () => {
    const fileInput = storePath('file-input');
    writeFileSync(fx.realPath(fileInput), 'data\n');
    const dirInput = storePath('dir-input');
    mkdirSync(fx.realPath(dirInput));
    const inputPaths = [fx.busyboxPath, fileInput, dirInput];
    const a = await run('a', `${rootIno}; cat ${fileInput}`, { inputPaths });
    const req = fx.request('b', `{ ${rootIno}; cat ${fileInput}; } > $out`, { inputPaths });
    expect(await sb.run(req)).toEqual({ kind: 'exited', code: 0 });
    // At once, with no turn of the event loop for a check on the main thread: the skeleton is in the pool,
    // the file input's hard link already unlinked from its store dir, the directory input's mount point kept.
    const hash = path.basename(req.drvPath).slice(0, 32);
    const pooled = readdirSync(fx.realStoreDir).filter((n) => n.startsWith(`${hash}-realise-chroot-`));
    expect(pooled).toHaveLength(1);
    expect(readdirSync(path.join(fx.realStoreDir, pooled[0]!, 'nix/store')).sort()).toEqual([path.basename(fx.busyboxPath), path.basename(dirInput)].sort());
    expect(existsSync(chrootDirFor(fx.realStoreDir, req.drvPath))).toBe(false);
    expect(readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8')).toBe(a); // the same skeleton, reused
    expect(readFileSync(fx.realPath(fileInput), 'utf8')).toBe('data\n');
  });

  it("a stale chroot of the derivation's name (a killed process left it) is replaced by a pooled skeleton", async () => {
    const a = await run('a', rootIno);
    await new Promise((r) => setImmediate(r)); // (a's skeleton back in the pool)
    const req = fx.request('stale', `{ ${rootIno}; ls -a /tmp | tr '\\n' ' '; } > $out`);
    const stale = chrootDirFor(fx.realStoreDir, req.drvPath);
    mkdirSync(path.join(stale, 'tmp'), { recursive: true });
    writeFileSync(path.join(stale, 'tmp/left'), 'x');
    expect(await sb.run(req)).toEqual({ kind: 'exited', code: 0 });
    expect(readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8')).toBe(`${a.trim()}\n. .. `); // the pooled skeleton, not the stale tree
    await flushRemovals();
    expect(existsSync(stale)).toBe(false);
  });

  it('warmUp() makes no skeleton ahead (the first build makes its own); the next build reuses that one', async () => {
    const warm = new LinuxSandbox({ backend: 'helper', chrootPool: 1 });
    try {
      const req = fx.request('warm', `${rootIno} > $out`);
      const hash = path.basename(req.drvPath).slice(0, 32);
      const pooled = () => readdirSync(fx.realStoreDir).filter((n) => n.startsWith(`${hash}-realise-chroot-`));
      await warm.warmUp({ drvPath: req.drvPath, storeDir: req.storeDir, realStoreDir: fx.realStoreDir, sandboxBuildDir: req.sandboxBuildDir });
      expect(pooled()).toEqual([]);
      expect(await warm.run(req)).toEqual({ kind: 'exited', code: 0 });
      const first = readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8').trim();
      // Back in the pool after its build, and the only one there.
      expect(pooled()).toHaveLength(1);
      expect(String(statSync(path.join(fx.realStoreDir, pooled()[0]!)).ino)).toBe(first);
      const next = fx.request('warm-next', `${rootIno} > $out`);
      expect(await warm.run(next)).toEqual({ kind: 'exited', code: 0 });
      expect(readFileSync(fx.realPath(next.outputPaths[0]!), 'utf8').trim()).toBe(first);
    } finally {
      await warm.close();
    }
  });

  it('changes to /etc, modes, the root or /dev are never carried over', async () => {
    const probes: [string, string][] = [
      ['sed -i s/nixbld/nixbxd/ /etc/passwd', 'grep -c nixbld /etc/passwd'], // same size, new contents
      ['chmod 700 /etc', 'stat -c %a /etc'],
      ['mkdir /extra', 'ls -d /extra 2>&1 || true'],
      ['rm /dev/stdin', 'readlink /dev/stdin'],
      ['touch -d 2001-01-01 /etc/hosts', 'stat -c %Y /etc/hosts | cut -c1-3'],
    ];
    for (const [change, check] of probes) {
      const before = await run('check', check);
      await run('change', change);
      expect({ change, after: await run('check', check) }).toEqual({ change, after: before });
    }
  });

  it('a hard link to a chroot file cannot be taken into an output (the store dir is a mount of its own, as in Nix), nor carried over', async () => {
    const dev = storePath('dev');
    const req = fx.request('link', `mkdir ${dev}; ln /etc/group ${dev}/g 2>${dev}/err; echo $? > ${dev}/rc; ln /etc/group /tmp/g; echo > $out`);
    expect(await sb.run({ ...req, outputPaths: [req.outputPaths[0]!, dev] })).toEqual({ kind: 'exited', code: 0 });
    expect(await run('check', 'stat -c %h /etc/group')).toBe('1\n');
    expect(readFileSync(path.join(fx.realPath(dev), 'rc'), 'utf8')).toBe('1\n');
    expect(readFileSync(path.join(fx.realPath(dev), 'err'), 'utf8')).toContain('Invalid cross-device link');
  });

  it('mount points of inputs of an earlier build are not visible in the store dir', async () => {
    const extra = storePath('extra-input');
    mkdirSync(fx.realPath(extra));
    const fileInput = storePath('file-input');
    writeFileSync(fx.realPath(fileInput), 'data\n');
    const list = 'ls $NIX_STORE | grep -v "$(basename $out)" | tr "\\n" " "';
    const base = (p: string) => path.basename(p);
    expect(await run('with', list, { inputPaths: [fx.busyboxPath, extra, fileInput] })).toBe(
      [base(fx.busyboxPath), base(extra), base(fileInput)].sort().join(' ') + ' ',
    );
    expect(await run('without', list)).toBe(`${base(fx.busyboxPath)} `);
    // A name that was a directory mount point can come back as a file input, and the reverse.
    expect(await run('again', `${list}; cat ${fileInput}`, { inputPaths: [fx.busyboxPath, fileInput] })).toBe(
      [base(fx.busyboxPath), base(fileInput)].sort().join(' ') + ' data\n',
    );
    expect(await run('last', list)).toBe(`${base(fx.busyboxPath)} `);
  });

  it("a builder that swaps the chroot's /nix for a symlink to a host directory cannot make the recycling unlink a host file", async () => {
    // The recycling unlinks the build's file inputs from the skeleton's store dir; a builder owns the chroot's
    // root, so it can put a symlink where /nix was. Through it, the store dir would be a host directory.
    const fileInput = storePath('file-input');
    writeFileSync(fx.realPath(fileInput), 'data\n');
    const victim = path.join(fx.dir, 'victim');
    mkdirSync(path.join(victim, 'store'), { recursive: true });
    const bait = path.join(victim, 'store', path.basename(fileInput));
    writeFileSync(bait, 'host file\n');
    const out = await run('swap', `mv /nix /nix.old && ln -s ${victim} /nix && echo swapped`, {
      inputPaths: [fx.busyboxPath, fileInput],
    });
    expect(out).toBe('swapped\n'); // the builder could do it
    await new Promise((r) => setImmediate(r)); // (the skeleton is checked as it goes back to the pool)
    await flushRemovals();
    expect(readFileSync(bait, 'utf8')).toBe('host file\n');
    expect(readFileSync(fx.realPath(fileInput), 'utf8')).toBe('data\n');
    // And the next build gets a sound chroot.
    expect(await run('after', 'ls -d /nix/store; ls -d /nix.old 2>/dev/null || echo no /nix.old')).toBe('/nix/store\nno /nix.old\n');
  });

  /**
   * A build that writes $out (the root's inode) and then waits for `go` in a directory input, while
   * `meanwhile` acts on its chroot from the host (which sees the skeleton's directories, not what is
   * mounted on them in the build's namespace). Returns its root's inode.
   */
  async function runPaused(name: string, meanwhile: (chroot: string) => void): Promise<string> {
    await new Promise((r) => setImmediate(r));
    const gate = fx.realPath(gatePath);
    rmSync(path.join(gate, 'go'), { force: true });
    const req = fx.request(name, `${rootIno} > $out; until [ -e ${gatePath}/go ]; do sleep 0.02; done`, { inputPaths: [fx.busyboxPath, gatePath] });
    const chroot = chrootDirFor(fx.realStoreDir, req.drvPath);
    const written = path.join(chroot, 'nix/store', path.basename(req.outputPaths[0]!));
    const running = sb.run(req);
    const deadline = Date.now() + 20_000;
    while (!(existsSync(written) && statSync(written).size > 0)) {
      if (Date.now() > deadline) throw new Error('the build never started');
      await new Promise((r) => setTimeout(r, 10));
    }
    meanwhile(chroot);
    writeFileSync(path.join(gate, 'go'), '');
    expect(await running).toEqual({ kind: 'exited', code: 0 });
    return readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8');
  }
  let gatePath: string;
  beforeAll(() => {
    gatePath = storePath('gate');
    mkdirSync(fx.realPath(gatePath));
  });
  const withGate = (script: string) => run('after', script, { inputPaths: [fx.busyboxPath, gatePath] });

  it('what is written under a mount point during a build (the build dir, /proc, a device node, a directory input) is never carried over', async () => {
    const untouched = await runPaused('untouched', () => {});
    expect(await withGate(rootIno)).toBe(untouched); // reused: what the cases below would see without a change
    const busybox = path.basename(fx.busyboxPath);
    const changes: [string, (chroot: string) => void][] = [
      ['/build', (c) => writeFileSync(path.join(c, 'build/left'), 'x')],
      ['/proc', (c) => writeFileSync(path.join(c, 'proc/left'), 'x')],
      ['/dev/null', (c) => writeFileSync(path.join(c, 'dev/null'), 'x')],
      ['/proc mode', (c) => chmodSync(path.join(c, 'proc'), 0o777)],
      ['input mount point', (c) => writeFileSync(path.join(c, 'nix/store', busybox, 'left'), 'x')],
      ['input mount point mode', (c) => chmodSync(path.join(c, 'nix/store', path.basename(gatePath)), 0o777)],
    ];
    for (const [what, change] of changes) {
      const before = await runPaused(what.replace(/[^a-z]/g, '-'), change);
      expect({ what, reused: (await withGate(rootIno)) === before }).toEqual({ what, reused: false });
    }
  });

  it('a directory put in place of the chroot during the build is not taken into the pool (the helper renames only the inode it checked)', async () => {
    let impostor = '';
    await runPaused('swapped', (chroot) => {
      renameSync(chroot, `${chroot}.orig`);
      mkdirSync(chroot);
      writeFileSync(path.join(chroot, 'marker'), '');
      impostor = chroot;
    });
    await new Promise((r) => setImmediate(r));
    await flushRemovals();
    const pooled = readdirSync(fx.realStoreDir).filter((n) => n.includes('-realise-chroot-'));
    expect(pooled.filter((n) => existsSync(path.join(fx.realStoreDir, n, 'marker')))).toEqual([]);
    expect(existsSync(impostor)).toBe(false);
    rmSync(`${impostor}.orig`, { recursive: true, force: true });
    expect(await withGate('ls -a / | tr "\\n" " "')).not.toContain('marker');
  });

  it("the skeleton of a builder whose uid or gid is the kernel's overflow id (kernel.overflowuid, as unmapped owners show in the build's namespace) is not reused", async () => {
    const overflow = (k: string) => Number(readFileSync(`/proc/sys/kernel/overflow${k}`, 'utf8'));
    for (const ids of [{ uid: overflow('uid') }, { gid: overflow('gid') }]) {
      const a = await run('overflow-a', rootIno, ids);
      const b = await run('overflow-b', rootIno, ids);
      expect({ ids, reused: b === a }).toEqual({ ids, reused: false });
    }
    const a = await run('other-a', rootIno, { uid: 1234 });
    expect(await run('other-b', rootIno, { uid: 1234 })).toBe(a); // (read: other ids' are)
  });

  it.skipIf(process.getuid?.() === 0)(
    "a uid-0 builder's skeleton is never reused (it has every capability in its user namespace: it could unmount what covers the skeleton)",
    async () => {
      const a = await run('root-a', rootIno, { uid: 0, gid: 0 });
      const b = await run('root-b', rootIno, { uid: 0, gid: 0 });
      expect(b).not.toBe(a);
    },
  );

  it.skipIf(!bwrapOk())('outputs and the Nix view are unaffected by reuse (ls -la / twice)', async () => {
    const view =
      'ls -la / /dev /etc /tmp $NIX_STORE | sed -E "s/ [A-Z][a-z][a-z] [ 0-9][0-9] +[0-9:]+ / DATE /" | grep -v "$(basename $out)" | grep -v " proc$"';
    const first = await run('view1', view);
    const second = await run('view2', view);
    expect(second).toBe(first);
    expect(first).toContain('ptmx -> /dev/pts/ptmx');
  });
});

describe.skipIf(!ccOk())('LinuxSandbox (helper server): warm and cold build processes', () => {
  let fx: Fixture;
  let sb: LinuxSandbox;
  beforeAll(() => {
    fx = makeFixture();
    sb = new LinuxSandbox({ backend: 'helper' });
  });
  afterAll(() => sb?.close());

  it('requests the prepared (warm) process cannot serve — other ids, host network — run cold, interleaved', async () => {
    const run = async (extra: Partial<SandboxRequest>) => {
      const req = fx.request('ids', 'id > $out; cat /proc/net/dev | wc -l >> $out', extra);
      expect(await sb.run(req)).toEqual({ kind: 'exited', code: 0 });
      return readFileSync(fx.realPath(req.outputPaths[0]!), 'utf8');
    };
    const dflt = await run({});
    expect(dflt.split('\n')[0]).toBe(sandboxIdLine());
    const other = await run({ uid: 1234, gid: 567 });
    expect(other.split('\n')[0]).toBe(sandboxIdLine(1234, 567));
    const net = await run({ network: true });
    expect(Number(net.split('\n')[1])).toBeGreaterThan(Number(dflt.split('\n')[1])); // the host's interfaces, not just lo
    expect(await run({})).toBe(dflt);
  });

  it('a setup failure in the prepared process is reported with the build, and the next build works', async () => {
    const bad = fx.request('bad', 'true', { extraPaths: new Map([['/bad', { source: '/nonexistent-source', optional: false }]]) });
    const exit = await sb.run(bad);
    expect(exit.kind).toBe('spawn-failed');
    expect((exit as { message: string }).message).toContain('/nonexistent-source');
    const ok = fx.request('ok', 'echo fine > $out');
    expect(await sb.run(ok)).toEqual({ kind: 'exited', code: 0 });
  });
});
