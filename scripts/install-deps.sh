#!/usr/bin/env bash
# Installs the Debian packages banger needs. Safe to run again: it only
# calls apt when something is missing.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs lz4 openssh-client git ca-certificates tmux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# npm installs Node.js and the coding agents into the agent image from the
# host side; any npm works (Debian's is fine, the packages pin their Node).
if ! command -v npm >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "installing: npm"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm
fi
if ! command -v go >/dev/null; then
  echo "Go is not installed: install Go 1.26+ (https://go.dev/doc/install) and re-run" >&2
  exit 1
fi
