#!/usr/bin/env bash
# Build the local control plane from the official sources through the Go module proxy.
#
# Why from source: these machines have no Docker and reach only package registries, so kind, k3d and
# setup-envtest (which download images or release tarballs) cannot work. The Go module proxy can.
#
# Output: $MODELPILOT_CACHE/bin/<component>-<version>/ (default ~/.cache/modelpilot), outside the repo,
# keyed by version, so a warm run is a few stat() calls. Prints the bin directory on stdout (last line).
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every staging module (k8s.io/api,
# k8s.io/client-go, ...) with ./staging/src/... . We generate a wrapper module that requires it and
# replaces each staging module with its published v0.<minor>.<patch>, deriving the list from the real
# go.mod rather than hard-coding it.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
# Prometheus 2.54.1 (its Go module is tagged v0.54.1). Debian's package is built without Kubernetes
# service discovery; this one has it, so tests discover pods the way a production Prometheus does.
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.54.1}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.4.0}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.87.1}
KEDA_VERSION=${KEDA_VERSION:-v2.18.1}
# The HPA's metrics APIs in the end-to-end autoscaling test: prometheus-adapter serves the custom metrics
# API (requests in flight per pod), metrics-server the resource metrics API (CPU).
PROMETHEUS_ADAPTER_VERSION=${PROMETHEUS_ADAPTER_VERSION:-v0.12.0}
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.8.0}
CACHE=${MODELPILOT_CACHE:-$HOME/.cache/modelpilot}
# Which Kubernetes commands to build (kubelet and kube-proxy run the real node).
K8S_CMDS=${K8S_CMDS:-"kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"}

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
log() { echo "[build-binaries] $*" >&2; }

k8s_dir="$CACHE/bin/kubernetes-$K8S_VERSION"
etcd_dir="$CACHE/bin/etcd-$ETCD_VERSION"
kwok_dir="$CACHE/bin/kwok-$KWOK_VERSION"
helm_dir="$CACHE/bin/helm-$HELM_VERSION"
prom_dir="$CACHE/bin/prometheus-$PROMETHEUS_VERSION"
adapter_dir="$CACHE/bin/prometheus-adapter-$PROMETHEUS_ADAPTER_VERSION"
metrics_server_dir="$CACHE/bin/metrics-server-$METRICS_SERVER_VERSION"
out="$CACHE/bin/current"
mkdir -p "$k8s_dir" "$etcd_dir" "$kwok_dir" "$helm_dir" "$prom_dir" "$adapter_dir" "$metrics_server_dir" "$out"

build_k8s() {
  local missing=()
  for c in $K8S_CMDS; do [ -x "$k8s_dir/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && { log "kubernetes $K8S_VERSION: cached"; return; }
  log "kubernetes $K8S_VERSION: building ${missing[*]} (cold build takes 10-20 min on 2 cores)"
  local start=$SECONDS work minor patch src
  work=$(mktemp -d)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  patch=$(echo "$K8S_VERSION" | cut -d. -f3)
  src=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  {
    echo "module modelpilot.dev/k8sbuild"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # every "k8s.io/x => ./staging/src/k8s.io/x" line of the real go.mod becomes a published version
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/src/' "$src/go.mod" \
      | awk -v v="v0.$minor.$patch" '{print "replace " $1 " => " $1 " " v}'
  } > "$work/go.mod"
  log "wrapper go.mod has $(grep -c '^replace' "$work/go.mod") staging replaces"
  local pkg="k8s.io/component-base/version" cgo="k8s.io/client-go/pkg/version"
  local ld="-s -w"
  for p in $pkg $cgo; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local pkgs=()
  for c in "${missing[@]}"; do
    case $c in
      kubectl) pkgs+=("k8s.io/kubernetes/cmd/kubectl") ;;
      *) pkgs+=("k8s.io/kubernetes/cmd/$c") ;;
    esac
  done
  # each package at $K8S_VERSION: a bare `go get pkg` means @upgrade, the newest k8s.io/kubernetes, whose
  # packages need staging modules newer than the replaces above (broke the build when v1.37 came out)
  (cd "$work" && go get "${pkgs[@]/%/@$K8S_VERSION}" >&2 && go build -trimpath -ldflags "$ld" -o "$k8s_dir/" "${pkgs[@]}")
  rm -rf "$work"
  log "kubernetes built in $((SECONDS - start)) s"
}

