/**
 * A builder's `@nix {"action":"msg",…}` lines: Nix prints their messages (at Nix's default verbosity,
 * levels 0 to 3; one more with each `-v`, one fewer with each `--quiet`) and keeps them out of the log lines; `realise build` against `nix-store --realise` on
 * twin chroot stores, in the plain display and in `--log-format internal-json`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { realiseInProcess as realise } from '../helpers/cli.js';
import { instantiateTwins, nixOk, runNix, tempDir } from '../helpers/nix.js';

const MSG = (level: number) => `echo '@nix {"action":"msg","level":${level},"msg":"message at level ${level}"}'`;
const EXPR = `derivation { name = "builder-messages"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" ''${[0, 1, 2, 3, 4, 5].map(MSG).join('; ')}; echo '@nix {"action":"setPhase","phase":"buildPhase"}'; echo a plain line; echo x > $out''];
}`;
const SANDBOX = ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox'];

describe.skipIf(!nixOk())("a builder's @nix messages, realise vs Nix 2.8", () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(dir, EXPR);
  });
  /** The lines both print for the build (not Nix's --add-root warning). */
  const lines = (stderr: string) => stderr.split('\n').filter((l) => /^(message at|a plain line|building)/.test(l));
  /** The internal-json messages and log lines of the build. */
  const jsonLines = (stderr: string) =>
    stderr
      .split('\n')
      .filter((l) => l.includes('message at level') || l.includes('"type":101,'))
      .map((l) => l.replace(/"id":\d+/, '"id":0'));

  it('the messages of levels 0 to 3 are printed, not as log lines; the same in internal-json', async () => {
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    expect(lines(n.stderr)).toContain('message at level 3');
    expect(lines(n.stderr)).not.toContain('message at level 4');
    expect(lines(o.stderr)).toEqual(lines(n.stderr));

    const nj = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--check', '--log-format', 'internal-json']);
    const oj = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--check', '--log-format', 'internal-json']);
    expect(nj.status, nj.stderr).toBe(0);
    expect(jsonLines(nj.stderr).join('\n')).toContain('message at level 0');
    expect(jsonLines(oj.stderr)).toEqual(jsonLines(nj.stderr));
  });

  it('the verbosity flags move the cut: -v shows level 4, --quiet hides level 3', async () => {
    for (const [flag, shown, hidden] of [
      ['-v', 'message at level 4', 'message at level 5'],
      ['--quiet', 'message at level 2', 'message at level 3'],
    ] as const) {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--check', flag]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--check', flag]);
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      expect(lines(n.stderr), flag).toContain(shown);
      expect(lines(n.stderr), flag).not.toContain(hidden);
      expect(lines(o.stderr), flag).toEqual(lines(n.stderr));
    }
  });
});

/**
 * A builder's `@nix` lines about activities: `setPhase` (a SetPhase result on the build's activity), a
 * FileTransfer activity of its own with a result and a stop (under the build, ids of the log's own), and an
 * activity of another type with its result and stop (which Nix ignores from a builder).
 */
const ACT = (json: string) => `echo '@nix ${json}'`;
const ACTIVITIES = `derivation { name = "builder-activities"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" ''${[
    ACT('{"action":"setPhase","phase":"unpackPhase"}'),
    ACT('{"action":"start","id":5,"type":101,"level":3,"text":"fetching the source","fields":["http://example.org/src"],"parent":0}'),
    ACT('{"action":"start","id":6,"type":0,"level":3,"text":"an unknown activity","fields":[]}'),
    ACT('{"action":"result","id":5,"type":105,"fields":[10,20,0,0]}'),
    ACT('{"action":"result","id":6,"type":105,"fields":[1,2,0,0]}'),
    ACT('{"action":"result","id":7,"type":105,"fields":[1,2,0,0]}'),
    ACT('{"action":"stop","id":6}'),
    ACT('{"action":"start","id":8,"type":101,"level":4,"text":"a quieter transfer","fields":[]}'),
    ACT('{"action":"stop","id":5}'),
    ACT('{"action":"setPhase","phase":"buildPhase"}'),
    // Numbers written as floats: truncated where Nix reads a number (a level, an id, a type), as C++ converts them.
    ACT('{"action":"msg","level":2.9,"msg":"a message at level 2.9"}'),
    ACT('{"action":"msg","level":3.5,"msg":"a message at level 3.5"}'),
    ACT('{"action":"start","id":9.5,"type":101.2,"level":3,"text":"fetching with float numbers","fields":["u"]}'),
    ACT('{"action":"result","id":9,"type":105.9,"fields":[1,2]}'),
    // A result without fields (none in the stream either), with an object's values as fields, for an unknown id.
    ACT('{"action":"result","id":9,"type":105}'),
    ACT('{"action":"result","id":9,"type":105,"fields":{"a":1,"b":"s"}}'),
    ACT('{"action":"result","id":10,"type":"zz"}'),
    ACT('{"action":"stop","id":9.1}'),
  ].join('; ')}; echo a plain line; echo x > $out''];
}`;

