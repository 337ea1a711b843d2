#!/usr/bin/env bash
# Regenerate test/fixtures/substituter/ from real Nix 2.8:
#   - a binary-cache key pair made by `nix-store --generate-binary-cache-key`
#   - a small closure (text files, a derivation output with a self-reference and a symlink, a
#     content-addressed source directory) built in a private chroot store
#   - the closure written by `nix copy --to file://DIR?secret-key=...&compression=C` for every
#     compression Nix supports, and `nix path-info --json --recursive` of the source store.
# Usage: bash scripts/make-cache-goldens.sh   (needs nix-store, nix-instantiate, nix; /bin/busybox)
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$HERE/test/fixtures/substituter"
WORK="$(mktemp -d)"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT

export NIX_REMOTE=
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n'
export NIX_USER_CONF_FILES=/dev/null
ROOT="$WORK/root"

nix-store --generate-binary-cache-key test-cache-1 "$WORK/key.sec" "$WORK/key.pub"
nix-store --generate-binary-cache-key other-cache-1 "$WORK/other.sec" "$WORK/other.pub"

cat > "$WORK/closure.nix" <<'NIX'
let
  a = builtins.toFile "a.txt" "hello\n";
  b = builtins.toFile "b.txt" "see ${a}\n";
  dep = derivation {
    name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo hi > $out; echo ${b} >> $out" ];
  };
in derivation {
  name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "mkdir -p $out/bin; echo ${dep} > $out/ref; printf '#!/bin/sh\\necho x\\n' > $out/bin/x; chmod +x $out/bin/x; ln -s x $out/bin/y; echo $out > $out/self" ];
}
NIX
DRV="$(nix-instantiate --store "$ROOT" "$WORK/closure.nix")"
TOP="$(nix-store --store "$ROOT" --realise "$DRV" --option sandbox-paths /bin/sh=/bin/busybox 2>/dev/null)"

# A content-addressed (fixed:r:sha256) source directory.
mkdir -p "$WORK/src/sub"
printf 'data\n' > "$WORK/src/file"
printf 'more\n' > "$WORK/src/sub/nested"
ln -s file "$WORK/src/link"
SRC="$(nix-store --store "$ROOT" --add "$WORK/src")"

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK/key.sec" "$OUT/test-cache-1.sec"
cp "$WORK/key.pub" "$OUT/test-cache-1.pub"
cp "$WORK/other.sec" "$OUT/other-cache-1.sec"
cp "$WORK/other.pub" "$OUT/other-cache-1.pub"
for c in xz zstd bzip2 br none; do
  nix copy --store "$ROOT" --to "file://$OUT/cache-$c?secret-key=$WORK/key.sec&compression=$c" "$TOP" "$SRC" 2>/dev/null
  rmdir "$OUT/cache-$c/log" "$OUT/cache-$c/realisations" 2>/dev/null || true
done
nix path-info --store "$ROOT" --json --recursive "$TOP" "$SRC" > "$OUT/path-info.json"
printf '{"top":"%s","src":"%s"}\n' "$TOP" "$SRC" > "$OUT/roots.json"
echo "wrote $OUT"
