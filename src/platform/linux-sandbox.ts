/**
 * LinuxSandbox: the builder sees what Nix 2.8's Linux sandbox shows it.
 *
 * The on-disk chroot (`<realStoreDir>/<drv>.chroot`, see chroot.ts) is made as Nix makes it; then one
 * of two backends enters private user, mount, pid, ipc, uts (and, unless `request.network`, net)
 * namespaces, bind-mounts the inputs read-only, pivots into the chroot and execs the builder:
 * - `'helper'`: a small C program (sandbox-helper.c) compiled once with the system C compiler.
 *   It reproduces Nix exactly (argv[0], /dev, devpts, pty output, capability bounding set, personality,
 *   RLIMIT_CORE), and is the faster one. Preferred.
 * - `'bwrap'`: Debian's bubblewrap, when no C compiler is available. Same isolation, with the visible
 *   differences listed in docs/sandbox.md (argv[0] is the full builder path, bwrap's own /dev, output
 *   on a socket instead of a pty).
 *
 * Contract with the scheduler (`isolated: true`): the builder writes its outputs at their logical paths;
 * when `run()` returns (whatever the exit), every output the builder created is at its physical
 * location `realStoreDir/<base>` (= the store's `toRealPath(output)`), and the chroot is gone. An
 * existing physical path of an output is replaced (outputs being built are invalid paths).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { execErrorOf, spawnFailed, type Sandbox, type SandboxExit, type SandboxRequest, type SandboxRunOptions, type SandboxWarmUp } from './sandbox.js';
import { SandboxError } from './sandbox-errors.js';
import { parsePreBuildHookOutput, type SandboxPath } from './sandbox-config.js';
import {
  ChrootPool,
  SANDBOX_GID,
  SANDBOX_UID,
  chrootDirFor,
  devNodeNames,
  discardTree,
  linkOrCopy,
  moveOutputsOut,
  prepareChroot,
  type ChrootLayout,
  type ChrootLeftovers,
  type PrepareChrootOptions,
  type SkeletonHandOver,
} from './chroot.js';
import { nixSeccompFilter } from './seccomp.js';
import { spawnMerged } from './spawn-merged.js';
import { strerror } from '../store/system-error.js';
import { ensureSandboxHelper, type SandboxHelperOptions } from './sandbox-helper.js';
import { SandboxServer } from './sandbox-server.js';
import { describeSignal, signalName } from './signals.js';

export type LinuxSandboxBackend = 'helper' | 'bwrap';

export interface LinuxSandboxOptions {
  /**
   * Which namespace backend to use; `'auto'` takes the helper when it compiles, else bwrap.
   * @default 'auto'
   */
  readonly backend?: LinuxSandboxBackend | 'auto';
  /**
   * Path of the bubblewrap executable.
   * @default the first `bwrap` on PATH
   */
  readonly bwrapPath?: string;
  /** Where and with what to compile the helper. */
  readonly helper?: SandboxHelperOptions;
  /**
   * Install Nix's seccomp filter (no setuid/setgid bits, no extended attributes); Nix's `filter-syscalls`.
   * @default true
   */
  readonly filterSyscalls?: boolean;
  /**
   * Size of the private tmpfs on /dev/shm (Nix's `sandbox-dev-shm-size`), as tmpfs understands it.
   * @default '50%'
   */
  readonly shmSize?: string;
  /**
   * Nix's `pre-build-hook`: run with the derivation path and the chroot directory before each build;
   * may print `extra-sandbox-paths` blocks (see parsePreBuildHookOutput).
   */
  readonly preBuildHook?: string;
  /**
   * With the helper backend, keep one helper process running and fork builds from it (much cheaper
   * than spawning from Node for every build); the LinuxSandboxes of a process that have the same
   * `filterSyscalls` share it. Set to false to spawn the helper per build.
   * @default true
   */
  readonly server?: boolean;
  /**
   * How many chroot skeletons to prepare ahead of time, in the background (0: make each one when the
   * build starts, as Nix does).
   * @default 2
   */
  readonly chrootPool?: number;
  /** The derivation's platform matters for i686-linux builds on x86_64 (32-bit personality). */
  readonly platformOf?: (request: SandboxRequest) => string | undefined;
}

