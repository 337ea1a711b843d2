/**
 * Messages as Nix's `hintfmt` makes them: the plain text, and the same text with the values formatted into
 * it in Nix's colour (its `yellowtxt`). The coloured form is what Nix's JSON logger writes (`msg`,
 * `raw_msg`) and what a terminal shows; the plain one is what the API's messages say. A message is made in
 * both forms where its values are known, so nothing has to find them in the text again.
 */

export const ANSI_NORMAL = '\x1b[0m';
export const ANSI_RED = '\x1b[31;1m';
/** Nix's ANSI_WARNING: the colour of the values formatted into messages (`yellowtxt`) and of `warning:`. */
export const ANSI_WARNING = '\x1b[35;1m';
/** Nix's `error:` prefix as it colours it. */
export const ERROR_PREFIX = `${ANSI_RED}error:${ANSI_NORMAL} `;

/** A message in its two forms: the plain text, and the text with its values coloured. */
export interface NixMessage {
  readonly plain: string;
  readonly coloured: string;
}

/** A value formatted into a message, in Nix's colour of values. */
export function colouredValue(v: string | number): string {
  return `${ANSI_WARNING}${v}${ANSI_NORMAL}`;
}

/**
 * Nix's `hintfmt(format, args…)`: `%1%`, `%2%`, … (or `%s` / `%d` in order) replaced by the arguments. A
 * string or number argument is a value, coloured in the coloured text; a NixMessage argument goes in as it
 * is in each form (Nix's `normaltxt`, or a message within a message).
 */
export function hintfmt(format: string, ...args: readonly (string | number | NixMessage)[]): NixMessage {
  const fill = (colour: boolean) => {
    let next = 0;
    return format.replace(/%(\d+)%|%s|%d/g, (_m, n: string | undefined) => {
      const v = args[n !== undefined ? Number(n) - 1 : next++];
      if (typeof v === 'object') return colour ? v.coloured : v.plain;
      return colour ? colouredValue(String(v)) : String(v);
    });
  };
  return { plain: fill(false), coloured: fill(true) };
}

/** A message that is already formatted (nothing in it is coloured, as Nix's `hintfmt(string)`). */
export function plainMessage(s: string): NixMessage {
  return { plain: s, coloured: s };
}
