#!/usr/bin/env bash
# The test suite, with everything it needs: real Nix 2.8, bubblewrap, a static busybox, sshd.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh nix-bin bubblewrap busybox-static openssh-server xz-utils zstd bzip2 chromium openssl
npx tsc --noEmit -p tsconfig.json
exec npx vitest run "$@"
