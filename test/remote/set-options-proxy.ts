/**
 * A Unix socket in front of a daemon's that passes everything through and records, per connection, every
 * SetOptions its client sent: what a Nix client tells the daemon, to compare ours with Nix's own.
 */
import { createConnection, createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

/** One SetOptions as sent: its fixed fields (the obsolete ones left out) and its overrides. */
export interface SentOptions {
  keepFailed: number;
  keepGoing: number;
  tryFallback: number;
  verbosity: number;
  maxBuildJobs: number;
  maxSilentTime: number;
  buildCores: number;
  useSubstitutes: number;
  overrides: Record<string, string>;
}

const SET_OPTIONS = 19;

/**
 * Every SetOptions in a client's stream. Everything a worker-protocol client writes is 8-byte words (strings
 * are padded), so a SetOptions starts on a word boundary: op 19, six fields, then the obsolete
 * useBuildHook = 1, verboseBuild (0 or 7), logType = 0 and printBuildTrace = 0, which nothing else sent here
 * repeats.
 */
export function setOptionsIn(stream: Buffer): SentOptions[] {
  const found: SentOptions[] = [];
  const word = (at: number): number => Number(stream.readBigUInt64LE(at));
  for (let at = 0; at + 8 * 14 <= stream.length; at += 8) {
    if (word(at) !== SET_OPTIONS || word(at + 56) !== 1 || ![0, 7].includes(word(at + 64)) || word(at + 72) !== 0 || word(at + 80) !== 0) continue;
    const [keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime] = [1, 2, 3, 4, 5, 6].map((i) => word(at + 8 * i)) as number[];
    let o = at + 88;
    const u64 = (): number => {
      const v = word(o);
      o += 8;
      return v;
    };
    const str = (): string => {
      const len = u64();
      const s = stream.subarray(o, o + len).toString('utf8');
      o += Math.ceil(len / 8) * 8;
      return s;
    };
    const [buildCores, useSubstitutes] = [u64(), u64()];
    const overrides: Record<string, string> = {};
    for (let n = u64(); n > 0; n--) {
      const k = str();
      overrides[k] = str();
    }
    found.push({
      keepFailed: keepFailed!,
      keepGoing: keepGoing!,
      tryFallback: tryFallback!,
      verbosity: verbosity!,
      maxBuildJobs: maxBuildJobs!,
      maxSilentTime: maxSilentTime!,
      buildCores,
      useSubstitutes,
      overrides,
    });
    at = o - 8;
  }
  return found;
}

export interface SetOptionsProxy {
  /** Once every connection has closed: the SetOptions of each (in the order they closed), forgotten here. */
  take(): Promise<SentOptions[][]>;
  close(): Promise<void>;
}

/** Listen on `listen`, forwarding each connection to the daemon at `target`. */
export async function setOptionsProxy(listen: string, target: string): Promise<SetOptionsProxy> {
  let done: SentOptions[][] = [];
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const daemon = createConnection(target);
    const chunks: Buffer[] = [];
    open.add(client).add(daemon);
    client.on('data', (b: Buffer) => {
      chunks.push(b);
      daemon.write(b);
    });
    daemon.on('data', (b: Buffer) => client.write(b));
    client.on('close', () => {
      daemon.end();
      done.push(setOptionsIn(Buffer.concat(chunks)));
    });
    daemon.on('close', () => client.end());
    for (const s of [client, daemon]) {
      s.on('error', () => {});
      s.on('close', () => open.delete(s));
    }
  });
  server.listen(listen);
  await once(server, 'listening');
  return {
    async take() {
      for (let i = 0; i < 100 && open.size; i++) await sleep(50);
      const t = done;
      done = [];
      return t;
    },
    async close() {
      for (const s of open) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
