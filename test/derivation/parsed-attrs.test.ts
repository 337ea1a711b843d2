/** ParsedDerivation over the golden .drv files Nix wrote (legacy and structured attributes). */
import { describe, expect, it } from 'vitest';
import { parseDerivation, type Derivation } from '../../src/derivation/derivation.js';
import { BadDerivationError } from '../../src/derivation/errors.js';
import { ParsedDerivation, tokenize } from '../../src/derivation/parsed-attrs.js';
import { drvOf, expected } from './helpers.js';

const one = (fixture: string, suffix?: string): [string, Derivation] => {
  const p = expected.fixtures[fixture]!.find((x) => !suffix || x.endsWith(suffix))!;
  return [p, drvOf(p)];
};

describe('ParsedDerivation: legacy attributes (passasfile.nix)', () => {
  const [p, drv] = one('passasfile');
  const pd = new ParsedDerivation(p, drv);
  it('reads lists, Booleans and strings from the environment', () => {
    expect(pd.hasStructuredAttrs).toBe(false);
    expect(pd.passAsFile).toEqual(new Set(['big', 'other']));
    expect(pd.impureEnvVars).toEqual(['http_proxy', 'HOME']);
    expect(pd.getRequiredSystemFeatures()).toEqual(new Set(['big-parallel', 'kvm']));
    expect(pd.preferLocalBuild).toBe(true);
    expect(pd.substitutesAllowed()).toBe(false);
    expect(pd.noChroot).toBe(true);
    expect(pd.impureHostDeps).toEqual(['/usr/lib']);
    expect(pd.getStringAttr('__sandboxProfile')).toBe('');
    expect(pd.exportReferencesGraph()).toEqual([{ name: 'graph', paths: ['/nix/store/00000000000000000000000000000000-nothing'] }]);
  });
  it('legacy output checks apply to every output and ignore self references', () => {
    expect(pd.outputChecks('out')).toEqual({
      ignoreSelfRefs: true,
      allowedReferences: [],
      allowedRequisites: undefined,
      disallowedReferences: undefined,
      disallowedRequisites: ['/nix/store/00000000000000000000000000000000-nothing'],
    });
  });
  it('canBuildLocally needs the platform (or extra-platforms) and every feature', () => {
    expect(pd.canBuildLocally({ system: 'x86_64-linux', systemFeatures: ['kvm', 'big-parallel'] })).toBe(true);
    expect(pd.canBuildLocally({ system: 'x86_64-linux', systemFeatures: ['big-parallel'] })).toBe(false);
    expect(pd.canBuildLocally({ system: 'aarch64-linux', systemFeatures: ['kvm', 'big-parallel'] })).toBe(false);
    expect(pd.canBuildLocally({ system: 'aarch64-linux', extraPlatforms: ['x86_64-linux'], systemFeatures: ['kvm', 'big-parallel'] })).toBe(true);
    expect(pd.canBuildLocally({ system: 'x86_64-linux', systemFeatures: ['kvm', 'big-parallel'], maxBuildJobs: 0 })).toBe(false);
    expect(pd.willBuildLocally({ system: 'x86_64-linux', systemFeatures: ['kvm', 'big-parallel'] })).toBe(true);
  });
});

describe('ParsedDerivation: structured attributes (structured.nix)', () => {
  const [p, drv] = one('structured', '-structured.drv');
  const pd = new ParsedDerivation(p, drv);
  const dep = expected.derivations[[...drv.inputDrvs.keys()][0]!]!.outputs.out!;
  it('parses __json', () => {
    expect(pd.hasStructuredAttrs).toBe(true);
    expect(pd.structuredAttrs!.numbers).toEqual([1, -2, 0, 1234567890123]);
    expect(pd.getStringAttr('name')).toBe('structured');
    expect(pd.getRequiredSystemFeatures()).toEqual(new Set(['kvm']));
    expect(pd.preferLocalBuild).toBe(true);
    expect(pd.substitutesAllowed()).toBe(false);
    expect(pd.passAsFile).toEqual(new Set());
    expect(pd.exportReferencesGraph()).toEqual([{ name: 'graph', paths: [dep] }]);
  });
  it('reads outputChecks per output, without ignoring self references', () => {
    expect(pd.outputChecks('out')).toEqual({
      ignoreSelfRefs: false,
      maxSize: 1000000,
      allowedReferences: [],
      maxClosureSize: undefined,
      allowedRequisites: undefined,
      disallowedReferences: undefined,
      disallowedRequisites: undefined,
    });
    expect(pd.outputChecks('doc')).toMatchObject({ maxClosureSize: 5000000, disallowedRequisites: [dep] });
    expect(pd.outputChecks('nope')).toBeUndefined();
  });
  it('rejects attributes of the wrong JSON type', () => {
    expect(() => pd.getStringAttr('numbers')).toThrow(/must be a string/);
    expect(() => pd.getBoolAttr('name')).toThrow(/must be a Boolean/);
    expect(() => pd.getStringsAttr('numbers')).toThrow(BadDerivationError);
  });
});

