#!/usr/bin/env bash
# CI check of docker/Dockerfile without a Docker engine: lint it (hadolint where installed, and
# always the project's parse check), then run the Dockerfile's apt-get installs on this machine.
# Usage: .ci/check_docker.sh [--no-install]   (--no-install: static checks only)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile="$root/docker/Dockerfile"
install=1
if [[ "${1:-}" == "--no-install" ]]; then
  install=0
fi

log() { echo "check_docker: $*"; }

# 1. Lint. Debian ships no Dockerfile linter; hadolint is used when someone installed it.
if command -v hadolint >/dev/null 2>&1; then
  log "hadolint $(hadolint --version 2>&1 | head -n1)"
  hadolint "$dockerfile"
else
  log "hadolint not installed (not packaged by Debian): parse check only"
fi
python3 "$root/.ci/dockerfile_check.py" "$dockerfile"

if [[ "$install" -eq 0 ]]; then
  log "static checks passed (installs skipped)"
  exit 0
fi

# 2. The same apt-get installs, translated to this machine: the image is Ubuntu 24.04 and CI is
# Debian; a name only Ubuntu's 64-bit-time transition uses (libfoo-t64) maps to libfoo.
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_cmd=(sudo -n)
  else
    log "needs root (or password-less sudo) to run the installs; use --no-install for static checks"
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq

translate() {
  local pkg="$1" name="${1%%=*}"
  if apt-cache show "$name" >/dev/null 2>&1; then
    echo "$pkg"
  elif [[ "$name" == *t64 ]] && apt-cache show "${name%t64}" >/dev/null 2>&1; then
    echo "${name%t64}"
  else
    return 1
  fi
}

stages_file="$(mktemp)"
trap 'rm -f "$stages_file"' EXIT
python3 "$root/.ci/dockerfile_check.py" --packages "$dockerfile" >"$stages_file"
while read -r stage packages; do
  local_packages=()
  for pkg in $packages; do
    if ! mapped="$(translate "$pkg")"; then
      log "stage $stage: package $pkg has no counterpart on this machine"
      exit 1
    fi
    local_packages+=("$mapped")
  done
  log "stage $stage: apt-get install -y --no-install-recommends ${local_packages[*]}"
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${local_packages[@]}" >/dev/null
  for pkg in "${local_packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "${pkg%%=*}" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
      log "stage $stage: $pkg did not install"
      exit 1
    fi
  done
done <"$stages_file"
log "Dockerfile parsed; the install lists of its $(wc -l <"$stages_file") stages installed here"
