#!/usr/bin/env bash
# Regenerates the CRD YAML from the Rust types (the types are the source of truth), for
# crds/ and for the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked -- crds --write-dir crds --write-dir charts/agent-operator/crds
