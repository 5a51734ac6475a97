#!/usr/bin/env bash
# Installs what building and testing longattn needs on Debian or Ubuntu, only what is missing:
# CMake, g++, Open MPI, Boost.Program_options, GoogleTest, nlohmann-json, ccache.
# Uses sudo only when not run as root. CUDA comes from NVIDIA's toolkit, not from here.
set -euo pipefail

packages=(cmake make g++ libopenmpi-dev openmpi-bin libboost-program-options-dev libgtest-dev
          nlohmann-json3-dev ccache)

missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != "installed" ]]; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_deps: every package is present"
  exit 0
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "install_deps: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
