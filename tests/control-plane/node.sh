#!/usr/bin/env bash
# A real node beside the local control plane: containerd and runc (Debian), the bridge CNI
# plugin, kubelet, kube-proxy and kube-scheduler (built from the same Go module as
# kube-apiserver). run.sh --node calls it; it needs root.
#
#   node.sh prepare             install what a node needs, clear a node a killed run left
#                               behind, and put the node's address on lo (before the API
#                               server starts: it listens there)
#   node.sh start DIR           start the node for the control plane in DIR (run.sh's DIR)
#   node.sh import DIR TAR...   import OCI image archives into the node's containerd
#   node.sh stop [DIR]          stop it and remove everything it made; safe to repeat
#
# Addresses stay on this machine and outside the private ranges: the node is 198.18.1.1 on
# the loopback device, pods get 198.18.0.0/24 on the bridge aobr0, Services 198.19.0.0/24.
# Nothing listens on 0.0.0.0. One node per machine: run.sh holds $NODE_LOCK while it runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PAUSE_IMAGE=agentops.local/pause:1
CNI_BIN=/usr/lib/cni

need_root() { [[ $(id -u) == 0 ]] || { log "node.sh: a node needs root (kubelet, containerd, iptables)"; exit 1; }; }

install_packages() {
  local need=() p
  for p in containerd runc containernetworking-plugins iptables conntrack; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "ok installed" >/dev/null || need+=("$p")
  done
  command -v gcc >/dev/null || need+=(gcc)
  ((${#need[@]})) || return 0
  log "Installing ${need[*]} from Debian (first time only)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The sandbox image: one static program that waits for a signal.
pause_image() {
  local out=$CACHE_DIR/pause-1
  if [[ ! -f $out/.complete ]]; then
    mkdir -p "$out"
    gcc -static -O2 -o "$out/pause" "$CP_DIR/pause.c"
    python3 "$CP_DIR/oci-image.py" "$PAUSE_IMAGE" "$out/pause.tar" --file "$out/pause:/pause" \
      --entrypoint /pause --user 65535:65535 >/dev/null
    touch "$out/.complete"
  fi
  echo "$out/pause.tar"
}

pidfile() { echo "$N/pids/$1"; }
alive() { [[ -f $(pidfile "$1") ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

# Starts a daemon in the background with its log in $N/logs; its stdin and the run's lock closed.
daemon() {
  local name=$1; shift
  "$@" </dev/null >"$N/logs/$name.log" 2>&1 8>&- &
  echo $! >"$(pidfile "$name")"
}

kubeconfig_for() { # user -> kubeconfig with that user's client certificate
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$D/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$D/pki/$1.crt", client-key: "$D/pki/$1.key"}
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
EOF
}

wait_for() { # description timeout-seconds command...
  local what=$1 limit=$2 start=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start > limit)); then log "$what: not within ${limit}s; logs in $N/logs"; tail -n 15 "$N"/logs/*.log >&2; return 1; fi
    sleep 0.2
  done
}

# The caller holds $NODE_LOCK, so whatever a recorded node left is no live run's.
prepare() {
  need_root
  install_packages
  mkdir -p "$NODE_STATE"
  stop
  # Forwarding carries pod-to-Service-to-pod traffic; the original value is restored on stop.
  cat /proc/sys/net/ipv4/ip_forward >"$NODE_STATE/ip_forward"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  ip addr add "$NODE_IP/32" dev lo
}

start() {
  need_root
  [[ -f $D/env ]] || { log "node.sh: $D has no running control plane"; exit 1; }
  source "$D/env"
  echo "$D" >"$NODE_STATE/dir"
  N=$D/node
  mkdir -p "$N"/{pids,logs,cni/net.d,cni/ipam,kubelet,pod-logs,containerd}
  local t0=$SECONDS

  # --- containerd ---
  cat >"$N/cni/net.d/10-agentops.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "agentops", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
EOF
  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$N/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine's capability bounding set lacks CAP_SYS_RESOURCE: without this every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$N/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$N/cni/net.d"
EOF
  daemon containerd containerd --config "$N/containerd/config.toml"
  wait_for "containerd" 30 ctr --address "$N/containerd/containerd.sock" version
  import "$(pause_image)"

  # --- identities: the node, kube-proxy and kube-scheduler each as themselves ---
  "$CP_DIR/user-cert.sh" "$D/pki" node "/CN=system:node:$NODE_NAME/O=system:nodes"
  "$CP_DIR/user-cert.sh" "$D/pki" kube-proxy "/CN=system:kube-proxy"
  "$CP_DIR/user-cert.sh" "$D/pki" kube-scheduler "/CN=system:kube-scheduler"
  "$CP_DIR/user-cert.sh" "$D/pki" kubelet-serving "/CN=$NODE_NAME" \
    "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME\nextendedKeyUsage=serverAuth\n"
  local who
  for who in node kube-proxy kube-scheduler; do kubeconfig_for "$who" >"$N/$who.kubeconfig"; done

  # --- kubelet ---
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$D/pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$D/pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$D/pki/kubelet-serving.key"
containerRuntimeEndpoint: "unix://$N/containerd/containerd.sock"
# This machine has cgroup v1 and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: "$N/pod-logs"
resolvConf: ""
# The disk is shared with everything else on the machine: never evict or collect images for it.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
EOF
  daemon kubelet "$K8S_BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/node.kubeconfig" \
    --root-dir="$N/kubelet" --cert-dir="$N/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

  # --- kube-proxy (iptables) and kube-scheduler ---
  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$N/kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: "127.0.0.1:10256"
metricsBindAddress: "127.0.0.1:10249"
nodePortAddresses: ["$NODE_IP/32"]
# Leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  daemon kube-proxy "$K8S_BIN/kube-proxy" --config="$N/kube-proxy.yaml"
  daemon kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$N/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$N/kube-scheduler.kubeconfig" --authorization-kubeconfig="$N/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false

  wait_for "node $NODE_NAME Ready" 90 node_ready
  log "Node $NODE_NAME ($NODE_IP) Ready in $((SECONDS - t0))s; pods $POD_CIDR, Services $SERVICE_CIDR"
}

node_ready() {
  [[ $("$K8S_BIN/kubectl" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

import() {
  local tar
  for tar in "$@"; do
    ctr --address "$D/node/containerd/containerd.sock" -n k8s.io images import --no-unpack "$tar" >/dev/null
  done
}

stop_pid() {
  local p=$1 _
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}

# The chains the kubelet makes for itself (KUBE-FIREWALL, canaries), which kube-proxy's
# cleanup leaves: first the rules that jump to them, then the chains.
sweep_iptables() {
  local cmd=$1 table rule chain
  command -v "$cmd" >/dev/null || return 0
  for table in filter nat mangle; do
    "$cmd-save" -t "$table" 2>/dev/null | grep KUBE- >/dev/null || continue
    while read -r rule; do
      # eval: iptables-save quotes words with spaces (comments) as a shell would.
      eval "\"\$cmd\" -t \"\$table\" -D ${rule#-A }" 2>/dev/null || true
    done < <("$cmd-save" -t "$table" | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -v '^-A KUBE-')
    for chain in $("$cmd-save" -t "$table" | awk '/^:KUBE-/ {print substr($1, 2)}'); do
      "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$cmd-save" -t "$table" | awk '/^:KUBE-/ {print substr($1, 2)}'); do
      "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

# Stops the node of DIR and removes what it made: processes, containers, mounts, network
# namespaces, the bridge, iptables rules, cgroups, the node address. Every step tolerates
# finding nothing, so it is safe after a failure, an interruption, or a second time.
stop() {
  local dir=${1:-}
  if [[ -z $dir && -f $NODE_STATE/dir ]]; then dir=$(cat "$NODE_STATE/dir"); fi
  N=${dir:+$dir/node}
  local name p
  if [[ -n $N && -d $N/pids ]]; then
    for name in kube-scheduler kube-proxy kubelet; do
      if [[ -f $N/pids/$name ]]; then stop_pid "$(cat "$N/pids/$name")"; fi
    done
    # Every container, sandboxes included, then containerd and its shims.
    if [[ -d $N/runc ]]; then
      for root in "$N"/runc/*/; do
        for p in $(runc --root "$root" list -q 2>/dev/null); do runc --root "$root" delete --force "$p" >/dev/null 2>&1 || true; done
      done
    fi
    if [[ -f $N/pids/containerd ]]; then stop_pid "$(cat "$N/pids/containerd")"; fi
    for p in $(pgrep -f "containerd-shim.*-address $N/containerd/containerd.sock" || true); do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "$N"/pids/*
  fi
  # Network namespaces of pods (CNI names them cni-*), once no process is left in them.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    if [[ -z $(ip netns pids "$ns" 2>/dev/null) ]]; then ip netns delete "$ns" 2>/dev/null || true; fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
  if [[ -x $K8S_BIN/kube-proxy ]] && iptables-save 2>/dev/null | grep KUBE- >/dev/null; then
    "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  sweep_iptables iptables
  sweep_iptables ip6tables
  # The kubelet's root dir is bind-mounted rshared, and pods' volumes and rootfs are mounted
  # under it and containerd's state: unmount deepest first.
  if [[ -n $N ]]; then
    local m
    for m in $(awk -v n="$N/" 'index($2, n) == 1 {print $2}' /proc/self/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  fi
  # cgroups the kubelet made (cgroup v1: one tree per controller), deepest first.
  local c
  for c in $(find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null); do rmdir "$c" 2>/dev/null || true; done
  if [[ -n $(ip -o addr show dev lo to "$NODE_IP/32" 2>/dev/null) ]]; then ip addr del "$NODE_IP/32" dev lo; fi
  if [[ -f $NODE_STATE/ip_forward ]]; then
    cat "$NODE_STATE/ip_forward" >/proc/sys/net/ipv4/ip_forward
    rm -f "$NODE_STATE/ip_forward"
  fi
  if [[ -n $N ]]; then rm -rf "$N/containerd" "$N/kubelet" "$N/runc" "$N/cni/ipam" 2>/dev/null || true; fi
  rm -f "$NODE_STATE/dir"
}

cmd=${1:-}; shift || true
case $cmd in
  prepare) prepare ;;
  start) D=$(cd "$1" && pwd); start ;;
  import) D=$(cd "$1" && pwd); shift; import "$@" ;;
  stop) need_root; stop "${1:-}" ;;
  *) echo "usage: $0 start DIR | import DIR TAR... | stop [DIR]" >&2; exit 2 ;;
esac
