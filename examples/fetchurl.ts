/**
 * Nix's built-in builders: fetch a tool from an HTTP server (here one on 127.0.0.1 that serves an
 * xz-compressed NAR of a small tree) with `fetchurl()` — the same .drv as `import <nix/fetchurl.nix>` —
 * then install it into a user environment with `buildEnv()`, as `nix-env -i` would. Both builds run in
 * the engine (builtin:fetchurl, builtin:buildenv); download progress comes through the engine's events.
 *
 *   npx tsx examples/fetchurl.ts
 */
import { chmodSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { BuildEngine, buildEnv, compressStream, dumpPath, fetchurl, hashPath } from '../src/index.js';
import { openDemoStore } from './common.js';

// A tree with an executable, served as hello.nar.xz.
const dir = mkdtempSync(path.join(tmpdir(), 'realise-fetchurl-example-'));
mkdirSync(path.join(dir, 'hello', 'bin'), { recursive: true });
writeFileSync(path.join(dir, 'hello', 'bin', 'hello'), '#!/bin/sh\necho "Hello from a fetched tool"\n');
chmodSync(path.join(dir, 'hello', 'bin', 'hello'), 0o755);
const chunks: Uint8Array[] = [];
for await (const c of compressStream('xz', dumpPath(path.join(dir, 'hello')))) chunks.push(c);
const narXz = Buffer.concat(chunks);
const { hash } = await hashPath(path.join(dir, 'hello'));
const server = createServer((req, res) => {
  if (req.url !== '/hello.nar.xz') {
    res.writeHead(404).end('not here\n');
    return;
  }
  res.writeHead(200, { 'content-length': narXz.length }).end(narXz);
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hello.nar.xz`;

const { store } = await openDemoStore();
const engine = new BuildEngine({ store });
let shown = 0;
engine.on('progress', (p) => {
  if (p.download.done === shown) return;
  shown = p.download.done;
  console.log(`  downloaded ${p.download.done} of ${p.download.expected} bytes`);
});
try {
  // import <nix/fetchurl.nix> { url = …; unpack = true; hash = …; name = "hello"; }
  const hello = await fetchurl(store, { url, unpack: true, hash: hash.sri, name: 'hello' });
  console.log(`fetchurl: ${hello.drvPath}`);
  await engine.buildPaths([hello.drvPath]);
  console.log(`  -> ${hello.outPath}`);

  // nix-env -i: the manifest and the user environment linking the package's tree.
  const env = await buildEnv(store, [{ name: 'hello-1.0', outputs: { out: hello.outPath }, system: 'builtin', meta: { priority: 5 } }]);
  const [r] = await engine.buildPaths([env.derivation.drvPath]);
  const profile = r!.result.builtOutputs!.out!;
  console.log(`user environment: ${profile}`);
  // One package brings bin/: the profile links the directory itself (a second one would merge it).
  console.log(`  bin -> ${readlinkSync(path.join(store.toRealPath(profile), 'bin'))}`);
  console.log(`  manifest.nix -> ${readlinkSync(path.join(store.toRealPath(profile), 'manifest.nix'))}`);
} finally {
  await engine.close();
  await store.close();
  server.close();
  rmSync(dir, { recursive: true, force: true });
}
