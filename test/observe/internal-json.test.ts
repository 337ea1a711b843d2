/**
 * `--log-format internal-json`: realise's stream against real Nix 2.8's for the same work on twin chroot
 * stores — a DAG, a failing build, a failure stopping a running build, substitutions from a file:// and an
 * http:// cache, remote builds over ssh:// and ssh-ng:// through a real sshd — compared as a reader of the
 * stream sees it (activity types, levels, texts, fields, log lines per activity, every start stopped, the
 * downloads' last progress, the call's final progress and expected sizes, messages; not ids, timing or the
 * order between activities).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bwrapOk, instantiateTwins, nix, nixInstantiate, nixOk, runNix, runNixAsync, tempDir } from '../helpers/nix.js';
import { serveCache } from '../substituter/http-server.js';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { makeFixture, NIX_CONF, type Fixture } from '../remote/fixture.js';
import { sshdOk, startSshd, type Sshd } from '../remote/sshd.js';
import { nomSummary, parseStream, progressUpdates, summarise } from './nix-stream.js';
import { analyseTrace } from '../../src/observe/report.js';
import type { TraceFile } from '../../src/observe/trace.js';

const SANDBOX = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox /bin/busybox'];

const EXPR = `let
  mk = name: deps: script: derivation { inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; };
  a = mk "obs-a" [] "echo hello from a; echo second line >&2; echo a > $out";
  b = mk "obs-b" [ a ] "echo building b; echo b > $out";
  c = mk "obs-c" [ a ] "echo c; echo c > $out";
  fail = mk "obs-fail" [ a ] "echo about to fail; exit 3";
in {
  dag = mk "obs-top" [ b c ] "echo top; echo top > $out";
  failing = mk "obs-failtop" [ fail ] "echo > $out";
  ref = mk "obs-ref" [ a ] "echo $deps > $out";
  hooked = mk "obs-hooked" [] "echo hooked build; echo x > $out";
  # obs-late fails once obs-slow has logged its line and that line had a second to reach the log (told
  # through a FIFO both sandboxes see).
  stopping = mk "obs-stoptop" [
    (mk "obs-late" [] "echo about to fail; read x < /shared/fifo; exit 3")
    (mk "obs-slow" [] "echo slow; sleep 1; echo x > /shared/fifo; sleep 10; echo > $out")
  ] "echo > $out";
}`;

/** Every activity type but remote builds' (Unknown with its texts, downloads, queries, builds, substitutions, copies, lock waits, the call's own). */
const LOCAL_TYPES = [0, 100, 101, 102, 103, 104, 105, 108, 109, 110, 111];
/** A remote build's: its steps (Unknown), the copies (CopyPaths, CopyPath), the builds and the call's own. */
const REMOTE_TYPES = [0, 100, 102, 103, 104, 105];

