/**
 * undici, the HTTP client of binary caches and builtin:fetchurl, loaded on first use: importing it costs
 * tens of ms of start-up that commands without an HTTP cache or download never need.
 */
import { createRequire } from 'node:module';

let undiciModule: typeof import('undici') | undefined;

export function undici(): typeof import('undici') {
  return (undiciModule ??= createRequire(import.meta.url)('undici') as typeof import('undici'));
}
