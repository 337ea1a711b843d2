/** Public surface of the substituter layer (re-exported by src/index.ts). */
export {
  substitutePath,
  checkTrust,
  caProvesPath,
  sortByPriority,
  querySubstitutablePaths,
  SubstituterError,
  type Substituter,
  type SubstitutablePathInfo,
  type FetchNarOptions,
  type TransferEvent,
  type TransferListener,
  type SubstituteOptions,
  type SubstituterErrorCode,
  type FoundSubstitute,
} from './substituter.js';
export { BinaryCacheSubstituter, type BinaryCacheSubstituterOptions } from './binary-cache.js';
export { trustExtraCaCerts } from './undici.js';
export { InMemorySubstituter, type InMemorySubstituterOptions } from './memory.js';
export { NarInfoCache, type NarInfoCacheOptions, type CachedLookup } from './narinfo-cache.js';
export { copyToBinaryCache, unknownBinaryCacheSettings, BinaryCacheWriter, type CopyToBinaryCacheOptions } from './binary-cache-writer.js';
export {
  parseNarInfo,
  printNarInfo,
  fingerprintPath,
  fingerprintOf,
  signPathInfo,
  countValidSignatures,
  parseCacheInfo,
  printCacheInfo,
  compressionExtension,
  isCompression,
  COMPRESSIONS,
  BadNarInfoError,
  type NarInfo,
  type CacheInfo,
  type Compression,
} from './narinfo.js';
export {
  parseSecretKey,
  parsePublicKey,
  publicKeyOf,
  generateKeyPair,
  signDetached,
  verifyDetached,
  checkSignature,
  publicKeyMap,
  BadKeyError,
  type SecretKey,
  type PublicKey,
  type SignatureCheck,
} from './signatures.js';
export { decompressStream, compressStream, DecompressionError } from './compression.js';
