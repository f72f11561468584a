#!/usr/bin/env bash
# The benchmark: starts a local control plane and measures the release-built operator against
# the raw API floor (see BENCHMARKS.md). Prints one table; writes target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
tests/control-plane/run.sh "$dir/cp" -- cargo bench --locked --bench rollback
