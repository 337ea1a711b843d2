/**
 * Opening an SQLite database with better-sqlite3, its native addon named directly: the package's default
 * lookup (the `bindings` package) tries a dozen paths and reads a stack trace on a process's first open,
 * which is a large part of a short command's start. When the addon is not where its package builds it
 * (build/Release), `bindings` looks for it from the package's directory (not from the caller's, which in
 * the bundled CLI is the bundle, where better-sqlite3's JavaScript is).
 */
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

let addon: string | object | undefined;

function nativeAddon(): string | object {
  if (addon === undefined) {
    const require = createRequire(import.meta.url);
    const root = path.dirname(require.resolve('better-sqlite3/package.json'));
    const p = path.join(root, 'build', 'Release', 'better_sqlite3.node');
    if (existsSync(p)) addon = p;
    else {
      const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => object;
      addon = bindings({ bindings: 'better_sqlite3.node', module_root: root });
    }
  }
  return addon;
}

/** `new Database(file, options)`, loading the addon from its known place. */
export function openDatabase(file: string, options: Database.Options = {}): Database.Database {
  // The package takes the addon's path or the loaded addon (its types name only the path).
  return new Database(file, { ...options, nativeBinding: nativeAddon() as string });
}
