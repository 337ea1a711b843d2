/**
 * realise: Nix's build engine as a TypeScript SDK. Public surface only (re-exports).
 */
// Engine
export { BuildEngine, parseTarget, type BuildPathsOptions } from './scheduler/build-engine.js';
export { alreadyValidResults } from './scheduler/already-valid.js';
export type { BuildEngineOptions, SandboxMode } from './scheduler/options.js';
export type {
  BuildEngineEvents,
  BuildEngineEventName,
  BuilderActivityEvent,
  EventPayloads,
  Stamped,
  Progress,
  ProgressCounters,
  GoalKind,
} from './scheduler/events.js';
export {
  exitStatusOf,
  isSuccess,
  keptBuildDirNote,
  stoppedResult,
  withLogTail,
  type BuildResult,
  type BuildStatus,
  type BuildTarget,
  type FailureDetails,
  type TargetResult,
} from './scheduler/results.js';
export { goalKey } from './scheduler/paths.js';
export { BuildFailedError, BuildSetupError, BuildCancelledError, BuilderLogMessageError, OptionsError } from './scheduler/errors.js';
export type { MissingInfo } from './scheduler/query-missing.js';
export type { BuildMode } from './scheduler/worker.js';

// Seeing a build: Nix's internal-json log stream, Chrome trace files, the HTML report
export {
  NixJsonLog,
  attachNixJsonLog,
  buildActivityText,
  copyPathMessage,
  ActivityType,
  ResultType,
  LogLevel,
  type NixJsonLogOptions,
} from './observe/nix-json.js';
export { TraceRecorder, recordTrace, type TraceEvent, type TraceFile, type TraceRecorderOptions } from './observe/trace.js';
export { renderReport, analyseTrace, formatDuration, type RunAnalysis, type TimelineItem, type GoalSummary } from './observe/report.js';

// Store
export { RealiseError, BadHashError, InvalidStorePathError, BadNarError, StoreError, UnsupportedFileTypeError } from './store/errors.js';
export { strerror, systemErrorMessage } from './store/system-error.js';
export {
  Hash,
  HashSink,
  HashModulo,
  toNixBase32,
  fromNixBase32,
  toBase16,
  fromBase16,
  toBase64,
  fromBase64,
  compressHash,
  type HashAlgorithm,
  type HashFormat,
} from './store/hash.js';
export {
  DEFAULT_STORE_DIR,
  parseStorePath,
  isStorePath,
  checkStorePathName,
  storePathHashPart,
  storePathName,
  storePathBase,
  toStorePath,
  makeStorePath,
  makeType,
  makeOutputPath,
  outputPathName,
  makeFixedOutputPath,
  makeTextPath,
  computeTextPath,
  hashPlaceholder,
  downstreamPlaceholder,
  type StorePath,
  type ParsedStorePath,
  type FileIngestionMethod,
} from './store/store-path.js';
export { dumpPath, restorePath, parseNar, hashNar, hashPath, narOfRegularFile, type NarSink, type RestoreOptions } from './store/nar.js';
export { RefScanner, scanForReferences } from './store/references.js';
export type { Store, PathInfo, NarSource, PathLocks, OpenedLocks, AddToStoreOptions, Realisation } from './store/store-api.js';
export { LocalStore, defaultStoreRoot, resolveLayout, type LocalStoreOptions, type LocalStoreLayout } from './store/local-store.js';
export { MemoryStore, type MemoryStoreOptions } from './store/memory-store.js';
export { PathAliveError, type GcAction, type GcOptions, type GcEvent, type GcResult } from './store/gc.js';
export { parseStoreUri, type ParsedStoreUri } from './store/store-uri.js';

