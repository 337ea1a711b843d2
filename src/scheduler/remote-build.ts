/**
 * The build hook: hand a derivation to a remote machine when one fits (src/remote chooses the least loaded
 * fitting machine and redoes the build elsewhere when one dies). Remote builds hold no local build slot.
 * Returns undefined to build locally (no machine fits), or the remote's result.
 */
import type { StorePath } from '../store/store-path.js';
import { buildOnRemote, machineStoreName, type RemoteBuildOptions, type RemoteBuildResult } from '../remote/remote-builder.js';
import { RemoteConnectionError, type RemoteBuildError } from '../remote/errors.js';
import { noMachineReport, type MachineRequest } from '../remote/machines.js';
import { canBuildHere, preferLocalBuild, requiredSystemFeatures, type DrvView } from './drv-view.js';
import { failure, isSuccess, messageParts, success, type BuildResult } from './results.js';
import { postBuildHook } from './local-build.js';
import { colouredMessageOf, shortMessageOf } from '../store/errors.js';
import { colouredValue, ERROR_PREFIX, hintfmt, plainMessage, type NixMessage } from '../store/nix-message.js';
import type { Worker } from './worker.js';
import { slotGate } from './slot-gate.js';

/**
 * Whether to build here rather than hand the build to the hook: Nix's hook declines when this machine can
 * build and has a free slot; we prefer remote slots only when the local queue is busy, so remote machines
 * add capacity. True claims the free slot (SlotGate.reserve) until the local build asks for it.
 */
function buildsHere(w: Worker, view: DrvView, local: boolean): boolean {
  const { options, buildQueue } = w.ctx;
  return local && !remoteOnly(options) && slotGate(buildQueue).reserve(view.drvPath, Math.max(1, options.maxJobs));
}

/**
 * The engine's events of one remote build: build-started per machine it starts on (a lost connection
 * starts it again elsewhere, which finishes the first as failed), its log, its steps and the remote's own
 * activities while it runs there, and build-finished once (`end`).
 */
function remoteBuildEvents(
  w: Worker,
  view: DrvView,
): {
  callbacks: Pick<RemoteBuildOptions, 'onLog' | 'onEvent' | 'onStep' | 'onStderr' | 'onStart' | 'onMachineFailed'>;
  end: (outcome: 'success' | 'failure' | 'stopped') => void;
  saveLog: () => Promise<void>;
} {
  const { drvPath } = view;
  /** The machine of the build-started not yet finished. */
  let startedOn: string | undefined;
  /** The log lines of the build on its last machine: the local build log, as Nix keeps it for `nix-store -l`. */
  let log: string[] = [];
  /** Ends the hold on local build slots while a machine is connected to. */
  let connecting: (() => void) | undefined;
  const end = (outcome: 'success' | 'failure' | 'stopped') => {
    if (startedOn === undefined) return;
    w.ctx.emit('build-finished', { drvPath, round: 1, rounds: 1, machine: startedOn, outcome });
    startedOn = undefined;
  };
  const saveLog = async (): Promise<void> => {
    // Empty for a builder that printed nothing: Nix opens the log file once the hook takes the build.
    await w.ctx.store.addBuildLog(drvPath, log.length ? log.join('\n') + '\n' : '').catch(() => {});
  };
  const callbacks: Pick<RemoteBuildOptions, 'onLog' | 'onEvent' | 'onStep' | 'onStderr' | 'onStart' | 'onMachineFailed'> = {
    onLog: (line) => {
      log.push(line);
      w.ctx.emit('build-log', { drvPath, line });
    },
    onEvent: (event) => {
      if (startedOn === undefined) return;
      // A message of the machine's daemon (a builder's `@nix` msg there): Nix's hook prints it as an error
      // message, which Nix passes on as a plain line (a msg at level 0 in internal-json).
      if (event.type === 'message') w.warn(event.text, 'plain');
      w.ctx.emit('remote-log', { drvPath, machine: startedOn, event });
    },
    // The connection step comes before the machine takes the build (onStart); no local build starts
    // meanwhile with one slot (SlotGate.hold).
    onStep: (step, phase, machine) => {
      if (step.kind === 'connect') {
        if (phase === 'start') connecting = slotGate(w.ctx.buildQueue).hold();
        else connecting?.();
      }
      w.ctx.emit('remote-step', { drvPath, machine, store: machineStoreName(machine), step, phase });
    },
    // What an ssh-ng:// machine's ssh wrote, as it comes (Nix's ssh writes to Nix's stderr), unfiltered.
    onStderr: (text) => w.warn(text, 'raw'),
    // Said as it happens, as Nix's hook does before it tries the next machine.
    onMachineFailed: (e) => reportFailedMachine(w, e),
    onStart: (machine) => {
      end('failure');
      log = [];
      startedOn = machine;
      w.ctx.emit('build-started', { drvPath, round: 1, rounds: 1, machine, mode: w.mode === 'repair' ? 'repair' : w.mode === 'check' ? 'check' : 'normal' });
      // The machine takes Nix's hook with it (after its "building '…' on '…'").
      w.hook.taken(drvPath);
    },
  };
  return { callbacks, end, saveLog };
}

