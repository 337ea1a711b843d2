/**
 * A reader of Nix's internal-json stream as nix-output-monitor models it: activities keyed by id, results
 * attributed to them, messages. `summarise` keeps what must agree between realise and Nix 2.8 (types,
 * levels, texts and fields of activities, their log lines, start/stop pairing, final progress, messages)
 * and drops what may not (ids, timing, order between activities, escape sequences).
 */
export interface StreamActivity {
  type: number;
  level: number;
  text: string;
  fields: unknown[];
  lines: string[];
  stopped: boolean;
  parentless: boolean;
  lastProgress?: unknown[];
  /** SetExpected results: activity type → the last value. */
  expected?: Record<number, unknown>;
}

export interface ParsedStream {
  activities: Map<number, StreamActivity>;
  msgs: { level: number; msg: string; raw?: string }[];
  /** Whatever breaks the model: a stop or result without its start, a second stop, a non-@nix line. */
  problems: string[];
}

const stripAnsi = (s: string): string => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

export function parseStream(stderr: string): ParsedStream {
  const activities = new Map<number, StreamActivity>();
  const msgs: ParsedStream['msgs'] = [];
  const problems: string[] = [];
  for (const line of stderr.split('\n')) {
    if (line === '') continue;
    if (!line.startsWith('@nix ')) {
      problems.push(`not a JSON log line: ${line}`);
      continue;
    }
    const o = JSON.parse(line.slice(5)) as Record<string, unknown>;
    const id = o.id as number;
    switch (o.action) {
      case 'start':
        if (activities.has(id)) problems.push(`activity ${id} started twice`);
        activities.set(id, {
          type: o.type as number,
          level: o.level as number,
          text: stripAnsi(String(o.text)),
          fields: (o.fields as unknown[]) ?? [],
          lines: [],
          stopped: false,
          parentless: true,
        });
        break;
      case 'stop': {
        const a = activities.get(id);
        if (!a) problems.push(`stop of unknown activity ${id}`);
        else if (a.stopped) problems.push(`activity ${id} stopped twice`);
        else a.stopped = true;
        break;
      }
      case 'result': {
        const a = activities.get(id);
        if (!a || a.stopped) {
          problems.push(`result for ${a ? 'stopped' : 'unknown'} activity ${id}`);
          break;
        }
        if (o.type === 101 || o.type === 107) a.lines.push((o.fields as string[])[0]!);
        else if (o.type === 105) a.lastProgress = o.fields as unknown[];
        else if (o.type === 106) (a.expected ??= {})[(o.fields as number[])[0]!] = (o.fields as unknown[])[1];
        break;
      }
      case 'msg':
        msgs.push({ level: o.level as number, msg: stripAnsi(String(o.msg)), ...(o.raw_msg !== undefined ? { raw: stripAnsi(String(o.raw_msg)) } : {}) });
        break;
      default:
        problems.push(`unknown action ${String(o.action)}`);
    }
  }
  for (const [id, a] of activities) if (!a.stopped) problems.push(`activity ${id} (${a.type} ${a.text}) never stopped`);
  return { activities, msgs, problems };
}

/** What must be the same between two streams of the same work; `types`: the activity types compared. */
export function summarise(
  s: ParsedStream,
  types: readonly number[],
  normalise: (x: string) => string = (x) => x,
  keep: (a: StreamActivity) => boolean = () => true,
) {
  const norm = (v: unknown): unknown => (typeof v === 'string' ? normalise(stripAnsi(v)) : v);
  const acts = [...s.activities.values()].filter((a) => types.includes(a.type) && keep(a));
  // The final progress of the call's Builds and CopyPaths activities, and its last expected sizes.
  const top = (type: number) => acts.find((a) => a.type === type && a.text === '' && (type !== 103 || a.lastProgress))?.lastProgress;
  return {
    activities: acts
      .filter((a) => !(a.text === '' && [102, 103, 104].includes(a.type)))
      .map((a) =>
        JSON.stringify({
          type: a.type,
          level: a.level,
          text: norm(a.text),
          fields: a.fields.map(norm),
          lines: a.lines.map(norm),
          // A download's last progress: [bytes, bytes, 0, 0].
          ...(a.type === 101 ? { progress: a.lastProgress } : {}),
        }),
      )
      .sort(),
    realise: acts
      .filter((a) => a.text === '' && [102, 103, 104].includes(a.type))
      .map((a) => a.type)
      .sort(),
    buildsProgress: top(104),
    expected: acts.find((a) => a.type === 102 && a.text === '')?.expected,
    copyProgress: top(103),
    msgs: s.msgs
      .filter((m) => m.level <= 3)
      .map((m) => `${m.level} ${norm(m.msg)}${m.raw !== undefined ? ` | ${norm(m.raw)}` : ''}`)
      .sort(),
  };
}

