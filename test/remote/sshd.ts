/**
 * A real OpenSSH server on 127.0.0.1 for the ssh transports: its own host key, one authorized client key,
 * started from a private config in a temp dir and stopped by the test. It runs as the user running the
 * tests and lets that user log in (`Sshd.user`): root, or an ordinary user (an unprivileged sshd can only
 * authenticate the user it runs as), whose remote builds then run rootless on stores that user owns.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import * as path from 'node:path';
import { IN_CI, tempDir } from '../helpers/nix.js';

export const SSHD = '/usr/sbin/sshd';

/** Use as `describe.skipIf(!sshdOk())`: needs Debian's openssh-server; in CI a missing package is an error. */
export function sshdOk(): boolean {
  const ok = existsSync(SSHD) && spawnSync('sh', ['-c', 'command -v ssh'], { stdio: 'ignore' }).status === 0;
  if (!ok && IN_CI) throw new Error('the ssh tests need openssh-server (apt-get install openssh-server)');
  return ok;
}

export interface Sshd {
  port: number;
  /** Who logs in: the user running the tests (and the server). */
  user: string;
  /** Private key of the authorized client. */
  clientKey: string;
  /** base64 of the host's public key line (the machines file's last column). */
  hostKeyBase64: string;
  /** ssh options that reach this server without any user config. */
  sshOptions: string[];
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export async function startSshd(): Promise<Sshd> {
  const dir = tempDir('realise-sshd-');
  const keygen = (file: string): void => {
    const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', file]);
    if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  };
  keygen(path.join(dir, 'host_key'));
  keygen(path.join(dir, 'client_key'));
  writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(path.join(dir, 'client_key.pub')));
  const port = await freePort();
  const config = path.join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `ListenAddress 127.0.0.1`,
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      'PermitRootLogin yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      `PidFile ${dir}/sshd.pid`,
      'LogLevel INFO',
      '',
    ].join('\n'),
  );
  // sshd's privilege separation directory (root only: an unprivileged sshd does not separate).
  if (process.getuid?.() === 0) mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const child: ChildProcess = spawn(SSHD, ['-D', '-e', '-f', config, '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sshd did not start:\n${log}`)), 10_000);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      log += s;
      if (log.includes('Server listening')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sshd exited with ${code}:\n${log}`));
    });
  });
  child.removeAllListeners('exit');
  const hostPub = readFileSync(path.join(dir, 'host_key.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ');
  return {
    port,
    user: userInfo().username,
    clientKey: path.join(dir, 'client_key'),
    hostKeyBase64: Buffer.from(hostPub).toString('base64'),
    sshOptions: [
      '-F',
      '/dev/null',
      '-p',
      String(port),
      '-o',
      'BatchMode=yes',
      '-o',
      'HostKeyAlias=127.0.0.1',
      '-o',
      'CheckHostIP=no',
      '-o',
      'StrictHostKeyChecking=yes',
    ],
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
