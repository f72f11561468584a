# Shared settings for the control-plane scripts: where binaries are cached and which versions.
# Sourced, not run.

CP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Outside the repo, so clean clones and `git clean` keep the (slow) builds.
CACHE_DIR=${AGENT_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agent-operator}

# The versions are read from the wrapper modules, so go.mod is the one place they are set.
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}' "$CP_DIR/k8s/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3; exit}' "$CP_DIR/etcd/go.mod")
PROMETHEUS_VERSION=$(awk '$1 == "github.com/prometheus/prometheus" && $2 ~ /^v/ {print $2; exit}' "$CP_DIR/prometheus/go.mod")
# helm has no replace directives, so `go install helm@version` builds it without a wrapper.
HELM_VERSION=v3.21.4
K8S_BIN=$CACHE_DIR/k8s-$K8S_VERSION/bin
HELM_BIN=$CACHE_DIR/helm-$HELM_VERSION/bin
ETCD_BIN=$CACHE_DIR/etcd-$ETCD_VERSION/bin
PROMETHEUS_BIN=$CACHE_DIR/prometheus-$PROMETHEUS_VERSION/bin

# The node (run.sh --node): its address sits on the loopback device; pods and Services get
# ranges outside the private ones, so every packet plainly stays on this machine.
NODE_NAME=agentops-node
NODE_IP=198.18.1.1
POD_CIDR=198.18.0.0/24
SERVICE_CIDR=198.19.0.0/24
SERVICE_IP=198.19.0.1
BRIDGE=aobr0
# Machine-wide, as the node is: which run's node is up, what to restore, and its lock.
NODE_STATE=/run/agent-operator-node
NODE_LOCK=/run/agent-operator-node.lock

export GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Note for these scripts: under pipefail, `cmd | grep -q` fails when grep exits at its first
# match and cmd then dies of SIGPIPE; `grep PATTERN >/dev/null` reads to the end instead.
