#!/usr/bin/env bash
# Debian packages the test suite runs for real, installed only when missing (a warm run costs one
# `command -v` per tool):
#   --node:  containerd, runc, CNI plugins, buildah, debootstrap, iptables, conntrack (the real node)
# (Prometheus is built from source by hack/build-binaries.sh: Debian's lacks Kubernetes discovery.)
set -euo pipefail
need=()
if [ "${1:-}" = "--node" ]; then
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v buildah >/dev/null || need+=(buildah)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v ip >/dev/null || need+=(iproute2)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "[system-packages] installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q >&2
# --no-install-recommends: only what the tools need.
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
