/**
 * One self-contained HTML page from a trace (TraceFile): a Gantt chart of the run (one row per build slot,
 * remote machine and substitution slot), the critical path highlighted with its total, the slowest builds,
 * waiting versus working time, and failures with their log tails. Static HTML and inline SVG: no script,
 * no network access, opens anywhere.
 */
import type { TraceEvent, TraceFile } from './trace.js';

/** A build or substitution on the timeline (times in microseconds from the trace's start). */
export interface TimelineItem {
  readonly kind: 'build' | 'substitution';
  readonly path: string;
  readonly name: string;
  readonly track: string;
  readonly start: number;
  readonly dur: number;
  readonly ok: boolean;
  readonly args: Record<string, unknown>;
}

export interface GoalSummary {
  readonly kind: string;
  readonly path: string;
  readonly name: string;
  readonly start: number;
  readonly end: number;
  readonly status: string;
  readonly error?: string;
  readonly inputs: readonly string[];
  /** Time spent building or substituting it (µs). */
  readonly working: number;
}

export interface RunAnalysis {
  readonly items: readonly TimelineItem[];
  readonly goals: readonly GoalSummary[];
  readonly tracks: readonly string[];
  readonly start: number;
  readonly end: number;
  /** Derivations on the critical path, dependencies first, and its total working time (µs). */
  readonly criticalPath: readonly string[];
  readonly criticalTotal: number;
  readonly working: number;
  readonly waiting: number;
  readonly failures: readonly { goal: GoalSummary; logTail: readonly string[] }[];
  readonly stopped: readonly GoalSummary[];
}

/**
 * What the report shows, computed from a trace: the critical path is the chain of derivations (each an
 * input of the next) with the most building time, i.e. what the run could not have been shorter than with
 * any number of slots.
 */
export function analyseTrace(trace: TraceFile): RunAnalysis {
  const { items, goals } = readTraceEvents(trace.traceEvents);
  const workOf = new Map<string, number>();
  for (const i of items) workOf.set(i.path, (workOf.get(i.path) ?? 0) + i.dur);
  const withWork = goals.map((g) => ({ ...g, working: workOf.get(g.path) ?? 0 }));
  const { criticalPath, criticalTotal } = longestPath(new Map(withWork.filter((g) => g.kind === 'derivation').map((g) => [g.path, g])));
  const all = [...items.map((i) => i.start), ...goals.map((g) => g.start)];
  const ends = [...items.map((i) => i.start + i.dur), ...goals.map((g) => g.end)];
  const working = withWork.reduce((s, g) => s + g.working, 0);
  const waiting = withWork.filter((g) => g.working > 0).reduce((s, g) => s + Math.max(0, g.end - g.start - g.working), 0);
  const tails = new Map<string, readonly string[]>();
  for (const i of items) if (i.kind === 'build' && Array.isArray(i.args.logTail)) tails.set(i.path, i.args.logTail as string[]);
  const failed = withWork.filter((g) => !['built', 'substituted', 'already-valid', 'stopped', 'unfinished'].includes(g.status));
  return {
    items,
    goals: withWork,
    tracks: [...new Set(items.map((i) => i.track))].sort(trackOrder),
    start: all.length ? Math.min(...all) : 0,
    end: ends.length ? Math.max(...ends) : 0,
    criticalPath,
    criticalTotal,
    working,
    waiting,
    failures: failed.map((goal) => ({ goal, logTail: tails.get(goal.path) ?? [] })),
    stopped: withWork.filter((g) => g.status === 'stopped'),
  };
}

