/**
 * The helper server's network namespaces, reused by later builds only when a build left no trace in
 * them: every build sees a private loopback, up, with zero counters and no sockets, also after a build
 * that used the network; concurrent builds never share one; the builder cannot change it, also run by
 * root (the builder is then the host's uid 0, and /proc/sys is read-only to it). The pool is in use as
 * root and as an ordinary user (checked from outside: the server holds the namespaces builds ran in).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinuxSandbox } from '../../src/platform/linux-sandbox.js';
import type { SandboxExit, SandboxRequest } from '../../src/platform/sandbox.js';
import { AS_ROOT, bwrapOk } from '../helpers/nix.js';
import { ccOk, makeFixture, storePath, type Fixture } from './sandbox-fixture.js';

const PORT = 7741;
/** Whether the kernel has IPv6 (without it, /proc/net/ip6_flowlabel and sockstat6 do not exist). */
const IPV6 = existsSync('/proc/net/ip6_flowlabel');

/** The namespace id, the loopback line of /proc/net/dev, the socket tables (written to $out/net). */
const RECORD = (bb: string) =>
  `${bb} mkdir $out; { ${bb} readlink /proc/self/ns/net; ${bb} ip -o link show lo | ${bb} grep -o '<[A-Z,_]*>'; ` +
  `${bb} grep 'lo:' /proc/net/dev; ${bb} grep -h -o '[A-Z0-9]*: inuse [0-9]*\\|tw [0-9]*' /proc/net/sockstat /proc/net/sockstat6 2>/dev/null; ` +
  `${bb} grep '^Ip: [0-9]' /proc/net/snmp; echo $(${bb} wc -l < /proc/net/unix) $(${bb} cat /proc/net/ip6_flowlabel 2>/dev/null | ${bb} wc -l); } > $out/net`;

/**
 * Listens on 127.0.0.1:PORT, says so once the socket listens, waits for /build/go, connects to itself and
 * records what came through. The message is in a file, read before the socket (busybox nc exits when the
 * listener, whose stdin is /dev/null, shuts its side: a pipe from echo could still be empty then).
 */
const LISTEN_AND_CONNECT = (bb: string) =>
  `${bb} mkdir $out; ${bb} nc -l -p ${PORT} > $out/got & ` +
  `while ! ${bb} grep -q ':${PORT.toString(16).toUpperCase()} 0*:0000 0A' /proc/net/tcp /proc/net/tcp6; do ${bb} sleep 0.02; done; echo listening; ` +
  `while ! ${bb} test -e /build/go; do ${bb} sleep 0.05; done; ` +
  `echo "hello $out" > msg; ${bb} nc 127.0.0.1 ${PORT} < msg; wait; ${bb} cat $out/got`;

async function build(sb: LinuxSandbox, req: SandboxRequest, onText?: (all: string) => void): Promise<{ exit: SandboxExit; log: string }> {
  const chunks: Buffer[] = [];
  const exit = await sb.run(req, {
    onOutput: (c) => {
      chunks.push(c);
      onText?.(Buffer.concat(chunks).toString());
    },
  });
  return { exit, log: Buffer.concat(chunks).toString() };
}