describe.skipIf(!nixOk())("a builder's @nix activities and phases, realise vs Nix 2.8", () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    drv = instantiateTwins(dir, ACTIVITIES);
  });

  /**
   * The build's activity and what happens under it, from its start to its stop (not the call's progress
   * results), with ids numbered in the order they first appear.
   */
  const buildEvents = (stderr: string) => {
    const events = stderr
      .split('\n')
      .filter((l) => l.startsWith('@nix '))
      .map((l) => JSON.parse(l.slice(5)) as { action: string; id?: number; type?: number });
    const first = events.findIndex((e) => e.action === 'start' && e.type === 105);
    const build = events[first]!.id;
    const last = events.findIndex((e) => e.action === 'stop' && e.id === build);
    const ids = new Map<number, number>([[build!, 0]]);
    const out: unknown[] = [];
    for (const e of events.slice(first, last + 1)) {
      if (e.action === 'start' && !ids.has(e.id!)) ids.set(e.id!, ids.size);
      if (e.id === undefined || !ids.has(e.id)) continue;
      out.push({ ...e, id: ids.get(e.id) });
    }
    return out;
  };
  const lines = (stderr: string) => stderr.split('\n').filter((l) => /^(fetching|a quieter|an unknown|a plain line|a message|building)/.test(l));
  const messages = (stderr: string) => stderr.split('\n').filter((l) => l.includes('"action":"msg"') && l.includes('a message at level'));

  it('internal-json: the phases on the build, the FileTransfer under it with its result and stop; the rest ignored', async () => {
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--log-format', 'internal-json']);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--log-format', 'internal-json']);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    const ne = buildEvents(n.stderr);
    expect(ne).toContainEqual({ action: 'result', id: 0, type: 104, fields: ['unpackPhase'] });
    expect(ne).toContainEqual({ action: 'start', id: 1, type: 101, level: 3, text: 'fetching the source', fields: ['http://example.org/src'] });
    expect(ne).toContainEqual({ action: 'result', id: 1, type: 105, fields: [10, 20, 0, 0] });
    expect(ne).toContainEqual({ action: 'result', id: 3, type: 105 });
    expect(buildEvents(o.stderr)).toEqual(ne);
    expect(messages(n.stderr)).toEqual([
      '@nix {"action":"msg","level":2,"msg":"a message at level 2.9"}',
      '@nix {"action":"msg","level":3,"msg":"a message at level 3.5"}',
    ]);
    expect(messages(o.stderr)).toEqual(messages(n.stderr));
  });

  it('the plain display: the FileTransfer as an activity is printed at its level, the phases not', async () => {
    for (const flags of [[], ['-v']]) {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv, '--check', ...flags]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv, '--check', ...flags]);
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      expect(lines(n.stderr)).toContain('fetching the source...');
      expect(lines(o.stderr), flags.join(' ')).toEqual(lines(n.stderr));
    }
  });
});

/**
 * builtin:fetchurl: Nix runs it as a builder whose download is a FileTransfer activity it passes on from the
 * builder's `@nix` lines, under the build's activity; the call's expected download size stays 0.
 */
