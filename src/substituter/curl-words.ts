/**
 * How curl (and so Nix) words the failures of a transfer that Node reports as error codes, and whether an
 * error is a cancellation. Shared by the binary caches and builtin:fetchurl.
 */

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
      return (e as Error).message;
  }
}

export function isAbortError(e: unknown): boolean {
  return (
    e instanceof Error && (e.name === 'AbortError' || (e as { code?: string }).code === 'ABORT_ERR' || (e as { code?: string }).code === 'UND_ERR_ABORTED')
  );
}
