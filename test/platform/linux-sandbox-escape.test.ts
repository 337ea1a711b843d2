/**
 * Escape attempts against both backends: each test fails if the builder gets through.
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinuxSandbox, type LinuxSandboxBackend } from '../../src/platform/linux-sandbox.js';
import type { SandboxExit, SandboxRequest } from '../../src/platform/sandbox.js';
import { bwrapOk } from '../helpers/nix.js';
import { ccOk, makeFixture, storePath, type Fixture } from './sandbox-fixture.js';

async function build(sb: LinuxSandbox, req: SandboxRequest): Promise<{ exit: SandboxExit; log: string }> {
  const chunks: Buffer[] = [];
  const exit = await sb.run(req, { onOutput: (c) => chunks.push(c) });
  return { exit, log: Buffer.concat(chunks).toString() };
}

const backends: LinuxSandboxBackend[] = ccOk() ? ['helper', 'bwrap'] : ['bwrap'];

describe.skipIf(!bwrapOk()).each(backends)('LinuxSandbox (%s): escape attempts', (backend) => {
  let fx: Fixture;
  let sb: LinuxSandbox;
  let tcp: net.Server;
  let tcpPort = 0;
  let tcpConnections = 0;
  let web: http.Server;
  let webPort = 0;

  beforeAll(async () => {
    fx = makeFixture();
    sb = new LinuxSandbox({ backend });
    await sb.backend();
    tcp = net.createServer((s) => {
      tcpConnections++;
      s.end('hello from the host\n');
    });
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
    tcpPort = (tcp.address() as net.AddressInfo).port;
    web = http.createServer((_q, s) => s.end('fetched-ok\n'));
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    webPort = (web.address() as net.AddressInfo).port;
  });
  afterAll(() => {
    tcp?.close();
    web?.close();
  });

  it('cannot read a host file or see host directories', async () => {
    const secret = path.join(fx.dir, 'secret.txt');
    writeFileSync(secret, 'TOP-SECRET\n');
    const req = fx.request(
      'read-host',
      `mkdir $out; cat ${secret} > $out/secret 2>&1; ls / > $out/root; ls ${fx.dir} > $out/dir 2>&1; cat /etc/shadow > $out/shadow 2>&1; echo done > $out/done`,
    );
    const { exit } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'done'), 'utf8')).toBe('done\n');
    expect(readFileSync(path.join(out, 'secret'), 'utf8')).not.toContain('TOP-SECRET');
    expect(readFileSync(path.join(out, 'root'), 'utf8').split('\n').filter(Boolean)).toEqual(['build', 'dev', 'etc', 'nix', 'proc', 'tmp']);
    expect(readFileSync(path.join(out, 'dir'), 'utf8')).toMatch(/No such file/);
    expect(readFileSync(path.join(out, 'shadow'), 'utf8')).toMatch(/No such file/);
  });

  it('sees only the input closure in the store', async () => {
    const other = storePath('not-an-input');
    mkdirSync(fx.realPath(other));
    writeFileSync(path.join(fx.realPath(other), 'data'), 'hidden');
    const req = fx.request(
      'store-listing',
      `mkdir $out; ls /nix/store > $out/listing; ls ${other} > $out/other 2>&1; cat ${other}/data >> $out/other 2>&1; true`,
    );
    const { exit } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'listing'), 'utf8').split('\n').filter(Boolean).sort()).toEqual(
      [path.basename(fx.busyboxPath), path.basename(req.outputPaths[0]!)].sort(),
    );
    expect(readFileSync(path.join(out, 'other'), 'utf8')).not.toContain('hidden');
  });

  it('cannot reach a TCP port on the host loopback', async () => {
    const before = tcpConnections;
    const req = fx.request(
      'tcp',
      `mkdir $out; if nc -w 2 127.0.0.1 ${tcpPort} < /dev/null > $out/got 2>&1; then echo connected > $out/result; else echo refused > $out/result; fi; ip link > $out/links 2>&1`,
    );
    const { exit } = await build(sb, req);
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'got'), 'utf8')).not.toContain('hello from the host');
    expect(readFileSync(path.join(out, 'result'), 'utf8')).toBe('refused\n');
    expect(tcpConnections).toBe(before);
    // only loopback exists in the private network namespace
    expect(readFileSync(path.join(out, 'links'), 'utf8').match(/^\d+: (\w+)/gm)).toEqual(['1: lo']);
  });

  it('non-fixed-output builds cannot fetch from a loopback HTTP server; network builds can', async () => {
    const script = `mkdir $out; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 ${webPort} > $out/body 2> $out/err || echo failed > $out/status; cat /etc/resolv.conf > $out/resolv 2>&1; cat /etc/nsswitch.conf > $out/nss 2>&1; true`;
    const closed = fx.request('no-net', script);
    expect((await build(sb, closed)).exit).toEqual({ kind: 'exited', code: 0 });
    const cOut = fx.realPath(closed.outputPaths[0]!);
    expect(existsSync(path.join(cOut, 'status'))).toBe(true);
    expect(readFileSync(path.join(cOut, 'body'), 'utf8')).not.toContain('fetched-ok');

    const open = fx.request('fod', script, { network: true });
    expect((await build(sb, open)).exit).toEqual({ kind: 'exited', code: 0 });
    const oOut = fx.realPath(open.outputPaths[0]!);
    expect(readFileSync(path.join(oOut, 'body'), 'utf8')).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nfetched-ok\n$/);
    expect(existsSync(path.join(oOut, 'status'))).toBe(false);
    expect(readFileSync(path.join(oOut, 'nss'), 'utf8')).toBe('hosts: files dns\nservices: files\n');
    if (existsSync('/etc/resolv.conf')) expect(readFileSync(path.join(oOut, 'resolv'), 'utf8')).toBe(readFileSync('/etc/resolv.conf', 'utf8'));
  });

  it('cannot see or signal host processes', async () => {
    const req = fx.request(
      'procs',
      `mkdir $out; ps > $out/ps; ls /proc | grep -c '^[0-9]' > $out/n; if kill -0 ${process.pid} 2>/dev/null; then echo visible; else echo invisible; fi > $out/kill; ls /proc/${process.pid} > /dev/null 2>&1 && echo yes > $out/host-proc; true`,
    );
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    const ps = readFileSync(path.join(out, 'ps'), 'utf8').trim().split('\n').slice(1);
    expect(ps.length).toBeLessThanOrEqual(2); // the builder and ps itself
    expect(ps[0]).toMatch(/^\s*1 /); // the builder is PID 1 (helper) or directly under bwrap's pid 1
    expect(readFileSync(path.join(out, 'kill'), 'utf8')).toBe('invisible\n');
    expect(existsSync(path.join(out, 'host-proc'))).toBe(false);
  });

  it('cannot write to the store outside its outputs, nor to its inputs', async () => {
    const evil = storePath('evil');
    const req = fx.request(
      'store-write',
      `mkdir $out; echo x > ${evil} 2>/dev/null; echo pwned > ${fx.busyboxPath}/bin/pwned 2>/dev/null || echo ro > $out/input; chmod u+w ${fx.busyboxPath}/bin/busybox 2>/dev/null || echo ro > $out/chmod; echo ok > $out/done`,
    );
    const inputMode = statSync(path.join(fx.realPath(fx.busyboxPath), 'bin/busybox')).mode;
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(readFileSync(path.join(out, 'done'), 'utf8')).toBe('ok\n');
    expect(existsSync(fx.realPath(evil))).toBe(false);
    expect(existsSync(path.join(fx.realPath(fx.busyboxPath), 'bin/pwned'))).toBe(false);
    expect(statSync(path.join(fx.realPath(fx.busyboxPath), 'bin/busybox')).mode).toBe(inputMode);
    expect(readFileSync(path.join(out, 'input'), 'utf8')).toBe('ro\n');
    // only the expected names are left in the physical store
    expect(readdirSync(fx.realStoreDir).filter((n) => n.endsWith('-evil') || n.endsWith('.chroot'))).toEqual([]);
  });

  it("cannot write the host's kernel settings, not even run by root (the builder is then the host's uid 0)", async () => {
    // Each write puts back the value just read (this machine is shared); /proc/sysrq-trigger is only opened.
    const bb = `${fx.busyboxPath}/bin/busybox`;
    const put = (file: string, name: string) =>
      `v=$(cat ${file}); if (printf '%s\\n' "$v" > ${file}) 2> $out/${name}.err; then echo written; else echo refused; fi > $out/${name};`;
    const nested = (flags: string, name: string, first: string) =>
      `if V=$(cat /proc/sys/kernel/core_pattern) ${bb} unshare ${flags} ${bb} sh -c '${first} && printf "%s\\n" "$V" > /proc/sys/kernel/core_pattern' 2>/dev/null; then echo written; else echo refused; fi > $out/${name};`;
    const req = fx.request(
      'proc-sys',
      [
        'mkdir $out;',
        put('/proc/sys/kernel/core_pattern', 'core'),
        put('/proc/sys/vm/swappiness', 'swappiness'),
        put('/proc/sys/net/ipv4/ip_default_ttl', 'ttl'),
        'if [ ! -e /proc/sysrq-trigger ]; then echo absent; elif (exec 3>>/proc/sysrq-trigger) 2>/dev/null; then echo opened; else echo refused; fi > $out/sysrq;',
        // a nested user namespace may neither uncover /proc/sys nor mount a procfs of its own
        nested('-Urm', 'uncovered', `${bb} umount -l /proc/sys`),
        nested('-Urmpf', 'fresh-proc', `${bb} mount -t proc none /proc`),
        'cat /proc/self/mountinfo > $out/mountinfo',
      ].join('\n'),
    );
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    const read = (name: string) => readFileSync(path.join(out, name), 'utf8');
    for (const name of ['core', 'swappiness', 'ttl']) {
      expect(read(name), name).toBe('refused\n');
      expect(read(`${name}.err`), name).toMatch(process.getuid?.() === 0 ? /Read-only file system/ : /Permission denied/);
    }
    expect(['absent\n', 'refused\n']).toContain(read('sysrq'));
    expect(read('uncovered')).toBe('refused\n');
    expect(read('fresh-proc')).toBe('refused\n');
    const readOnly = read('mountinfo')
      .split('\n')
      .filter((l) => / \/proc\/\S+ ro,/.test(l))
      .map((l) => l.split(' ')[4]);
    // as an ordinary user the view is Nix's (the kernel refuses the writes); bwrap covers irq and bus itself
    if (process.getuid?.() === 0) expect(readOnly).toEqual(expect.arrayContaining(['/proc/sys', '/proc/irq', '/proc/bus', '/proc/fs']));
    else if (backend === 'helper') expect(readOnly).toEqual([]);
  });

  it('cannot create setuid or setgid files', async () => {
    const req = fx.request(
      'suid',
      `mkdir $out; cp ${fx.busyboxPath}/bin/busybox $out/su; chmod 4755 $out/su 2> $out/err1; chmod g+s $out/su 2> $out/err2; mkdir $out/d; chmod 2755 $out/d 2> $out/err3; true`,
    );
    expect((await build(sb, req)).exit).toEqual({ kind: 'exited', code: 0 });
    const out = fx.realPath(req.outputPaths[0]!);
    expect(statSync(path.join(out, 'su')).mode & 0o6000).toBe(0);
    expect(statSync(path.join(out, 'd')).mode & 0o6000).toBe(0);
    expect(readFileSync(path.join(out, 'err1'), 'utf8')).toMatch(/not permitted/i);
    expect(readFileSync(path.join(out, 'err3'), 'utf8')).toMatch(/not permitted/i);
  });
});
