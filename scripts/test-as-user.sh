#!/usr/bin/env bash
# The rootless checks, run by root on a machine prepared by scripts/test.sh (Debian packages installed): as
# an ordinary user, in a copy of this checkout that the user owns (as a developer's own clone), run the
# README's main job (scripts/demo.sh), every example on the user's embedded default store, and the whole
# test suite (real Nix rootless on twin stores, remote builds over an sshd the user runs, ...; the few
# suites only root can run say why and skip). The user is created on first use (scripts/as-user.sh).
#
#   scripts/test-as-user.sh [VITEST ARGS...]       (user: $REALISE_TEST_USER, default realise-user)
#                                                   (arguments: test files or filters; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test-as-user: run as root (it creates and switches to an ordinary user)" >&2; exit 2; }
user=${REALISE_TEST_USER:-realise-user}
export REALISE_TEST_USER=$user
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"

work=$(mktemp -d /tmp/realise-as-user.XXXXXX)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
chmod 755 "$work"
tar --exclude=./node_modules -cf - . | tar -xf - -C "$work"
modules=$(readlink -f node_modules)
if (d=$modules; while [ "$d" != / ]; do [ "$(( 0$(stat -c %a "$d") & 1 ))" = 1 ] || exit 1; d=$(dirname "$d"); done); then
  ln -s "$modules" "$work/node_modules"   # read-only for the user, as a shared install would be
else
  cp -a "$modules" "$work/node_modules"
fi
# The npm packages are the ones root just installed and tested with: setup.sh must not reinstall them.
[ -f "$modules/.package-lock.json" ] && touch -r "$modules/.package-lock.json" "$work/package.json"
chown -R "$user:" "$work"
cd "$work"

as_user() { bash scripts/as-user.sh -u "$user" "$@"; }
echo "== as $user: scripts/demo.sh" >&2
as_user ./scripts/demo.sh
for e in examples/*.ts; do
  [ "$e" = examples/common.ts ] && continue
  echo "== as $user: npx tsx $e" >&2
  as_user npx tsx "$e" >/dev/null
done
echo "== as $user: the test suite" >&2
# The config is loaded without writing next to it (node_modules may be read-only for the user).
as_user npx vitest run --configLoader runner "$@"