describe.skipIf(!nixOk() || !bwrapOk())('internal-json: realise vs Nix 2.8', () => {
  let dir: string;
  const drv: Record<string, string> = {};
  const N = () => path.join(dir, 'N');
  const O = () => path.join(dir, 'O');

  beforeAll(() => {
    dir = tempDir('realise-obs-json-');
    for (const a of ['dag', 'failing', 'ref', 'hooked', 'stopping']) drv[a] = instantiateTwins(dir, EXPR, ['-A', a]);
  });

  const both = async (nixArgs: string[], ourArgs: string[], env: Record<string, string> = {}) => {
    const n = runNix('nix-store', [...nixArgs, '--log-format', 'internal-json'], { env });
    const o = await realise(['build', ...ourArgs, '--log-format', 'internal-json'], env);
    return { n, o, ns: parseStream(n.stderr), os: parseStream(o.stderr) };
  };

  it('a DAG: the same build activities (fields, texts, log lines), progress and messages; --trace-file and --report', async () => {
    const [traceFile, reportFile] = [path.join(dir, 'dag-trace.json'), path.join(dir, 'dag-report.html')];
    const { n, o, ns, os } = await both(
      ['--store', N(), ...SANDBOX, '-j2', '--realise', drv.dag!],
      ['--store', O(), ...SANDBOX, '-j2', '--trace-file', traceFile, '--report', reportFile, drv.dag!],
    );
    expect(n.status).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const want = summarise(ns, LOCAL_TYPES);
    // Four builds and the two "querying info about missing paths" (before the call and as it starts).
    expect(want.activities).toHaveLength(6);
    expect(want.activities.join('\n')).toContain('"lines":["hello from a","second line"]');
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    // A nix-output-monitor style reader reaches the same summary from both streams.
    const nom = nomSummary(n.stderr);
    expect(nom.builds.filter((b) => b.endsWith("on '': done, 1 log lines") || b.endsWith("on '': done, 2 log lines"))).toHaveLength(4);
    expect(nomSummary(o.stderr)).toEqual(nom);
    expect(want.buildsProgress).toEqual([4, 4, 0, 0]);
    // Nix's updates of the call's progress, each time all four results: a goal created (4), a build
    // started (4), a goal done (4). Whether c starts before b ends is the builders' race: in order up to
    // a's end, then as many, ending the same.
    const [nu, ou] = [progressUpdates(n.stderr), progressUpdates(o.stderr)];
    expect(nu).toHaveLength(12 * 4);
    expect(nu.slice(0, 6 * 4)).toEqual(
      [
        [0, 1, 0, 0],
        [0, 2, 0, 0],
        [0, 3, 0, 0],
        [0, 4, 0, 0],
        [0, 4, 1, 0],
        [1, 4, 0, 0],
      ].flatMap((b) => [`builds ${JSON.stringify(b)}`, 'copies [0,0,0,0]', 'expected [101,0]', 'expected [100,0]']),
    );
    expect(ou.slice(0, 6 * 4)).toEqual(nu.slice(0, 6 * 4));
    expect(ou.filter((u) => !u.startsWith('builds'))).toEqual(nu.filter((u) => !u.startsWith('builds')));
    expect(ou.slice(-4)).toEqual(nu.slice(-4));
    // The trace: four builds on the two slots' tracks, the critical path a → (b or c) → top.
    const a = analyseTrace(JSON.parse(readFileSync(traceFile, 'utf8')) as TraceFile);
    expect(a.items.filter((i) => i.kind === 'build' && i.ok)).toHaveLength(4);
    expect(a.tracks.every((t) => /^build slot [12]$/.test(t))).toBe(true);
    expect(a.criticalPath).toHaveLength(3);
    expect(a.criticalPath[2]).toBe(drv.dag);
    const html = readFileSync(reportFile, 'utf8');
    for (const i of a.items) expect(html).toContain(`data-drv="${i.path}"`);
  });

  it("a failing build: its activity and log, the errors as Nix's error messages, exit status", async () => {
    const { n, o, ns, os } = await both(['--store', N(), ...SANDBOX, '-j2', '--realise', drv.failing!], ['--store', O(), ...SANDBOX, '-j2', drv.failing!]);
    expect(n.status).toBe(100);
    expect(o.status).toBe(n.status);
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const want = summarise(ns, LOCAL_TYPES);
    expect(want.msgs.filter((m) => m.startsWith('0 error:'))).toHaveLength(2);
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    // The errors' values in Nix's colour (the summaries compare them without colours).
    const rawErrors = (stderr: string) =>
      stderr
        .split('\n')
        .filter((l) => l.includes('"action":"msg"') && l.includes('"level":0'))
        .map((l) => (JSON.parse(l.slice('@nix '.length)) as { raw_msg: string }).raw_msg)
        .sort();
    expect(rawErrors(n.stderr).join('\n')).toContain("\x1b[35;1m1\x1b[0m dependencies of derivation '\x1b[35;1m");
    expect(rawErrors(o.stderr)).toEqual(rawErrors(n.stderr));
    const nom = nomSummary(n.stderr);
    expect(nom.builds.filter((b) => b.endsWith('failed, 1 log lines'))).toHaveLength(1);
    expect(nomSummary(o.stderr)).toEqual(nom);
    // The failed build and its dependent are no longer expected.
    expect(want.buildsProgress).toEqual([0, 0, 0, 1]);
    // Every update of the call's progress, in order (one build at a time).
    expect(progressUpdates(o.stderr)).toEqual(progressUpdates(n.stderr));
  });

  it('a failure that stops a running build: the last progress no longer expects it (nor counts it running)', async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', ['-m', '666', fifo]);
    const opts = ['--option', 'sandbox-paths', `/bin/sh=/bin/busybox /bin/busybox /shared/fifo=${fifo}`, '-j2'];
    const n = runNix('nix-store', ['--store', N(), ...opts, '--realise', drv.stopping!, '--log-format', 'internal-json']);
    const o = await realise(['build', '--store', O(), ...opts, drv.stopping!, '--log-format', 'internal-json']);
    expect(n.status).toBe(100);
    expect(o.status).toBe(n.status);
    const [ns, os] = [parseStream(n.stderr), parseStream(o.stderr)];
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const want = summarise(ns, LOCAL_TYPES);
    expect(want.buildsProgress).toEqual([0, 0, 0, 1]);
    expect(want.activities.join('\n')).toContain('"lines":["slow"]');
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    expect(nomSummary(o.stderr)).toEqual(nomSummary(n.stderr));
  });

  it("a floating content-addressed derivation built as its resolved form: Nix's 'resolved derivation' activity", async () => {
    const ca = ['--extra-experimental-features', 'ca-derivations'];
    const expr = `let mk = name: deps: script: derivation { inherit name deps; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" script ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
    in mk "obs-ca-b" [ (mk "obs-ca-a" [] "echo a; echo a > $out") ] "echo b; echo $deps > $out"`;
    const caDrv = instantiateTwins(dir, expr, ca);
    const { n, o, ns, os } = await both(['--store', N(), ...SANDBOX, ...ca, '--realise', caDrv], ['--store', O(), ...SANDBOX, ...ca, caDrv]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stdout).toBe(n.stdout);
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const want = summarise(ns, LOCAL_TYPES);
    const resolved = [...ns.activities.values()].filter((a) => a.type === 111);
    expect(resolved.map((a) => [a.level, a.text.startsWith(`resolved derivation: '${caDrv}' -> '`), a.fields[0]])).toEqual([[3, true, caDrv]]);
    expect(want.activities.join('\n')).toContain(`"text":"building '${String(resolved[0]!.fields[1])}'"`);
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    expect(nomSummary(o.stderr)).toEqual(nomSummary(n.stderr));
  });

  it('a substitution from a file:// cache: Substitute and CopyPath activities with their fields, copy progress', async () => {
    const out = nix('nix-store', ['--store', N(), ...SANDBOX, '--realise', drv.ref!]).split('\n')[0]!;
    const cache = path.join(dir, 'cache');
    nix('nix', ['copy', '--store', N(), '--to', `file://${cache}`, out]);
    const subst = ['--option', 'substituters', `file://${cache}`, '--option', 'require-sigs', 'false'];
    const { n, o, ns, os } = await both(['--store', path.join(dir, 'S1'), ...subst, '--realise', out], ['--store', path.join(dir, 'S2'), ...subst, out]);
    expect(n.status).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const want = summarise(ns, LOCAL_TYPES);
    // The output and the path it refers to, each a Substitute (108) and a CopyPath (100) activity.
    expect(want.activities.filter((a) => a.includes('"type":108'))).toHaveLength(2);
    expect(want.activities.filter((a) => a.includes('"type":100'))).toHaveLength(2);
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    const nom = nomSummary(n.stderr);
    expect(nom.substituted).toHaveLength(2);
    expect(nomSummary(o.stderr)).toEqual(nom);
    expect(want.copyProgress).toEqual([2, 2, 0, 0]);
    expect(want.expected).toEqual({ 100: 288, 101: 296 });
    // Every update of the call's progress, in order: the output counts as expected with its sizes once its
    // narinfo is read, before the path it refers to; then that path runs and ends, then the output.
    const updates = progressUpdates(n.stderr);
    expect(updates.filter((u) => u.startsWith('copies'))).toEqual(
      ['[0,1,0,0]', '[0,2,0,0]', '[0,2,1,0]', '[1,2,0,0]', '[1,2,1,0]', '[2,2,0,0]'].map((c) => `copies ${c}`),
    );
    expect(progressUpdates(o.stderr)).toEqual(updates);
  });

  it("a post-build hook: its PostBuildHook activity (text, fields) and the hook's lines in it", async () => {
    const hook = path.join(dir, 'hook.sh');
    writeFileSync(hook, '#!/bin/sh\necho the hook ran\n', { mode: 0o755 });
    const opt = ['--option', 'post-build-hook', hook];
    const { n, o, ns, os } = await both(['--store', N(), ...SANDBOX, ...opt, '--realise', drv.hooked!], ['--store', O(), ...SANDBOX, ...opt, drv.hooked!]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(ns.problems).toEqual([]);
    expect(os.problems).toEqual([]);
    const hooks = (s: typeof ns) => [...s.activities.values()].filter((a) => a.type === 110).map((a) => [a.level, a.text, a.fields]);
    expect(hooks(ns)).toEqual([[3, `running post-build-hook '${hook}'`, [drv.hooked]]]);
    expect(hooks(os)).toEqual(hooks(ns));
    const want = summarise(ns, LOCAL_TYPES);
    expect(want.activities.join('\n')).toContain('"lines":["the hook ran"]');
    expect(summarise(os, LOCAL_TYPES)).toEqual(want);
    expect(nomSummary(o.stderr)).toEqual(nomSummary(n.stderr));
  });

  it("a --log-format nix-store does not know: Nix's error and exit status", async () => {
    const n = runNix('nix-store', ['--store', N(), '--log-format', 'fancy', '--realise', drv.dag!]);
    const o = await realise(['build', '--store', O(), '--log-format', 'fancy', drv.dag!]);
    expect(n.stderr).toBe("error: option 'log-format' has an invalid value 'fancy'\n");
    expect(o.stderr).toBe(n.stderr);
    expect(o.status).toBe(n.status);
  });

  it('a substitution from an http:// cache: the NAR download as a FileTransfer activity inside the copy', async () => {
    const out = nix('nix-store', ['--store', N(), ...SANDBOX, '--realise', drv.ref!]).split('\n')[0]!;
    const cache = path.join(dir, 'http-cache');
    nix('nix', ['copy', '--store', N(), '--to', `file://${cache}`, out]);
    const server = await serveCache(cache);
    // Both remember an HTTP cache's nix-cache-info and narinfos across runs (Nix in $XDG_CACHE_HOME/nix, we
    // in $XDG_CACHE_HOME/realise): a directory of this test's own, so that nothing is remembered from before.
    const env = { XDG_CACHE_HOME: path.join(dir, 'xdg') };
    try {
      const subst = ['--option', 'substituters', server.url, '--option', 'require-sigs', 'false'];
      // Nix runs while this process serves the cache: not spawnSync.
      const n = await runNixAsync('nix-store', ['--store', path.join(dir, 'H1'), ...subst, '--realise', out, '--log-format', 'internal-json'], { env });
      const o = await realise(['build', '--store', path.join(dir, 'H2'), ...subst, out, '--log-format', 'internal-json'], env);
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      const [ns, os] = [parseStream(n.stderr), parseStream(o.stderr)];
      expect(ns.problems).toEqual([]);
      expect(os.problems).toEqual([]);
      const want = summarise(ns, LOCAL_TYPES);
      // Downloads: nix-cache-info, two narinfos (inside their queries, type 109), two NARs.
      expect(want.activities.filter((a) => a.includes('"type":101'))).toHaveLength(5);
      expect(want.activities.filter((a) => a.includes('"type":109'))).toHaveLength(2);
      expect(summarise(os, LOCAL_TYPES)).toEqual(want);
      // The port differs between runs of the test, not between the two streams.
      const nom = nomSummary(n.stderr);
      expect(nom.downloads).toHaveLength(5);
      expect(nom.downloads.every((d) => !d.endsWith(': 0 bytes'))).toBe(true);
      expect(nomSummary(o.stderr)).toEqual(nom);
    } finally {
      await server.close();
    }
    // A path the cache lacks, from a server at a new address (whose nix-cache-info neither has seen).
    const server2 = await serveCache(cache);
    try {
      const subst = ['--option', 'substituters', server2.url, '--option', 'require-sigs', 'false'];
      // A path the cache lacks: its query, the narinfo download counting the 404 page's bytes (its length
      // unknown: sent chunked), then the build.
      const [h3, h4] = [path.join(dir, 'H3'), path.join(dir, 'H4')];
      for (const root of [h3, h4]) expect(nixInstantiate(root, EXPR, { attr: 'hooked' })[0]).toBe(drv.hooked);
      const n2 = await runNixAsync('nix-store', ['--store', h3, ...SANDBOX, ...subst, '--realise', drv.hooked!, '--log-format', 'internal-json'], { env });
      const o2 = await realise(['build', '--store', h4, ...SANDBOX, ...subst, drv.hooked!, '--log-format', 'internal-json'], env);
      expect(n2.status, n2.stderr).toBe(0);
      expect(o2.status, o2.stderr).toBe(0);
      const want2 = summarise(parseStream(n2.stderr), LOCAL_TYPES);
      expect(want2.activities.filter((a) => a.includes('.narinfo') && a.includes('"progress":[10,0,0,0]'))).toHaveLength(1);
      expect(summarise(parseStream(o2.stderr), LOCAL_TYPES)).toEqual(want2);
      expect(nomSummary(o2.stderr)).toEqual(nomSummary(n2.stderr));
    } finally {
      await server2.close();
    }
  });

  it('--json-log-path: the same stream goes to a file (or a listening Unix socket) while stderr shows the normal display', async () => {
    const file = path.join(dir, 'log.json');
    const o = await realise(['build', '--store', O(), ...SANDBOX, '--json-log-path', file, '--check', drv.dag!]);
    expect(o.status, o.stderr).toBe(0);
    expect(o.stderr).toContain(`checking outputs of '${drv.dag}'...`);
    expect(o.stderr).not.toContain('@nix');
    const s = parseStream(readFileSync(file, 'utf8'));
    expect(s.problems).toEqual([]);
    const builds = [...s.activities.values()].filter((a) => a.type === 105);
    expect(builds.map((a) => [a.text, a.lines])).toEqual([[`checking outputs of '${drv.dag}'`, ['top']]]);

    const sock = path.join(dir, 'log.sock');
    if (existsSync(sock)) unlinkSync(sock);
    let received = '';
    const server = createServer((c) =>
      c.setEncoding('utf8').on('data', (d: string) => {
        received += d;
      }),
    );
    await new Promise<void>((r) => server.listen(sock, r));
    const closed = new Promise<void>((r) => server.on('connection', (c) => c.on('end', () => r())));
    const o2 = await realise(['build', '--store', O(), ...SANDBOX, '--json-log-path', sock, '--check', drv.dag!]);
    expect(o2.status, o2.stderr).toBe(0);
    await closed;
    server.close();
    expect(parseStream(received).problems).toEqual([]);
    expect(received).toContain(`"text":"checking outputs of '${drv.dag}'"`);
  });
});