/**
 * A reader of the stream as nix-output-monitor works: it follows the lines in order, keeps activities in a
 * map keyed by id (a start adds one, results update it, a stop ends it), and keeps what its display shows
 * at the end: each build with its host, state and log, the paths substituted and copied to and from
 * machines, the bytes downloaded per file, the counts of the Builds activity and the errors. Two streams
 * of the same work must reach the same summary, whatever their ids and order.
 */
export function nomSummary(stderr: string, normalise: (s: string) => string = (s) => s) {
  interface Act {
    type: number;
    text: string;
    fields: unknown[];
    running: boolean;
    log: string[];
    progress?: number[];
  }
  const acts = new Map<number, Act>();
  const errors: string[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('@nix ')) continue;
    const o = JSON.parse(line.slice(5)) as { action: string; id?: number; type?: number; text?: string; fields?: unknown[]; level?: number; msg?: string };
    if (o.action === 'start') acts.set(o.id!, { type: o.type!, text: o.text ?? '', fields: o.fields ?? [], running: true, log: [] });
    else if (o.action === 'stop') acts.get(o.id!)!.running = false;
    else if (o.action === 'result') {
      const a = acts.get(o.id!)!;
      if (o.type === 101) a.log.push(String(o.fields![0]));
      else if (o.type === 105) a.progress = o.fields as number[];
    } else if (o.action === 'msg' && o.level === 0) errors.push(stripAnsi(o.msg!));
  }
  const all = [...acts.values()];
  const norm = (s: unknown) => normalise(String(s));
  const failed = (drv: string) => errors.some((e) => e.includes(`builder for '${drv}' failed`));
  const builds = all
    .filter((a) => a.type === 105)
    .map((a) => {
      const drv = String(a.fields[0]);
      const state = a.running ? 'running' : failed(drv) ? 'failed' : 'done';
      return `${norm(drv)} on '${norm(a.fields[1])}': ${state}, ${a.log.length} log lines`;
    })
    .sort();
  const copies = (pred: (a: Act) => boolean) =>
    all
      .filter((a) => a.type === 100 && pred(a))
      .map((a) => norm(a.fields[0]))
      .sort();
  const top = all.find((a) => a.type === 104 && a.text === '');
  return {
    builds,
    substituted: copies((a) => all.some((s) => s.type === 108 && s.fields[0] === a.fields[0])),
    copiedToMachines: copies((a) => a.fields[1] === 'local'),
    copiedFromMachines: copies((a) => /^ssh(-ng)?:\/\//.test(String(a.fields[1]))),
    downloads: all
      .filter((a) => a.type === 101)
      .map((a) => `${norm(a.fields[0])}: ${a.progress?.[0] ?? 0} bytes`)
      .sort(),
    stillRunning: all.filter((a) => a.running).length,
    builds_done_expected_running_failed: top?.progress,
    errors: errors.map(norm).sort(),
  };
}

/**
 * The call's progress updates in order, as Nix's Worker.updateProgress sends them: the Progress results of
 * its Builds and CopyPaths activities and the SetExpected results of its Realise activity.
 */
export function progressUpdates(stderr: string): string[] {
  const names = new Map<number, string>();
  const out: string[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('@nix ')) continue;
    const o = JSON.parse(line.slice(5)) as { action: string; id: number; type: number; text?: string; fields?: unknown[] };
    if (o.action === 'start' && o.text === '' && [102, 103, 104].includes(o.type))
      names.set(o.id, ({ 102: 'expected', 103: 'copies', 104: 'builds' } as Record<number, string>)[o.type]!);
    if (o.action === 'result' && (o.type === 105 || o.type === 106) && names.has(o.id)) out.push(`${names.get(o.id)} ${JSON.stringify(o.fields)}`);
  }
  return out;
}
