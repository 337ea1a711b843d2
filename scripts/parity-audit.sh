#!/usr/bin/env bash
# Side-by-side audit of `realise` against real Nix 2.8 on twin private chroot stores.
# Usage: scripts/parity-audit.sh [WORKDIR]   (then read the printed pairs; nothing is asserted here,
# test/cli/cli.test.ts holds the checked comparisons).
# Each scenario prints "=== nix ..." and "=== realise ..." with the exit status, stdout and stderr.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d /tmp/realise-audit-XXXXXX)}
mkdir -p "$W"
export NIX_REMOTE= NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group =\nsubstituters =\n' NIX_USER_CONF_FILES=/dev/null
SP="/bin/sh=/bin/busybox /bin/busybox"
cp "$ROOT/test/fixtures/cli/scenarios.nix" "$W/a.nix"   # shared with test/cli/cli.test.ts
declare -A D
for a in ok fail fail2 good dep slow silent fod nondet noout refbad wrongsys; do
  D[$a]=$(nix-instantiate --store "$W/N" "$W/a.nix" --argstr prefix au -A $a 2>/dev/null)
  nix-instantiate --store "$W/O" "$W/a.nix" --argstr prefix au -A $a >/dev/null 2>&1
done
X=/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nothere
pair() { # pair "NIX-STORE ARGS" "REALISE ARGS"
  echo "=== nix-store --realise $1"; eval "nix-store --store '$W/N' --option sandbox-paths '$SP' --realise $1" >"$W/o" 2>"$W/e"; echo "rc=$?"; cat "$W/o"; sed 's/^/  ! /' "$W/e"
  echo "=== realise build $2"; eval "'$ROOT/bin/realise' build --store '$W/O' --option sandbox-paths '$SP' $2" >"$W/o" 2>"$W/e"; echo "rc=$?"; cat "$W/o"; sed 's/^/  ! /' "$W/e"
}
same() { pair "$1" "$1"; }
same "${D[ok]}"
pair "${D[ok]}!dev" "${D[ok]}^dev"
same "${D[fail]} ${D[fail2]} ${D[good]}"
same "${D[fail]} ${D[fail2]} -k"
same "${D[dep]}"
same "-Q ${D[fail]}"
same "${D[slow]} --timeout 1"
same "${D[silent]} --max-silent-time 1"
same "${D[fod]}"
same "${D[noout]}"
same "${D[refbad]}"
same "${D[wrongsys]}"
same "${D[nondet]}"
same "${D[nondet]} --check"
same "${D[nondet]} --option repeat 1"
same "$X"
same "$X.drv"
same "/tmp/nonexistent-$$"
same "/nix/store/foo"
same "--dry-run ${D[dep]} $X"
same "--option frobnicate 1 --option keep-going maybe ${D[good]}"
same "-j 0 ${D[ok]}"
echo "=== nix path-info --json $X <good>"; nix path-info --store "$W/O" --json "$X" "${D[good]}"; echo " rc=$?"
echo "=== realise path-info --json $X <good>"; "$ROOT/bin/realise" path-info --store "$W/O" --json "$X" "${D[good]}"; echo " rc=$?"
