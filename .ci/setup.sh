#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian-family machine with Python >= 3.11:
# the system libraries for off-screen rendering (listed in .ci/apt-packages.txt) and the
# Python package with all extras.  Safe to run again: it installs only what is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

if [ -f .ci/apt-packages.txt ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  while read -r pkg; do
    case "$pkg" in ""|\#*) continue;; esac
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < .ci/apt-packages.txt
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo_cmd=(); elif command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else sudo_cmd=(); fi
    if [ "$(id -u)" = 0 ] || [ "${#sudo_cmd[@]}" -gt 0 ]; then
      echo "setup: installing system packages: ${missing[*]}"
      "${sudo_cmd[@]}" apt-get update -qq
      DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "setup: WARNING: cannot install ${missing[*]} (not root, no sudo); off-screen rendering may fail" >&2
    fi
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[all]"