export function findOnPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Parse a tmpfs size like '50%' or '1g' into bytes (bwrap's `--size` takes bytes). */
function shmBytes(size: string): number | undefined {
  const m = /^(\d+)(%|[kmg])?$/i.exec(size.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2]?.toLowerCase();
  if (unit === '%') return Math.floor((n / 100) * os.totalmem());
  return n * (unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1);
}

interface ResolvedBackend {
  readonly kind: LinuxSandboxBackend;
  readonly exe: string;
}

function readAll(stream: NodeJS.ReadableStream | null | undefined): Promise<string> {
  if (!stream) return Promise.resolve('');
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks).toString()));
    stream.on('error', () => resolve(Buffer.concat(chunks).toString()));
    stream.on('close', () => resolve(Buffer.concat(chunks).toString()));
  });
}

/**
 * A bind mount: source, whether optional and read-only, (for inputs, known already) whether a directory,
 * and whether the helper hard-links the source to the target first (a file input; see #binds).
 */
type Bind = SandboxPath & { ro: boolean; dir?: boolean; link?: boolean };

type BindEntry = readonly [target: string, bind: Pick<Bind, 'source' | 'optional' | 'ro' | 'link'>];

/** The /dev nodes' binds (without and with kvm), made once. */
const DEV_BINDS = [false, true].map((kvm) => devNodeNames(kvm).map((n): BindEntry => [`/dev/${n}`, { source: `/dev/${n}`, optional: false, ro: false }]));

/**
 * The helper's `--bind*` arguments, in the order Nix 2.8's mount table shows its mounts: inputs in the
 * store dir first, then the rest of its dirsInChroot (the /dev nodes included), each sorted by target.
 */
function helperBindArgs(request: SandboxRequest, binds: Map<string, Bind>, kvm: boolean): string[] {
  const prefix = `${request.storeDir}/`;
  const inStore: BindEntry[] = [];
  const rest: BindEntry[] = [];
  for (const e of binds) (e[0].startsWith(prefix) ? inStore : rest).push(e);
  if (!binds.has('/dev')) rest.push(...DEV_BINDS[kvm ? 1 : 0]!);
  const args: string[] = [];
  for (const list of [inStore, rest]) {
    list.sort(byTarget);
    for (const [target, { source, optional, ro, link }] of list)
      args.push(link ? '--bind-ro-link' : ro ? (optional ? '--bind-ro-try' : '--bind-ro') : optional ? '--bind-try' : '--bind', source, target);
  }
  return args;
}

function byTarget([x]: BindEntry, [y]: BindEntry): number {
  return x < y ? -1 : x > y ? 1 : 0;
}

const RUN_AS_ROOT = process.getuid?.() === 0;

/**
 * Refused: a builder run as uid 0 by root would be the host's uid 0 with every capability in its own user
 * and mount namespaces, so it could lift the read-only covers over /proc and write the host's kernel
 * settings. The engine never asks for it (Nix 2.8's builders are uid 1000).
 */
const UID0_AS_ROOT: SandboxExit = {
  kind: 'spawn-failed',
  message:
    'a sandboxed builder cannot run as uid 0 when realise runs as root: it could change the host kernel settings through /proc; use another uid (Nix 2.8 uses 1000)',
  reason: 'builder uid 0 refused when running as root',
};

/** A helper server and how many LinuxSandboxes use it (see LinuxSandbox.#serverFor). */
interface SharedServer {
  readonly key: string;
  readonly server: SandboxServer;
  users: number;
}

/** The helper servers of the process, by executable and filter choice. */
const servers = new Map<string, SharedServer>();

export class LinuxSandbox implements Sandbox {
  readonly name = 'linux-namespaces';
  readonly isolated = true;
  readonly #options: LinuxSandboxOptions;
  readonly #filter: Buffer | undefined;
  #backend: Promise<ResolvedBackend> | undefined;
  #server: SharedServer | undefined;
  /** Counts close() calls: a warm-up that resolves after one does nothing. */
  #closes = 0;
  readonly #pool: ChrootPool | undefined;
  /** Whether the host has /dev/kvm (see #wantsKvm). */
  #hostKvm: boolean | undefined;

