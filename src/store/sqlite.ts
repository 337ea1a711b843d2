/**
 * Opening an SQLite database with better-sqlite3, its native addon named directly: the package's default
 * lookup (the `bindings` package) tries a dozen paths and reads a stack trace on a process's first open,
 * which is a large part of a short command's start. When the addon is not where its package builds it
 * (build/Release), the package's own lookup is used.
 */
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

let addon: string | null | undefined;

function addonPath(): string | null {
  if (addon === undefined) {
    try {
      const pkg = createRequire(import.meta.url).resolve('better-sqlite3/package.json');
      const p = path.join(path.dirname(pkg), 'build', 'Release', 'better_sqlite3.node');
      addon = existsSync(p) ? p : null;
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** `new Database(file, options)`, loading the addon from its known place. */
export function openDatabase(file: string, options: Database.Options = {}): Database.Database {
  const nativeBinding = addonPath();
  return new Database(file, nativeBinding ? { ...options, nativeBinding } : options);
}
