/**
 * Regenerate the store-format goldens in test/fixtures/store/ from real Nix 2.8:
 *
 *   npx tsx scripts/make-store-goldens.ts
 *
 * Uses nix-hash, `nix hash to-*`, nix-store --dump / --add / --add-fixed and nix-instantiate --eval
 * (builtins.toFile, builtins.path, builtins.hashString, builtins.placeholder) against a private chroot
 * store in a temporary directory. Trees come from test/fixtures/store/trees.ts; only the NARs of small
 * trees are committed, large ones are recorded by hash and size.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { nixEnv } from '../test/helpers/nix.js';
import { TREES, buildTree } from '../test/fixtures/store/trees.js';
import { CA_NIX_CONFIG, caExpression } from '../test/fixtures/store/ca.js';

const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'store');
const ALGOS = ['md5', 'sha1', 'sha256', 'sha512'] as const;

const work = mkdtempSync(path.join(tmpdir(), 'realise-store-goldens-'));
const root = path.join(work, 'root');
const trees = path.join(work, 'trees');
mkdirSync(trees);

function run(cmd: string, args: string[], input?: string): { ok: boolean; out: string; err: string; raw: Buffer } {
  try {
    const raw = execFileSync(cmd, args, { env: nixEnv(), input, maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'pipe'] });
    return { ok: true, out: raw.toString('utf8').trim(), err: '', raw };
  } catch (e) {
    const err = e as { stderr?: Buffer; stdout?: Buffer };
    return { ok: false, out: err.stdout?.toString('utf8').trim() ?? '', err: (err.stderr?.toString('utf8') ?? String(e)).trim(), raw: Buffer.alloc(0) };
  }
}
function must(cmd: string, args: string[], input?: string): string {
  const r = run(cmd, args, input);
  if (!r.ok) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.err}`);
  return r.out;
}
function nixEval(expr: string, store = root): unknown {
  return JSON.parse(must('nix-instantiate', ['--store', store, '--eval', '--json', '--strict', '-E', expr]));
}
/** A Nix string literal for arbitrary text. */
function nixStr(s: string): string {
  return JSON.stringify(s).replace(/\$\{/g, '\\${');
}
function write(name: string, data: unknown): void {
  writeFileSync(path.join(OUT, name), JSON.stringify(data, null, 1) + '\n');
  console.log(`wrote ${name}`);
}

console.log(must('nix-store', ['--version']));

// ---------------------------------------------------------------- hashes
const inputs: Buffer[] = [
  Buffer.from(''),
  Buffer.from('hello'),
  Buffer.from('abc'),
  Buffer.from('The quick brown fox jumps over the lazy dog'),
  Buffer.from('a'.repeat(1000)),
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
];
const hashes: { input: string; algorithm: string; base16: string; base32: string; base64: string; sri: string }[] = [];
for (const [k, input] of inputs.entries()) {
  const f = path.join(work, `hash-input-${k}`);
  writeFileSync(f, input);
  for (const algo of ALGOS) {
    const base16 = must('nix-hash', ['--flat', '--type', algo, f]);
    const base32 = must('nix-hash', ['--flat', '--base32', '--type', algo, f]);
    const base64 = must('nix', ['hash', 'to-base64', '--type', algo, base16]);
    const sri = must('nix', ['hash', 'to-sri', '--type', algo, base32]);
    if (must('nix', ['hash', 'to-base16', sri]) !== base16) throw new Error('nix disagrees with itself');
    hashes.push({ input: input.toString('base64'), algorithm: algo, base16, base32, base64, sri });
  }
}
// builtins.hashString agrees with nix-hash for text
const hs = nixEval(`map (a: builtins.hashString a "hello") [ "md5" "sha1" "sha256" "sha512" ]`) as string[];
for (const [i, algo] of ALGOS.entries()) {
  if (hashes.find((h) => h.input === Buffer.from('hello').toString('base64') && h.algorithm === algo)!.base16 !== hs[i]) throw new Error('hashString mismatch');
}

// What Nix accepts as a hash (Hash::parseAny via `nix hash to-base16 [--type T] S`).
const parseCases: { input: string; type?: string }[] = [];
for (const h of hashes.filter((x) => x.input === Buffer.from('hello').toString('base64'))) {
  const a = h.algorithm;
  const b64bare = h.base64.replace(/=+$/, '');
  const badPad = ALGOS.indexOf(a as never) >= 0 && h.base32.length * 5 > h.base16.length * 4 ? 'z' + h.base32.slice(1) : undefined;
  parseCases.push(
    { input: `${a}:${h.base16}` },
    { input: `${a}:${h.base16.toUpperCase()}` },
    { input: `${a}:${h.base32}` },
    { input: `${a}:${h.base64}` },
    { input: `${a}:${b64bare}` },
    { input: h.sri },
    { input: `${a}-${b64bare}` },
    { input: `${h.sri}trailing` },
    { input: `${a}-${h.base64.slice(0, 8)}\n${h.base64.slice(8)}` },
    { input: h.base16, type: a },
    { input: h.base32, type: a },
    { input: h.base64, type: a },
    { input: h.sri, type: a },
    { input: h.base16 },
    { input: h.base32 },
    { input: `${a}:${h.base32.slice(1)}` },
    { input: `${a}:${h.base32}0` },
    { input: `${a}:e${h.base32.slice(1)}` },
    { input: `${a}:${h.base32.toUpperCase()}` },
    { input: `${a}:g${h.base16.slice(1)}` },
    { input: `${a}:${h.base16.slice(2)}` },
    { input: `${a}-${h.base64.slice(4)}` },
    { input: `${a}-!${h.base64.slice(1)}` },
    { input: `${a}:` },
    { input: `${a}-` },
  );
  if (badPad) parseCases.push({ input: `${a}:${badPad}` });
  parseCases.push({ input: `${a.toUpperCase()}:${h.base16}` });
}
parseCases.push(
  { input: '' },
  { input: 'sha3:abc' },
  { input: 'blake3-abc' },
  { input: 'sha256:abc', type: 'md5' },
  { input: 'md5-XUFAKrxLKna5cZ2REBfFkg==', type: 'sha256' },
);
const parse = parseCases.map(({ input, type }) => {
  const r = run('nix', ['hash', 'to-base16', ...(type ? ['--type', type] : []), '--', input]);
  return { input, ...(type ? { type } : {}), ok: r.ok, ...(r.ok ? { base16: r.out } : { error: r.err.split('\n')[0] }) };
});
write('hashes.json', { hashes, parse });

// ---------------------------------------------------------------- store path names
const names = [
  'a',
  '.',
  '..',
  '.a',
  '..a',
  '.-a',
  '-a',
  '?=',
  '+',
  '_',
  'a b',
  'a/b',
  'ä',
  'a:b',
  'a@b',
  'a*',
  'n'.repeat(211),
  'n'.repeat(212),
  'hello-2.12.1',
  'A-Z_a.z+0?9=',
];
const nameVerdicts = names.map((name) => {
  const r = run('nix-instantiate', ['--store', root, '--eval', '-E', `builtins.toFile ${nixStr(name)} "x"`]);
  return { name, ok: r.ok, ...(r.ok ? { path: JSON.parse(r.out) } : { error: r.err.split('\n').pop() }) };
});

// ---------------------------------------------------------------- text paths (builtins.toFile)
const texts: { name: string; contents: string; references: string[]; path: string; storeDir: string }[] = [];
const textExprs = [
  `{ name = "hello.txt"; c = "Hello, world!\\n"; }`,
  `{ name = "empty"; c = ""; }`,
  `{ name = "unicode"; c = "日本語 ünïcödé 😀"; }`,
  `{ name = "one-ref"; c = "see \${builtins.toFile "dep-one" "one"}/x"; }`,
  `let d1 = builtins.toFile "dep-one" "one"; d2 = builtins.toFile "dep-two" "two"; in { name = "two-refs"; c = "uses \${d2} and \${d1}"; }`,
  `{ name = "source-ref"; c = "\${builtins.path { path = ${nixStr(path.join(trees, 'mixed'))}; name = "mixed-src"; }}"; }`,
  `let d = builtins.toFile "dep-one" "one"; in { name = "dup-ref"; c = "\${d} \${d} \${d}"; }`,
];
buildTree(path.join(trees, 'mixed'), TREES['mixed']!.root);
for (const e of textExprs) {
  const v = nixEval(
    `let x = ${e}; in { name = x.name; contents = builtins.unsafeDiscardStringContext x.c; references = builtins.attrNames (builtins.getContext x.c); path = builtins.toFile x.name x.c; }`,
  ) as Omit<(typeof texts)[number], 'storeDir'>;
  texts.push({ ...v, storeDir: '/nix/store' });
}
// A store whose logical store dir is not /nix/store.
const otherStoreDir = '/tmp/realise-goldens-store/store';
rmSync(path.dirname(otherStoreDir), { recursive: true, force: true });
const otherStore = `local?store=${otherStoreDir}&state=${path.dirname(otherStoreDir)}/state&log=${path.dirname(otherStoreDir)}/log`;
for (const e of textExprs.slice(0, 5)) {
  const v = nixEval(
    `let x = ${e}; in { name = x.name; contents = builtins.unsafeDiscardStringContext x.c; references = builtins.attrNames (builtins.getContext x.c); path = builtins.toFile x.name x.c; }`,
    otherStore,
  ) as Omit<(typeof texts)[number], 'storeDir'>;
  texts.push({ ...v, storeDir: otherStoreDir });
}

// ---------------------------------------------------------------- placeholders
const outputs = ['out', 'dev', 'bin', 'lib', 'man', 'doc', 'a-b', ''];
const placeholders = outputs.map((output) => ({ output, placeholder: nixEval(`builtins.placeholder ${nixStr(output)}`) as string }));

// ---------------------------------------------------------------- NARs and fixed-output paths of trees
mkdirSync(path.join(OUT, 'nar'), { recursive: true });
const nars: { tree: string; size: number; sha256: string; md5: string; sha1: string; sha512: string; file?: string }[] = [];
const fixed: { tree: string; method: 'flat' | 'recursive'; algorithm: string; hash: string; name: string; path: string; via: string; storeDir: string }[] = [];
for (const [tree, { small, root: node }] of Object.entries(TREES)) {
  const p = path.join(trees, tree);
  if (tree !== 'mixed') buildTree(p, node);
  const nar = execFileSync('nix-store', ['--dump', p], { env: nixEnv(), maxBuffer: 1 << 30 });
  const entry = {
    tree,
    size: nar.length,
    sha256: must('nix-hash', ['--type', 'sha256', '--base32', p]),
    md5: must('nix-hash', ['--type', 'md5', p]),
    sha1: must('nix-hash', ['--type', 'sha1', p]),
    sha512: must('nix-hash', ['--type', 'sha512', p]),
    ...(small ? { file: `nar/${tree}.nar` } : {}),
  };
  if (small) writeFileSync(path.join(OUT, 'nar', `${tree}.nar`), nar);
  nars.push(entry);

  const added = must('nix-store', ['--store', root, '--add', p]);
  fixed.push({
    tree,
    method: 'recursive',
    algorithm: 'sha256',
    hash: must('nix-hash', ['--type', 'sha256', p]),
    name: tree,
    path: added,
    via: 'nix-store --add',
    storeDir: '/nix/store',
  });
  const isFile = node.type === 'file';
  if (small || isFile) {
    for (const algo of ALGOS) {
      const rec = must('nix-store', ['--store', root, '--add-fixed', '--recursive', algo, p]);
      fixed.push({
        tree,
        method: 'recursive',
        algorithm: algo,
        hash: must('nix-hash', ['--type', algo, p]),
        name: tree,
        path: rec,
        via: 'nix-store --add-fixed --recursive',
        storeDir: '/nix/store',
      });
      if (isFile) {
        const flat = must('nix-store', ['--store', root, '--add-fixed', algo, p]);
        fixed.push({
          tree,
          method: 'flat',
          algorithm: algo,
          hash: must('nix-hash', ['--flat', '--type', algo, p]),
          name: tree,
          path: flat,
          via: 'nix-store --add-fixed',
          storeDir: '/nix/store',
        });
      }
    }
  }
}
// builtins.path: flat and recursive, with a custom name, also in another store dir.
for (const [tree, recursive, storeDir] of [
  ['regular-file', false, '/nix/store'],
  ['executable-file', false, '/nix/store'],
  ['mixed', true, '/nix/store'],
  ['regular-file', false, otherStoreDir],
  ['mixed', true, otherStoreDir],
] as const) {
  const p = path.join(trees, tree);
  const expr = `builtins.path { path = ${nixStr(p)}; name = "renamed-${tree}"; recursive = ${recursive}; }`;
  const got = nixEval(expr, storeDir === '/nix/store' ? root : otherStore) as string;
  const hash = must('nix-hash', [...(recursive ? [] : ['--flat']), '--type', 'sha256', p]);
  fixed.push({ tree, method: recursive ? 'recursive' : 'flat', algorithm: 'sha256', hash, name: `renamed-${tree}`, path: got, via: 'builtins.path', storeDir });
}
write('paths.json', { names: nameVerdicts, texts, placeholders, fixed });

// ---------------------------------------------------------------- content-addressed outputs (HashModulo)
// Floating CA derivations (experimental 'ca-derivations') whose outputs refer to themselves: Nix hashes
// the output modulo its own (scratch) hash part, then rewrites it. A sandboxed build in a chroot store,
// with a static busybox as the builder.
const caRoot = path.join(work, 'ca-root');
const caFile = path.join(work, 'ca.nix');
writeFileSync(caFile, caExpression('golden payload'));
const caEnv = { NIX_CONFIG: CA_NIX_CONFIG };
const built = execFileSync('nix-build', ['--store', caRoot, caFile, '--no-out-link'], { env: nixEnv(caEnv) })
  .toString()
  .trim()
  .split('\n');
const infos = JSON.parse(execFileSync('nix', ['path-info', '--store', caRoot, '--json', ...built], { env: nixEnv(caEnv) }).toString()) as {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  ca: string;
}[];
const ca = infos.map((i) => {
  const base = path.basename(i.path);
  const nar = execFileSync('nix-store', ['--dump', path.join(caRoot, i.path)], { env: nixEnv(), maxBuffer: 1 << 28 });
  writeFileSync(path.join(OUT, 'nar', `${base.slice(33)}.nar`), nar);
  return { path: i.path, ca: i.ca, narHash: i.narHash, narSize: i.narSize, references: i.references, file: `nar/${base.slice(33)}.nar` };
});
write('ca.json', ca);
write('nar.json', nars);

rmSync(work, { recursive: true, force: true });
rmSync(path.dirname(otherStoreDir), { recursive: true, force: true });
