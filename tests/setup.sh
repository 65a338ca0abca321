#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian 12 machine, as root: the system tools the
# end-to-end tests drive (iptables, network namespaces, openssl, curl, tcpdump, haproxy,
# stunnel for the benchmark), the project with its test extras, and the sslyze scanner in a
# virtualenv of its own under .tools/ (it pins its own cryptography).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iptables iproute2 util-linux openssl curl tcpdump haproxy stunnel4 >/dev/null
python3 -m pip install -q --root-user-action=ignore '.[test]'
if [ ! -x .tools/sslyze/bin/sslyze ]; then
    python3 -m venv .tools/sslyze
    .tools/sslyze/bin/pip install -q sslyze
fi
