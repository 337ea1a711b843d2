import { describe, expect, it } from 'vitest';
import { derivationOutputPaths } from '../../src/store/drv-outputs.js';

describe('derivationOutputPaths', () => {
  it('reads the output list of a derivation', () => {
    const text =
      'Derive([("dev","/nix/store/aaaa-x-dev","",""),("out","/nix/store/bbbb-x","sha256","ab")],[],[],"x86_64-linux","/bin/sh",[],[("out","/nix/store/bbbb-x")])';
    expect([...derivationOutputPaths(text)!]).toEqual([
      ['dev', '/nix/store/aaaa-x-dev'],
      ['out', '/nix/store/bbbb-x'],
    ]);
  });

  it('undoes escapes in a string that has them, and leaves out outputs without a path', () => {
    const text = String.raw`Derive([("a\"b","/nix/store/p\\q\nr\ts","",""),("ca","","r:sha256","")],[],[],"s","b",[],[])`;
    expect([...derivationOutputPaths(text)!]).toEqual([['a"b', '/nix/store/p\\q\nr\ts']]);
  });

  it('takes an empty output list', () => {
    expect(derivationOutputPaths('Derive([],[],[],"s","b",[],[])')).toEqual(new Map());
  });

  it('is undefined for text that does not start like a derivation or breaks off', () => {
    expect(derivationOutputPaths('hello')).toBeUndefined();
    expect(derivationOutputPaths('Derive([("out","/nix/store/bbbb-x","",')).toBeUndefined();
    expect(derivationOutputPaths('Derive([("out","/nix/store/bbbb-x')).toBeUndefined();
    expect(derivationOutputPaths('Derive([("out","/nix/store/bb\\')).toBeUndefined();
    expect(derivationOutputPaths('Derive([("out","/nix/store/bbbb-x","","")')).toBeUndefined();
    expect(derivationOutputPaths('Derive([(out,"/nix/store/bbbb-x","","")],')).toBeUndefined();
  });
});