/** The builds and substitutions of a trace (its complete events) on their tracks, and its goals (begin/end pairs), working time 0. */
function readTraceEvents(evs: readonly TraceEvent[]): { items: TimelineItem[]; goals: GoalSummary[] } {
  const trackNames = new Map<number, string>();
  for (const e of evs) if (e.ph === 'M' && e.name === 'thread_name') trackNames.set(e.tid, String((e.args as { name: string }).name));
  const items: TimelineItem[] = [];
  const begins = new Map<string, TraceEvent>();
  const goals: GoalSummary[] = [];
  for (const e of evs) {
    if (e.ph === 'X' && (e.cat === 'build' || e.cat === 'substitution')) {
      const a = e.args ?? {};
      items.push({
        kind: e.cat,
        path: String(e.cat === 'build' ? a.drvPath : a.path),
        name: e.name,
        track: trackNames.get(e.tid) ?? String(e.tid),
        start: e.ts,
        dur: e.dur ?? 0,
        ok: e.cat === 'build' ? a.outcome === 'success' : a.ok === true,
        args: a,
      });
    } else if (e.ph === 'b' && e.cat?.startsWith('goal')) {
      begins.set(e.id!, e);
    } else if (e.ph === 'e' && e.cat?.startsWith('goal')) {
      const b = begins.get(e.id!);
      if (!b) continue;
      const a = b.args ?? {};
      goals.push({
        kind: String(a.kind),
        path: String(a.path),
        name: b.name,
        start: b.ts,
        end: e.ts,
        status: String(e.args?.status ?? 'unknown'),
        ...(e.args?.error ? { error: String(e.args.error) } : {}),
        inputs: (a.inputs as string[] | undefined) ?? [],
        working: 0,
      });
    }
  }
  return { items, goals };
}

/** The longest path by working time over the derivation graph (memoised, iterative for deep chains), dependencies first. */
function longestPath(drvGoals: ReadonlyMap<string, GoalSummary>): { criticalPath: string[]; criticalTotal: number } {
  const best = new Map<string, { total: number; prev?: string }>();
  const visit = (root: string) => {
    const stack: [string, boolean][] = [[root, false]];
    while (stack.length) {
      const [p, expanded] = stack.pop()!;
      if (best.has(p)) continue;
      const g = drvGoals.get(p)!;
      if (!expanded) {
        stack.push([p, true]);
        for (const i of g.inputs) if (drvGoals.has(i) && !best.has(i)) stack.push([i, false]);
        continue;
      }
      let prev: string | undefined;
      let total = 0;
      for (const i of g.inputs) {
        const b = best.get(i);
        if (b && b.total > total) {
          total = b.total;
          prev = i;
        }
      }
      best.set(p, { total: total + g.working, ...(prev ? { prev } : {}) });
    }
  };
  for (const p of drvGoals.keys()) visit(p);
  let last: string | undefined;
  for (const [p, b] of best) if (!last || b.total > best.get(last)!.total) last = p;
  const criticalPath: string[] = [];
  for (let p = last; p; p = best.get(p)!.prev) criticalPath.unshift(p);
  return { criticalPath, criticalTotal: last ? best.get(last)!.total : 0 };
}

/** Build slots first, then machines, then substitution slots; by number within each. */
function trackOrder(a: string, b: string): number {
  const rank = (t: string) => (t.startsWith('build slot') ? 0 : t.startsWith('machine') ? 1 : 2);
  const num = (t: string) => Number(/(\d+)$/.exec(t)?.[1] ?? 0);
  return rank(a) - rank(b) || (a.replace(/\d+$/, '') < b.replace(/\d+$/, '') ? -1 : a.replace(/\d+$/, '') > b.replace(/\d+$/, '') ? 1 : num(a) - num(b));
}

