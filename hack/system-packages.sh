#!/usr/bin/env bash
# Debian packages the test suite runs for real, installed only when missing (a warm run costs one
# `command -v` per tool):
#   always:  prometheus (canary analysis queries a real server)
#   --node:  containerd, runc, CNI plugins, buildah, debootstrap, iptables, conntrack (the real node)
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
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
# --no-install-recommends: Prometheus' recommends pull in exporters we do not start.
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
