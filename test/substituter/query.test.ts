import { describe, expect, it } from 'vitest';
import { BinaryCacheSubstituter } from '../../src/substituter/binary-cache.js';
import { InMemorySubstituter } from '../../src/substituter/memory.js';
import { caProvesPath, querySubstitutablePaths, sortByPriority } from '../../src/substituter/substituter.js';
import type { TransferEvent } from '../../src/substituter/substituter.js';
import { ALL_PATHS, cacheUrl, narInfos, narOf, PATH_INFO, ROOTS } from './fixtures.js';

async function memoryWith(paths: string[], priority: number): Promise<InMemorySubstituter> {
  const sub = new InMemorySubstituter({ priority });
  for (const ni of narInfos('none').filter((n) => paths.includes(n.storePath))) {
    await sub.add({ path: ni.storePath, references: ni.references, sigs: ni.sigs, ca: ni.ca }, narOf(ni.storePath));
  }
  return sub;
}

describe('querySubstitutablePaths', () => {
  it('takes each path from the first substituter by priority, asks later ones only for the rest, and reports failures', async () => {
    const all = [...PATH_INFO.keys()];
    const low = await memoryWith([ROOTS.top], 10);
    const high = await memoryWith(all, 60);
    const broken = new BinaryCacheSubstituter('http://127.0.0.1:9/', { priority: 20, retries: 0, timeoutMs: 2000 });
    expect(sortByPriority([high, broken, low]).map((s) => s.priority)).toEqual([10, 20, 60]);
    const { found, errors } = await querySubstitutablePaths([high, broken, low], [...all, ROOTS.top]);
    expect(found.get(ROOTS.top)!.substituter).toBe(low);
    for (const p of all.filter((x) => x !== ROOTS.top)) expect(found.get(p)!.substituter).toBe(high);
    expect(low.queried).toBe(all.length);
    expect(high.queried).toBe(all.length - 1);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.code).toBe('network');
    expect(errors[0]!.uri).toBe('http://127.0.0.1:9');
    await broken.close();
  });

  it('recognises content addresses that prove their path (and rejects ones that do not)', () => {
    for (const info of PATH_INFO.values()) {
      const pi = { path: info.path, narHash: undefined as never, narSize: info.narSize, references: info.references, ca: info.ca };
      expect(caProvesPath(pi, '/nix/store')).toBe(info.ca !== undefined);
      if (info.ca) {
        expect(caProvesPath({ ...pi, ca: info.ca.replace(/.$/, (c) => (c === '0' ? '1' : '0')) }, '/nix/store')).toBe(false);
        expect(caProvesPath({ ...pi, references: [...info.references, ROOTS.top] }, '/nix/store')).toBe(false);
      }
    }
  });
});

describe('BinaryCacheSubstituter over file://', () => {
  it('answers the same once open (its queries then read synchronously): the infos, a query activity per narinfo read, none for a path it remembers', async () => {
    const missing = '/nix/store/00000000000000000000000000000000-missing';
    const asked = [...ALL_PATHS, missing, ALL_PATHS[0]!];
    const run = async (open: boolean) => {
      const events: TransferEvent[] = [];
      const sub = new BinaryCacheSubstituter(cacheUrl('none'));
      if (open) await sub.init();
      const first = await sub.queryPathInfos(asked, { onTransfer: (e) => events.push(e) });
      const again = await sub.queryPathInfos([ALL_PATHS[1]!, missing], { onTransfer: (e) => events.push(e) });
      return { first, again, events };
    };
    const cold = await run(false);
    const open = await run(true);
    expect([...open.first.keys()].sort()).toEqual(ALL_PATHS);
    expect(open.first).toEqual(cold.first);
    expect(open.again).toEqual(cold.again);
    expect(open.again.get(ALL_PATHS[1]!)).toEqual(open.first.get(ALL_PATHS[1]!));
    // Each path read once (a started and a finished activity), in the order asked; none for the second query.
    const byPath = (es: TransferEvent[]) =>
      [...es].sort((a, b) => ('path' in a ? a.path : '').localeCompare('path' in b ? b.path : '') || a.kind.localeCompare(b.kind));
    expect(byPath(open.events)).toEqual(byPath(cold.events));
    expect(open.events).toEqual(
      [...ALL_PATHS, missing].flatMap((path) => [
        { kind: 'query-started', path },
        { kind: 'query-finished', path, found: path !== missing },
      ]),
    );
  });
});
