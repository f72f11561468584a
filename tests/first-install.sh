#!/usr/bin/env bash
# The first thing a pipeline does with the chart, as it does it: on a control plane that has never
# served the operator's kinds, `helm install --wait`, then at once a plain `kubectl apply` of an
# Agent and an AgentRollback (kubectl retries no 503). The API server refuses creates of a new
# kind for a few seconds after its CRD appears; only a fresh API server shows it, so each round
# starts a new control plane and node, and removing the chart between rounds would not do.
#
#   tests/first-install.sh [ROUNDS]   default 10; fails unless every round's creates succeeded
#
# The images come from scripts/image.sh (AGENT_OPERATOR_TEST_IMAGES: their directory).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --round ]]; then
  # Inside run.sh: KUBECONFIG points at the fresh control plane; kubectl and helm are on PATH.
  version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
  tests/control-plane/node.sh import "$2" "$AGENT_OPERATOR_TEST_IMAGES/agent-operator-$version.tar"
  start=$SECONDS
  helm install agent-operator charts/agent-operator -n agent-operator-system --create-namespace \
    --wait --timeout 180s >/dev/null
  installed=$((SECONDS - start))
  kubectl create namespace first-install >/dev/null
  # What a user's pipeline runs next; no retry, no wait.
  if out=$(kubectl apply -n first-install -f examples/01-agent.yaml -f examples/04-previous.yaml 2>&1); then
    echo "helm install --wait took ${installed}s; kubectl apply: $(echo "$out" | tr '\n' ';')"
  else
    echo "helm install --wait took ${installed}s; kubectl apply FAILED: $out"
    exit 1
  fi
  exit
fi

rounds=${1:-10}
images=${AGENT_OPERATOR_TEST_IMAGES:-target/images}
export AGENT_OPERATOR_TEST_IMAGES=$(cd "$images" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-first-install.XXXXXX")
trap 'rm -rf --one-file-system "$dir"' EXIT
passed=0
for round in $(seq "$rounds"); do
  d=$dir/round-$round
  if tests/control-plane/run.sh --node "$d" -- "$0" --round "$d" >"$dir/round-$round.log" 2>&1; then
    passed=$((passed + 1))
    echo "round $round: ok: $(tail -n 1 "$dir/round-$round.log")"
  else
    echo "round $round: FAILED"
    tail -n 20 "$dir/round-$round.log" | sed 's/^/  /'
  fi
done
echo "First install then kubectl apply: $passed of $rounds rounds succeeded"
((passed == rounds))
