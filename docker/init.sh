#!/bin/sh
# The sidecar's init step: install ssaproxy's iptables rules in the pod's (the container's)
# network namespace, excluding the daemon's own uid, then exit.  Needs root and NET_ADMIN.
# The same command the tests run in network namespaces.
set -eu
CONFIG="${1:-/etc/ssaproxy/ssaproxy.toml}"
ssaproxy check-config "$CONFIG"
ssaproxy iptables apply --config "$CONFIG" --uid "${SSAPROXY_UID:-10001}"
ssaproxy iptables print --config "$CONFIG" --uid "${SSAPROXY_UID:-10001}"