/** The BuildResult of a build the remote ran (`started`: when we handed it over, for a remote that gives no times). */
function remoteBuildResult(r: RemoteBuildResult, drvPath: StorePath, started: number): BuildResult {
  const outs: Record<string, StorePath> = {};
  for (const [n, p] of r.builtOutputs) outs[n] = p;
  const times = {
    startTime: r.startTime || started,
    stopTime: r.stopTime || Math.floor(Date.now() / 1000),
    timesBuilt: r.timesBuilt,
    isNonDeterministic: r.isNonDeterministic,
  };
  if (isRemoteSuccess(r)) return success('built', outs, times);
  // As Nix 2.8's hook: any failure there (a builder's exit status, a timeout) is the hook's own exit status 1
  // here, a misc-failure (exit status 1) worded as a builder's that exited with 1; the hook's own message
  // (with the remote's errorMsg, and so its log tail, in full) comes before it (remoteFailureMessage).
  return failure('misc-failure', messageParts(hintfmt("builder for '%s' %s", drvPath, plainMessage('failed with exit code 1'))), times);
}

/**
 * What Nix 2.8's hook prints when the build failed there: the machine and the remote's errorMsg, which goes
 * in as one value, its own colours kept (as the remote sent it).
 */
function remoteFailureMessage(r: RemoteBuildResult, drvPath: StorePath): NixMessage {
  const remote = r.errorMsg ? { plain: r.errorMsg, coloured: colouredValue((r.colouredErrorMsg ?? r.errorMsg).trimEnd()) } : r.status;
  return hintfmt("build of '%s' on '%s' failed: %s", drvPath, r.machine, remote);
}

const isRemoteSuccess = (r: RemoteBuildResult) => r.status === 'built' || r.status === 'substituted' || r.status === 'already-valid';

