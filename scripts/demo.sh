#!/usr/bin/env bash
# The demo: starts a local cluster (control plane and one real node), builds the operator's
# image and installs it with Helm, as users do, applies examples/ (an Agent, an edit, a
# Restore, a Previous, a Pop and one that fails) and shows what happened. Everything it starts
# is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} != --inside ]]; then
  scripts/setup.sh
  image=$(scripts/image.sh)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-demo.XXXXXX")
  echo "Demo files and logs: $dir"
  exec tests/control-plane/run.sh --node "$dir/cp" -- env DEMO_DIR="$dir" DEMO_IMAGE="$image" "$0" --inside
fi

# From here on KUBECONFIG points at the local cluster; kubectl and helm are on PATH.
ns=demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Kubernetes $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), one node"
run kubectl get nodes
say "Installing the operator with Helm (its image imported into the node, as a registry pull would)"
tests/control-plane/node.sh import "$DEMO_DIR/cp" "$DEMO_IMAGE"
run helm install agent-operator charts/agent-operator -n agent-operator-system --create-namespace --wait --timeout 180s
run kubectl get pods -n agent-operator-system -o wide
kubectl create namespace "$ns" >/dev/null
kubectl config set-context --current --namespace="$ns" >/dev/null

wait_agent() {
  for _ in $(seq 300); do
    gen=$(kubectl get agent support -o jsonpath='{.metadata.generation}')
    seen=$(kubectl get agent support -o jsonpath='{.status.observedGeneration}')
    [[ -n $seen && $gen == "$seen" ]] && return
    sleep 0.1
  done
  echo "the Agent was not reconciled; see kubectl logs -n agent-operator-system -l app.kubernetes.io/instance=agent-operator" >&2
  exit 1
}
wait_rollback() {
  kubectl wait --for=jsonpath='{.status.phase}'="$2" "agentrollback/$1" --timeout=60s >/dev/null
  kubectl get agentrollback "$1" -o jsonpath='  {.metadata.name}: {.status.phase} {.status.reason} - {.status.message}{"\n"}'
}

say "1. An Agent: published as version 1"
run kubectl apply -f examples/01-agent.yaml
wait_agent
say "2. An edit of its definition: published as version 2"
run kubectl apply -f examples/02-agent-edit.yaml
wait_agent
say "3. Restore version 1 (publishes version 3, a copy of version 1)"
run kubectl apply -f examples/03-restore.yaml
wait_rollback support-restore-v1 Succeeded
say "4. Previous (publishes version 4, a copy of version 2)"
run kubectl apply -f examples/04-previous.yaml
wait_rollback support-previous Succeeded
say "5. Pop (deletes version 4; version 3 is active again)"
run kubectl apply -f examples/05-pop.yaml
wait_rollback support-pop Succeeded
say "6. A Restore of a version that never existed fails and changes nothing"
run kubectl apply -f examples/06-fails.yaml
wait_rollback support-restore-v99 Failed

say "Result"
run kubectl get agents,agentversions,agentrollbacks
say "Events"
run kubectl get events.v1.events.k8s.io --sort-by=.eventTime -o custom-columns=TYPE:.type,REASON:.reason,KIND:.regarding.kind,OBJECT:.regarding.name,MESSAGE:.note
say "The Agent's spec is untouched by the rollbacks (temperature is still the edited 0.3)"
run kubectl get agent support -o jsonpath='{.spec.temperature}{"\n"}'
say "The operator ran as Pods: the leader's log, and its Lease"
leader=$(kubectl get lease agent-operator -n agent-operator-system -o jsonpath='{.spec.holderIdentity}')
run kubectl logs -n agent-operator-system "$leader" --tail=5
run kubectl get pods,lease -n agent-operator-system
