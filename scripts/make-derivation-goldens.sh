#!/usr/bin/env bash
# Regenerate test/fixtures/derivation/ from real Nix 2.8:
#   - every test/fixtures/derivation/nix/*.nix is instantiated with `nix-instantiate --store ROOT`
#     (a private chroot store; ca-derivations and impure-derivations enabled);
#   - the .drv files of the closure of every instantiated derivation are copied to drv/;
#   - expected.json records, per fixture, the top-level .drv paths, and per .drv its outputs and their
#     paths as `nix show-derivation` reports them; `sources` holds the store paths that
#     builtins.toFile/builtins.path give for nix/source-paths.nix.
# Usage: bash scripts/make-derivation-goldens.sh   (needs nix-instantiate, nix-store, nix, jq)
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
FIX="$HERE/test/fixtures/derivation"
WORK="$(mktemp -d)"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT

export NIX_REMOTE=
export NIX_CONFIG=$'experimental-features = nix-command ca-derivations impure-derivations\nbuild-users-group =\nsubstituters =\n'
export NIX_USER_CONF_FILES=/dev/null
ROOT="$WORK/root"

rm -rf "$FIX/drv"
mkdir -p "$FIX/drv"
fixtures="{}"
all=()
for f in "$FIX"/nix/*.nix; do
  name="$(basename "$f" .nix)"
  [ "$name" = source-paths ] && continue
  mapfile -t drvs < <(nix-instantiate --store "$ROOT" "$f" | sort)
  fixtures="$(jq -c --arg n "$name" --args '. + {($n): $ARGS.positional}' "${drvs[@]}" <<<"$fixtures")"
  all+=("${drvs[@]}")
done

# The closure of .drv files (inputs included).
mapfile -t closure < <(nix-store --store "$ROOT" -qR "${all[@]}" | grep '\.drv$' | sort -u)
for d in "${closure[@]}"; do
  cp "$ROOT$d" "$FIX/drv/$(basename "$d")"
  chmod 644 "$FIX/drv/$(basename "$d")"
done

# Outputs per derivation, from `nix show-derivation`.
derivations="$(nix show-derivation --store "$ROOT" "${closure[@]}" \
  | jq -c 'with_entries(.value = { outputs: (.value.outputs | with_entries(.value = (.value.path // null))) })')"

sources="$(nix-instantiate --store "$ROOT" --eval --strict --json "$FIX/nix/source-paths.nix")"

jq -n --argjson fixtures "$fixtures" --argjson derivations "$derivations" --argjson sources "$sources" \
  '{ nix: "2.8.0", fixtures: $fixtures, derivations: $derivations, sources: $sources }' > "$FIX/expected.json"
echo "wrote $(ls "$FIX/drv" | wc -l) .drv files and $FIX/expected.json"