build_prometheus() {
  [ -x "$prom_dir/prometheus" ] && { log "prometheus $PROMETHEUS_VERSION: cached"; return; }
  log "prometheus $PROMETHEUS_VERSION: building (a few minutes cold)"
  local start=$SECONDS work src
  work=$(mktemp -d)
  src=$(cd "$work" && go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  {
    printf 'module modelpilot.dev/prometheusbuild\n\ngo 1.26\n\nrequire github.com/prometheus/prometheus %s\n\n' "$PROMETHEUS_VERSION"
    # its go.mod replaces klog; a wrapper module must repeat the replace block to build it
    sed -n '/^replace (/,/^)/p' "$src/go.mod"
  } > "$work/go.mod"
  (cd "$work" && go get "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" >&2 \
     && go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=2.${PROMETHEUS_VERSION#v0.}" \
          -o "$prom_dir/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
  rm -rf "$work"
  log "prometheus built in $((SECONDS - start)) s"
}

build_wrapped() {  # dir, package, version, binary: `go build` in a wrapper module
  [ -x "$1/$4" ] && { log "$4 $3: cached"; return; }
  log "$4 $3: building $2"
  local start=$SECONDS work
  work=$(mktemp -d)
  # `go install pkg@version` also asks the proxy for the module's version list (to look for a deprecation
  # notice), which the proxy here refuses for some modules; `go get` of an exact version does not
  printf 'module modelpilot.dev/wrapperbuild\n\ngo 1.26\n' > "$work/go.mod"
  (cd "$work" && go get "$2@$3" >&2 && go build -trimpath -ldflags "-s -w" -o "$1/$4" "$2")
  rm -rf "$work"
  log "$4 built in $((SECONDS - start)) s"
}

build_go_install() {  # dir, package@version, binary
  [ -x "$1/$3" ] && { log "$3: cached"; return; }
  log "$3: building $2"
  local start=$SECONDS
  GOBIN="$1" go install -trimpath -ldflags "-s -w" "$2" >&2
  log "$3 built in $((SECONDS - start)) s"
}

build_wrapped "$etcd_dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" etcd
build_go_install "$kwok_dir" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" kwok
build_go_install "$helm_dir" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" helm
build_k8s
build_prometheus
build_wrapped "$adapter_dir" sigs.k8s.io/prometheus-adapter/cmd/adapter "$PROMETHEUS_ADAPTER_VERSION" prometheus-adapter
build_wrapped "$metrics_server_dir" sigs.k8s.io/metrics-server/cmd/metrics-server "$METRICS_SERVER_VERSION" metrics-server

# kwok ships no built-in stages: take the upstream ones (node initialise + heartbeat, the general pod
# lifecycle) from the same module version, so pods go Running/Ready the way kwokctl's defaults do.
if [ ! -s "$kwok_dir/stages.yaml" ]; then
  src=$(cd /tmp && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in "$src"/kustomize/stage/node/fast/node-initialize.yaml "$src"/kustomize/stage/node/heartbeat/node-heartbeat.yaml \
           "$src"/kustomize/stage/pod/general/pod-*.yaml; do
    echo "---"; cat "$f"
  done > "$kwok_dir/stages.yaml.tmp" && mv "$kwok_dir/stages.yaml.tmp" "$kwok_dir/stages.yaml"
fi

# The official Gateway API CRDs (standard channel), from the same module the implementations build on:
# the canary tests install them to check HTTPRoute weights against the real schema.
gw_dir="$CACHE/gateway-api-$GATEWAY_API_VERSION"
if [ ! -s "$gw_dir/gateway.networking.k8s.io_httproutes.yaml" ]; then
  src=$(cd /tmp && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$gw_dir.tmp" && cp "$src"/config/crd/standard/*.yaml "$gw_dir.tmp/" && rm -rf "$gw_dir" && mv "$gw_dir.tmp" "$gw_dir"
  log "gateway-api $GATEWAY_API_VERSION CRDs: fetched"
fi
ln -sfn "$gw_dir" "$out/gateway-api-crds"

# The Prometheus Operator's PrometheusRule CRD: the operator renders one per ModelDeployment with latency
# thresholds where it is served; tests install it to check those against the real schema.
po_dir="$CACHE/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
if [ ! -s "$po_dir/monitoring.coreos.com_prometheusrules.yaml" ]; then
  src=$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$po_dir.tmp" && cp "$src"/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml "$po_dir.tmp/" && rm -rf "$po_dir" && mv "$po_dir.tmp" "$po_dir"
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION PrometheusRule CRD: fetched"
fi
ln -sfn "$po_dir" "$out/prometheus-operator-crds"

# KEDA's ScaledObject CRD: spec.autoscaling.engine keda renders one; tests check it against the real schema.
keda_dir="$CACHE/keda-$KEDA_VERSION"
if [ ! -s "$keda_dir/keda.sh_scaledobjects.yaml" ]; then
  src=$(cd /tmp && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$keda_dir.tmp" && cp "$src"/config/crd/bases/keda.sh_scaledobjects.yaml "$keda_dir.tmp/" && rm -rf "$keda_dir" && mv "$keda_dir.tmp" "$keda_dir"
  log "keda $KEDA_VERSION ScaledObject CRD: fetched"
fi
ln -sfn "$keda_dir" "$out/keda-crds"

# One directory with stable names for PATH.
for f in "$k8s_dir"/* "$etcd_dir/etcd" "$kwok_dir/kwok" "$kwok_dir/stages.yaml" "$helm_dir/helm" \
         "$prom_dir/prometheus" "$adapter_dir/prometheus-adapter" \
         "$metrics_server_dir/metrics-server"; do
  ln -sfn "$f" "$out/$(basename "$f")"
done
echo "$out"