// Derivations
export {
  parseDerivation,
  printDerivation,
  hashDerivationModulo,
  writeDerivation,
  computeDerivationPath,
  derivationKind,
  isDerivationPath,
  readDerivationFromStore,
  staticOutputHashes,
  DerivationHasher,
  computeOutputPaths,
  makeCaOutputPath,
  fixedOutputPath,
  derivationOutputsAndPaths,
  derivationOutputNames,
  isFixedOutputDerivation,
  derivationReferences,
  derivationNameFromPath,
  type Derivation,
  type DerivationOutput,
  type DerivationKind,
  type OutputSpec,
  type ReadDerivation,
} from './derivation/derivation.js';
export { BadDerivationError, InvalidDerivationAttrsError } from './derivation/errors.js';
export { tryResolve, needsResolution, type InputOutputPaths, type ResolveResult } from './derivation/resolve.js';
export { ParsedDerivation, DEFAULT_SYSTEM_FEATURES, defaultSystemFeatures } from './derivation/parsed-attrs.js';

// Substituters and binary caches (the whole public part of src/substituter)
export * from './substituter/index.js';

// Sandboxes
export type { Sandbox, SandboxRequest, SandboxRunOptions, SandboxExit, SandboxWarmUp } from './platform/sandbox.js';
export { NoSandbox, type NoSandboxOptions } from './platform/no-sandbox.js';
export { LinuxSandbox, type LinuxSandboxOptions } from './platform/linux-sandbox.js';
export { SandboxError, type SandboxErrorCode } from './platform/sandbox-errors.js';
export { sandboxAvailable, chooseSandbox, type SandboxProbe, type ChooseSandboxOptions } from './platform/probe.js';
export { parseSandboxPaths, checkImpureHostDeps, type SandboxPath } from './platform/sandbox-config.js';
export { compileOptimiseAddon } from './platform/native-optimise.js';

// Derivations from TypeScript (Nix's `derivation` builtin, builtins.path, builtins.toFile)
export {
  derivation,
  instantiateDerivation,
  addPath,
  addText,
  derivationFromStore,
  DerivationValue,
  OutputValue,
  type DerivationAttrs,
  type DerivationOptions,
  type AddPathOptions,
} from './derivation/instantiate.js';
export { NixString, nix, concat, withContext, storePathString, outputString, drvPathString, type AttrValue, type Contextual } from './derivation/context.js';
// Nix's corepkgs: `import <nix/fetchurl.nix>` and nix-env's user environments
export {
  fetchurl,
  buildEnv,
  type FetchurlArgs,
  type UserEnvPackage,
  type BuildEnvOptions,
  type UserEnvironment,
  type MetaValue,
} from './derivation/corepkgs.js';

// Nix's built-in builders (run by the engine; usable as a Sandbox of their own)
export { BuiltinBuilders, isBuiltinBuilder, type BuiltinBuildersOptions } from './builtins/builtin-builders.js';

// Remote builders (Nix's build hook over ssh-ng:// and ssh://)
export {
  createRemoteBuilders,
  MachineBuilder,
  buildOnRemote,
  type RemoteBuilder,
  type RemoteBuildResult,
  type RemoteBuildOptions,
  type RemoteBuildSettings,
  type MachineBuilderOptions,
  type RemoteDispatch,
  type RemoteStep,
} from './remote/remote-builder.js';
export {
  parseMachines,
  formatMachines,
  selectMachine,
  machine,
  type Machine,
  type MachineOptions,
  type MachineRequest,
  type MachineChoice,
} from './remote/machines.js';
export { RemoteBuildError, NoMachineError, MachineSpecError, RemoteConnectionError, RemoteProtocolError, RemoteDaemonError } from './remote/errors.js';
export { StdioTransport, SocketTransport, type Transport } from './remote/transport.js';
export { WorkerConnection, type RemoteLogEvent } from './remote/worker-protocol.js';
export { ServeConnection } from './remote/serve-protocol.js';

// A store over the Nix daemon (a system Nix installation); openStore takes its URIs and local ones
export { DaemonStore, type DaemonStoreOptions } from './remote/daemon-store.js';
export type { WorkerOptions } from './remote/worker-protocol.js';
export { DEFAULT_DAEMON_SOCKET, daemonSocketOfUri, openStore } from './remote/open-store.js';
