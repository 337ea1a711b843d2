// Lint gate (run by scripts/test.sh, so CI runs it): typescript-eslint with type information, for the
// mistakes types alone do not catch in async code, and a bound on function length.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/**', 'examples/**', 'bench/**', 'bin/**', '*.config.*'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
  {
    files: ['src/**/*.ts'],
    rules: {
      'max-lines-per-function': ['error', { max: 80, skipBlankLines: true, skipComments: true, IIFEs: true }],
      // A database is opened through store/sqlite.ts, which names the native addon: better-sqlite3's own
      // lookup does not find it from the CLI bundle.
      '@typescript-eslint/no-restricted-imports': [
        'error',
        { paths: [{ name: 'better-sqlite3', allowTypeImports: true, message: 'open databases with openDatabase() from src/store/sqlite.ts' }] },
      ],
    },
  },
  {
    files: ['src/store/sqlite.ts'],
    rules: { '@typescript-eslint/no-restricted-imports': 'off' },
  },
);
