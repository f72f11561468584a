#!/usr/bin/env bash
# Runs every test: formatting, lints, CRD drift, unit and property tests, then the tests that
# need a real cluster, on a control plane with a node started for this run and stopped after
# it: first those that run the operator as a process (as the chart's ServiceAccount); then,
# alone, the outage ones (API server restarted, etcd paused, the operator cut off) and the
# in-cluster ones (the chart installed with Helm, the operator running as Pods from the image
# scripts/image.sh builds, watching every namespace); last, ten first installs of the chart, each
# on a fresh control plane, each followed at once by a plain `kubectl apply`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --inside ]]; then
  start=$SECONDS
  cargo test --locked --test e2e -- --skip in_cluster:: --skip outage::
  echo "Tests with the operator as a process took $((SECONDS - start))s"
  start=$SECONDS
  # Alone and one at a time: each restarts or pauses part of the control plane.
  cargo test --locked --test e2e -- outage:: --nocapture --test-threads=1
  echo "Outage tests took $((SECONDS - start))s"
  start=$SECONDS
  # One at a time: each installs the chart's release.
  cargo test --locked --test e2e -- in_cluster:: --nocapture --test-threads=1
  echo "In-cluster tests took $((SECONDS - start))s"
  exit
fi

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Unit, property and drift tests: no server needed.
cargo test --locked --lib --bins
# The images the in-cluster tests import into the node: the operator and the example runtime.
AGENT_OPERATOR_TEST_IMAGES=$(dirname "$(scripts/image.sh operator)")
scripts/image.sh runtime >/dev/null
export AGENT_OPERATOR_TEST_IMAGES

dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-test.XXXXXX")
# --one-file-system: never through a mount a failed teardown might have left.
trap 'rm -rf --one-file-system "$dir"' EXIT
ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)

# The harness itself: a run interrupted while its node starts leaves nothing behind.
start=$SECONDS
tests/control-plane/run.sh --node "$dir/interrupted" >"$dir/interrupted.log" 2>&1 &
until [[ -f $dir/interrupted/node/pids/kubelet ]]; do
  kill -0 $! 2>/dev/null || { cat "$dir/interrupted.log"; exit 1; }
  sleep 0.2
done
kill -TERM $!
wait $! || true
tests/control-plane/leftovers.sh "$ip_forward"
tests/control-plane/node.sh stop # a second stop finds nothing to do
echo "Node interrupted while starting: nothing left behind ($((SECONDS - start))s)"

start=$SECONDS
tests/control-plane/run.sh --node "$dir/cp" -- "$0" --inside
tests/control-plane/leftovers.sh "$ip_forward"
echo "Real-cluster tests took $((SECONDS - start))s; nothing left behind"

# The chart's first install, then at once a plain kubectl apply, as a pipeline runs them: ten
# rounds, each on a control plane and node of its own (only a fresh API server shows the race).
start=$SECONDS
tests/first-install.sh 10
tests/control-plane/leftovers.sh "$ip_forward"
echo "First-install rounds took $((SECONDS - start))s; nothing left behind"
