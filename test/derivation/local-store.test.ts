/**
 * Derivations written by derivation()/addText()/addPath() into a LocalStore are read, verified and
 * built by real Nix 2.8; and a derivation from TypeScript builds to the same output as its Nix twin.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nix } from '../../src/derivation/context.js';
import { addText, derivation, derivationFromStore } from '../../src/derivation/instantiate.js';
import { LocalStore } from '../../src/store/local-store.js';
import { nix as runNixOk, nixOk, nixRealise, tempDir } from '../helpers/nix.js';
import { expected } from './helpers.js';
import { sourcePaths, twins } from './equivalents.js';

describe.skipIf(!nixOk())('derivations in a LocalStore, read by real Nix', () => {
  const root = tempDir('realise-drv-local-');
  let store: LocalStore;
  beforeAll(async () => {
    store = await LocalStore.open({ root });
  });
  afterAll(async () => store.close());

  it('writes every fixture twin with Nix’s paths, and Nix verifies the store', async () => {
    for (const [fixture, twin] of Object.entries(twins)) {
      const drvs = await twin(store);
      expect(drvs.map((d) => d.drvPath).sort()).toEqual(expected.fixtures[fixture]);
    }
    const refs = await store.queryDerivationOutputs(expected.fixtures.simple![0]!);
    expect(Object.fromEntries(refs)).toEqual(expected.derivations[expected.fixtures.simple![0]!]!.outputs);
    await store.close();
    runNixOk('nix-store', ['--store', root, '--verify', '--check-contents']);
    const consumer = expected.fixtures['multiple-outputs']!.find((p) => p.endsWith('-consumer.drv'))!;
    const nixRefs = runNixOk('nix-store', ['--store', root, '-q', '--references', consumer]).split('\n');
    expect(nixRefs).toEqual(expected.fixtures['multiple-outputs']!.filter((p) => p.endsWith('-multi.drv')));
    const shown = JSON.parse(runNixOk('nix', ['show-derivation', '--store', root, consumer]));
    expect(shown[consumer].outputs.out.path).toBe(expected.derivations[consumer]!.outputs.out);
    const sources = JSON.parse(runNixOk('nix', ['path-info', '--json', '--store', root, expected.sources.tree!]));
    expect(sources[0].ca).toMatch(/^fixed:r:sha256:/);
    store = await LocalStore.open({ root });
    expect(
      Object.values(await sourcePaths(store))
        .map((s) => s.value)
        .sort(),
    ).toEqual(Object.values(expected.sources).sort());
  });

  it('real Nix builds a TypeScript-described graph to the outputs it builds for the Nix twin', async () => {
    const greeting = await addText(store, 'greeting.txt', 'hello from a source\n');
    const base = { system: 'x86_64-linux', builder: '/bin/sh' };
    const lib = await derivation(store, { ...base, name: 'tslib', outputs: ['out', 'dev'], args: ['-c', 'echo lib > $out; mkdir $dev; echo dev > $dev/h'] });
    const app = await derivation(store, {
      ...base,
      name: 'tsapp',
      args: ['-c', nix`read x < ${greeting}; read y < ${lib.output('dev')}/h; echo "$x $y" > $out`],
    });
    await store.close();
    const built = nixRealise(root, [app.drvPath], { sandbox: true, extraArgs: ['--option', 'sandbox-paths', '/bin/sh=/bin/busybox'] });
    expect(built.status, built.stderr).toBe(0);
    expect(built.stdout.trim()).toBe(app.outPath);

    // The same graph as a Nix expression: the same .drv path, so the same output.
    const nixRoot = tempDir('realise-drv-twin-');
    const expr = `let
      greeting = builtins.toFile "greeting.txt" "hello from a source\\n";
      lib = derivation { name = "tslib"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = [ "out" "dev" ]; args = [ "-c" "echo lib > $out; mkdir $dev; echo dev > $dev/h" ]; };
    in derivation { name = "tsapp"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "read x < \${greeting}; read y < \${lib.dev}/h; echo \\"$x $y\\" > $out" ]; }`;
    const drvPath = runNixOk('nix-instantiate', ['--store', nixRoot, '-E', expr]);
    expect(drvPath).toBe(app.drvPath);
    store = await LocalStore.open({ root });
    expect(await store.readTextFile(app.outPath)).toBe('hello from a source dev\n');
    const again = await derivationFromStore(store, app.drvPath);
    expect(again.outPath).toBe(app.outPath);
  });
});
