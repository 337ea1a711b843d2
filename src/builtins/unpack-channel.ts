/**
 * builtin:unpack-channel, as Nix 2.8's: unpack the tarball `src` into `out`, which must then hold exactly
 * one entry; that entry is renamed to `channelName`.
 */
import { promises as fsp } from 'node:fs';
import { BuiltinFailure, hintfmt } from './log.js';
import { unpackTarfile } from './tar.js';

export async function builtinUnpackChannel(getAttr: (name: string) => string, real: (logical: string) => string, signal?: AbortSignal): Promise<void> {
  const out = real(getAttr('out'));
  const channelName = getAttr('channelName');
  const src = getAttr('src');
  await fsp.mkdir(out, { recursive: true });
  await unpackTarfile(real(src), out, signal);
  const entries = await fsp.readdir(out);
  if (entries.length !== 1) throw new BuiltinFailure(hintfmt("channel tarball '%s' contains more than one file", src));
  try {
    await fsp.rename(`${out}/${entries[0]}`, `${out}/${channelName}`);
  } catch (e) {
    throw new BuiltinFailure(hintfmt('renaming channel directory: %s', (e as Error).message), { cause: e });
  }
}