describe.skipIf(!nixOk() || !sshdOk())('internal-json of a remote build: realise vs Nix 2.8 over a real sshd', () => {
  let fx: Fixture;
  let sshd: Sshd;
  beforeAll(async () => {
    fx = makeFixture({ prebuildDep: false });
    sshd = await startSshd();
  });
  afterAll(async () => {
    await sshd?.stop();
  });

  for (const scheme of ['ssh', 'ssh-ng'] as const) {
    it(`builds on an ${scheme}:// machine: Build activities with the machine, the remote log lines, the hook's steps and copies`, async () => {
      const spec = (remote: string) => {
        const program = fx.wrapper(remote, scheme === 'ssh' ? 'nix-store' : 'nix-daemon');
        const uri = `${scheme}://${sshd.user}@127.0.0.1?remote-store=${encodeURIComponent(path.join(fx.dir, remote))}&remote-program=${encodeURIComponent(program)}`;
        return { uri, line: `${uri} x86_64-linux ${sshd.clientKey} 1 1 - - ${sshd.hostKeyBase64}` };
      };
      // Fresh local stores holding the derivations (twins), fresh machines.
      const [theirs, ours] = [path.join(fx.dir, `nix-${scheme}`), path.join(fx.dir, `ours-${scheme}`)];
      for (const root of [theirs, ours]) expect(nixInstantiate(root, path.join(fx.dir, 'default.nix'), { file: true, attr: 'top' })[0]).toBe(fx.drvs.top);
      const env = { NIX_SSHOPTS: sshd.sshOptions.join(' '), NIX_CONFIG: NIX_CONF };
      const rn = spec(`remote-n-${scheme}`);
      const ro = spec(`remote-o-${scheme}`);
      const n = runNix('nix-store', ['--store', theirs, '-j0', '--builders', rn.line, '--realise', fx.drvs.top, '--log-format', 'internal-json'], { env });
      const traceFile = path.join(fx.dir, `remote-trace-${scheme}.json`);
      const o = await realise(
        ['build', '--store', ours, '-j0', '--builders', ro.line, fx.drvs.top, '--log-format', 'internal-json', '--trace-file', traceFile],
        env,
      );
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      const [ns, os] = [parseStream(n.stderr), parseStream(o.stderr)];
      expect(ns.problems).toEqual([]);
      expect(os.problems).toEqual([]);
      // The two runs use a machine each (their own remote stores): compared with the URI replaced.
      const want = summarise(ns, REMOTE_TYPES, (s) => s.split(rn.uri).join('MACHINE'));
      const shown = want.activities.join('\n');
      expect(shown).toContain(`on 'MACHINE'`);
      // Each build: connecting, the upload lock, copying inputs (dep: none; top: the helper file) and outputs back.
      for (const text of [
        "connecting to 'MACHINE'",
        "waiting for the upload lock to 'MACHINE'",
        "copying dependencies to 'MACHINE'",
        "copying outputs from 'MACHINE'",
      ]) {
        expect(want.activities.filter((a) => a.includes(`"text":"${text}"`))).toHaveLength(2);
      }
      for (const count of [0, 1, 1, 2]) expect(shown).toContain(`"text":"copying ${count} paths"`);
      const remote = `${scheme}://${sshd.user}@127.0.0.1`;
      expect(want.activities.filter((a) => a.includes(`"type":100,"level":3,"text":"copying path `) && a.includes(`-helper.sh' to '${remote}'`))).toHaveLength(
        1,
      );
      expect(want.activities.filter((a) => a.includes(`"type":100`) && a.includes(`' from '${remote}'`))).toHaveLength(3);
      expect(summarise(os, REMOTE_TYPES, (s) => s.split(ro.uri).join('MACHINE'))).toEqual(want);
      const nom = nomSummary(n.stderr, (s) => s.split(rn.uri).join('MACHINE'));
      expect([nom.copiedToMachines.length, nom.copiedFromMachines.length]).toEqual([1, 3]);
      expect(nomSummary(o.stderr, (s) => s.split(ro.uri).join('MACHINE'))).toEqual(nom);
      // In the trace, both builds are on the machine's track.
      const a = analyseTrace(JSON.parse(readFileSync(traceFile, 'utf8')) as TraceFile);
      expect(a.items.map((i) => [i.track, i.args.machine])).toEqual([
        [`machine ${ro.uri} 1`, ro.uri],
        [`machine ${ro.uri} 1`, ro.uri],
      ]);
    });
  }
});
