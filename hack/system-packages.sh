#!/usr/bin/env bash
# Debian packages the test suite runs for real: Prometheus (canary analysis queries a real server).
# Installed only when missing, so a warm run costs one `command -v` per tool.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[system-packages] installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q >&2
# --no-install-recommends: Prometheus' recommends pull in exporters we do not start.
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
