#!/usr/bin/env bash
# Set-up shared by the README's commands: npm packages, and (as root, when missing) the Debian packages
# the sandbox and the tests use. Without root or apt, it says what is missing and goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
want_pkgs=("$@")
missing=()
for p in "${want_pkgs[@]}"; do
  case "$p" in
    nix-bin) command -v nix-store >/dev/null 2>&1 || missing+=("$p") ;;
    bubblewrap) command -v bwrap >/dev/null 2>&1 || missing+=("$p") ;;
    busybox-static) [ -x /bin/busybox ] || missing+=("$p") ;;
    openssh-server) [ -x /usr/sbin/sshd ] || missing+=("$p") ;;
    *) dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p") ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages (${missing[*]}); run as root with apt-get to install them. Continuing without them." >&2
  fi
fi
if [ -L node_modules ]; then
  # A linked node_modules (a git worktree sharing another checkout's) belongs to that checkout: `npm ci` here
  # would empty the shared directory through the link before replacing the link, breaking every user of it.
  [ -d node_modules/.bin ] || echo "setup: node_modules links to $(readlink node_modules), which has no packages; run npm ci there" >&2
elif [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages" >&2
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund >&2; else npm install --no-audit --no-fund >&2; fi
fi
