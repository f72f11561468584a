#!/usr/bin/env bash
# The demo: starts a local cluster (control plane and one real node), builds the operator's
# image and installs it with Helm, as users do, applies examples/ (an Agent, its runtime, an
# edit, a Restore, a Previous, a Pop and one that fails; then a staging and a production channel
# with their runtimes, an edit that reaches staging only, a promotion of production and a
# rollback of production alone; then evidence for staging from Prometheus and an evaluation Job,
# a bad edit the operator rolls staging back from by itself, and a good one promoted from
# staging), shows after each step what each running agent serves, and what happened.
# Everything it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} != --inside ]]; then
  scripts/setup.sh
  image=$(scripts/image.sh operator)
  scripts/image.sh runtime >/dev/null
  dir=$(mktemp -d "${TMPDIR:-/tmp}/agent-operator-demo.XXXXXX")
  echo "Demo files and logs: $dir"
  exec tests/control-plane/run.sh --node "$dir/cp" -- env DEMO_DIR="$dir" DEMO_IMAGE="$image" "$0" --inside
fi

# From here on KUBECONFIG points at the local cluster; kubectl and helm are on PATH.
ns=demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# As run, retrying the API server's transient refusals (429, 503), which kubectl retries only
# with a Retry-After; any other error ends the demo at once.
run_retried() {
  printf '$ %s\n' "$*"
  local pause=0.1 out
  for _ in $(seq 10); do
    if out=$("$@" 2>&1); then printf '%s\n' "$out"; return; fi
    grep -E '^Error from server \((ServiceUnavailable|TooManyRequests)\)' <<<"$out" >/dev/null || { printf '%s\n' "$out" >&2; return 1; }
    sleep "$pause"
    pause=$(python3 -c "print(min($pause * 2, 2))")
  done
  printf '%s\n' "$out" >&2
  return 1
}

say "Kubernetes $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), one node"
run kubectl get nodes
say "Installing the operator with Helm (its image imported into the node, as a registry pull would)"
echo "helm install returns once the chart's start-up check has seen the API server admit creates of"
echo "Agents, AgentVersions and AgentRollbacks, so the kubectl apply that follows needs no wait."
tests/control-plane/node.sh import "$DEMO_DIR/cp" "$DEMO_IMAGE" "$(dirname "$DEMO_IMAGE")/agent-runtime-$(basename "$DEMO_IMAGE" | sed 's/^agent-operator-//')"
run helm install agent-operator charts/agent-operator -n agent-operator-system --create-namespace --wait --timeout 180s \
  --set delivery.restartWorkloads=true --set analysis.evaluationJobs=true
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
# What the running agent serves: each Ready runtime pod, asked over HTTP once all serve the
# Agent's active version.
serves() {
  serves_version support-runtime "$(kubectl get agent support -o jsonpath='{.status.activeVersion}')" "the runtime"
}
# What a channel's runtime serves, once all its pods serve the version the channel serves.
serves_channel() {
  for _ in $(seq 300); do
    version=$(kubectl get agentchannel "$1" -o jsonpath='{.status.version}')
    [[ -n $version ]] && break
    sleep 0.1
  done
  serves_version "$1-runtime" "$version" "$1"
}
# Each Ready pod of Deployment $1, asked over HTTP until all serve version $2; $3 names them.
serves_version() {
  local app=$1 active=$2 who=$3
  for _ in $(seq 600); do
    pods=$(kubectl get pods -l app="$app" \
      -o jsonpath='{range .items[*]}{.status.podIP} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}{";"}{end}')
    if out=$(python3 - "$active" "$pods" "$who" 2>/dev/null <<'PY'
import json, sys, urllib.request
active, who = sys.argv[1], sys.argv[3]
# "IP True;" for each Ready pod not being deleted.
ips = [p.split()[0] for p in sys.argv[2].split(";") if p.split()[1:] == ["True"]]
answers = []
for ip in ips:
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=2) as r:
        answers.append((r.headers["X-Agent-Version"], json.load(r)))
if not answers or any(v != active for v, _ in answers):
    sys.exit(1)
v, d = answers[0]
steps = ", ".join(s.get("name", "?") for s in d.get("steps", []))
print(f"  {who} serves version {v}: temperature {d.get('temperature')}, steps [{steps}]")
PY
    ); then
      echo "$out"
      return
    fi
    sleep 0.2
  done
  echo "$who never served version $active" >&2
  exit 1
}
wait_rollback() {
  kubectl wait --for=jsonpath='{.status.phase}'="$2" "agentrollback/$1" --timeout=60s >/dev/null
  kubectl get agentrollback "$1" -o jsonpath='  {.metadata.name}: {.status.phase} {.status.reason} - {.status.message}{"\n"}'
}

say "1. An Agent, and its runtime (a Deployment that mounts the Agent's ConfigMap): version 1"
run_retried kubectl apply -f examples/01-agent.yaml -f examples/runtime.yaml
wait_agent
serves
say "2. An edit of its definition: published as version 2, and the runtime rolls out with it"
run_retried kubectl apply -f examples/02-agent-edit.yaml
wait_agent
serves
say "3. Restore version 1 (publishes version 3, a copy of version 1)"
run_retried kubectl apply -f examples/03-restore.yaml
wait_rollback support-restore-v1 Succeeded
serves
say "4. Previous (publishes version 4, a copy of version 2)"
run_retried kubectl apply -f examples/04-previous.yaml
wait_rollback support-previous Succeeded
serves
say "5. Pop (deletes version 4; version 3 is active again)"
run_retried kubectl apply -f examples/05-pop.yaml
wait_rollback support-pop Succeeded
serves
say "6. A Restore of a version that never existed fails and changes nothing"
run_retried kubectl apply -f examples/06-fails.yaml
wait_rollback support-restore-v99 Failed

