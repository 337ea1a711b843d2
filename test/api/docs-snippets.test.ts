/**
 * The docs' code runs as written: every ```ts block marked `runnable` in docs/*.md and README.md is run
 * (imports of 'realise' pointed at src/index.ts) in an empty directory with a fresh embedded default
 * store, and must exit 0 and print what the test expects of it. The blocks build sandboxed on the
 * default chroot store, so they need bubblewrap and /bin/busybox (always there in CI).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { bwrapOk, removeTreeSync, tempDir } from '../helpers/nix.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TSX = path.join(ROOT, 'node_modules/tsx/dist/loader.mjs');
const INDEX = pathToFileURL(path.join(ROOT, 'src/index.ts')).href;

interface Snippet {
  id: string;
  code: string;
}

/** The runnable blocks of a markdown file, named `FILE#N` (N counts runnable blocks from 1). */
function runnableBlocks(rel: string): Snippet[] {
  const out: Snippet[] = [];
  const re = /^```ts runnable\n([\s\S]*?)^```$/gm;
  const text = readFileSync(path.join(ROOT, rel), 'utf8');
  for (let m = re.exec(text); m; m = re.exec(text)) out.push({ id: `${rel}#${out.length + 1}`, code: m[1]! });
  return out;
}

const files = [
  'README.md',
  ...readdirSync(path.join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];
const snippets = files.flatMap(runnableBlocks);

/** What each block must print (a block without an entry here fails: say what it shows). */
const SHOWS: Record<string, RegExp> = {
  'README.md#1': /^built \/nix\/store\/[0-9a-z]{32}-hello$/m,
  'docs/derivations.md#1': /^\/nix\/store\/[0-9a-z]{32}-libfoo-dev$/m,
  'docs/formats.md#1': /^sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic$/m,
  'docs/substituters.md#1': /\[ '\/nix\/store\/[0-9a-z]{32}-hello\.txt' \] my-cache-1:[A-Za-z0-9+/]{43}=/,
};

const dir = tempDir('realise-docs-');
afterAll(() => removeTreeSync(dir));

describe.skipIf(!bwrapOk())('runnable code blocks of the docs', () => {
  it('the docs have the runnable blocks the test expects, and no others', () => {
    expect(snippets.map((s) => s.id).sort()).toEqual(Object.keys(SHOWS).sort());
  });

  for (const s of snippets) {
    it(`${s.id} runs as written`, () => {
      const work = path.join(dir, s.id.replace(/[^A-Za-z0-9]+/g, '-'));
      mkdirSync(work, { recursive: true });
      const file = path.join(work, 'snippet.mts');
      writeFileSync(file, s.code.replace(/from 'realise'/g, `from '${INDEX}'`));
      const r = spawnSync(process.execPath, ['--import', pathToFileURL(TSX).href, file], {
        cwd: work,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, REALISE_STORE: path.join(work, 'root'), XDG_DATA_HOME: path.join(work, 'xdg') },
      });
      expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(SHOWS[s.id] ?? /(?!)/);
    }, 150_000);
  }
});
