/**
 * builtin:unpack-channel, as Nix 2.8's: unpack the tarball `src` into `out`, which must then hold exactly
 * one entry; that entry is renamed to `channelName`.
 */
import { promises as fsp } from 'node:fs';
import { BuiltinFailure, hintfmt, sys } from './log.js';
import { unpackTarfile } from './tar.js';

export async function builtinUnpackChannel(getAttr: (name: string) => string, real: (logical: string) => string, signal?: AbortSignal): Promise<void> {
  const logicalOut = getAttr('out');
  const out = real(logicalOut);
  const channelName = getAttr('channelName');
  const src = getAttr('src');
  await sys(fsp.mkdir(out, { recursive: true }), "creating directory '%1%'", logicalOut);
  await unpackTarfile(real(src), out, { ...(signal ? { signal } : {}), shownFile: src, shownDest: logicalOut });
  const entries = await sys(fsp.readdir(out), "opening directory '%1%'", logicalOut);
  if (entries.length !== 1) throw new BuiltinFailure(hintfmt("channel tarball '%s' contains more than one file", src));
  await sys(fsp.rename(`${out}/${entries[0]}`, `${out}/${channelName}`), 'renaming channel directory');
}
