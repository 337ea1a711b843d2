/**
 * How curl (and so Nix) words the failures of a transfer that Node reports as error codes, and whether an
 * error is a cancellation. Shared by the binary caches and builtin:fetchurl.
 */
import { createRequire } from 'node:module';

/** curl's `curl_easy_strerror(code) (code)` for a Node/undici network error, else the error's message. */
export function curlWords(e: unknown): string {
  const code = (e as { code?: string }).code ?? (e as { cause?: { code?: string } }).cause?.code;
  switch (code) {
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return "Couldn't connect to server (7)";
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return "Couldn't resolve host name (6)";
    case 'ETIMEDOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return 'Timeout was reached (28)';
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return 'Failure when receiving data from the peer (56)';
    default:
      return isCertificateError(e) ? 'SSL peer certificate or SSH remote key was not OK (60)' : (e as Error).message;
  }
}

/** OpenSSL's verification failures as Node names them, and Node's own for a name the certificate does not hold. */
const CERTIFICATE_ERRORS = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * Whether a connection failed because the server's certificate was not trusted or not valid for it (curl's
 * CURLE_PEER_FAILED_VERIFICATION).
 */
export function isCertificateError(e: unknown): boolean {
  const code = (e as { code?: string }).code ?? (e as { cause?: { code?: string } }).cause?.code;
  return code !== undefined && CERTIFICATE_ERRORS.has(code);
}

export function isAbortError(e: unknown): boolean {
  return (
    e instanceof Error && (e.name === 'AbortError' || (e as { code?: string }).code === 'ABORT_ERR' || (e as { code?: string }).code === 'UND_ERR_ABORTED')
  );
}

/**
 * The reason phrase Node knows for an HTTP status (node:http's STATUS_CODES), for an error message: node:http
 * is loaded then, not by every command whose modules can download (about 1 ms).
 */
export function statusReason(code: number): string | undefined {
  return (createRequire(import.meta.url)('node:http') as typeof import('node:http')).STATUS_CODES[code];
}
