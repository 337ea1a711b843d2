/**
 * Remote build machines in Nix's format: a machines file (`/etc/nix/machines`) or a `builders` string,
 * one machine per line or `;`-separated, columns separated by whitespace, `-` or an empty column for
 * the default, `#` comments, `@file` to include another file:
 *
 *     URI  systems(,)  ssh-key  max-jobs  speed-factor  supported-features(,)  mandatory-features(,)  base64-host-key
 *
 * Also typed (`machine({...})`), and `selectMachine` to pick one for a derivation the way Nix's build
 * hook does, with an explanation when none fits.
 */
import { readFileSync } from 'node:fs';
import { MachineSpecError, NoMachineError } from './errors.js';

export interface Machine {
  /** Store URI, e.g. `ssh-ng://builder@host?remote-store=...`; a bare host becomes `ssh://host` as in Nix. */
  readonly storeUri: string;
  /** Platforms it builds for, e.g. `x86_64-linux`. */
  readonly systemTypes: readonly string[];
  /** Path of the SSH private key ('' = ssh's default). */
  readonly sshKey: string;
  /** Concurrent builds it takes; 0 disables it. */
  readonly maxJobs: number;
  /** Relative speed (≥ 1); load is divided by it when choosing. */
  readonly speedFactor: number;
  readonly supportedFeatures: readonly string[];
  /** Features a derivation must require to be sent here. */
  readonly mandatoryFeatures: readonly string[];
  /** The host's public SSH key, base64 of the `type key` line ('' = use known_hosts). */
  readonly sshPublicHostKey: string;
}

export interface MachineOptions {
  readonly storeUri: string;
  /** @default [thisSystem] */
  readonly systemTypes?: readonly string[];
  /** @default '' */
  readonly sshKey?: string;
  /** @default 1 */
  readonly maxJobs?: number;
  /** @default 1 */
  readonly speedFactor?: number;
  /** @default [] */
  readonly supportedFeatures?: readonly string[];
  /** @default [] */
  readonly mandatoryFeatures?: readonly string[];
  /** @default '' */
  readonly sshPublicHostKey?: string;
}

export interface ParseMachinesOptions {
  /** The system used when a line leaves the systems column empty. @default the running platform, e.g. x86_64-linux */
  readonly thisSystem?: string;
  /** Reads `@file` includes. @default fs.readFileSync (a missing file is ignored, as in Nix) */
  readonly readFile?: (path: string) => string | undefined;
}