describe.skipIf(!nixOk())('builtin:fetchurl, its download as an activity, realise vs Nix 2.8', () => {
  let dir: string;
  let drv: string;
  let url: string;
  beforeAll(() => {
    dir = tempDir();
    const blob = path.join(dir, 'blob');
    writeFileSync(blob, randomBytes(200_000));
    url = `file://${blob}`;
    const hash = createHash('sha256').update(readFileSync(blob)).digest('hex');
    drv = instantiateTwins(
      dir,
      `derivation { name = "blob"; system = "builtin"; builder = "builtin:fetchurl"; url = "${url}"; urls = ["${url}"];
        outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "${hash}"; unpack = false; executable = false; }`,
    );
  });
  const events = (stderr: string) =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('@nix '))
      .map((l) => JSON.parse(l.slice(5)) as { action: string; id?: number; type?: number; fields?: unknown[]; text?: string });

  it('internal-json: the FileTransfer (level 4, its text and fields), its last progress and its stop; SetExpected of downloads stays 0', async () => {
    const args = ['--option', 'sandbox-paths', dir, '--log-format', 'internal-json'];
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', drv, ...args]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), drv, ...args]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    const transfer = (stderr: string) => {
      const all = events(stderr);
      const start = all.find((e) => e.action === 'start' && e.type === 101)!;
      const mine = all.filter((e) => e.id === start.id);
      return {
        start: { ...start, id: 0 },
        lastProgress: mine.filter((e) => e.action === 'result').at(-1)?.fields,
        stopped: mine.filter((e) => e.action === 'stop').length,
      };
    };
    const nt = transfer(n.stderr);
    expect(nt.start.text).toBe(`downloading '${url}'`);
    expect(nt.lastProgress).toEqual([200_000, 200_000, 0, 0]);
    expect(transfer(o.stderr)).toEqual(nt);
    const expected = (stderr: string) =>
      events(stderr)
        .filter((e) => e.action === 'result' && e.type === 106)
        .map((e) => e.fields);
    expect(expected(n.stderr)).toContainEqual([101, 0]);
    expect(expected(o.stderr)).toEqual(expected(n.stderr));
  });

  it("the plain display: `downloading '…'...` with -v only", async () => {
    for (const flags of [[], ['-v']]) {
      const args = ['--option', 'sandbox-paths', dir, '--check', ...flags];
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', drv, ...args]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), drv, ...args]);
      expect(n.status, n.stderr).toBe(0);
      expect(o.status, o.stderr).toBe(0);
      const lines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('downloading') || l.startsWith('checking'));
      expect(lines(o.stderr), flags.join(' ')).toEqual(lines(n.stderr));
    }
  });
});

/** `@nix` lines that are not JSON: each of the JSON library's syntax errors, and bytes that are not UTF-8. */
const BAD_LINES = [
  '{bad json',
  'hello',
  '',
  '{"a":1',
  '[1,2',
  '{"a" 1}',
  '1 2',
  '"abc',
  '-x',
  'tru',
  '{"a":1,}',
  '[1,]',
  '  {  "x" : nul }',
  '01',
  '1.',
  '1e',
  '1e+',
  '"a\\qb"',
  '"a\tb"',
  '{"x":"\\u12"}',
  '"\\ud800x"',
  '"\\udc00"',
  ']',
  '{"a":1}}',
  '[1.5e999]',
  '[1,2x',
  '{"a":1,x',
  '"\xff"',
  '\xef\xbb\xbf{}x',
].map((l) => `@nix ${l}`);