describe('ParsedDerivation: edge cases', () => {
  const base = (env: Record<string, string>, out = '("out","/nix/store/00000000000000000000000000000000-x","","")') =>
    parseDerivation(
      `Derive([${out}],[],[],"x86_64-linux","/bin/sh",[],[${Object.entries(env)
        .map(([k, v]) => `(${JSON.stringify(k)},${JSON.stringify(v)})`)
        .join(',')}])`,
      'x',
    );
  it('tokenizes on all whitespace', () => expect(tokenize(' a\tb\n\nc\r d ')).toEqual(['a', 'b', 'c', 'd']));
  it('floating CA derivations require the ca-derivations feature', () => {
    const pd = new ParsedDerivation('/x.drv', base({}, '("out","","r:sha256","")'));
    expect(pd.getRequiredSystemFeatures()).toEqual(new Set(['ca-derivations']));
  });
  it('outputChecks is undefined when nothing is checked (no legacy attribute; outputChecks.<out> setting none)', () => {
    expect(new ParsedDerivation('/x.drv', base({})).outputChecks('out')).toBeUndefined();
    expect(new ParsedDerivation('/x.drv', base({ allowedRequisites: '' })).outputChecks('out')).toMatchObject({ allowedRequisites: [] });
    const structured = (checks: unknown) =>
      new ParsedDerivation('/x.drv', base({ __json: JSON.stringify({ outputChecks: { out: checks } }) })).outputChecks('out');
    expect(structured({})).toBeUndefined();
    expect(structured({ unknownCheck: 1 })).toBeUndefined();
    expect(structured({ maxSize: 0 })).toMatchObject({ maxSize: 0 });
  });
  it('builtin builders build on any platform', () => {
    const d = base({});
    d.builder = 'builtin:fetchurl';
    d.platform = 'builtin';
    expect(new ParsedDerivation('/x.drv', d).canBuildLocally({ system: 'x86_64-linux', systemFeatures: [] })).toBe(true);
  });
  it('bad __json and bad exportReferencesGraph are typed errors', () => {
    expect(() => new ParsedDerivation('/x.drv', base({ __json: '{' }))).toThrow(/cannot process __json/);
    expect(() => new ParsedDerivation('/x.drv', base({ __json: '[]' }))).toThrow(/not a JSON object/);
    expect(() => new ParsedDerivation('/x.drv', base({ exportReferencesGraph: 'a' })).exportReferencesGraph()).toThrow(/odd number of tokens/);
    expect(() =>
      new ParsedDerivation('/x.drv', base({ exportReferencesGraph: '1a /nix/store/00000000000000000000000000000000-x' })).exportReferencesGraph(),
    ).toThrow(/invalid file name '1a'/);
    expect(() => new ParsedDerivation('/x.drv', base({ exportReferencesGraph: 'a /tmp/x' })).exportReferencesGraph()).toThrow(/non-store path '\/tmp\/x'/);
    expect(
      new ParsedDerivation('/x.drv', base({ exportReferencesGraph: 'a /nix/store/00000000000000000000000000000000-x/bin' })).exportReferencesGraph(),
    ).toEqual([{ name: 'a', paths: ['/nix/store/00000000000000000000000000000000-x'] }]);
  });
});