/** The Nix system string of this machine (`x86_64-linux`, `aarch64-linux`, `x86_64-darwin`, ...). */
export function currentSystem(): string {
  const arch = ({ x64: 'x86_64', arm64: 'aarch64', ia32: 'i686', arm: 'armv7l', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ?? process.arch;
  return `${arch}-${process.platform}`;
}

function normaliseUri(uri: string): string {
  if (uri.includes('://') || uri.includes('/') || ['auto', 'daemon', 'local'].includes(uri) || /^(auto|daemon|local)?\?/.test(uri)) return uri;
  return `ssh://${uri}`;
}

function describeValue(v: unknown): string {
  return `\`${typeof v === 'string' ? v : JSON.stringify(v)}\` (${typeof v})`;
}

/** A machine from typed options (validated; defaults as in Nix's machines file). */
export function machine(o: MachineOptions, opts: { thisSystem?: string } = {}): Machine {
  if (typeof o.storeUri !== 'string' || o.storeUri === '')
    throw new MachineSpecError(`Expected \`storeUri\` to be a non-empty string, got ${describeValue(o.storeUri)}`);
  const int = (name: string, v: unknown, def: number, min: number): number => {
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min)
      throw new MachineSpecError(`Expected \`${name}\` to be an integer from ${min} and up, got ${describeValue(v)}`);
    return v;
  };
  if (o.sshPublicHostKey && !/^[A-Za-z0-9+/]*={0,2}$/.test(o.sshPublicHostKey)) {
    throw new MachineSpecError(`Expected \`sshPublicHostKey\` of '${o.storeUri}' to be base64, got ${describeValue(o.sshPublicHostKey)}`, {
      hint: 'use the output of `base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub` on the builder',
    });
  }
  return {
    storeUri: normaliseUri(o.storeUri),
    systemTypes: o.systemTypes && o.systemTypes.length ? [...o.systemTypes] : [opts.thisSystem ?? currentSystem()],
    sshKey: o.sshKey ?? '',
    maxJobs: int('maxJobs', o.maxJobs, 1, 0),
    speedFactor: Math.max(1, int('speedFactor', o.speedFactor, 1, 0)),
    supportedFeatures: [...new Set(o.supportedFeatures ?? [])].sort(),
    mandatoryFeatures: [...new Set(o.mandatoryFeatures ?? [])].sort(),
    sshPublicHostKey: o.sshPublicHostKey ?? '',
  };
}

function expandLines(text: string, opts: ParseMachinesOptions, depth: number, origin: string): { line: string; origin: string }[] {
  if (depth > 16)
    throw new MachineSpecError(`machines file includes are nested too deeply (at '${origin}')`, { hint: 'check for an @file that includes itself' });
  const out: { line: string; origin: string }[] = [];
  for (let line of text.split(/[\n;]/)) {
    const hash = line.indexOf('#');
    if (hash >= 0) line = line.slice(0, hash);
    line = line.trim();
    if (!line) continue;
    if (line.startsWith('@')) {
      const file = line.slice(1).trim();
      const content = (opts.readFile ?? defaultReadFile)(file);
      if (content !== undefined) out.push(...expandLines(content, opts, depth + 1, file));
      continue;
    }
    out.push({ line, origin });
  }
  return out;
}

function defaultReadFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new MachineSpecError(`cannot read machines file '${path}': ${(e as Error).message}`, { cause: e });
  }
}

/** Parse a `builders` string or machines file contents. */
export function parseMachines(text: string, opts: ParseMachinesOptions = {}): Machine[] {
  return expandLines(text, opts, 0, 'builders').map(({ line, origin }) => parseMachineLine(line, origin, opts));
}

function parseMachineLine(line: string, origin: string, opts: ParseMachinesOptions): Machine {
  const t = line.split(/\s+/);
  const isSet = (i: number): boolean => t.length > i && t[i] !== '' && t[i] !== '-';
  const num = (i: number, what: string): number => {
    if (!/^\d+$/.test(t[i]!)) {
      // Nix's words (its columns count from 0); where and what in the hint.
      throw new MachineSpecError(`bad machine specification: failed to convert column #${i} in a row: '${line}' to 'unsigned int'`, {
        hint: `column ${i + 1} (${what}) of a machine in ${origin} should be a whole number, got '${t[i]}'`,
      });
    }
    return Number(t[i]);
  };
  const list = (i: number): string[] => t[i]!.split(',').filter(Boolean);
  if (!isSet(0)) throw new MachineSpecError(`bad machine specification: no store URI in a row: '${line}'`, { hint: `in ${origin}` });
  if (isSet(7)) {
    const k = t[7]!;
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(k) || k.length % 4 !== 0) {
      throw new MachineSpecError(`bad machine specification: a column #7 in a row: '${line}' is not valid base64 string`, {
        hint: `column 8 (public host key) of a machine in ${origin}: use the output of \`base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub\` on the builder`,
      });
    }
  }
  return machine(
    {
      storeUri: t[0]!,
      systemTypes: isSet(1) ? list(1) : undefined,
      sshKey: isSet(2) ? t[2] : '',
      maxJobs: isSet(3) ? num(3, 'max jobs') : 1,
      speedFactor: isSet(4) ? num(4, 'speed factor') : 1,
      supportedFeatures: isSet(5) ? list(5) : [],
      mandatoryFeatures: isSet(6) ? list(6) : [],
      sshPublicHostKey: isSet(7) ? t[7] : '',
    },
    { thisSystem: opts.thisSystem },
  );
}

