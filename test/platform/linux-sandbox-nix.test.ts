/**
 * The builder's view, recorded by a busybox script, built by real Nix 2.8 (`--option sandbox true`,
 * chroot store) and by LinuxSandbox with the same derivation and environment: the outputs must be
 * identical (same NAR hash, every file byte for byte).
 *
 * Masked in the recording itself, because they differ between two builds by Nix itself:
 * - timestamps in `ls -l` listings (creation times of the chroot, /tmp, ...);
 * - the link count of /proc (the kernel reports the number of processes on the whole host);
 * - the number of the pseudoterminal the builder writes to (allocated from the host's /dev/pts).
 * Of /proc/self/mountinfo only the mount points, in order (host paths and mount ids differ), without the
 * read-only mount we add on top of a hard-linked regular-file input (record.sh; docs/sandbox.md). Run as
 * root, the helper also covers /proc/sys, /proc/irq, ... read-only: that root-only difference is expected.
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultSystemFeatures } from '../../src/derivation/parsed-attrs.js';
import { LinuxSandbox, type LinuxSandboxBackend } from '../../src/platform/linux-sandbox.js';
import { busyboxTree, bwrapOk, nix, nixInstantiate, nixOk, nixRealise, sandboxIdLine, tempDir } from '../helpers/nix.js';
import { ccOk } from './sandbox-fixture.js';

const RECORD = String.raw`
mkdir $out
cd $out
strip() { sed -E 's/ [A-Z][a-z][a-z] [ 0-9][0-9] +([0-9][0-9][0-9][0-9]|[0-9][0-9]:[0-9][0-9]) / DATE /'; }
echo "building with $0"
echo "to stderr" >&2
env | sort > env
id > id
hostname > hostname
cat /proc/sys/kernel/domainname > domainname
pwd > pwd
echo "$0" > argv0
tr '\0' ' ' < /proc/$$/cmdline > cmdline
ls -la / | strip | sed -E 's/^(d[rwx-]+) +[0-9]+ (.* proc)$/\1 N \2/' > ls-root
ls -la /dev | strip > ls-dev
ls -la /dev/pts /dev/shm | strip > ls-dev-sub
ls -la $NIX_STORE | strip > ls-store
ls -la /tmp /build | strip > ls-tmp
ls -la /etc | strip > ls-etc
cat /etc/passwd /etc/group /etc/hosts > etc 2>&1
ps > ps
wc -l < ps > ps-count
ip addr > ip-addr 2>&1
ip route > ip-route 2>&1
grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups)' /proc/self/status > status
ulimit -a > ulimit
umask > umask
cat /proc/self/personality > personality
uname -a > uname
cut -d' ' -f5 /proc/self/mountinfo | grep -v -- '-record.sh$' > mountpoints
ls -la /proc/self/fd/ > fds.tmp; strip < fds.tmp | sed -E 's|/dev/pts/[0-9]+|/dev/pts/N|' > fds; rm fds.tmp
if [ -t 2 ]; then echo tty; else echo not-a-tty; fi > stderr-is-tty
if nc -w 2 127.0.0.1 $port < /dev/null > /dev/null 2>&1; then echo reachable; else echo unreachable; fi > host-port
touch suid; chmod 4755 suid 2> chmod-suid || true
echo done
`;

/** The read-only mounts over parts of /proc that the helper adds when run as root (sandbox-helper.c). */
const ROOT_ONLY_PROC_MOUNTS =
  process.getuid?.() === 0 ? ['sys', 'sysrq-trigger', 'irq', 'bus', 'fs'].filter((p) => existsSync(`/proc/${p}`)).map((p) => `/proc/${p}`) : [];

/** Whether Nix (and we) count 'kvm' among this machine's features: root here may, an ordinary user not. */
const KVM = defaultSystemFeatures().includes('kvm');

