#!/usr/bin/env bash
# The benchmark: starts a local control plane and measures the operator as it ships (the
# image's static binary, scripts/image.sh) against the raw API floor and the tools users would
# pick instead (see BENCHMARKS.md). Prints one table; writes target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/image.sh operator >/dev/null
AGENT_OPERATOR_BIN=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-musl/release/agent-operator
export AGENT_OPERATOR_BIN
dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
tests/control-plane/run.sh "$dir/cp" -- cargo bench --locked --bench rollback
