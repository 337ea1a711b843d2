/**
 * `.netrc` credentials, as curl reads Nix's `netrc-file` for builtin:fetchurl: `machine NAME login L
 * password P` entries (tokens separated by any whitespace, `"quoted"` tokens allowed), `default` for
 * every other host, `macdef` blocks skipped up to the next empty line.
 */

export interface NetrcEntry {
  /** Host name, or undefined for the `default` entry. */
  readonly machine: string | undefined;
  readonly login: string;
  readonly password: string;
}

function tokens(text: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)|(\n[ \t\r]*\n)/g;
  for (let m; (m = re.exec(text));) {
    if (m[3] !== undefined) out.push('\n\n');
    else out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!);
  }
  return out;
}

export function parseNetrc(text: string): NetrcEntry[] {
  const entries: NetrcEntry[] = [];
  const t = tokens(text);
  let cur: { machine: string | undefined; login: string; password: string } | undefined;
  const flush = () => {
    if (cur) entries.push(cur);
    cur = undefined;
  };
  for (let i = 0; i < t.length; i++) {
    const tok = t[i]!;
    if (tok === '\n\n') continue;
    if (tok === 'machine') {
      flush();
      cur = { machine: t[++i], login: '', password: '' };
    } else if (tok === 'default') {
      flush();
      cur = { machine: undefined, login: '', password: '' };
    } else if (tok === 'macdef') {
      flush();
      while (i + 1 < t.length && t[i + 1] !== '\n\n') i++;
    } else if (cur && tok === 'login') {
      cur.login = t[++i] ?? '';
    } else if (cur && tok === 'password') {
      cur.password = t[++i] ?? '';
    } else if (cur && tok === 'account') {
      i++;
    }
  }
  flush();
  return entries;
}

/** Credentials for a host: its `machine` entry, else the `default` one. */
export function netrcCredentials(entries: readonly NetrcEntry[], host: string): { login: string; password: string } | undefined {
  const h = host.toLowerCase();
  const e = entries.find((x) => x.machine !== undefined && x.machine.toLowerCase() === h) ?? entries.find((x) => x.machine === undefined);
  return e && (e.login || e.password) ? { login: e.login, password: e.password } : undefined;
}
