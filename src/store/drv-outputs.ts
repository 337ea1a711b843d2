/**
 * The output paths a `.drv` file names, read from its ATerm text without the derivation layer (which the
 * store may not import): what Nix's registerValidPaths records in DerivationOutputs when it registers a
 * derivation, so that a `.drv` added by substitution or addToStore has its rows as in a store Nix wrote.
 * Only the first list of `Derive([("name","path","hashAlgo","hash"),…],…)` is read; outputs without a
 * path (floating content-addressed, deferred) have no row, as in Nix.
 */

/** Output name → path of a derivation's text, or undefined when it does not start like a derivation. */
export function derivationOutputPaths(text: string): Map<string, string> | undefined {
  let i = 0;
  const expect = (s: string): boolean => {
    if (!text.startsWith(s, i)) return false;
    i += s.length;
    return true;
  };
  const str = (): string | undefined => {
    if (text[i] !== '"') return undefined;
    let out = '';
    for (i++; i < text.length; i++) {
      const c = text[i]!;
      if (c === '"') {
        i++;
        return out;
      }
      if (c === '\\') {
        const n = text[++i];
        out += n === 'n' ? '\n' : n === 'r' ? '\r' : n === 't' ? '\t' : (n ?? '');
      } else out += c;
    }
    return undefined;
  };
  if (!expect('Derive([')) return undefined;
  const outputs = new Map<string, string>();
  if (expect(']')) return outputs;
  for (;;) {
    if (!expect('(')) return undefined;
    const name = str();
    if (name === undefined || !expect(',')) return undefined;
    const p = str();
    if (p === undefined || !expect(',') || str() === undefined || !expect(',') || str() === undefined || !expect(')')) return undefined;
    if (p !== '') outputs.set(name, p);
    if (expect(']')) return outputs;
    if (!expect(',')) return undefined;
  }
}
