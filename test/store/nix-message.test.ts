/**
 * Messages in Nix's two forms (src/store/nix-message.ts): the values formatted in are coloured in the
 * coloured form only; a message given as an argument goes in as it is in each form; errors carry both.
 */
import { describe, expect, it } from 'vitest';
import { colouredValue, ERROR_PREFIX, hintfmt, plainMessage } from '../../src/store/nix-message.js';
import { colouredMessageOf, RealiseError, shortMessageOf } from '../../src/store/errors.js';

const V = (s: string) => `\x1b[35;1m${s}\x1b[0m`;

describe('hintfmt', () => {
  it('colours the values in the coloured form, by position or in order', () => {
    expect(hintfmt("%s dependencies of derivation '%s' failed to build", 2, '/nix/store/x.drv')).toEqual({
      plain: "2 dependencies of derivation '/nix/store/x.drv' failed to build",
      coloured: `${V('2')} dependencies of derivation '${V('/nix/store/x.drv')}' failed to build`,
    });
    expect(hintfmt('%2% after %1%', 'a', 'b').coloured).toBe(`${V('b')} after ${V('a')}`);
  });

  it('puts a message argument in as it is: plain text stays uncoloured, a nested coloured one keeps its colours', () => {
    const m = hintfmt("builder for '%s' %s", '/nix/store/x.drv', plainMessage('failed with exit code 1'));
    expect(m.plain).toBe("builder for '/nix/store/x.drv' failed with exit code 1");
    expect(m.coloured).toBe(`builder for '${V('/nix/store/x.drv')}' failed with exit code 1`);
    const inner = { plain: 'error: eof', coloured: colouredValue(`${ERROR_PREFIX}eof`) };
    expect(hintfmt("store '%s': %s", 'ssh-ng://h', inner).coloured).toBe(`store '${V('ssh-ng://h')}': ${V('\x1b[31;1merror:\x1b[0m eof')}`);
  });

  it('an error made of a message carries both forms; a plain one is the same text twice', () => {
    const e = new RealiseError('x', hintfmt('unsupported JSON type %s', 7), { hint: 'do this' });
    expect([e.shortMessage, e.message, shortMessageOf(e)]).toEqual([
      'unsupported JSON type 7',
      'unsupported JSON type 7\n  hint: do this',
      'unsupported JSON type 7',
    ]);
    expect(colouredMessageOf(e)).toBe(`unsupported JSON type ${V('7')}`);
    expect(colouredMessageOf(new RealiseError('x', 'plain'))).toBe('plain');
    expect(colouredMessageOf(new Error('other'))).toBe('other');
  });
});
