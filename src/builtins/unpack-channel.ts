/**
 * builtin:unpack-channel, as Nix 2.8's: unpack the tarball `src` into `out`, which must then hold exactly
 * one entry; that entry is renamed to `channelName`.
 */
import { promises as fsp } from 'node:fs';
import { BuiltinFailure, hintfmt, sysErrorMessage } from './log.js';
import { unpackTarfile } from './tar.js';

export async function builtinUnpackChannel(getAttr: (name: string) => string, real: (logical: string) => string, signal?: AbortSignal): Promise<void> {
  const logicalOut = getAttr('out');
  const out = real(logicalOut);
  const channelName = getAttr('channelName');
  const src = getAttr('src');
  try {
    await fsp.mkdir(out, { recursive: true });
  } catch (e) {
    throw new BuiltinFailure(sysErrorMessage(e, "creating directory '%1%'", logicalOut), { cause: e });
  }
  await unpackTarfile(real(src), out, { ...(signal ? { signal } : {}), shownFile: src, shownDest: logicalOut });
  let entries: string[];
  try {
    entries = await fsp.readdir(out);
  } catch (e) {
    throw new BuiltinFailure(sysErrorMessage(e, "opening directory '%1%'", logicalOut), { cause: e });
  }
  if (entries.length !== 1) throw new BuiltinFailure(hintfmt("channel tarball '%s' contains more than one file", src));
  try {
    await fsp.rename(`${out}/${entries[0]}`, `${out}/${channelName}`);
  } catch (e) {
    throw new BuiltinFailure(sysErrorMessage(e, 'renaming channel directory'), { cause: e });
  }
}
