/**
 * The TypeScript twins of test/fixtures/derivation/nix/*.nix: each function describes the same
 * derivations with `derivation`, `nix```, `addText` and `addPath`, and returns the top-level ones.
 */
import * as path from 'node:path';
import { nix, type NixString } from '../../src/derivation/context.js';
import { addPath, addText, derivation, type DerivationAttrs, type DerivationValue } from '../../src/derivation/instantiate.js';
import type { Store } from '../../src/store/store-api.js';
import { FIXTURES } from './helpers.js';

const system = 'x86_64-linux';
const builder = '/bin/sh';
const TREE = path.join(FIXTURES, 'tree');

type Twin = (store: Store) => Promise<DerivationValue[]>;

export const twins: Record<string, Twin> = {
  simple: async (store) => [await derivation(store, { name: 'simple', system, builder, args: ['-c', 'echo hello > $out'], greeting: 'hello world' })],

  'multiple-outputs': async (store) => {
    const multi = await derivation(store, { name: 'multi', system, builder, outputs: ['out', 'dev', 'lib'], args: ['-c', 'mkdir $out $dev $lib'] });
    const consumer = await derivation(store, {
      name: 'consumer',
      system,
      builder,
      args: ['-c', nix`echo ${multi.output('dev')} ${multi.output('lib')} > $out`],
      headers: nix`${multi.output('dev')}/include`,
    });
    return [multi, consumer];
  },

  deps: async (store) => {
    const mk = (name: string, attrs: Partial<DerivationAttrs>) => derivation(store, { name, system, builder, args: ['-c', 'echo $name > $out'], ...attrs });
    const a = await mk('a', {});
    const b = await mk('b', { dep: a });
    const c = await mk('c', { deps: [a, b], script: nix`cat ${a}/x ${b}/y` });
    const d = await mk('d', { drv: a.drvPathValue });
    return [a, b, c, d];
  },

  fixed: async (store) => {
    const fod = (name: string, attrs: Partial<DerivationAttrs>) => derivation(store, { name, system, builder, args: ['-c', 'echo -n hello > $out'], ...attrs });
    const hello256 = '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824';
    const flat = await fod('flat-sha256', { outputHashAlgo: 'sha256', outputHash: hello256 });
    const other = await fod('flat-sha256', { outputHashAlgo: 'sha256', outputHash: hello256, args: ['-c', 'printf hello > $out'] });
    const rec = await fod('rec-sha256', {
      outputHashMode: 'recursive',
      outputHashAlgo: 'sha256',
      outputHash: '0vd7x51fiksa4b15z0ahvwakpbcc05y6zl1fy4fx7x1jd9lvmaa1',
    });
    const rest = [
      await fod('flat-sha256-base32', { outputHashAlgo: 'sha256', outputHashMode: 'flat', outputHash: '094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic' }),
      await fod('flat-sri', { outputHash: 'sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=' }),
      await fod('flat-sha1', { outputHashAlgo: 'sha1', outputHash: 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d' }),
      await fod('flat-sha512', {
        outputHashAlgo: 'sha512',
        outputHash: '9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043',
      }),
      await fod('flat-md5', { outputHashAlgo: 'md5', outputHash: '5d41402abc4b2a76b9719d911017c592' }),
      await fod('rec-sha1', { outputHashMode: 'recursive', outputHashAlgo: 'sha1', outputHash: 'sha1-qvTGHdzF6KLavt4PO0gs2a6pQ00=' }),
      await fod('rec-sha512', {
        outputHashMode: 'recursive',
        outputHash: 'sha512-m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw==',
      }),
    ];
    const consumer = await derivation(store, { name: 'fod-consumer', system, builder, args: ['-c', nix`cat ${flat} ${other} ${rec} > $out`] });
    return [flat, other, rec, ...rest, consumer];
  },

  structured: async (store) => {
    const dep = await derivation(store, { name: 'dep', system, builder, outputs: ['out', 'bin'] });
    const structured = await derivation(store, {
      __structuredAttrs: true,
      name: 'structured',
      system,
      builder,
      args: ['-c', 'source .attrs.sh; echo $name > $out'],
      outputs: ['out', 'doc'],
      numbers: [1, -2, 0, 1234567890123],
      flags: { yes: true, no: false, nothing: null },
      text: 'quote " backslash \\ newline \n tab \t bell \x07 backspace \x08 formfeed \x0c del \x7f unicode ünïcödé ✓',
      nested: { b: [{ x: 1 }, ['a', 'b']], a: 'first', 'with space': 'ok', '\u{1F389}': 1, '\uffff': 2, '\u00e9': 3 },
      empty: [],
      floats: [1.5, 0.1, 123456.789, 0.0000001, -2.5],
      emptySet: {},
      depPath: dep,
      depBin: nix`${dep.output('bin')}/bin/tool`,
      outputChecks: {
        out: { allowedReferences: [], maxSize: 1000000 },
        doc: { disallowedRequisites: [dep], maxClosureSize: 5000000 },
      },
      requiredSystemFeatures: ['kvm'],
      preferLocalBuild: true,
      allowSubstitutes: false,
      exportReferencesGraph: { graph: [dep] },
    });
    return [structured];
  },

  passasfile: async (store) => [
    await derivation(store, {
      name: 'passasfile',
      system,
      builder,
      args: ['-c', 'cat $bigPath > $out'],
      passAsFile: ['big', 'other'],
      big: 'a large\nmulti-line\nvalue',
      other: 'x',
      allowedReferences: [],
      disallowedRequisites: ['/nix/store/00000000000000000000000000000000-nothing'],
      impureEnvVars: ['http_proxy', 'HOME'],
      exportReferencesGraph: ['graph', '/nix/store/00000000000000000000000000000000-nothing'],
      requiredSystemFeatures: ['big-parallel', 'kvm'],
      preferLocalBuild: true,
      allowSubstitutes: false,
      __noChroot: true,
      __impureHostDeps: ['/usr/lib'],
      __sandboxProfile: '',
    }),
  ],

  values: async (store) => [
    await derivation(store, {
      name: 'values',
      system,
      builder,
      aList: ['a', 'b', 3, true, false, null, ['nested', 'list'], [], 'end'],
      emptyList: [],
      int: 42,
      negative: -7,
      yes: true,
      no: false,
      nothing: null,
      emptyString: '',
      aFloat: 2.25,
      floats: [1.5, 0.1, 123456.789],
    }),
    await derivation(store, { name: 'ignore-nulls', system, builder, __ignoreNulls: true, nothing: null, something: 'x' }),
  ],

  escapes: async (store) => [
    await derivation(store, {
      name: 'escapes',
      system,
      builder,
      args: ['-c', 'echo "$quoted" > $out', 'tab\there', 'cr\rhere'],
      quoted: 'double " quote, back\\slash, ${not interpolated}',
      multiline: 'line one\nline two\twith a tab\n',
      unicode: 'ünïcödé ✓ 日本語 🎉',
      control: 'bell \x07 backspace \x08 formfeed \x0c del \x7f escape \x1b',
      'weird name': 'spaces in the name',
      '\u{1F389}': 'an emoji name (sorts after U+FFFF in byte order)',
      '\uffff': 'U+FFFF name',
      '\ufb01': 'U+FB01 name',
    }),
  ],

  ca: async (store) => {
    const opts = { experimentalFeatures: ['ca-derivations'] as const };
    const ca = await derivation(
      store,
      {
        name: 'ca',
        system,
        builder,
        args: ['-c', 'echo ca > $out'],
        __contentAddressed: true,
        outputHashMode: 'recursive',
        outputHashAlgo: 'sha256',
      },
      opts,
    );
    const caMulti = await derivation(store, { name: 'ca-multi', system, builder, outputs: ['out', 'dev'], __contentAddressed: true }, opts);
    const caFlat = await derivation(
      store,
      { name: 'ca-flat', system, builder, __contentAddressed: true, outputHashMode: 'flat', outputHashAlgo: 'sha512' },
      opts,
    );
    const consumer = await derivation(store, { name: 'ca-consumer', system, builder, args: ['-c', nix`cat ${ca} ${caMulti.output('dev')} > $out`] });
    return [ca, caMulti, caFlat, consumer];
  },

  impure: async (store) => {
    const imp = await derivation(
      store,
      { name: 'imp', system, builder, args: ['-c', 'date > $out'], __impure: true },
      { experimentalFeatures: ['impure-derivations'] },
    );
    const consumer = await derivation(store, { name: 'imp-consumer', system, builder, args: ['-c', nix`cat ${imp} > $out`] });
    const notImpure = await derivation(store, { name: 'not-impure', system, builder, __impure: false, __contentAddressed: false });
    return [imp, consumer, notImpure];
  },

  sources: async (store) => {
    const s = await sourcePaths(store);
    return [
      await derivation(store, {
        name: 'source-user',
        system,
        builder,
        args: [
          '-c',
          nix`cat ${s.text} ${s.textWithRef} ${s.tree}/hello.txt ${s.file} ${s.fileRec} ${s.filtered}/hello.txt ${s.treeDefaultName}/hello.txt > $out`,
        ],
      }),
    ];
  },
};

/** The twin of nix/source-paths.nix. */
export async function sourcePaths(store: Store): Promise<Record<string, NixString>> {
  const text = await addText(store, 'hello.txt', 'hello world\n');
  return {
    text,
    textWithRef: await addText(store, 'with-ref.sh', nix`source ${text}\n`),
    unicode: await addText(store, 'unicode.txt', 'ünïcödé ✓\n'),
    tree: await addPath(store, TREE, { name: 'tree' }),
    treeDefaultName: await addPath(store, TREE),
    file: await addPath(store, path.join(TREE, 'hello.txt'), { name: 'flat-file', recursive: false }),
    fileRec: await addPath(store, path.join(TREE, 'script.sh'), { name: 'script' }),
    sub: await addPath(store, path.join(TREE, 'sub')),
    filtered: await addPath(store, TREE, { name: 'filtered', filter: (p) => path.basename(p) !== 'sub' }),
    filteredNoSymlinks: await addPath(store, TREE, { name: 'no-symlinks', filter: (_p, type) => type !== 'symlink' }),
  };
}