say "7. Two channels, each with its own runtime: staging follows the Agent, production is pinned to version 3"
run_retried kubectl apply -f examples/07-channels.yaml
serves_channel support-staging
serves_channel support-production
say "8. An edit (version 4) reaches staging only"
run_retried kubectl apply -f examples/08-agent-edit.yaml
wait_agent
serves
serves_channel support-staging
serves_channel support-production
say "9. A promotion moves production to version 4 (its spec stays at 3: InSync says what to commit)"
run_retried kubectl apply -f examples/09-promote.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded agentpromotion/support-production-v4 --timeout=60s >/dev/null
kubectl get agentpromotion support-production-v4 -o jsonpath='  {.metadata.name}: {.status.phase} - {.status.message}{"\n"}'
serves_channel support-production
serves_channel support-staging
run kubectl get agentchannel support-production -o jsonpath='{.status.conditions[?(@.type=="InSync")].message}{"\n"}'
say "10. A channel rollback moves production back to version 3, while staging stays on 4"
run_retried kubectl apply -f examples/10-channel-rollback.yaml
wait_rollback support-production-back-to-v3 Succeeded
serves_channel support-production
serves_channel support-staging

# Each version's verdict in channel $2, once it has one ($1 the version).
wait_verdict() {
  local label
  for _ in $(seq 600); do
    label=$(kubectl get agentversion "support-v$1" -o jsonpath="{.metadata.labels.health\.agentops\.dev/$2}")
    [[ -n $label ]] && break
    sleep 0.2
  done
  [[ -n $label ]] || { echo "version $1 got no verdict in $2" >&2; exit 1; }
  echo "  version $1 in $2: $label - $(kubectl get agentversion "support-v$1" -o jsonpath="{.metadata.annotations.health\.agentops\.dev/$2}")"
}
# Users of staging: a request to each of its runtime's pods every half second, so that a
# version that answers with errors shows in its counters.
(
  set +e
  while true; do
    for ip in $(kubectl get pods -l app=support-staging-runtime -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}' 2>/dev/null); do
      curl -s -o /dev/null --max-time 1 "http://$ip:8080/"
    done
    sleep 0.5
  done
) &
traffic=$!
trap 'kill $traffic 2>/dev/null' EXIT

say "11. Evidence for staging: Prometheus counts its runtime's errors, a Job evaluates each version"
sed "s|http://prometheus.monitoring:9090|$PROMETHEUS_URL|" examples/11-staging-checks.yaml >"$DEMO_DIR/11-staging-checks.yaml"
run_retried kubectl apply -f "$DEMO_DIR/11-staging-checks.yaml"
wait_verdict 4 support-staging
say "12. A bad edit (version 5 answers with errors) reaches staging; the operator rolls staging back by itself"
run_retried kubectl apply -f examples/12-agent-bad-edit.yaml
wait_agent
wait_verdict 5 support-staging
for _ in $(seq 300); do kubectl get agentrollback support-staging-auto-v5 >/dev/null 2>&1 && break; sleep 0.2; done
wait_rollback support-staging-auto-v5 Succeeded
run kubectl get agentrollback support-staging-auto-v5 -o jsonpath='{.spec.strategy} requested by {.spec.requestedBy}: {.spec.reason}{"\n"}'
serves_channel support-staging
serves_channel support-production
echo "  production never served version 5"
say "13. A good edit (version 6) passes staging's checks; a promotion from staging moves production to it"
run_retried kubectl apply -f examples/13-agent-good-edit.yaml
wait_agent
wait_verdict 6 support-staging
run_retried kubectl apply -f examples/14-promote-from-staging.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded agentpromotion/support-production-from-staging --timeout=60s >/dev/null
kubectl get agentpromotion support-production-from-staging -o jsonpath='  {.metadata.name}: {.status.phase} - {.status.message}{"\n"}'
serves_channel support-production
serves_channel support-staging
run kubectl get agentversions -L health.agentops.dev/support-staging -L health.agentops.dev/support-production

say "Result"
run kubectl get agents,agentversions,agentrollbacks,agentchannels,agentpromotions
run kubectl get configmap support-agent -o jsonpath='{.metadata.annotations}{"\n"}'
run kubectl get agent support -o jsonpath='{.status.delivery}{"\n"}' 
say "The operator's Events, in the order they happened"
run kubectl get events.v1.events.k8s.io --field-selector reportingController=agentops.dev/agent-operator \
  --sort-by=.eventTime -o custom-columns=TIME:.eventTime,TYPE:.type,REASON:.reason,KIND:.regarding.kind,OBJECT:.regarding.name,MESSAGE:.note
say "The Agent's spec is untouched by the rollbacks (temperature is still the last edit's 0.5)"
run kubectl get agent support -o jsonpath='{.spec.temperature}{"\n"}'
say "The operator ran as Pods: the leader's log, and its Lease"
leader=$(kubectl get lease agent-operator -n agent-operator-system -o jsonpath='{.spec.holderIdentity}')
run kubectl logs -n agent-operator-system "$leader" --tail=5
run kubectl get pods,lease -n agent-operator-system