const esc = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** Microseconds as a human duration. */
export function formatDuration(us: number): string {
  const ms = us / 1000;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const CSS = `
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#666}.num{text-align:right;font-variant-numeric:tabular-nums}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
code{font:12px ui-monospace,monospace}
svg text{font:11px system-ui,sans-serif;fill:#333}
.bar{fill:#7aa6da}.bar.substitution{fill:#9ccc9c}.bar.failed{fill:#e57373}.bar.stopped{fill:#bdbdbd}
.bar.critical{stroke:#c62828;stroke-width:2px;fill:#ffb74d}
.row{fill:#fafafa}.grid{stroke:#e0e0e0}
.critical-path li{margin:2px 0}.total{font-weight:600}
pre.tail{background:#f6f6f6;padding:8px;max-height:320px;overflow:auto;font:12px ui-monospace,monospace}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-2px}
`;

/** The Gantt chart: one row per track, a bar per build or substitution (the critical path marked), a time axis. */
function ganttSvg(a: RunAnalysis): string {
  const span = Math.max(1, a.end - a.start);
  const critical = new Set(a.criticalPath);
  const W = 1100,
    LABEL = 150,
    ROW = 20,
    AXIS = 24;
  const x = (t: number) => LABEL + ((t - a.start) / span) * (W - LABEL - 10);
  const rowOf = new Map(a.tracks.map((t, i) => [t, i]));
  const H = AXIS + a.tracks.length * ROW + 4;
  const svg: string[] = [`<svg id="gantt" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="Gantt chart of the run">`];
  for (const [t, i] of rowOf) {
    const y = AXIS + i * ROW;
    if (i % 2 === 0) svg.push(`<rect class="row" x="0" y="${y}" width="${W}" height="${ROW}"/>`);
    svg.push(`<text x="4" y="${y + 14}">${esc(t)}</text>`);
  }
  for (let k = 0; k <= 10; k++) {
    const t = a.start + (span * k) / 10;
    svg.push(`<line class="grid" x1="${x(t).toFixed(1)}" y1="${AXIS - 4}" x2="${x(t).toFixed(1)}" y2="${H}"/>`);
    svg.push(`<text x="${x(t).toFixed(1)}" y="14" text-anchor="${k === 10 ? 'end' : k === 0 ? 'start' : 'middle'}">${esc(formatDuration(t - a.start))}</text>`);
  }
  for (const i of a.items) {
    const y = AXIS + rowOf.get(i.track)! * ROW + 3;
    const w = Math.max(1, x(i.start + i.dur) - x(i.start));
    const stopped = i.args.outcome === 'stopped';
    const cls = ['bar', i.kind, critical.has(i.path) && i.kind === 'build' ? 'critical' : '', !i.ok ? (stopped ? 'stopped' : 'failed') : '']
      .filter(Boolean)
      .join(' ');
    const attr = i.kind === 'build' ? 'data-drv' : 'data-path';
    svg.push(
      `<rect class="${cls}" ${attr}="${esc(i.path)}" x="${x(i.start).toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${ROW - 6}"><title>${esc(`${i.name} (${i.kind}${i.args.machine ? ` on ${String(i.args.machine)}` : ''}): ${formatDuration(i.dur)}`)}</title></rect>`,
    );
    if (w > 60) svg.push(`<text x="${(x(i.start) + 3).toFixed(1)}" y="${y + 11}" pointer-events="none">${esc(i.name.slice(0, Math.floor(w / 6.5)))}</text>`);
  }
  svg.push('</svg>');
  return svg.join('');
}

const row = (cells: string[]) => `<tr>${cells.join('')}</tr>`;

/** The critical path, each derivation with its working time. */
function criticalPathSection(a: RunAnalysis, span: number): string[] {
  const goalByPath = new Map(a.goals.filter((g) => g.kind === 'derivation').map((g) => [g.path, g]));
  const html = ['<h2>Critical path</h2>'];
  html.push(
    `<p>Total building time along the path: <span class="total" id="critical-total">${esc(formatDuration(a.criticalTotal))}</span> of ${esc(formatDuration(span))} wall time (the run cannot be shorter than this with more slots).</p>`,
  );
  html.push('<ol class="critical-path" id="critical-path">');
  for (const p of a.criticalPath) {
    const g = goalByPath.get(p);
    html.push(`<li data-drv="${esc(p)}"><code>${esc(p)}</code> — ${esc(formatDuration(g?.working ?? 0))}</li>`);
  }
  html.push('</ol>');
  return html;
}

/** The 15 slowest builds. */
function slowestSection(builds: readonly TimelineItem[]): string[] {
  const html = ['<h2>Slowest builds</h2><table id="slowest"><tr><th>derivation</th><th>where</th><th class="num">time</th><th>outcome</th></tr>'];
  for (const i of [...builds].sort((p, q) => q.dur - p.dur).slice(0, 15)) {
    html.push(
      row([
        `<td><code>${esc(i.path)}</code></td>`,
        `<td>${esc(i.track)}</td>`,
        `<td class="num">${esc(formatDuration(i.dur))}</td>`,
        `<td>${esc(String(i.args.outcome ?? ''))}</td>`,
      ]),
    );
  }
  html.push('</table>');
  return html;
}

/** Working and waiting time overall, and of the 15 goals that took longest. */
function waitingSection(a: RunAnalysis): string[] {
  const html = ['<h2>Waiting versus working</h2>'];
  html.push(
    `<p>Goals that built or fetched something spent <b id="working-time">${esc(formatDuration(a.working))}</b> working and <b id="waiting-time">${esc(formatDuration(a.waiting))}</b> waiting (for their inputs, a slot or a lock).</p>`,
  );
  html.push('<table id="waiting"><tr><th>goal</th><th class="num">working</th><th class="num">waiting</th><th>status</th></tr>');
  const busiest = a.goals
    .filter((g) => g.working > 0)
    .sort((p, q) => q.end - q.start - (p.end - p.start))
    .slice(0, 15);
  for (const g of busiest) {
    html.push(
      row([
        `<td><code>${esc(g.path)}</code></td>`,
        `<td class="num">${esc(formatDuration(g.working))}</td>`,
        `<td class="num">${esc(formatDuration(Math.max(0, g.end - g.start - g.working)))}</td>`,
        `<td>${esc(g.status)}</td>`,
      ]),
    );
  }
  html.push('</table>');
  return html;
}

/** Each failure with its error and log tail, then the goals stopped because of them. */
function failuresSection(a: RunAnalysis): string[] {
  const html = [`<h2>Failures</h2>`];
  if (!a.failures.length) html.push('<p id="failures">None.</p>');
  else {
    html.push('<div id="failures">');
    for (const f of a.failures) {
      html.push(`<section class="failure" data-path="${esc(f.goal.path)}"><h3><code>${esc(f.goal.path)}</code> — ${esc(f.goal.status)}</h3>`);
      if (f.goal.error) html.push(`<pre class="tail">${esc(f.goal.error)}</pre>`);
      if (f.logTail.length && !(f.goal.error ?? '').includes('log lines:'))
        html.push(`<p>Last log lines:</p><pre class="tail">${esc(f.logTail.join('\n'))}</pre>`);
      html.push('</section>');
    }
    html.push('</div>');
  }
  if (a.stopped.length) {
    html.push(`<p>Stopped (not failed) because another goal failed: ${a.stopped.map((g) => `<code>${esc(g.name)}</code>`).join(', ')}</p>`);
  }
  return html;
}

/** Every build, in the order they started. */
function allBuildsSection(a: RunAnalysis, builds: readonly TimelineItem[]): string[] {
  const html = [
    '<h2>All builds</h2><table id="builds"><tr><th>derivation</th><th>where</th><th class="num">start</th><th class="num">time</th><th>outcome</th></tr>',
  ];
  for (const i of [...builds].sort((p, q) => p.start - q.start)) {
    html.push(
      row([
        `<td data-drv="${esc(i.path)}"><code>${esc(i.path)}</code></td>`,
        `<td>${esc(i.track)}</td>`,
        `<td class="num">${esc(formatDuration(i.start - a.start))}</td>`,
        `<td class="num">${esc(formatDuration(i.dur))}</td>`,
        `<td>${esc(String(i.args.outcome ?? ''))}</td>`,
      ]),
    );
  }
  html.push('</table>');
  return html;
}

/** The report page for a trace (see the module comment). */
export function renderReport(trace: TraceFile, opts: { title?: string } = {}): string {
  const a = analyseTrace(trace);
  const span = Math.max(1, a.end - a.start);
  const builds = a.items.filter((i) => i.kind === 'build');
  const substs = a.items.filter((i) => i.kind === 'substitution');
  const title = esc(opts.title ?? 'realise build report');
  const html: string[] = [];
  html.push(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${title}</title><style>${CSS}</style></head><body>`);
  html.push(`<h1>${title}</h1>`);
  html.push(
    `<p class="meta">Started ${esc(trace.otherData.startedAt)} · wall time <b id="wall-time">${esc(formatDuration(span))}</b> · ${builds.length} builds · ${substs.length} substitutions · ${a.failures.length} failed · ${a.stopped.length} stopped</p>`,
  );
  html.push('<h2>Timeline</h2>');
  html.push(
    '<p class="legend"><span style="background:#7aa6da"></span>build<span style="background:#ffb74d;outline:2px solid #c62828"></span>on the critical path<span style="background:#9ccc9c"></span>substitution<span style="background:#e57373"></span>failed<span style="background:#bdbdbd"></span>stopped</p>',
  );
  html.push(a.items.length ? ganttSvg(a) : '<p>Nothing was built or substituted.</p>');
  html.push(...criticalPathSection(a, span), ...slowestSection(builds), ...waitingSection(a), ...failuresSection(a), ...allBuildsSection(a, builds));
  html[html.length - 1] += '</body></html>\n';
  return html.join('\n');
}
