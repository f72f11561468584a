#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, idempotently: Debian packages the scripts
# use, and the control-plane binaries (built once from the Go module proxy, cached outside the
# repo). Go and Rust come with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v flock >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required (it comes with this kind of machine)" >&2; exit 1; }
done
tests/control-plane/build.sh
