#!/usr/bin/env bash
# Run a command as an ordinary (unprivileged) user, the way most people run a Node tool: from the current
# directory, with a HOME and a TMPDIR of its own and no root powers. Needs root, which creates the user on
# first use (useradd). The user must be able to reach the current directory (o+x on every parent).
#
#   scripts/as-user.sh [-u NAME] COMMAND [ARGS...]      (default user: realise-user)
set -euo pipefail
user=${REALISE_TEST_USER:-realise-user}
if [ "${1:-}" = "-u" ]; then user=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: scripts/as-user.sh [-u NAME] COMMAND [ARGS...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "as-user: needs root (to create and switch to '$user')" >&2; exit 2; }
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
mkdir -p "$home/tmp" && chown "$user:" "$home/tmp"
d=$(pwd)
while [ "$d" != / ]; do
  [ "$(( 0$(stat -c %a "$d") & 1 ))" = 1 ] || { echo "as-user: '$d' is not searchable by other users (chmod o+x '$d')" >&2; exit 2; }
  d=$(dirname "$d")
done
# What the command may need from the caller's environment; everything else starts afresh, as after a login.
keep=(PATH LANG CI REALISE_CI TERM)
env_args=("HOME=$home" "USER=$user" "LOGNAME=$user" "TMPDIR=$home/tmp")
for v in "${keep[@]}"; do [ -n "${!v:-}" ] && env_args+=("$v=${!v}"); done
exec setpriv --reuid="$user" --regid="$user" --init-groups -- env -i "${env_args[@]}" "$@"