describe.skipIf(!nixOk())("a builder's @nix lines that are not JSON, realise vs Nix 2.8", () => {
  let dir: string;
  let drv: string;
  beforeAll(() => {
    dir = tempDir();
    writeFileSync(path.join(dir, 'lines'), Buffer.from(BAD_LINES.join('\n') + '\n', 'latin1'));
    drv = instantiateTwins(
      dir,
      `derivation { name = "bad-json"; system = "x86_64-linux"; builder = "/bin/sh"; src = ./lines;
        args = ["-c" "while IFS= read -r l; do printf '%s\\\\n' \\"$l\\"; done < $src; echo x > $out"]; }`,
    );
  });

  it("Nix's error for each (its JSON library's words, level 0), then the line as a log line; the same in internal-json", async () => {
    const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv]);
    const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv]);
    expect(n.status, n.stderr).toBe(0);
    expect(o.status, o.stderr).toBe(0);
    const lines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('bad JSON') || l.startsWith('@nix'));
    expect(lines(n.stderr).length).toBe(2 * BAD_LINES.length);
    expect(lines(n.stderr)[0]).toBe(
      "bad JSON log message from builder: [json.exception.parse_error.101] parse error at line 1, column 2: syntax error while parsing object key - invalid literal; last read: '{b'; expected string literal",
    );
    expect(lines(o.stderr)).toEqual(lines(n.stderr));

    const flags = [...SANDBOX, '--check', '--log-format', 'internal-json'];
    const nj = runNix('nix-store', ['--store', path.join(dir, 'N'), '--realise', drv, ...flags]);
    const oj = await realise(['build', '--store', path.join(dir, 'O'), drv, ...flags]);
    expect(nj.status, nj.stderr).toBe(0);
    expect(oj.status, oj.stderr).toBe(0);
    const json = (stderr: string) =>
      stderr
        .split('\n')
        .filter((l) => l.includes('bad JSON') || l.endsWith('"type":101}'))
        .map((l) => l.replace(/"id":\d+/, '"id":0'));
    expect(json(nj.stderr).length).toBe(2 * BAD_LINES.length);
    expect(json(oj.stderr)).toEqual(json(nj.stderr));
  });
});

/**
 * `@nix` lines that are JSON but lack a field Nix reads, or have one of another type: Nix's logger throws
 * its JSON library's type error (Nix's own error for a log field) out of the build, which ends the call.
 */
const TYPE_ERROR_LINES = [
  '{"action":"msg"}',
  '{"action":"msg","msg":"a"}',
  '{"action":"msg","level":true,"msg":"a"}',
  '[1,2]',
  '1',
  '"x"',
  'null',
  '{}',
  '{"action":1}',
  '{"action":"setPhase"}',
  '{"action":"start"}',
  '{"action":"start","type":101,"id":1,"level":1,"fields":["a"]}',
  '{"action":"start","type":101,"id":"a","level":"b","text":1,"fields":[-1]}',
  '{"action":"start","type":101,"id":1,"level":1,"text":"t","fields":[1.5]}',
  '{"action":"stop","id":true}',
  // A result for an activity the builder started: its fields are read first, then its type.
  ...[
    '{"action":"result","id":5,"type":"x","fields":[1.5]}',
    '{"action":"result","id":5,"type":"x","fields":[1]}',
    '{"action":"result","id":5.7,"fields":[1]}',
    '{"action":"result","id":5,"type":105,"fields":[1.0,2]}',
    '{"action":"result","id":5,"type":105,"fields":[-1]}',
  ].map((l) => `{"action":"start","id":5,"type":101,"level":3,"text":"t","fields":[]}\n@nix ${l}`),
  '{"action":"start","type":101,"id":1,"level":1,"text":"t","fields":[2e0]}',
];

