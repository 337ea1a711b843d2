#!/usr/bin/env bash
# The main job: build an example derivation graph on the embedded default store and show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bubblewrap busybox-static
exec npx tsx examples/dag.ts
