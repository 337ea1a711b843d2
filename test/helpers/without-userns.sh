#!/usr/bin/env bash
# Run COMMAND as an ordinary user on a machine where user namespaces are unavailable, without changing the
# machine. Root only.
#
# - Default (the sysctl at 0): COMMAND runs inside a user namespace of its own (every id mapped to itself,
#   so files and users look as outside) whose user.max_user_namespaces is 0, so nothing in it can create
#   another one (ENOSPC, as with the sysctl set to 0 machine-wide).
# - `--seccomp FILTER` (a container's seccomp profile): COMMAND runs under the classic BPF program in the
#   file FILTER (installed by bubblewrap, which as root needs no namespace of its own for it), which refuses
#   creating user namespaces with EPERM, as Docker's default profile does for an unprivileged process.
#
#   test/helpers/without-userns.sh [--seccomp FILTER] USER COMMAND [ARGS...]
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "without-userns: needs root" >&2; exit 2; }
filter=
if [ "${1:-}" = --seccomp ]; then filter=$2; shift 2; fi
user=$1; shift
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
if [ -n "$filter" ]; then
  # bwrap binds / onto itself (the same view) and keeps every capability so that setpriv can drop to the
  # user; the filter stays on every process COMMAND starts.
  exec bwrap --dev-bind / / --cap-add ALL --seccomp 3 -- setpriv --reuid="$user" --regid="$user" --init-groups -- "$@" 3<"$filter"
fi
fifo=$(mktemp -u)
mkfifo -m 600 "$fifo"
trap 'rm -f "$fifo"' EXIT
# The child waits until its id maps are written; then it runs a new shell, which, as uid 0 of the new
# namespace, holds the capabilities to set the namespace's own limit, and drops to the user.
unshare --user bash -c '
  read -r _ < "$0"
  exec bash -c '\''echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --reuid="$0" --regid="$0" --init-groups -- "$@"'\'' "$@"
' "$fifo" "$user" "$@" &
pid=$!
for _ in $(seq 100); do [ "$(readlink /proc/$pid/ns/user)" != "$(readlink /proc/self/ns/user)" ] && break; sleep 0.02; done
echo "0 0 4294967295" > /proc/$pid/uid_map
echo "0 0 4294967295" > /proc/$pid/gid_map
echo go > "$fifo"
wait $pid
