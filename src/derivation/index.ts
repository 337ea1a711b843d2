/**
 * The public surface of the derivation layer (re-exported by src/index.ts).
 */
export {
  parseDerivation,
  printDerivation,
  derivationNameFromPath,
  isDerivationPath,
  readDerivationFromStore,
  derivationKind,
  DerivationHasher,
  hashDerivationModulo,
  staticOutputHashes,
  fixedOutputPath,
  makeCaOutputPath,
  derivationOutputsAndPaths,
  derivationOutputNames,
  isFixedOutputDerivation,
  computeOutputPaths,
  derivationReferences,
  computeDerivationPath,
  writeDerivation,
  cloneDerivation,
  printMethodAlgo,
  type Derivation,
  type DerivationOutput,
  type InputAddressedOutput,
  type FixedOutput,
  type FloatingOutput,
  type DeferredOutput,
  type ImpureOutput,
  type DerivationKind,
  type DrvHash,
  type ReadDerivation,
  type OutputSpec,
} from './derivation.js';
export { BadDerivationError, InvalidDerivationAttrsError } from './errors.js';
export { ParsedDerivation, DEFAULT_SYSTEM_FEATURES, defaultSystemFeatures, type OutputChecks, type LocalPlatform, type JsonValue } from './parsed-attrs.js';
export { NixString, nix, concat, withContext, storePathString, outputString, drvPathString, type AttrValue, type Contextual } from './context.js';
export {
  derivation,
  instantiateDerivation,
  derivationFromStore,
  addText,
  addPath,
  OutputValue,
  DerivationValue,
  type DerivationAttrs,
  type DerivationOptions,
  type ExperimentalFeature,
  type AddPathOptions,
  type PathType,
} from './instantiate.js';
export { fetchurl, buildEnv, type FetchurlArgs, type UserEnvPackage, type BuildEnvOptions, type UserEnvironment, type MetaValue } from './corepkgs.js';
export { tryResolve, needsResolution, downstreamPlaceholder, type InputOutputPaths, type ResolveResult } from './resolve.js';
