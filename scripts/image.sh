#!/usr/bin/env bash
# Builds an image without a container engine or a registry: a static binary (musl) in an OCI
# image archive. Prints the archive's path.
#
#   scripts/image.sh [operator]  the operator: target/images/agent-operator-<version>.tar, named
#                                agent-operator:<version> (the chart's default image), the image
#                                the Dockerfile describes (/agent-operator, user 65532,
#                                entrypoint /agent-operator, command run, port 8080) minus the
#                                distroless base's files the operator never reads
#   scripts/image.sh runtime     the example agent runtime (examples/agent-runtime.rs):
#                                target/images/agent-runtime-<version>.tar, agent-runtime:<version>
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-operator}
target=x86_64-unknown-linux-musl
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
out_dir=${CARGO_TARGET_DIR:-target}
case $what in
  operator) build=(--bin agent-operator); bin=$out_dir/$target/release/agent-operator
    name=agent-operator; image_args=(--entrypoint /agent-operator --cmd run --port 8080) ;;
  runtime) build=(--example agent-runtime); bin=$out_dir/$target/release/examples/agent-runtime
    name=agent-runtime; image_args=(--entrypoint /agent-runtime --port 8080) ;;
  *) echo "usage: $0 [operator|runtime]" >&2; exit 2 ;;
esac
# ring compiles C: with musl-gcc the binary stays fully static.
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" "${build[@]}" >&2
# No shared libraries: the image has no libc.
if readelf -d "$bin" | grep "(NEEDED)" >/dev/null; then echo "image.sh: $bin needs shared libraries" >&2; exit 1; fi
mkdir -p "$out_dir/images"
out=$out_dir/images/$name-$version.tar
python3 tests/control-plane/oci-image.py "docker.io/library/$name:$version" "$out" \
  --file "$bin:/$name" --user 65532:65532 "${image_args[@]}" >&2
echo "$out"