/** The network namespaces (net:[N]) the helper servers started by this process hold open. */
function heldByServers(): Set<string> {
  const held = new Set<string>();
  const kids = readdirSync('/proc/self/task').flatMap((t) => readFileSync(`/proc/self/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
  for (const pid of kids) {
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd.includes('--server\0--warm')) continue;
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const l = readlinkSync(`/proc/${pid}/fd/${fd}`);
        if (l.startsWith('net:[')) held.add(l);
      } catch {
        // closed meanwhile
      }
    }
  }
  return held;
}

async function eventually(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 1200 && !ok(); i++) await new Promise((r) => setTimeout(r, 25));
  if (!ok()) throw new Error(`not so after 30 s: ${what}`);
}

describe.skipIf(!bwrapOk() || !ccOk())('LinuxSandbox (helper server): network namespaces', () => {
  let fx: Fixture;
  let sb: LinuxSandbox;
  let bb: string;
  beforeAll(async () => {
    fx = makeFixture();
    bb = `${fx.busyboxPath}/bin/busybox`;
    sb = new LinuxSandbox({ backend: 'helper', server: true });
    expect(await sb.backend()).toBe('helper');
  });
  afterAll(() => sb?.close());

  /** A build recording its network view: its namespace id, and the rest, which must be a fresh one's. */
  async function recordNet(): Promise<string> {
    const req = fx.request('record', RECORD(bb));
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    const [id, ...view] = readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'net'), 'utf8')
      .trim()
      .split('\n');
    expect(id).toMatch(/^net:\[\d+\]$/);
    expect(view[0]).toMatch(/^<LOOPBACK,UP,LOWER_UP>$/);
    expect(view[1]!.trim().split(/\s+/)).toEqual(['lo:', ...Array<string>(16).fill('0')]);
    const counts = view.slice(2, -2);
    expect(counts.length).toBeGreaterThanOrEqual(IPV6 ? 8 : 5);
    for (const c of counts) expect(c).toMatch(/ 0$/);
    // Ip: Forwarding, DefaultTTL, then counters (e.g. OutNoRoutes, which an unroutable connect() counts)
    expect(view.at(-2)).toMatch(/^Ip: [12] 64( 0)+$/);
    expect(view.at(-1)).toBe(IPV6 ? '1 1' : '1 0'); // the headers of /proc/net/unix and /proc/net/ip6_flowlabel only
    return id!;
  }

  it('each build sees a fresh-looking loopback; a build that used the network leaves its namespace to nobody', async () => {
    const before = [await recordNet(), await recordNet(), await recordNet()];
    const used = fx.request('used', LISTEN_AND_CONNECT(bb));
    writeFileSync(path.join(used.buildDir, 'go'), '');
    const r = await build(sb, used);
    expect(r.exit).toEqual({ kind: 'exited', code: 0 });
    expect(r.log).toContain(`hello ${used.outputPaths[0]}`);
    // Pooled: sequential clean builds ran again in a namespace the server holds (held all along, so its
    // number was not freed and recycled by the kernel in between). A namespace is free again once the server
    // has reaped the build's process, which may come after the next request on a loaded machine: then that
    // build gets a new one, and a later one reuses it. Three builds after, or up to 20 until one is reused.
    const ids = [...before];
    const pooled = () => {
      const held = heldByServers();
      return ids.filter((id, i) => ids.indexOf(id) !== i && held.has(id));
    };
    for (let n = 0; n < 3 || (n < 20 && pooled().length === 0); n++) ids.push(await recordNet());
    expect(pooled()).not.toEqual([]);
  });

  it('the namespace a network-using build ran in is closed, not reused', async () => {
    const req = fx.request('used-id', `${bb} readlink /proc/self/ns/net; ${LISTEN_AND_CONNECT(bb)}`);
    writeFileSync(path.join(req.buildDir, 'go'), '');
    const r = await build(sb, req);
    expect(r.exit).toEqual({ kind: 'exited', code: 0 });
    const id = /net:\[\d+\]/.exec(r.log)![0];
    await eventually(`the server let go of ${id}`, () => !heldByServers().has(id));
    // (Its number may come back: the kernel recycles a freed namespace's inode number.) The next build sees a fresh one.
    await recordNet();
  });

  it('a build whose connect() found no route (no packet, no socket left) leaves its namespace to nobody', async () => {
    const req = fx.request('no-route', `${bb} readlink /proc/self/ns/net; ${bb} nc -w 1 10.1.2.3 80 2>&1; ${bb} grep '^Ip: [0-9]' /proc/net/snmp`);
    const { exit, log } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    expect(log).toMatch(/Network is unreachable\nIp: [12] 64( 0)* 1 /);
    const id = /net:\[\d+\]/.exec(log)![0];
    await eventually(`the server let go of ${id}`, () => !heldByServers().has(id));
    await recordNet();
  });

  it.skipIf(!IPV6)('a build that left an IPv6 flow label (it outlives its socket) leaves its namespace to nobody', async () => {
    const tool = storePath('flowlabel');
    mkdirSync(path.join(fx.realPath(tool), 'bin'), { recursive: true });
    const source = path.join(import.meta.dirname, '../fixtures/platform/flowlabel.c');
    execFileSync(process.env.CC ?? 'cc', ['-static', '-O2', '-o', path.join(fx.realPath(tool), 'bin/flowlabel'), source]);
    const req = fx.request('flowlabel', `${bb} readlink /proc/self/ns/net; ${tool}/bin/flowlabel; ${bb} wc -l < /proc/net/ip6_flowlabel`, {
      inputPaths: [fx.busyboxPath, tool],
    });
    const { exit, log } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    expect(log).toMatch(/^net:\[\d+\]\nflow label made\n2\n$/);
    const id = /net:\[\d+\]/.exec(log)![0];
    await eventually(`the server let go of ${id}`, () => !heldByServers().has(id));
    await recordNet();
  });

  it('two concurrent builds each listen on the same 127.0.0.1 port and talk to themselves', async () => {
    const reqs = [fx.request('port-a', LISTEN_AND_CONNECT(bb)), fx.request('port-b', LISTEN_AND_CONNECT(bb))];
    const said: (() => void)[] = [];
    const listening = reqs.map((_r, i) => new Promise<void>((resolve) => (said[i] = resolve)));
    const runs = reqs.map((req, i) => build(sb, req, (t) => t.includes('listening') && said[i]!()));
    // Both listen at the same time before either connects.
    await Promise.all(listening);
    for (const req of reqs) writeFileSync(path.join(req.buildDir, 'go'), '');
    const results = await Promise.all(runs);
    results.forEach(({ exit, log }, i) => {
      expect(exit).toEqual({ kind: 'exited', code: 0 });
      expect(log).toBe(`listening\nhello ${reqs[i]!.outputPaths[0]}\n`);
    });
    await recordNet();
  });

  it('a builder running as uid 0 has a namespace of its own, which it may configure, as with a fresh one (refused when run by root)', async () => {
    const req = fx.request('root', `${bb} mkdir $out; ${bb} ifconfig lo down && ${bb} ip -o link show lo > $out/lo; echo ok`, { uid: 0, gid: 0 });
    if (AS_ROOT) {
      // As root such a builder would be the host's uid 0 with every capability in its namespaces: it could lift /proc's covers.
      expect((await build(sb, req)).exit).toMatchObject({
        kind: 'spawn-failed',
        message: expect.stringMatching(/cannot run as uid 0 when realise runs as root/),
      });
      return;
    }
    expect(await build(sb, req)).toEqual({ exit: { kind: 'exited', code: 0 }, log: 'ok\n' });
    expect(readFileSync(path.join(fx.realPath(req.outputPaths[0]!), 'lo'), 'utf8')).not.toContain(',UP');
    await recordNet();
  });

  it('the builder cannot change its network namespace', async () => {
    const req = fx.request(
      'change',
      `${bb} mkdir $out; ${bb} readlink /proc/self/ns/net > $out/id; ${bb} ifconfig lo down 2>> $out/err && echo down >> $out/did; ${bb} ip link set lo down 2>> $out/err && echo down2 >> $out/did; ` +
        `${bb} ip addr add 10.1.2.3/8 dev lo 2>> $out/err && echo addr >> $out/did; ${bb} ip route add 10.0.0.0/8 dev lo 2>> $out/err && echo route >> $out/did; ` +
        `echo 99 2>> $out/err > /proc/sys/net/ipv4/ip_default_ttl && echo sysctl >> $out/did; ${bb} ip -o link show lo > $out/lo; echo ok`,
    );
    expect(await build(sb, req)).toEqual({ exit: { kind: 'exited', code: 0 }, log: 'ok\n' });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'lo'), 'utf8')).toContain(',UP,');
    const did = existsSync(path.join(out, 'did')) ? readFileSync(path.join(out, 'did'), 'utf8') : '';
    expect(did).toBe('');
    // As root the builder is the host's uid 0, which the kernel would let write sysctls: /proc/sys is read-only then.
    const err = readFileSync(path.join(out, 'err'), 'utf8');
    expect(err).toMatch(/Operation not permitted/);
    expect(err).toMatch(AS_ROOT ? /ip_default_ttl: Read-only file system/ : /ip_default_ttl: Permission denied/);
    // It ran in a pooled namespace (one the server holds), not a fresh one of its own.
    expect(heldByServers()).toContain(readFileSync(path.join(out, 'id'), 'utf8').trim());
    await recordNet();
  });
});
