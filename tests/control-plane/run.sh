#!/usr/bin/env bash
# Starts a local control plane (etcd, kube-apiserver, kube-controller-manager) on free ports,
# the way controller-runtime's envtest does; with --node, also a real node beside it (node.sh).
#
#   run.sh DIR                 start, then serve until SIGINT/SIGTERM
#   run.sh --exit-with-parent DIR
#                              the same, but also stop when the process that started it exits
#                              (a test binary that ends or is killed cannot leave servers behind)
#   run.sh --node DIR          with a node that runs pods (root; one per machine). The API
#                              server then listens on the node's address instead of 127.0.0.1.
#   run.sh DIR -- CMD ARGS...  start, run CMD with KUBECONFIG set, stop, exit with CMD's status
#   --api-flag=FLAG            one more kube-apiserver flag (repeatable), for a control plane
#                              configured unlike the default (some API turned off)
#
# Beside it, a Prometheus (PROMETHEUS_URL), for the analysis checks.
# DIR receives: admin.kubeconfig, pki/ (the CA that also signs client certificates, see
# user-cert.sh), env (KUBECONFIG and the ports, for sourcing), ready (written once /readyz
# answers), logs/. Everything started is stopped on exit, also on failure or interruption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

watch_pid= node= extra_api_flags=()
while [[ ${1:-} == --* ]]; do
  case $1 in
    --exit-with-parent) watch_pid=$PPID ;;
    --node) node=1 ;;
    --api-flag=*) extra_api_flags+=("${1#--api-flag=}") ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--exit-with-parent] [--node] DIR [-- CMD ARGS...]" >&2; exit 2; }
D=$(mkdir -p "$1" && cd "$1" && pwd)
shift
[[ ${1:-} == -- ]] && shift

"$CP_DIR/build.sh"
addr=127.0.0.1
if [[ -n $node ]]; then
  # Held for as long as this script runs (node.sh's daemons do not inherit it).
  exec 8>"$NODE_LOCK"
  flock -n 8 || { log "Another run's node is up on this machine (lock $NODE_LOCK)"; exit 1; }
  "$CP_DIR/node.sh" prepare
  addr=$NODE_IP
fi
rm -f "$D/ready"
mkdir -p "$D/pki" "$D/logs"

