#!/usr/bin/env bash
# Runs every test: formatting, lints, CRD drift, unit and property tests, then the tests that
# need a real API server, against a control plane started for this run and stopped after it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Unit, property and drift tests: no server needed.
cargo test --locked --lib --bins

# The real-server tests share one control plane, started here and stopped on exit.
dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-test.XXXXXX")
trap 'rm -rf "$dir"' EXIT
start=$(date +%s)
tests/control-plane/run.sh "$dir/cp" -- cargo test --locked --test e2e
echo "Real-server tests took $(($(date +%s) - start))s"
