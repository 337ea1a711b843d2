/**
 * builtin:fetchurl, as Nix 2.8's: download `url` to the output (a flat file, made executable with
 * `executable = "1"`), or with `unpack = "1"` restore the NAR it is (decompressed first when the URL
 * ends in `.xz`, as Nix 2.8 does). For flat fixed outputs the `hashed-mirrors` are tried first
 * (`<mirror>/<algo>/<base16 hash>`), quietly. The scheduler checks the fixed-output hash afterwards.
 */
import { createWriteStream, promises as fsp } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Hash } from '../store/hash.js';
import { BadNarError } from '../store/errors.js';
import { restorePath } from '../store/nar.js';
import { decompressStream, peek } from '../substituter/compression.js';
import { download, type DownloadOptions } from './download.js';
import { BuiltinFailure, DownloadActivity, hintfmt, nixErrorWords, plainMessage } from './log.js';

export interface FetchurlContext extends Omit<DownloadOptions, 'onProgress'> {
  readonly hashedMirrors: readonly string[];
  /** Physical path of a logical store path. */
  readonly real: (logical: string) => string;
  /** Append to the build log. */
  readonly log: (text: string) => void;
  /** Download progress, for the engine's counters: bytes done and expected so far (0 when unknown). */
  readonly onProgress: (done: number, expected: number) => void;
}

export async function builtinFetchurl(getAttr: (name: string) => string, env: Readonly<Record<string, string>>, ctx: FetchurlContext): Promise<void> {
  const storePath = ctx.real(getAttr('out'));
  const mainUrl = getAttr('url');
  const unpack = env.unpack === '1';

  const fetch = async (url: string) => {
    const act = new DownloadActivity(ctx.log, url);
    let last = { done: 0, expected: 0 };
    try {
      await download(
        url,
        async (body) => {
          if (unpack) {
            await unpackNar(storePath, mainUrl.endsWith('.xz') ? decompressStream('xz', body) : body);
          } else {
            await pipeline(body, createWriteStream(storePath, { flags: 'w', mode: 0o666 }), { signal: ctx.signal });
          }
        },
        {
          ...ctx,
          onProgress: (done, expected) => {
            last = { done, expected };
            act.progress(done, expected);
            ctx.onProgress(done, expected);
          },
        },
      );
    } finally {
      act.progress(last.done, last.expected, true);
      act.stop();
    }
    if (env.executable === '1') {
      try {
        await fsp.chmod(storePath, 0o755);
      } catch (e) {
        throw new BuiltinFailure(hintfmt("making '%1%' executable: %2%", getAttr('out'), (e as Error).message), { cause: e });
      }
    }
  };

  // The hashed mirrors first, for flat fixed outputs; their failures are not reported (Nix's debug level).
  if (getAttr('outputHashMode') === 'flat') {
    for (let mirror of ctx.hashedMirrors) {
      try {
        if (!mirror.endsWith('/')) mirror += '/';
        const algo = getAttr('outputHashAlgo');
        const outputHash = getAttr('outputHash');
        const h =
          outputHash === '' && algo !== ''
            ? new Hash(algo as Hash['algorithm'], new Uint8Array(Hash.of(algo as Hash['algorithm'], '').bytes.length))
            : Hash.parse(outputHash, algo === '' ? undefined : (algo as Hash['algorithm']));
        await fetch(`${mirror}${h.algorithm}/${h.base16}`);
        return;
      } catch (e) {
        if (ctx.signal.aborted) throw e;
        if (!(e instanceof Error)) throw e;
      }
    }
  }
  try {
    await fetch(mainUrl);
  } catch (e) {
    if (e instanceof BuiltinFailure || !(e instanceof Error)) throw e;
    throw new BuiltinFailure(nixErrorWords(e), { cause: e });
  }
}

/** The NAR format's version string, which a NAR starts with (as a length-prefixed, zero-padded string). */
const NAR_VERSION = 'nix-archive-1';

/**
 * `unpack`: restore the downloaded NAR at `target` with Nix's words for bad data. Nix reads the version
 * string first and says `bad archive: input doesn't look like a Nix archive` when its length or contents
 * are wrong; when the data ends early (there or later) its reader says `coroutine has finished`. Bytes
 * after the archive's end are not read.
 */
async function unpackNar(target: string, body: AsyncIterable<Uint8Array>): Promise<void> {
  const { head, rest } = await peek(body, 8 + Math.ceil(NAR_VERSION.length / 8) * 8);
  const ended = () => new BuiltinFailure(plainMessage('coroutine has finished'));
  const notNar = () => new BuiltinFailure(plainMessage("bad archive: input doesn't look like a Nix archive"));
  if (head.length < 8) throw ended();
  const len = head.readBigUInt64LE(0);
  if (len > BigInt(NAR_VERSION.length)) throw notNar();
  const end = 8 + Math.ceil(Number(len) / 8) * 8;
  if (head.length < end) throw ended();
  if (head.toString('latin1', 8, 8 + Number(len)) !== NAR_VERSION || head.subarray(8 + Number(len), end).some((b) => b !== 0)) throw notNar();
  try {
    await restorePath(target, rest, { expectEnd: false });
  } catch (e) {
    if (e instanceof BadNarError && /ends unexpectedly/.test(e.shortMessage)) throw ended();
    throw e;
  } finally {
    await rest.return?.();
  }
}
