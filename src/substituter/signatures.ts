/**
 * ed25519 signatures in Nix's formats, over node:crypto.
 *
 * Keys are `name:base64`: a secret key holds 64 bytes (the 32-byte seed followed by the public key, as
 * libsodium stores it), a public key 32 bytes. A signature is `name:base64(64 bytes)` over a fingerprint
 * (see `fingerprintPath` in narinfo.ts). Signatures made here are byte-identical to Nix's (ed25519 is
 * deterministic).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { RealiseError } from '../store/errors.js';

/** A malformed key or signature string. */
export class BadKeyError extends RealiseError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('bad-key', message, options);
  }
}

export interface SecretKey {
  readonly name: string;
  /** 64 bytes: seed (32) + public key (32). */
  readonly bytes: Uint8Array;
  readonly keyObject: KeyObject;
}

export interface PublicKey {
  readonly name: string;
  /** 32 bytes. */
  readonly bytes: Uint8Array;
  readonly keyObject: KeyObject;
}

/** DER prefix of a PKCS#8 ed25519 private key; the 32-byte seed follows. */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/**
 * `name:base64` split and decoded, refused in Nix's words (its Key constructor and base64Decode): no name
 * or no key is "secret key is corrupt" (for public keys too), a character outside base-64 is named.
 * Padding is optional, as in Nix's decoder. The key's name and the rule go in the hint.
 */
function splitKey(s: string, what: string): { name: string; bytes: Buffer } {
  const text = s.trim();
  const colon = text.indexOf(':');
  if (colon <= 0 || colon === text.length - 1)
    throw new BadKeyError('secret key is corrupt', {
      hint: `the ${what} '${abbrev(text)}' is not of the form 'name:base64'; use a key made by \`nix-store --generate-binary-cache-key\` or generateKeyPair()`,
    });
  const name = text.slice(0, colon);
  const b64 = text.slice(colon + 1);
  const bad = /[^A-Za-z0-9+/=]/.exec(b64) ?? /=[^=]/.exec(b64);
  if (bad) throw new BadKeyError(`invalid character in Base64 string: '${bad[0].at(-1)}'`, { hint: `the ${what} '${name}' is not valid base-64` });
  return { name, bytes: Buffer.from(b64, 'base64') };
}

function abbrev(s: string): string {
  return s.length > 40 ? s.slice(0, 40) + '…' : s;
}

/** Parse a secret key `name:base64(64 bytes)` as written by `nix-store --generate-binary-cache-key`. */
export function parseSecretKey(s: string): SecretKey {
  const { name, bytes } = splitKey(s, 'secret key');
  if (bytes.length !== 64) throw new BadKeyError('secret key is not valid', { hint: `the secret key '${name}' has ${bytes.length} bytes, expected 64` });
  const keyObject = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, bytes.subarray(0, 32)]), format: 'der', type: 'pkcs8' });
  return { name, bytes: new Uint8Array(bytes), keyObject };
}

/** Parse a public key `name:base64(32 bytes)`. */
export function parsePublicKey(s: string): PublicKey {
  const { name, bytes } = splitKey(s, 'public key');
  if (bytes.length !== 32) throw new BadKeyError('public key is not valid', { hint: `the public key '${name}' has ${bytes.length} bytes, expected 32` });
  let keyObject: KeyObject;
  try {
    keyObject = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: bytes.toString('base64url') }, format: 'jwk' });
  } catch (cause) {
    throw new BadKeyError(`public key '${name}' is not a valid ed25519 key`, { cause });
  }
  return { name, bytes: new Uint8Array(bytes), keyObject };
}

/** The public key of a secret key, as `name:base64`. */
export function publicKeyOf(secret: SecretKey | string): string {
  const sk = typeof secret === 'string' ? parseSecretKey(secret) : secret;
  const jwk = createPublicKey(sk.keyObject).export({ format: 'jwk' });
  return `${sk.name}:${Buffer.from(jwk.x as string, 'base64url').toString('base64')}`;
}

/** A new key pair in Nix's formats (what `nix-store --generate-binary-cache-key NAME` prints to its files). */
export function generateKeyPair(name: string): { secretKey: string; publicKey: string } {
  if (!name || name.includes(':')) throw new BadKeyError(`key name '${name}' must be non-empty and contain no ':'`);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwkPriv = privateKey.export({ format: 'jwk' });
  const seed = Buffer.from(jwkPriv.d as string, 'base64url');
  const pub = Buffer.from(jwkPriv.x as string, 'base64url');
  void publicKey;
  return {
    secretKey: `${name}:${Buffer.concat([seed, pub]).toString('base64')}`,
    publicKey: `${name}:${pub.toString('base64')}`,
  };
}

/** Sign `data` (a fingerprint); returns `name:base64sig`. */
export function signDetached(data: string | Uint8Array, key: SecretKey | string): string {
  const sk = typeof key === 'string' ? parseSecretKey(key) : key;
  const sig = sign(null, typeof data === 'string' ? Buffer.from(data, 'utf8') : data, sk.keyObject);
  return `${sk.name}:${sig.toString('base64')}`;
}

export type SignatureCheck = 'valid' | 'invalid' | 'unknown-key' | 'malformed';

/**
 * Check one signature `name:base64` over `data` against a set of public keys (by name).
 * `unknown-key`: no key of that name is trusted; `invalid`: a trusted key of that name did not sign it.
 */
export function checkSignature(data: string | Uint8Array, sig: string, keys: ReadonlyMap<string, PublicKey>): SignatureCheck {
  const colon = sig.indexOf(':');
  if (colon <= 0) return 'malformed';
  const key = keys.get(sig.slice(0, colon));
  if (!key) return 'unknown-key';
  const b64 = sig.slice(colon + 1);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) return 'malformed';
  const raw = Buffer.from(b64, 'base64');
  if (raw.length !== 64) return 'malformed';
  const ok = verify(null, typeof data === 'string' ? Buffer.from(data, 'utf8') : data, key.keyObject, raw);
  return ok ? 'valid' : 'invalid';
}

/** Verify a signature against trusted keys; true only if a trusted key made it. */
export function verifyDetached(data: string | Uint8Array, sig: string, keys: ReadonlyMap<string, PublicKey>): boolean {
  return checkSignature(data, sig, keys) === 'valid';
}

/** Build the name → key map from `name:base64` strings or parsed keys (later duplicates win, as Nix). */
export function publicKeyMap(keys: Iterable<string | PublicKey>): Map<string, PublicKey> {
  const m = new Map<string, PublicKey>();
  for (const k of keys) {
    const pk = typeof k === 'string' ? parsePublicKey(k) : k;
    m.set(pk.name, pk);
  }
  return m;
}