describe.skipIf(!nixOk())('LinuxSandbox vs Nix 2.8 sandbox: the recorded view is identical', () => {
  let dir: string;
  let server: net.Server;
  let drv: string;
  let out: string;
  let nixOut: string;
  let nixLog: string;
  let show: { builder: string; args: string[]; env: Record<string, string>; inputSrcs: string[]; outputs: { out: { path: string } } };

  beforeAll(async () => {
    dir = tempDir('realise-sandbox-nix-');
    server = net.createServer((s) => s.end('hello\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    busyboxTree(path.join(dir, 'bb'));
    writeFileSync(path.join(dir, 'record.sh'), RECORD);
    writeFileSync(
      path.join(dir, 'default.nix'),
      `derivation { name = "record"; system = "x86_64-linux"; builder = "\${./bb}/bin/sh"; args = [ ./record.sh ]; port = "${port}"; }\n`,
    );
    const rootA = path.join(dir, 'nix-root');
    [drv] = nixInstantiate(rootA, path.join(dir, 'default.nix'), { file: true }) as [string];
    const r = nixRealise(rootA, [drv], { sandbox: true });
    if (r.status !== 0) throw new Error(`nix-store --realise failed:\n${r.stderr}`);
    out = r.stdout.trim();
    nixOut = path.join(rootA, out);
    nixLog = nix('nix-store', ['--store', rootA, '--read-log', drv]);
    show = JSON.parse(nix('nix', ['show-derivation', '--store', rootA, drv]))[drv];
  }, 60_000);
  afterAll(() => {
    server?.close();
  });

  async function buildOurs(backend: LinuxSandboxBackend) {
    const root = path.join(dir, `ours-${backend}`);
    expect(nixInstantiate(root, path.join(dir, 'default.nix'), { file: true })).toEqual([drv]);
    const nixEnv = Object.fromEntries(
      readFileSync(path.join(nixOut, 'env'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    // Nix's initEnv around the derivation's env (until the engine's env construction is wired in).
    const env: Record<string, string> = {
      PATH: '/path-not-set',
      HOME: '/homeless-shelter',
      NIX_STORE: '/nix/store',
      NIX_BUILD_CORES: nixEnv.NIX_BUILD_CORES!,
      NIX_BUILD_TOP: '/build',
      TMPDIR: '/build',
      TEMPDIR: '/build',
      TMP: '/build',
      TEMP: '/build',
      PWD: '/build',
      NIX_LOG_FD: '2',
      TERM: 'xterm-256color',
      ...show.env,
    };
    const buildDir = mkdtempSync(path.join(dir, 'nix-build-record.drv-'));
    const chunks: Buffer[] = [];
    const exit = await new LinuxSandbox({ backend }).run(
      {
        drvPath: drv,
        builder: show.builder,
        args: show.args,
        env,
        buildDir,
        sandboxBuildDir: '/build',
        storeDir: '/nix/store',
        realStoreDir: path.join(root, 'nix/store'),
        inputPaths: show.inputSrcs,
        outputPaths: [show.outputs.out.path],
        network: false,
        kvm: KVM,
      },
      { onOutput: (c) => chunks.push(c) },
    );
    return { exit, log: Buffer.concat(chunks).toString(), ourOut: path.join(root, out) };
  }

  it('the Nix build recorded what we expect (sanity)', () => {
    expect(readFileSync(path.join(nixOut, 'id'), 'utf8')).toBe(`${sandboxIdLine()}\n`);
    // Nix binds /dev/kvm when 'kvm' is among its default features (/dev/kvm usable by this user).
    expect(/ kvm$/m.test(readFileSync(path.join(nixOut, 'ls-dev'), 'utf8'))).toBe(KVM);
    expect(readFileSync(path.join(nixOut, 'hostname'), 'utf8')).toBe('localhost\n');
    expect(readFileSync(path.join(nixOut, 'host-port'), 'utf8')).toBe('unreachable\n');
  });

  it.skipIf(!ccOk())(
    'helper backend: same files, byte for byte, and the same NAR hash',
    async () => {
      const { exit, log, ourOut } = await buildOurs('helper');
      expect(exit).toEqual({ kind: 'exited', code: 0 });
      const files = readdirSync(nixOut).sort();
      expect(readdirSync(ourOut).sort()).toEqual(files);
      // Run as root (the builder is then the host's uid 0), we cover parts of /proc read-only; Nix 2.8
      // relies on build users for that (docs/sandbox.md). Otherwise the view is Nix's, mount for mount.
      const mounts = readFileSync(path.join(nixOut, 'mountpoints'), 'utf8').replace(
        /^\/proc\n/m,
        `/proc\n${ROOT_ONLY_PROC_MOUNTS.map((m) => `${m}\n`).join('')}`,
      );
      for (const f of files) {
        const expected = f === 'mountpoints' ? mounts : readFileSync(path.join(nixOut, f), 'utf8');
        expect({ file: f, content: readFileSync(path.join(ourOut, f), 'utf8') }).toEqual({ file: f, content: expected });
      }
      const narHash = (p: string) => nix('nix-hash', ['--type', 'sha256', '--base32', p]);
      if (ROOT_ONLY_PROC_MOUNTS.length) {
        // the rest of the NAR (names, types, modes) on a copy with Nix's mount list
        const copy = path.join(dir, 'ours-helper-copy');
        cpSync(ourOut, copy, { recursive: true });
        writeFileSync(path.join(copy, 'mountpoints'), readFileSync(path.join(nixOut, 'mountpoints')));
        expect(narHash(copy)).toBe(narHash(nixOut));
      } else expect(narHash(ourOut)).toBe(narHash(nixOut));
      expect(log.trimEnd()).toBe(nixLog.trimEnd());
    },
    30_000,
  );

  it.skipIf(!bwrapOk())(
    'bwrap backend: same files except the documented differences',
    async () => {
      const { exit, ourOut } = await buildOurs('bwrap');
      expect(exit).toEqual({ kind: 'exited', code: 0 });
      // Documented in docs/sandbox.md: bwrap cannot set argv[0], brings its own /dev (core link, relative
      // ptmx link, tmpfs), gives a socket instead of a pty, and trims the capability bounding set.
      const differs = new Set(['argv0', 'cmdline', 'mountpoints', 'ps', 'ls-dev', 'ls-dev-sub', 'ls-root', 'fds', 'stderr-is-tty', 'status', 'personality']);
      for (const f of readdirSync(nixOut).sort()) {
        if (differs.has(f)) continue;
        expect({ file: f, content: readFileSync(path.join(ourOut, f), 'utf8') }).toEqual({ file: f, content: readFileSync(path.join(nixOut, f), 'utf8') });
      }
    },
    30_000,
  );
});