describe.skipIf(!nixOk())("a builder's @nix lines that are JSON without a field Nix reads, realise vs Nix 2.8", () => {
  let dir: string;
  let drvs: string[];
  let pair: string[];
  beforeAll(() => {
    dir = tempDir();
    TYPE_ERROR_LINES.forEach((l, i) => writeFileSync(path.join(dir, `line-${i}`), `@nix ${l}\n`));
    drvs = instantiateTwins(
      dir,
      `map (i: derivation { name = "json-type-\${toString i}"; system = "x86_64-linux"; builder = "/bin/sh"; src = ./. + "/line-\${toString i}";
        args = ["-c" "echo before; cat $src; echo after; echo x > $out"]; }) [${TYPE_ERROR_LINES.map((_, i) => i).join(' ')}]`,
    ).split('\n');
    // One build ends the call while another runs: Nix stops the other too, with --keep-going as well.
    pair = instantiateTwins(
      dir,
      `[ (derivation { name = "json-type-ends"; system = "x86_64-linux"; builder = "/bin/sh"; src = ./line-0;
          args = ["-c" "sleep 1; cat $src; echo x > $out"]; })
        (derivation { name = "json-type-other"; system = "x86_64-linux"; builder = "/bin/sh";
          args = ["-c" "sleep 4; echo x > $out"]; }) ]`,
    ).split('\n');
  });
  const errors = (stderr: string) => stderr.split('\n').filter((l) => /^(error|before|after|building)/.test(l));

  it('the call ends with exit 1 and the type error in Nix\'s words, no "builder failed"; the line after it is not read', async () => {
    expect(drvs.length).toBe(TYPE_ERROR_LINES.length);
    for (const drv of drvs) {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drv]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drv]);
      expect(n.status, n.stderr).toBe(1);
      expect(o.status, o.stderr).toBe(1);
      expect(errors(o.stderr)).toEqual(errors(n.stderr));
    }
    const first = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drvs[0]!]);
    expect(errors(first.stderr)).toEqual([`building '${drvs[0]}'...`, 'before', 'error: [json.exception.type_error.302] type must be string, but is null']);
  });

  it("internal-json: no results after the line, the activities stopped, then the error as a plain message (Nix's own error with its fields)", async () => {
    // From the build's start to the end: its progress, its log line, the stops (no progress results after the
    // line, as Nix's exception leaves its worker), the error.
    const json = (stderr: string) => {
      const lines = stderr.split('\n').filter((l) => l.startsWith('@nix '));
      return lines.slice(lines.findIndex((l) => l.includes('"text":"building '))).map((l) => l.replace(/"id":\d+/, '"id":0'));
    };
    for (const i of [0, 3, 13]) {
      const nj = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '--realise', drvs[i]!, '--log-format', 'internal-json']);
      const oj = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, drvs[i]!, '--log-format', 'internal-json']);
      expect(nj.status, nj.stderr).toBe(1);
      expect(oj.status, oj.stderr).toBe(1);
      expect(json(oj.stderr)).toEqual(json(nj.stderr));
      expect(json(nj.stderr).filter((l) => l.includes('"action":"stop"')).length).toBe(4);
      expect(json(nj.stderr).at(-1)).toContain(
        i === 13 ? '"raw_msg":"unsupported JSON type \\u001b[35;1m7\\u001b[0m"' : '"msg":"\\u001b[31;1merror:\\u001b[0m [json.exception.type_error.',
      );
    }
  });

  it('a build running beside it is stopped, with --keep-going too: exit 1', async () => {
    for (const flags of [[], ['--keep-going']]) {
      const n = runNix('nix-store', ['--store', path.join(dir, 'N'), ...SANDBOX, '-j2', ...flags, '--realise', ...pair]);
      const o = await realise(['build', '--store', path.join(dir, 'O'), ...SANDBOX, '-j2', ...flags, ...pair]);
      expect(n.status, n.stderr).toBe(1);
      expect(o.status, o.stderr).toBe(1);
      const errs = (s: string) => s.split('\n').filter((l) => l.startsWith('error'));
      expect(errs(n.stderr)).toEqual(['error: [json.exception.type_error.302] type must be string, but is null']);
      expect(errs(o.stderr)).toEqual(errs(n.stderr));
      for (const root of ['N', 'O']) {
        const valid = runNix('nix-store', ['--store', path.join(dir, root), '--check-validity', pair[1]!]);
        expect(valid.status, `${root}: the other build's derivation`).toBe(0);
        const q = runNix('nix-store', ['--store', path.join(dir, root), '-q', '--outputs', pair[1]!]);
        expect(
          runNix('nix-store', ['--store', path.join(dir, root), '--check-validity', q.stdout.trim()]).status,
          `${root}: the other build's output`,
        ).not.toBe(0);
      }
    }
  });
});
