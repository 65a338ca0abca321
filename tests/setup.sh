#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian 12 machine, as root: the system tools the
# end-to-end tests drive (iptables, network namespaces, openssl, curl, tcpdump, haproxy,
# stunnel for the benchmark; gcc and libc6-dev build the C library and the C test programs,
# pkgconf reads its ssaproxy.pc; libssl-dev builds benchmarks/clib.py's direct OpenSSL client; nc and redis-cli are unmodified programs run under `ssaproxy run`), the project with its test extras in a virtual environment made
# with Debian's own Python (.venv: never the system's site-packages, PEP 668; with the linters),
# and the sslyze scanner in a virtual environment of its own under .tools/ (it pins its own
# cryptography).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3-venv man-db iptables iproute2 util-linux openssl curl tcpdump haproxy stunnel4 \
    gcc libc6-dev libssl-dev pkgconf netcat-openbsd redis-tools >/dev/null
/usr/bin/python3 -m venv .venv
rm -rf build  # setuptools reuses it: a module deleted since the last build would ship again
.venv/bin/pip install -q --disable-pip-version-check '.[test,dev]'
# Twisted's plugin cache, written now: twistd run as another user cannot write it (README).
.venv/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
if [ ! -x .tools/sslyze/bin/sslyze ]; then
    /usr/bin/python3 -m venv .tools/sslyze
    .tools/sslyze/bin/pip install -q --disable-pip-version-check sslyze
fi
