#!/usr/bin/env bash
# Lists whatever a stopped node (node.sh) or control plane (run.sh) left on this machine:
# processes, mounts, network namespaces, the bridge, iptables chains, the node address, cgroups,
# ip_forward not restored. Exits 1 if anything is left, so tests can assert a clean stop.
#
#   leftovers.sh [IP_FORWARD]   IP_FORWARD: the value ip_forward had before (default: unchecked)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

left=0
report() { echo "left behind: $*"; left=1; }

for pattern in "$ETCD_BIN/" "$K8S_BIN/" "^containerd --config .*/node/containerd/" "containerd-shim.*/node/containerd/"; do
  pids=$(pgrep -f "$pattern" 2>/dev/null | tr '\n' ' ')
  [[ -z $pids ]] || report "processes matching $pattern: $pids"
done
mounts=$(awk '$2 ~ /agent-operator-(test|demo)|\/node\/(kubelet|containerd)/ {print $2}' /proc/self/mounts)
[[ -z $mounts ]] || report "mounts: $mounts"
netns=$(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}' | tr '\n' ' ')
[[ -z $netns ]] || report "network namespaces: $netns"
! ip link show "$BRIDGE" >/dev/null 2>&1 || report "bridge $BRIDGE"
[[ -z $(ip -o addr show dev lo to "$NODE_IP/32") ]] || report "address $NODE_IP on lo"
for cmd in iptables ip6tables; do
  chains=$("$cmd-save" 2>/dev/null | grep -cE '^:(KUBE|CNI)-')
  [[ $chains == 0 ]] || report "$chains $cmd chains KUBE-*/CNI-*"
done
cgroups=$(find /sys/fs/cgroup/*/kubepods* -maxdepth 0 -type d 2>/dev/null | tr '\n' ' ')
[[ -z $cgroups ]] || report "cgroups: $cgroups"
if [[ -n ${1:-} && $(cat /proc/sys/net/ipv4/ip_forward) != "$1" ]]; then
  report "ip_forward is $(cat /proc/sys/net/ipv4/ip_forward), was $1"
fi
exit "$left"