  constructor(options: LinuxSandboxOptions = {}) {
    this.#options = options;
    this.#filter = options.filterSyscalls === false ? undefined : nixSeccompFilter();
    const poolSize = options.chrootPool ?? 2;
    this.#pool = poolSize > 0 ? new ChrootPool(poolSize) : undefined;
  }

  /** The backend this sandbox uses (resolving it, and compiling the helper, on first call). */
  backend(): Promise<LinuxSandboxBackend> {
    return this.#resolve().then((b) => b.kind);
  }

  #resolve(): Promise<ResolvedBackend> {
    this.#backend ??= (async () => {
      const want = this.#options.backend ?? 'auto';
      let helperError: unknown;
      if (want === 'helper' || want === 'auto') {
        try {
          return { kind: 'helper' as const, exe: await ensureSandboxHelper(this.#options.helper) };
        } catch (e) {
          helperError = e;
          if (want === 'helper') {
            throw new SandboxError('sandbox-unavailable', `cannot build the sandbox helper: ${(e as Error).message}`, {
              cause: e,
              hint: "install a C compiler (apt-get install gcc) or use backend 'bwrap'",
            });
          }
        }
      }
      const bwrap = this.#options.bwrapPath ?? findOnPath('bwrap');
      if (!bwrap) {
        throw new SandboxError(
          'sandbox-unavailable',
          'cannot sandbox builds: no C compiler for the sandbox helper and bubblewrap (bwrap) is not on PATH' +
            (helperError ? ` (${(helperError as Error).message.split('\n')[0]})` : ''),
          {
            hint: "install gcc or bubblewrap (apt-get install gcc bubblewrap), or set 'sandbox' to false",
          },
        );
      }
      return { kind: 'bwrap' as const, exe: bwrap };
    })();
    this.#backend.catch(() => {
      this.#backend = undefined;
    });
    return this.#backend;
  }

  /**
   * Give up the helper server (stopped when no other LinuxSandbox of the process uses it) and drop prepared
   * chroots (both also go when the process exits).
   * Resolves when no chroot of this sandbox is left but those queued for deletion (see flushRemovals).
   */
  async close(): Promise<void> {
    this.#closes++;
    const shared = this.#server;
    this.#server = undefined;
    if (shared) {
      // This sandbox's builds die with its close() also while other sandboxes keep the server: one running
      // on would finish after its engine closed the store and leave unregistered outputs in the store dir.
      shared.server.stopRunsOf(this);
      if (--shared.users === 0) {
        servers.delete(shared.key);
        shared.server.close();
      }
    }
    await this.#pool?.drain();
  }

  /**
   * Start the helper server (and its prepared build process) in the background, so that the first builds
   * find it running. Failures are left to the builds, which report them: the promise (which callers need
   * not wait for) resolves when the warm-up is done, and never rejects.
   *
   * No chroot skeletons are made ahead for builds like `like`: the warm-up comes with the first sandboxed
   * build, which takes its skeleton before one made in the background is ready (as do the builds started
   * with it); each of them makes its own on the main thread, the pool takes them back after their builds,
   * and the builds that follow reuse them (see ChrootPool.take). Skeletons made ahead as well were two more
   * per engine to make and to delete.
   */
  async warmUp(_like: SandboxWarmUp): Promise<void> {
    const closes = this.#closes;
    try {
      const backend = await this.#resolve();
      if (closes !== this.#closes) return; // closed meanwhile
      if (backend.kind === 'helper' && this.#options.server !== false) await this.#serverFor(backend.exe)?.start();
    } catch {
      /* the builds say what is wrong */
    }
  }

  /** Where and how a build's chroot is laid out. */
  #chrootOptions(
    request: Pick<SandboxRequest, 'drvPath' | 'storeDir' | 'realStoreDir' | 'sandboxBuildDir' | 'kvm' | 'network' | 'uid' | 'gid'>,
    backend: ResolvedBackend,
  ): PrepareChrootOptions {
    return {
      root: chrootDirFor(request.realStoreDir, request.drvPath),
      storeDir: request.storeDir,
      sandboxBuildDir: request.sandboxBuildDir,
      uid: request.uid ?? SANDBOX_UID,
      gid: request.gid ?? SANDBOX_GID,
      network: request.network,
      devSkeleton: backend.kind === 'helper',
      kvm: this.#wantsKvm(request),
    };
  }

  /**
   * Whether a build gets /dev/kvm: asked for (`kvm` among the system features) and present on the host, as
   * Nix (pathExists("/dev/kvm") per build). Whether the host has it is looked at once per sandbox; a build's
   * skeleton and mounts take the same answer.
   */
  #wantsKvm(request: Pick<SandboxRequest, 'kvm'>): boolean {
    if (!request.kvm) return false;
    return (this.#hostKvm ??= fs.existsSync('/dev/kvm'));
  }

  /**
   * The helper server of this sandbox: the process's one for the same executable and filter choice, which
   * every LinuxSandbox using it shares (its start, a fork of Node and the ready build process with its
   * namespaces, is paid once per process rather than per sandbox, so per engine); close() gives it up.
   * Requests carry everything else that differs between sandboxes (ids, shm size, mounts).
   * Undefined when this sandbox closed since `closes` was read (a run's start): a closed sandbox does not
   * take the server up again for a run that was on its way (in #binds, in the pre-build hook).
   */
  #serverFor(exe: string, closes = this.#closes): SandboxServer | undefined {
    if (closes !== this.#closes) return undefined;
    if (this.#server) return this.#server.server;
    const key = `${exe}\0${this.#filter ? 'filtered' : 'plain'}`;
    let shared = servers.get(key);
    if (!shared) servers.set(key, (shared = { key, server: new SandboxServer(exe, this.#filter, { warm: true }), users: 0 }));
    shared.users++;
    this.#server = shared;
    return shared.server;
  }

  async run(request: SandboxRequest, opts: SandboxRunOptions = {}): Promise<SandboxExit> {
    if (request.builder.startsWith('builtin:')) {
      return { kind: 'spawn-failed', message: `builder '${request.builder}' of '${request.drvPath}' is a built-in; the scheduler runs built-ins itself` };
    }
    if (request.uid === 0 && RUN_AS_ROOT) return UID0_AS_ROOT;
    const closes = this.#closes;
    const backend = await this.#resolve();
    if (opts.signal?.aborted) return { kind: 'aborted' };
    const chrootOpts = this.#chrootOptions(request, backend);
    const { root } = chrootOpts;
    // On the helper server, the build's process checks the skeleton after the build (see ChrootPool.handOver).
    const onServer = backend.kind === 'helper' && this.#options.server !== false;
    const layout = this.#pool ? this.#pool.take(chrootOpts, { placed: !onServer }) : prepareChroot(chrootOpts);
    let exit: SandboxExit | undefined;
    let leftovers: ChrootLeftovers | undefined;
    let handOver: SkeletonHandOver | undefined;
    const outputs: OutputsMoved = { all: false, kept: false };
    try {
      const binds = await this.#binds(request, layout, backend.kind === 'helper');
      leftovers = backend.kind === 'helper' && this.#recyclable(request) ? this.#leftovers(request, layout, binds) : undefined;
      if (onServer && leftovers) handOver = this.#pool?.handOver(layout);
      exit =
        backend.kind === 'helper'
          ? await this.#runHelper(backend.exe, request, opts, root, binds, chrootOpts, outputs, handOver && leftovers && { handOver, leftovers }, closes)
          : await this.#runBwrap(backend.exe, request, opts, root, binds, chrootOpts);
      return exit;
    } catch (e) {
      if (e instanceof SandboxError) return { kind: 'spawn-failed', message: e.message, reason: e.shortMessage };
      throw e;
    } finally {
      try {
        if (!outputs.all) moveOutputsOut(layout, request.outputPaths, request.realStoreDir);
      } finally {
        // Reuse the skeleton only when the builder ran to its end (so nothing of it can still write
        // into the chroot; after an abort it may take a moment to die).
        const ended = exit?.kind === 'exited' || exit?.kind === 'signalled';
        let left: string | undefined;
        if (handOver && leftovers) left = this.#pool?.handBack(layout, handOver, leftovers, ended && outputs.kept);
        else if (this.#pool && leftovers && ended) this.#pool.recycle(layout, leftovers);
        else left = this.#pool ? this.#pool.discard(layout) : discardTree(root);
        if (left !== undefined) opts.onIgnoredError?.(`error: ${left}`);
      }
    }
  }

  /** Whether a build's chroot skeleton may be reused afterwards (see ChrootPool.recycle). */
  #recyclable(request: SandboxRequest): boolean {
    // A build with the host network could hand a descriptor of a chroot file to a host process; without
    // the seccomp filter a builder could set extended attributes we do not check; a pre-build hook may
    // change the chroot in ways we do not know. A builder run as uid 0 (realise not root, the caller asked
    // for it) has every capability in the build's user namespace: it could unmount what covers the
    // skeleton (the build dir, /proc, an input) and change what is underneath.
    return !request.network && this.#filter !== undefined && !this.#options.preBuildHook && request.uid !== 0;
  }

  /**
   * What this build adds to the skeleton on disk, when all of it is in the store dir: the mount point
   * directories of directory inputs (kept for the next build), the hard links and mount point files of
   * other inputs (removed). Undefined when something is mounted elsewhere (e.g. a sandbox path on
   * /bin/sh): the chroot is then discarded after the build, as without recycling.
   */
  #leftovers(request: SandboxRequest, layout: ChrootLayout, binds: Map<string, Bind>): ChrootLeftovers | undefined {
    if (!layout.skeleton) return undefined;
    const storeFiles: string[] = [];
    const storeMountpoints = new Set<string>();
    for (const [target, { source, dir: known }] of binds) {
      if (target === request.sandboxBuildDir) continue;
      if (path.posix.dirname(target) !== request.storeDir) return undefined;
      let dir: boolean;
      try {
        dir = known ?? fs.statSync(source).isDirectory();
      } catch {
        return undefined;
      }
      dir ? storeMountpoints.add(path.posix.basename(target)) : storeFiles.push(path.posix.basename(target));
    }
    // Non-directory inputs are hard-linked into the store dir even when not mounted (symlinks).
    const outputs = new Set(request.outputPaths);
    for (const input of request.inputPaths) if (!binds.has(input) && !outputs.has(input)) storeFiles.push(path.posix.basename(input));
    return { storeFiles, storeMountpoints };
  }

  /**
   * Everything bind-mounted into the chroot, target → source (Nix's dirsInChroot), inputs read-only.
   * Non-directory inputs are hard-linked into the chroot's store dir, as Nix does: by the helper, in the
   * build's process, for regular files (`helperLinks`; one system call less on the main thread per input),
   * else here.
   */
  async #binds(request: SandboxRequest, layout: ChrootLayout, helperLinks: boolean): Promise<Map<string, Bind>> {
    const binds = new Map<string, Bind>();
    // Host files and directories are read-only (Nix 2.8 binds them read-write: a builder running as the
    // host's root underneath could write to them); only the build directory and outputs are writable.
    for (const [t, s] of request.extraPaths ?? []) binds.set(t, { ...s, ro: true });
    binds.set(request.sandboxBuildDir, { source: request.buildDir, optional: false, ro: false });
    const outputs = new Set(request.outputPaths);
    for (const input of request.inputPaths) {
      if (outputs.has(input)) continue;
      const real = path.join(request.realStoreDir, path.basename(input));
      let st: fs.Stats;
      try {
        st = fs.lstatSync(real);
      } catch (e) {
        throw new SandboxError('sandbox-setup-failed', `getting attributes of input path '${input}' (at '${real}') failed: ${(e as Error).message}`, {
          cause: e,
          hint: 'the input closure must be valid in the store before building',
        });
      }
      if (st.isDirectory()) binds.set(input, { source: real, optional: false, ro: true, dir: true });
      else {
        const stale = layout.skeleton?.mountpoints;
        if (stale?.delete(path.basename(input))) fs.rmdirSync(path.join(layout.storeDir, path.basename(input)));
        // Nix hard-links non-directories into the chroot store; we also mount regular files read-only on top.
        const link = helperLinks && !st.isSymbolicLink();
        if (!link) linkOrCopy(real, path.join(layout.storeDir, path.basename(input)));
        if (!st.isSymbolicLink()) binds.set(input, { source: real, optional: false, ro: true, dir: false, link });
        else binds.delete(input);
      }
    }
    if (request.network) {
      for (const f of ['/etc/resolv.conf', '/etc/services', '/etc/hosts']) binds.set(f, { source: f, optional: true, ro: true });
      if (fs.existsSync('/var/run/nscd/socket')) binds.set('/var/run/nscd/socket', { source: '/var/run/nscd/socket', optional: true, ro: true });
    }
    for (const o of outputs) binds.delete(o);
    const stale = layout.skeleton?.mountpoints;
    if (stale?.size) {
      // A recycled skeleton keeps the mount point directories of its last build's inputs; remove those
      // this build does not mount (an empty directory of that name would be visible in the store).
      const keep = new Set<string>();
      for (const [t, { source, dir }] of binds) {
        if (path.posix.dirname(t) !== request.storeDir) continue;
        try {
          if (dir ?? fs.statSync(source).isDirectory()) keep.add(path.posix.basename(t));
        } catch {
          /* not mounted */
        }
      }
      for (const m of [...stale]) {
        if (keep.has(m)) continue;
        fs.rmdirSync(path.join(layout.storeDir, m));
        stale.delete(m);
      }
    }
    if (this.#options.preBuildHook) {
      for (const [t, s] of await runPreBuildHook(this.#options.preBuildHook, request.drvPath, layout.root)) binds.set(t, { ...s, ro: true });
    }
    for (const o of outputs) binds.delete(o);
    binds.delete('/proc'); // Nix skips it (backwards compatibility); /proc is always a fresh procfs
    return binds;
  }

  async #runHelper(
    exe: string,
    request: SandboxRequest,
    opts: SandboxRunOptions,
    root: string,
    binds: Map<string, Bind>,
    ids: Pick<PrepareChrootOptions, 'uid' | 'gid' | 'kvm'>,
    outputs: OutputsMoved,
    recycle: { readonly handOver: SkeletonHandOver; readonly leftovers: ChrootLeftovers } | undefined,
    closes: number,
  ): Promise<SandboxExit> {
    const { uid, gid } = ids;
    const a: string[] = [
      '--root',
      root,
      '--uid',
      String(uid),
      '--gid',
      String(gid),
      '--build-dir',
      request.sandboxBuildDir,
      '--shm-size',
      this.#options.shmSize ?? '50%',
      '--status-fd',
      '4',
    ];
    if (request.network) a.push('--net');
    const platform = this.#options.platformOf?.(request);
    if (platform === 'i686-linux' && process.arch === 'x64') a.push('--linux32');
    a.push('--store-dir', request.storeDir);
    // The helper moves the outputs out once the build's processes are gone (moveOutputsOut sees to the rest:
    // server mode tells whether there is any, see ServerRunRequest.onOutputsLeft).
    a.push('--real-store-dir', request.realStoreDir);
    for (const o of request.outputPaths) a.push('--output', path.basename(o));
    if (recycle) {
      // Names in the store dir hold no '/': the helper's lists are '/'-separated.
      const { handOver, leftovers } = recycle;
      a.push('--recycle-to', path.basename(handOver.dir), '--skeleton-spec', handOver.sk.specHex, '--skeleton-files', leftovers.storeFiles.join('/'));
      a.push('--skeleton-mounts', [...leftovers.storeMountpoints].join('/'));
    }
    a.push(...helperBindArgs(request, binds, ids.kvm === true));
    const filter = this.#filter;
    if (this.#options.server !== false) {
      a.splice(a.indexOf('--status-fd'), 2);
      a.push('--', request.builder, path.basename(request.builder), ...request.args);
      return this.#runOnServer(exe, a, request, opts, outputs, closes);
    }
    if (filter) a.push('--seccomp-fd', '3');
    a.push('--', request.builder, path.basename(request.builder), ...request.args);
    let status: Promise<string> = Promise.resolve('');
    const exit = await spawnMerged({
      file: exe,
      args: a,
      env: request.env,
      signal: opts.signal,
      onOutput: opts.onOutput,
      extraStdio: ['pipe', 'pipe'],
      onSpawn: (child) => {
        const fd3 = child.stdio[3] as NodeJS.WritableStream | null;
        if (fd3) {
          fd3.on('error', () => {});
          fd3.end(filter ?? Buffer.alloc(0));
        }
        status = readAll(child.stdio[4] as NodeJS.ReadableStream | null);
      },
    });
    if (exit.kind !== 'exited' && exit.kind !== 'signalled') return exit;
    const line = (await status).trim();
    let m: RegExpExecArray | null;
    if ((m = /^exit (\d+)$/.exec(line))) return { kind: 'exited', code: Number(m[1]) };
    if ((m = /^signal (\d+)$/.exec(line))) return { kind: 'signalled', signal: signalName(Number(m[1])) };
    if (line.startsWith('error ')) return setupFailed(request, line.slice(6));
    return exit.kind === 'exited'
      ? { kind: 'spawn-failed', message: `the sandbox helper for '${request.drvPath}' exited with code ${exit.code} without a status` }
      : { kind: 'spawn-failed', message: `the sandbox helper for '${request.drvPath}' was killed by ${exit.signal}` };
  }

  /** A build through the helper server (`args`: the helper's build options and `-- BUILDER ARGV0 ARGS...`). */
  async #runOnServer(
    exe: string,
    args: string[],
    request: SandboxRequest,
    opts: SandboxRunOptions,
    outputs: OutputsMoved,
    closes: number,
  ): Promise<SandboxExit> {
    const server = this.#serverFor(exe, closes);
    // Closed while the run was on its way: it ends as the builds close() stops (stopRunsOf) end.
    if (!server) return { kind: 'aborted' };
    let exit: SandboxExit;
    let left = false;
    try {
      exit = await server.run({
        owner: this,
        args,
        env: request.env,
        signal: opts.signal,
        onOutput: opts.onOutput,
        onSetUp: opts.onSetUp,
        onOutputsLeft: () => {
          left = true;
        },
        onSkeletonKept: () => {
          outputs.kept = true;
        },
        drvPath: request.drvPath,
      });
    } catch (e) {
      exit = { kind: 'spawn-failed', message: `cannot start the sandbox helper '${exe}': ${(e as Error).message}` };
    }
    // The build process's status comes once it has moved the outputs: nothing is left for moveOutputsOut
    // to look for unless it says so.
    outputs.all = !left && (exit.kind === 'exited' || exit.kind === 'signalled');
    return exit.kind === 'spawn-failed' ? setupFailed(request, exit.message) : exit;
  }

  async #runBwrap(
    exe: string,
    request: SandboxRequest,
    opts: SandboxRunOptions,
    root: string,
    binds: Map<string, Bind>,
    ids: Pick<PrepareChrootOptions, 'uid' | 'gid' | 'kvm'>,
  ): Promise<SandboxExit> {
    const { uid, gid } = ids;
    const a: string[] = [
      '--unshare-user',
      '--uid',
      String(uid),
      '--gid',
      String(gid),
      '--unshare-pid',
      '--unshare-ipc',
      '--unshare-uts',
      '--hostname',
      'localhost',
      ...(request.network ? [] : ['--unshare-net']),
      '--die-with-parent',
      '--as-pid-1',
      '--new-session',
      '--bind',
      root,
      '/',
    ];
    if (!binds.has('/dev')) {
      a.push('--dev', '/dev');
      if (ids.kvm) a.push('--dev-bind', '/dev/kvm', '/dev/kvm');
      const size = shmBytes(this.#options.shmSize ?? '50%');
      a.push('--perms', '1777', ...(size !== undefined ? ['--size', String(size)] : []), '--tmpfs', '/dev/shm');
    }
    a.push('--proc', '/proc');
    // Run as root, the builder is the host's uid 0, which the kernel lets write root-owned /proc files
    // whatever its capabilities; bwrap covers /proc/irq and /proc/bus (and /proc/sysrq-trigger) but not
    // /proc/sys (its write check on it always fails) nor /proc/fs. Those are bound read-only from the
    // host's procfs (sysctls show the reader's namespaces either way).
    if (RUN_AS_ROOT)
      a.push('--ro-bind', '/proc/sys', '/proc/sys', '--ro-bind-try', '/proc/sysrq-trigger', '/proc/sysrq-trigger', '--ro-bind-try', '/proc/fs', '/proc/fs');
    for (const [target, { source, optional, ro }] of binds) {
      a.push(ro ? (optional ? '--ro-bind-try' : '--ro-bind') : optional ? '--bind-try' : '--bind', source, target);
    }
    const filter = this.#filter;
    if (filter) a.push('--seccomp', '3');
    a.push('--chdir', request.sandboxBuildDir, '--', request.builder, ...request.args);
    let head = '';
    const exit = await spawnMerged({
      file: exe,
      args: a,
      env: request.env,
      signal: opts.signal,
      onOutput: (c) => {
        if (head.length < 512) head += c.toString();
        opts.onOutput?.(c);
      },
      extraStdio: filter ? ['pipe'] : [],
      onSpawn: (child) => {
        const fd3 = child.stdio[3] as NodeJS.WritableStream | null;
        if (fd3 && filter) {
          fd3.on('error', () => {});
          fd3.end(filter);
        }
      },
    });
    // bwrap reports its own setup failures as "bwrap: ..." and exit code 1.
    if (exit.kind === 'exited' && exit.code === 1 && head.startsWith('bwrap: ')) {
      const why = head.split('\n')[0]!.slice(7);
      const m = /^execvp (.*?): (.*)$/.exec(why);
      return setupFailed(request, why, m ? `executing '${m[1]}': ${m[2]}` : undefined);
    }
    // bwrap turns a builder killed by a signal into exit code 128 + signal; we cannot tell that from a
    // builder exiting with such a code, so it stays an exit code (the builder is PID 1 and ignores
    // signals sent from inside anyway).
    return exit;
  }
}

/**
 * Whether the helper moved every output the builder made out of the chroot (then moveOutputsOut is not
 * needed), and whether it kept the chroot's skeleton for the pool (see ChrootPool.handOver).
 */
interface OutputsMoved {
  all: boolean;
  kept: boolean;
}

/** Run Nix's `pre-build-hook` (`HOOK DRV CHROOTDIR`) and parse its `extra-sandbox-paths` output. */
export async function runPreBuildHook(hook: string, drvPath: string, chrootDir: string): Promise<Map<string, SandboxPath>> {
  // As Nix's runProgram: the hook's stdout is read, its stderr goes to ours; a failure is "program '…'
  // failed with exit code N" (or "due to signal N (…)"), and a hook that cannot be executed says so first
  // and counts as exit code 1, as Nix's forked child does.
  const failed = (how: string, cause?: unknown) =>
    new SandboxError('sandbox-setup-failed', `program '${hook}' ${how}`, { cause, hint: "fix the hook or unset 'pre-build-hook'" });
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(hook, [drvPath, chrootDir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', (e: NodeJS.ErrnoException) => {
      process.stderr.write(`error: executing '${hook}': ${strerror(e) ?? e.message}\n`);
      reject(failed('failed with exit code 1', e));
    });
    child.on('close', (code, signal) => {
      if (signal) reject(failed(`failed due to signal ${describeSignal(signal)}`));
      else if (code !== 0) reject(failed(`failed with exit code ${code}`));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
  return parsePreBuildHookOutput(out);
}

/** A build whose sandbox could not be set up; an `execve` failure of the builder is marked as such (see SandboxExit). */
function setupFailed(request: SandboxRequest, why: string, execError = execErrorOf(why)): SandboxExit {
  return spawnFailed(`setting up the sandbox for '${request.drvPath}' failed: ${why}`, execError, why);
}
