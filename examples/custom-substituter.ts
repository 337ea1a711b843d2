/**
 * A custom Substituter: the engine asks substituters before building. Here an InMemorySubstituter serves
 * a NAR it holds (signed with a key the engine trusts), so the derivation's output is substituted instead
 * of built. Any object implementing the Substituter interface works the same way.
 *
 *   npx tsx examples/custom-substituter.ts
 */
import { BuildEngine, InMemorySubstituter, derivation, generateKeyPair, narOfRegularFile } from '../src/index.js';
import { openDemoStore } from './common.js';

const { store, sandboxed, sh } = await openDemoStore();
const drv = await derivation(store, {
  name: 'substituted-hello',
  system: 'x86_64-linux',
  builder: sh,
  args: ['-c', 'echo "this builder never runs" > $out'],
  stamp: String(Date.now()),
});

// What a cache would hold: the output as a NAR (a single file here), signed.
const { secretKey, publicKey } = generateKeyPair('demo-cache-1');
const cache = new InMemorySubstituter({ uri: 'memory://demo', trustedPublicKeys: [publicKey] });
await cache.add({ path: drv.out.path, references: [], deriver: drv.drvPath }, narOfRegularFile('hello from the cache\n'), { secretKey });

const engine = new BuildEngine({ store, sandbox: sandboxed, substituters: [cache] });
engine.on('substitution-started', (e) => console.log(`copying ${e.path} from ${e.substituter}`));
engine.on('build-started', (e) => console.log(`building ${e.drvPath} (unexpected!)`));
const missing = await engine.queryMissing([drv.drvPath]);
console.log(`will substitute ${missing.willSubstitute.length} path(s), ${missing.narSize} NAR bytes; will build ${missing.willBuild.length}`);
const [r] = await engine.buildPaths([drv.drvPath]);
console.log(`${drv.drvPath}: ${r!.result.status} -> ${r!.result.builtOutputs.out}`);
await store.close();
