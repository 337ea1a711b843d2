/**
 * A RemoteBuilder written by a user need not tell `onStart`: the engine still says the build started on its
 * machine (build-started) and passes its log events on (remote-log, build-log). Fake builders that answer
 * with a failed build, one passing a log event and a line on, one silent.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuildEngine } from '../../src/scheduler/build-engine.js';
import { LocalStore } from '../../src/store/local-store.js';
import { machine } from '../../src/remote/machines.js';
import type { RemoteBuilder, RemoteBuildOptions, RemoteBuildResult } from '../../src/remote/remote-builder.js';
import type { RemoteLogEvent } from '../../src/remote/worker-protocol.js';
import { tempDir } from '../helpers/nix.js';
import { FakeSandbox, removeTree, writeTestDrv } from './helpers.js';

let root: string;
let store: LocalStore;

beforeAll(async () => {
  root = tempDir('realise-remote-user-builder-');
  store = await LocalStore.open({ storeDir: path.join(root, 'store'), stateDir: path.join(root, 'state'), logDir: path.join(root, 'log') });
});

afterAll(async () => {
  await store?.close();
  if (root) await removeTree(root);
});

const EVENT: RemoteLogEvent = { type: 'start-activity', id: 7n, level: 3, activityType: 0, text: 'on the fake machine', fields: [], parent: 0n };

/** A machine whose builds fail there, never calling `onStart`; `talks`: it passes a log event and a log line on first. */
function userBuilder(name: string, talks: boolean): RemoteBuilder {
  const m = machine({ storeUri: name, systemTypes: ['x86_64-linux'], maxJobs: 1 });
  return {
    name,
    machine: m,
    load: 0,
    disabledReason: () => undefined,
    waitForSlot: () => Promise.resolve(),
    build(drvPath, _drv, opts: RemoteBuildOptions): Promise<RemoteBuildResult> {
      if (talks) {
        opts.onEvent?.(EVENT);
        opts.onLog?.('a line from the fake machine');
      }
      return Promise.resolve({
        status: 'permanent-failure',
        errorMsg: `the fake machine fails '${drvPath}'`,
        machine: name,
        builtOutputs: new Map(),
        timesBuilt: 1,
        isNonDeterministic: false,
        startTime: 0,
        stopTime: 0,
        copiedInputs: [],
        copiedOutputs: [],
        timings: { connect: 0, upload: 0, build: 0, download: 0 },
      });
    },
    close: () => Promise.resolve(),
  };
}

describe.skipIf(process.arch !== 'x64')('a RemoteBuilder that never calls onStart', () => {
  for (const talks of [true, false]) {
    it(`still has build-started${talks ? ', remote-log and build-log' : ''} on its machine`, async () => {
      const name = `ssh://fake-${talks ? 'talks' : 'silent'}`;
      const sandbox = new FakeSandbox((p) => store.toRealPath(p));
      const engine = new BuildEngine({ store, sandbox, maxJobs: 0, builders: [userBuilder(name, talks)] });
      const drvPath = await writeTestDrv(store, `user-builder-${talks ? 'talks' : 'silent'}`);
      const seen: string[] = [];
      engine.on('build-started', (e) => seen.push(`started ${e.drvPath} on ${e.machine}`));
      engine.on('remote-log', (e) => seen.push(`remote-log ${e.machine} ${e.event.type}`));
      engine.on('build-log', (e) => seen.push(`log ${e.line}`));
      engine.on('build-finished', (e) => seen.push(`finished ${e.drvPath} on ${e.machine}`));
      try {
        await expect(engine.buildPaths([{ drvPath, outputs: ['out'] }])).rejects.toThrow(`builder for '${drvPath}' failed with exit code 1`);
        expect(seen).toEqual([
          `started ${drvPath} on ${name}`,
          ...(talks ? [`remote-log ${name} start-activity`, 'log a line from the fake machine'] : []),
          `finished ${drvPath} on ${name}`,
        ]);
        expect(sandbox.started).toHaveLength(0);
      } finally {
        await engine.close();
      }
    });
  }
});
