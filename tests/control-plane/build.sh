#!/usr/bin/env bash
# Builds etcd, the Kubernetes binaries (kube-apiserver, kube-controller-manager, kubectl, and the
# node's kubelet, kube-proxy and kube-scheduler) and helm from the Go module proxy into the cache,
# keyed by version. A finished build leaves a stamp; with the stamp present
# this does nothing, so every caller can run it unconditionally.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$CACHE_DIR"
# Two callers (a test run and the demo) must not build into the same directory at once.
exec 9>"$CACHE_DIR/build.lock"
flock 9

build_etcd() {
  local out=$ETCD_BIN
  [[ -f $out/.complete ]] && return
  log "Building etcd $ETCD_VERSION (first time only)"
  mkdir -p "$out"
  (cd "$CP_DIR/etcd" && go build -mod=readonly -trimpath -buildvcs=false -ldflags="-s -w" \
    -o "$out/etcd" go.etcd.io/etcd/server/v3)
  touch "$out/.complete"
}

K8S_TOOLS=(kube-apiserver kube-controller-manager kubectl kubelet kube-proxy kube-scheduler)

build_k8s() {
  local out=$K8S_BIN tool missing=0
  for tool in "${K8S_TOOLS[@]}"; do [[ -x $out/$tool ]] || missing=1; done
  [[ -f $out/.complete && $missing == 0 ]] && return
  log "Building ${K8S_TOOLS[*]} $K8S_VERSION (first time only; 5-10 min on 2 cores)"
  mkdir -p "$out"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  # Without these, /version reports v0.0.0-master and kubectl cannot parse the server version.
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$CP_DIR/k8s" && go build -mod=readonly -trimpath -buildvcs=false \
    -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" -o "$out/" \
    "${K8S_TOOLS[@]/#/k8s.io/kubernetes/cmd/}")
  touch "$out/.complete"
}

build_helm() {
  local out=$HELM_BIN
  [[ -f $out/.complete ]] && return
  log "Building helm $HELM_VERSION (first time only)"
  mkdir -p "$out"
  # The version ldflags are what helm's Makefile sets; without them helm reports v3.21 and
  # assumes Kubernetes v1.20 for `helm template` and `helm lint`.
  local p=helm.sh/helm/v3
  GOBIN=$out go install -trimpath -ldflags="-s -w -X $p/internal/version.version=$HELM_VERSION \
    -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=37 \
    -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=37" \
    "$p/cmd/helm@$HELM_VERSION"
  touch "$out/.complete"
}

# Prometheus, for the analysis checks: the tests query a real one, started beside the control
# plane (run.sh --node).
build_prometheus() {
  local out=$PROMETHEUS_BIN
  [[ -f $out/.complete ]] && return
  log "Building prometheus $PROMETHEUS_VERSION (first time only; about 9 min on 2 cores)"
  mkdir -p "$out"
  (cd "$CP_DIR/prometheus" && CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false -ldflags="-s -w" \
    -o "$out/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
  touch "$out/.complete"
}

build_etcd
build_k8s
build_helm
build_prometheus
log "Control-plane binaries ready: $K8S_BIN, $ETCD_BIN, $HELM_BIN, $PROMETHEUS_BIN"