/** Render machines back to Nix's one-line-per-machine format (for `--builders` of real Nix). */
export function formatMachines(machines: readonly Machine[]): string {
  const col = (xs: readonly string[]): string => (xs.length ? xs.join(',') : '-');
  return machines
    .map((m) =>
      [
        m.storeUri,
        col(m.systemTypes),
        m.sshKey || '-',
        String(m.maxJobs),
        String(m.speedFactor),
        col(m.supportedFeatures),
        col(m.mandatoryFeatures),
        m.sshPublicHostKey || '-',
      ].join(' '),
    )
    .join('\n');
}

/** A parsed store URI: scheme, `user@host` authority, and query parameters. */
export interface StoreUri {
  readonly scheme: string;
  /** `user@host` as written (may be empty for non-ssh stores). */
  readonly authority: string;
  readonly params: ReadonlyMap<string, string>;
}

export function parseStoreUri(uri: string): StoreUri {
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^?]*)(?:\?(.*))?$/i.exec(uri);
  if (!m) throw new MachineSpecError(`'${uri}' is not a store URI`, { hint: "write e.g. 'ssh-ng://user@host' or 'ssh://host'" });
  const params = new Map<string, string>();
  for (const kv of (m[3] ?? '').split('&')) {
    if (!kv) continue;
    const eq = kv.indexOf('=');
    const k = decodeURIComponent(eq < 0 ? kv : kv.slice(0, eq));
    const v = eq < 0 ? '' : decodeURIComponent(kv.slice(eq + 1).replace(/\+/g, ' '));
    params.set(k, v);
  }
  return { scheme: m[1]!.toLowerCase(), authority: decodeURIComponent(m[2]!), params };
}

/** What a derivation needs from a machine. */
export interface MachineRequest {
  readonly system: string;
  readonly requiredFeatures?: readonly string[];
  /** `preferLocalBuild = true`: never sent remote. */
  readonly preferLocalBuild?: boolean;
  /** For messages. */
  readonly drvPath?: string;
}

/** Why `m` cannot take a derivation needing `req` at all (empty = it can, slots permitting). */
export function machineRejections(m: Machine, req: MachineRequest): string[] {
  const reasons: string[] = [];
  const required = new Set(req.requiredFeatures ?? []);
  if (m.maxJobs === 0) reasons.push('maxJobs is 0 (disabled)');
  if (req.system !== 'builtin' && !m.systemTypes.includes(req.system)) {
    reasons.push(`does not build for '${req.system}' (it builds for ${m.systemTypes.map((s) => `'${s}'`).join(', ') || 'nothing'})`);
  }
  const missing = [...required].filter((f) => !m.supportedFeatures.includes(f) && !m.mandatoryFeatures.includes(f)).sort();
  if (missing.length) reasons.push(`lacks required feature${missing.length > 1 ? 's' : ''} ${missing.map((f) => `'${f}'`).join(', ')}`);
  const unmet = m.mandatoryFeatures.filter((f) => !required.has(f));
  if (unmet.length)
    reasons.push(`only takes derivations that require ${unmet.map((f) => `'${f}'`).join(', ')} (mandatory feature${unmet.length > 1 ? 's' : ''})`);
  return reasons;
}

export type MachineChoice<M> =
  /** Use this machine (it has a free slot). */
  | { readonly kind: 'selected'; readonly machine: M }
  /** Some machines fit but every slot is taken: wait for one (Nix's "postpone"). */
  | { readonly kind: 'busy'; readonly candidates: readonly M[] }
  /** No machine can ever take it (or preferLocalBuild): build locally, or fail with `error` if that is impossible. */
  | { readonly kind: 'declined'; readonly error: NoMachineError };

