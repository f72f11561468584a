#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, idempotently: Debian packages the scripts
# use, the Rust target of the operator's static image, and the control-plane and node binaries
# (built once from the Go module proxy, cached outside the repo). Go and Rust come with the
# machine; the node's own Debian packages (containerd, runc, CNI plugins) are installed by
# tests/control-plane/node.sh when a node first starts.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v flock >/dev/null || need+=(util-linux)
command -v musl-gcc >/dev/null || need+=(musl-tools)
if ((${#need[@]})); then
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required (it comes with this kind of machine)" >&2; exit 1; }
done
# The operator's image holds a static binary (scripts/image.sh).
rustup target list --installed | grep -x x86_64-unknown-linux-musl >/dev/null || rustup target add x86_64-unknown-linux-musl
tests/control-plane/build.sh