pids=()
stop() {
  local rc=$?
  trap - EXIT INT TERM
  rm -f "$D/ready"
  [[ -z $node ]] || "$CP_DIR/node.sh" stop "$D" || true
  # Reverse order: the API server goes before etcd, so it does not log a storm of etcd errors.
  local i p
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$D/etcd"
  exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_PORT=$(free_port)
PEER_PORT=$(free_port)
API_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
url=https://$addr:$API_PORT

# --- certificates: one CA signs the serving cert and every client cert -----------------------
pki=$D/pki
if [[ ! -f $pki/ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=agent-operator-test-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi
# A leaf signed by the CA (rustls refuses a self-signed serving cert used as its own CA).
# Valid for every name pods use for the API server: the `kubernetes` Service's IP and names.
"$CP_DIR/user-cert.sh" "$pki" apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
"$CP_DIR/user-cert.sh" "$pki" admin "/CN=admin/O=system:masters"
# How the API server authenticates to kubelets (for logs, exec); bound to system:kubelet-api-admin.
"$CP_DIR/user-cert.sh" "$pki" apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client"

kubeconfig() { # user -> kubeconfig text
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $url
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: local
  context: {cluster: local, user: $1, namespace: default}
current-context: local
EOF
}
kubeconfig admin >"$D/admin.kubeconfig"

# --- etcd ------------------------------------------------------------------------------------
rm -rf "$D/etcd"
"$ETCD_BIN/etcd" --name=default --data-dir="$D/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$PEER_PORT" \
  --unsafe-no-fsync=true --log-level=warn >"$D/logs/etcd.log" 2>&1 &
pids+=($!)
echo $! >"$D/etcd.pid" # tests pause it (SIGSTOP, SIGCONT)

# --- kube-apiserver --------------------------------------------------------------------------
api_flags=()
if [[ -n $node ]]; then
  # The node's address is the `kubernetes` Service's endpoint; the kubelet is a node to the
  # Node authorizer, and the API server reaches it with its own client certificate.
  api_flags+=(--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" --kubelet-certificate-authority="$pki/ca.crt"
    --kubelet-preferred-address-types=InternalIP)
else
  # Endpoints refuse loopback IPs, so without a node the `kubernetes` Service has none.
  api_flags+=(--authorization-mode=RBAC --endpoint-reconciler-type=none)
fi
api_flags+=(${extra_api_flags[@]+"${extra_api_flags[@]}"})
# Started again whenever it exits, so tests restart it by killing the PID in
# $D/kube-apiserver.pid; the supervising subshell stops it when it is stopped itself.
api_server=("$K8S_BIN/kube-apiserver"
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$addr" --secure-port="$API_PORT" --advertise-address="$addr" \
  --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-issuer="$url" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --api-audiences="$url" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  "${api_flags[@]}")
(
  child=
  stop_child() {
    [[ -n $child ]] || return 0
    kill -TERM "$child" 2>/dev/null || return 0
    for _ in $(seq 80); do kill -0 "$child" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$child" 2>/dev/null || true
  }
  trap 'stop_child; exit 0' TERM
  while :; do
    "${api_server[@]}" >>"$D/logs/kube-apiserver.log" 2>&1 &
    child=$!
    echo "$child" >"$D/kube-apiserver.pid"
    wait "$child" || true
    sleep 0.1
  done
) &
pids+=($!)

exit_if_one_exited() {
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { log "A control-plane process exited early; logs in $D/logs"; tail -n 20 "$D"/logs/*.log >&2; exit 1; }
  done
}

start=$(date +%s.%N)
export KUBECONFIG=$D/admin.kubeconfig
until "$K8S_BIN/kubectl" get --raw=/readyz >/dev/null 2>&1; do
  exit_if_one_exited
  if (($(date +%s) - ${start%.*} > 120)); then log "Control plane not ready after 120 s; logs in $D/logs"; exit 1; fi
  sleep 0.2
done

# --- kube-controller-manager -----------------------------------------------------------------
# Started once the API server is ready: it gives up if /healthz is not ok within 10 s, which a
# loaded machine can take.
# The controllers that API objects depend on: ownerReference garbage collection, namespace
# deletion, ServiceAccounts and their tokens, the aggregated edit/view roles, Deployments (the
# benchmark times `kubectl rollout undo` until their controller observes it); with a node, also
# what nodes and workloads need (node health and taints, ReplicaSets, StatefulSets, Jobs (the
# chart's start-up check is one), endpoints).
controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller,root-ca-certificate-publisher-controller,deployment-controller
[[ -z $node ]] || controllers+=,node-lifecycle-controller,replicaset-controller,statefulset-controller,job-controller,endpoints-controller,endpointslice-controller,pod-garbage-collector-controller
"$K8S_BIN/kube-controller-manager" --kubeconfig="$D/admin.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
  --controllers="$controllers" \
  --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
  --use-service-account-credentials=false \
  >"$D/logs/kube-controller-manager.log" 2>&1 &
pids+=($!)

# Tests create namespaces at once, and the aggregated edit/view roles must be filled in first.
until "$K8S_BIN/kubectl" get clusterrole edit -o jsonpath='{.rules}' 2>/dev/null | grep . >/dev/null; do
  exit_if_one_exited
  if (($(date +%s) - ${start%.*} > 120)); then log "Aggregated roles never filled in; logs in $D/logs"; exit 1; fi
  sleep 0.2
done
ready_s=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
log "Control plane $K8S_VERSION (etcd $ETCD_VERSION) ready in ${ready_s}s at $url"

# --- Prometheus -------------------------------------------------------------------------------
# For the channels' prometheus checks: a real one beside the control plane, on the address pods
# reach. It scrapes every pod annotated prometheus.io/scrape: "true" (the example runtime), found
# through the API server, every second, with the pod's labels.
mkdir -p "$D/prometheus"
cat >"$D/prometheus/prometheus.yml" <<PROMETHEUS
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: pods
    kubernetes_sd_configs: [{role: pod, kubeconfig_file: $D/admin.kubeconfig}]
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape], regex: "true", action: keep}
      - {source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}
      - {action: labelmap, regex: __meta_kubernetes_pod_label_(.+)}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
PROMETHEUS
"$PROMETHEUS_BIN/prometheus" --config.file="$D/prometheus/prometheus.yml" \
  --storage.tsdb.path="$D/prometheus/data" --web.listen-address="$addr:$PROMETHEUS_PORT" \
  >"$D/logs/prometheus.log" 2>&1 &
pids+=($!)
PROMETHEUS_URL=http://$addr:$PROMETHEUS_PORT
until curl -sf "$PROMETHEUS_URL/-/ready" >/dev/null; do
  exit_if_one_exited
  if (($(date +%s) - ${start%.*} > 120)); then log "Prometheus not ready after 120 s; logs in $D/logs"; exit 1; fi
  sleep 0.2
done
log "Prometheus $PROMETHEUS_VERSION ready at $PROMETHEUS_URL"

cat >"$D/env" <<EOF
export KUBECONFIG=$D/admin.kubeconfig
export AGENT_OPERATOR_TEST_KUBECONFIG=$D/admin.kubeconfig
export AGENT_OPERATOR_TEST_PKI=$pki
export K8S_BIN=$K8S_BIN
export HELM_BIN=$HELM_BIN
export API_PORT=$API_PORT
export API_ADDR=$addr
export AGENT_OPERATOR_TEST_NODE=$node
export PROMETHEUS_URL=$PROMETHEUS_URL
EOF
if [[ -n $node ]]; then
  "$K8S_BIN/kubectl" create clusterrolebinding kube-apiserver-kubelet-client \
    --clusterrole=system:kubelet-api-admin --user=kube-apiserver-kubelet-client >/dev/null
  "$CP_DIR/node.sh" start "$D"
fi
echo "$ready_s" >"$D/ready"
log "KUBECONFIG=$D/admin.kubeconfig"

if [[ $# -gt 0 ]]; then
  set +e
  PATH="$K8S_BIN:$HELM_BIN:$PATH" AGENT_OPERATOR_TEST_KUBECONFIG=$KUBECONFIG AGENT_OPERATOR_TEST_PKI=$pki \
    AGENT_OPERATOR_TEST_NODE=$node PROMETHEUS_URL=$PROMETHEUS_URL "$@"
  exit $?
fi
# Serve until signalled, or until whoever started us is gone (with --exit-with-parent).
while [[ -z $watch_pid ]] || kill -0 "$watch_pid" 2>/dev/null; do
  for p in "${pids[@]}" $(cat "$D"/node/pids/* 2>/dev/null); do
    kill -0 "$p" 2>/dev/null || { log "A control-plane or node process exited; logs in $D/logs and $D/node/logs"; exit 1; }
  done
  sleep 1
done