/**
 * Choose a machine for a derivation as Nix's build hook does, improved: among machines that support the
 * system and features (and whose mandatory features the derivation requires) and have a free slot, the one
 * with the lowest load/speedFactor; ties go to the faster, then to the less loaded. `load(m)` is the number
 * of builds running on `m`; `disabled(m)` returns a reason when a machine is out of use (e.g. unreachable).
 */
export function selectMachine<M extends Machine>(
  machines: readonly M[],
  req: MachineRequest,
  load: (m: M) => number,
  disabled: (m: M) => string | undefined = () => undefined,
): MachineChoice<M> {
  const rejections: { machine: string; reasons: string[] }[] = [];
  const fitting: M[] = [];
  for (const m of machines) {
    const reasons = machineRejections(m, req);
    const off = disabled(m);
    if (off) reasons.push(off);
    if (reasons.length) rejections.push({ machine: m.storeUri, reasons });
    else fitting.push(m);
  }
  if (req.preferLocalBuild) {
    return { kind: 'declined', error: noMachine(machines, req, rejections, 'the derivation sets preferLocalBuild, so it is built locally') };
  }
  let best: M | undefined;
  let bestLoad = 0;
  for (const m of fitting) {
    const l = load(m);
    if (l >= m.maxJobs) continue;
    if (!best) {
      best = m;
      bestLoad = l;
      continue;
    }
    const a = l / m.speedFactor;
    const b = bestLoad / best.speedFactor;
    if (a < b || (a === b && (m.speedFactor > best.speedFactor || (m.speedFactor === best.speedFactor && l < bestLoad)))) {
      best = m;
      bestLoad = l;
    }
  }
  if (best) return { kind: 'selected', machine: best };
  if (fitting.length) return { kind: 'busy', candidates: fitting };
  return { kind: 'declined', error: noMachine(machines, req, rejections) };
}

function noMachine(machines: readonly Machine[], req: MachineRequest, rejections: { machine: string; reasons: string[] }[], why?: string): NoMachineError {
  const feats = [...(req.requiredFeatures ?? [])].sort();
  let msg = `no remote machine can build ${req.drvPath ? `'${req.drvPath}'` : 'the derivation'} (system '${req.system}'${feats.length ? `, features ${feats.map((f) => `'${f}'`).join(', ')}` : ''})`;
  if (why) msg += `: ${why}`;
  else if (machines.length === 0) msg += ': no machines are configured';
  else {
    msg += `; ${machines.length} machine${machines.length > 1 ? 's' : ''} considered:`;
    for (const r of rejections) msg += `\n  - ${r.machine}: ${r.reasons.join('; ')}`;
  }
  return new NoMachineError(msg, rejections, {
    hint: why ? undefined : 'add a machine for that system with those features (builders option / machines file), or allow local builds (maxJobs > 0)',
  });
}

/**
 * What Nix's build hook prints when no machine takes a derivation this machine cannot build either
 * ("Failed to find a machine for remote build!", the request, a table of the machines), line for line
 * (why each machine was passed over is the NoMachineError's message, not printed, as Nix does not).
 * `value` marks each value formatted in, as Nix's hintfmt colours them.
 */
export function noMachineReport(machines: readonly Machine[], req: MachineRequest, value: (v: string) => string = (v) => v): string {
  const sorted = (xs: readonly string[]): string => value([...xs].sort().join(', '));
  const lines = [
    'Failed to find a machine for remote build!',
    `derivation: ${value((req.drvPath ?? '').replace(/^.*\//, ''))}`,
    `required (system, features): (${value(req.system)}, ${sorted(req.requiredFeatures ?? [])})`,
    `${value(String(machines.length))} available machines:`,
    '(systems, maxjobs, supportedFeatures, mandatoryFeatures)',
    ...machines.map((m) => `(${value(m.systemTypes.join(', '))}, ${value(String(m.maxJobs))}, ${sorted(m.supportedFeatures)}, ${sorted(m.mandatoryFeatures)})`),
  ];
  return lines.join('\n');
}