export async function tryRemoteBuild(w: Worker, view: DrvView, inputPaths: Set<StorePath>): Promise<BuildResult | undefined> {
  const { options, store } = w.ctx;
  const local = canBuildHere(view, options) && options.maxJobs > 0;

  const started = Math.floor(Date.now() / 1000);
  const expected = w.ctx.progress.expect('builds');
  const running = w.ctx.progress.running('builds');
  const events = remoteBuildEvents(w, view);
  try {
    const dispatch = await buildOnRemote(
      options.builders,
      view.drvPath,
      view.drv,
      // preferLocalBuild counts only where it can be honoured (Nix's willBuildLocally).
      { requiredFeatures: requiredSystemFeatures(view), preferLocalBuild: local && preferLocalBuild(view) },
      {
        store,
        signal: w.signal,
        // As Nix's hook: a machine with a free slot takes the build even when a local slot is free too; when
        // every machine is busy, a free local slot builds it here.
        localSlotFree: () => buildsHere(w, view, local),
        // While the machines are busy, a local slot given back has it asked again (built here if it is free).
        onBusy: (signal) => (local && !remoteOnly(options) ? slotGate(w.ctx.buildQueue).nextGiveBack(signal) : undefined),
        inputPaths,
        useSubstitutes: options.buildersUseSubstitutes,
        ...events.callbacks,
        buildSettings: {
          buildTimeout: options.buildTimeout,
          maxSilentTime: options.maxSilentTime,
          maxLogSize: options.maxLogSize,
          keepFailed: options.keepFailed,
        },
      },
    );
    if (dispatch.kind === 'declined') {
      // Not built there after all: counted neither as a build nor as expected. Built here if it can be;
      // if not, Nix's hook says why no machine took it, and the local build refuses it in Nix's words.
      running.end('dropped');
      expected.withdraw();
      // Nix's hook logs it at its warning level, without prefix, the values in hintfmt's colours (kept on a
      // terminal and in internal-json; a display off a terminal filters them, as Nix's).
      if (!local) {
        const machines = options.builders.map((b) => b.machine);
        const request = hookRequest(view);
        const report = noMachineReport(machines, request);
        const colouredMessage = noMachineReport(machines, request, colouredValue);
        w.ctx.emit('warning', { message: report, colouredMessage, level: 'plain', verbosity: 1 });
      }
      return undefined;
    }
    await events.saveLog();
    // As Nix 2.8's buildDone, the post-build hook runs here too once the outputs are back (its failure is the build's).
    const built = remoteBuildResult(dispatch.result, view.drvPath, started);
    if (!isRemoteSuccess(dispatch.result)) {
      const m = remoteFailureMessage(dispatch.result, view.drvPath);
      w.ctx.emit('warning', { message: m.plain, level: 'error', hookLine: m.coloured });
    }
    const hookError = isRemoteSuccess(dispatch.result) ? await postBuildHook(w, view.drvPath, Object.values(built.builtOutputs)) : undefined;
    const result = hookError === undefined ? built : failure('misc-failure', hookError, { startTime: built.startTime, stopTime: built.stopTime });
    const ok = isSuccess(result.status);
    events.end(ok ? 'success' : 'failure');
    running.end(ok);
    return result;
  } catch (e) {
    // A build the call stopped is neither done nor failed.
    events.end(w.signal.aborted ? 'stopped' : 'failure');
    running.end(w.signal.aborted ? 'dropped' : false);
    if (w.signal.aborted) throw e;
    if (options.fallback && local) {
      w.warn(`remote build of '${view.drvPath}' failed (${shortMessageOf(e)}); building locally`);
      return undefined;
    }
    return failure('misc-failure', (e as Error).message);
  }
}

/** With maxJobs 0 everything goes to the hook, as in Nix (preferLocalBuild cannot be honoured). */
function remoteOnly(options: { maxJobs: number }): boolean {
  return options.maxJobs === 0;
}

function hookRequest(view: DrvView): MachineRequest {
  return { system: view.drv.platform, requiredFeatures: requiredSystemFeatures(view), drvPath: view.drvPath };
}

/**
 * Nix's hook prints a line for every machine it could not use: "cannot build on '…': " and its error as
 * Nix prints one (`error: …`), after what an `ssh-ng://` machine's ssh wrote to stderr (onStderr).
 */
function reportFailedMachine(w: Worker, e: RemoteBuildError): void {
  const cause = e.cause ?? e;
  // In Nix's colours (a display off a terminal filters them, as Nix's): its error's prefix and values.
  w.warn(
    {
      plain: `cannot build on '${e.machine}': error: ${shortMessageOf(cause)}`,
      coloured: `cannot build on '${e.machine}': ${ERROR_PREFIX}${colouredMessageOf(cause)}`,
    },
    'plain',
  );
}
