/**
 * The output paths a `.drv` file names, read from its ATerm text without the derivation layer (which the
 * store may not import): what Nix's registerValidPaths records in DerivationOutputs when it registers a
 * derivation, so that a `.drv` added by substitution or addToStore has its rows as in a store Nix wrote.
 * Only the first list of `Derive([("name","path","hashAlgo","hash"),…],…)` is read; outputs without a
 * path (floating content-addressed, deferred) have no row, as in Nix.
 */

/** Output name → path of a derivation's text, or undefined when it does not start like a derivation. */
export function derivationOutputPaths(text: string): Map<string, string> | undefined {
  // A cursor object, not closures: the CLI's bundle keeps function names, which costs a defineProperty per
  // closure made, and this runs for every substituted or added .drv.
  const c = new AtermCursor(text);
  if (!c.expect('Derive([')) return undefined;
  const outputs = new Map<string, string>();
  if (c.expect(']')) return outputs;
  for (;;) {
    if (!c.expect('(')) return undefined;
    const name = c.str();
    if (name === undefined || !c.expect(',')) return undefined;
    const p = c.str();
    if (p === undefined || !c.expect(',') || c.str() === undefined || !c.expect(',') || c.str() === undefined || !c.expect(')')) return undefined;
    if (p !== '') outputs.set(name, p);
    if (c.expect(']')) return outputs;
    if (!c.expect(',')) return undefined;
  }
}

/** A position in ATerm text. */
class AtermCursor {
  i = 0;
  constructor(readonly text: string) {}

  /** Step over `s` if the text continues with it. */
  expect(s: string): boolean {
    if (!this.text.startsWith(s, this.i)) return false;
    this.i += s.length;
    return true;
  }

  /** A quoted string with its escapes undone, or undefined when none is here or it is unterminated. */
  str(): string | undefined {
    const text = this.text;
    let i = this.i;
    if (text[i] !== '"') return undefined;
    // Store paths and output names have no escapes: take them whole when none is there.
    const end = text.indexOf('"', i + 1);
    if (end < 0) return undefined;
    const whole = text.slice(i + 1, end);
    if (!whole.includes('\\')) {
      this.i = end + 1;
      return whole;
    }
    let out = '';
    for (i++; i < text.length; i++) {
      const c = text[i]!;
      if (c === '"') {
        this.i = i + 1;
        return out;
      }
      if (c === '\\') {
        const n = text[++i];
        out += n === 'n' ? '\n' : n === 'r' ? '\r' : n === 't' ? '\t' : (n ?? '');
      } else out += c;
    }
    this.i = i;
    return undefined;
  }
}
