#!/usr/bin/env bash
# The test suite, with everything it needs: real Nix 2.8, bubblewrap, a static busybox, sshd.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh nix-bin bubblewrap busybox-static openssh-server xz-utils zstd bzip2 chromium openssl
npx tsc --noEmit -p tsconfig.json
# The whole suite (no arguments, as CI runs it) also runs the gates: lint with type information, formatting.
if [ $# -eq 0 ]; then
  npx eslint src test
  grep -v '^#' scripts/formatted-files.txt | xargs -d '\n' npx prettier --check
fi
exec npx vitest run "$@"
