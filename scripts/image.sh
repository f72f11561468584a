#!/usr/bin/env bash
# Builds the operator's image without a container engine or a registry: the static release
# binary (musl) in an OCI image archive, the image the Dockerfile describes (/agent-operator,
# user 65532, entrypoint /agent-operator, command run, port 8080), minus the distroless base's
# files the operator never reads. Prints the archive's path.
#
#   scripts/image.sh            target/images/agent-operator-<version>.tar, named
#                               agent-operator:<version> (the chart's default image)
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
# ring compiles C: with musl-gcc the binary stays fully static.
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" --bin agent-operator >&2
out_dir=${CARGO_TARGET_DIR:-target}
bin=$out_dir/$target/release/agent-operator
# No shared libraries: the image has no libc.
if readelf -d "$bin" | grep -q "(NEEDED)"; then echo "image.sh: $bin needs shared libraries" >&2; exit 1; fi
mkdir -p "$out_dir/images"
out=$out_dir/images/agent-operator-$version.tar
python3 tests/control-plane/oci-image.py "docker.io/library/agent-operator:$version" "$out" \
  --file "$bin:/agent-operator" --entrypoint /agent-operator --cmd run --user 65532:65532 --port 8080 >&2
echo "$out"
