#!/usr/bin/env bash
# The README's transparent-mode walk-through, self-contained: two network namespaces, a private
# CA, a good and a bad HTTPS server, ssaproxy with iptables REDIRECT, and an unmodified curl.
# Run as root from the repository:  bash examples/transparent-demo.sh
# It removes everything it created when it ends (also on failure or Ctrl-C).
set -euo pipefail

NS_APP=ssademo-app NS_NET=ssademo-net
WORK=$(mktemp -d /tmp/ssaproxy-demo.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS_APP" 2>/dev/null || true
    ip netns del "$NS_NET" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Two namespaces joined by a veth pair: the app's host (10.88.0.1) and the network (10.88.0.2, .3)"
ip netns add "$NS_APP"; ip netns add "$NS_NET"
ip link add ssademo0 type veth peer name ssademo1
ip link set ssademo0 netns "$NS_APP"; ip link set ssademo1 netns "$NS_NET"
ip -n "$NS_APP" addr add 10.88.0.1/24 dev ssademo0
ip -n "$NS_NET" addr add 10.88.0.2/24 dev ssademo1
ip -n "$NS_NET" addr add 10.88.0.3/24 dev ssademo1
for ns in "$NS_APP" "$NS_NET"; do ip -n "$ns" link set lo up; done
ip -n "$NS_APP" link set ssademo0 up; ip -n "$NS_NET" link set ssademo1 up

step "A private CA; www.demo.test gets a good certificate, the server at .3 a self-signed one"
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=www.demo.test" \
    -keyout good.key -out good.csr 2>/dev/null
printf 'subjectAltName=DNS:www.demo.test\nextendedKeyUsage=serverAuth\n' > good.ext
openssl x509 -req -in good.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile good.ext \
    -out good.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=www.demo.test" \
    -addext "subjectAltName=DNS:www.demo.test" -keyout bad.key -out bad.pem 2>/dev/null

step "HTTPS servers in the network namespace (openssl s_server -www)"
ip netns exec "$NS_NET" openssl s_server -quiet -accept 10.88.0.2:443 -cert good.pem -key good.key -www \
    >/dev/null 2>&1 & PIDS+=($!)
ip netns exec "$NS_NET" openssl s_server -quiet -accept 10.88.0.3:443 -cert bad.pem -key bad.key -www \
    >/dev/null 2>&1 & PIDS+=($!)

step "ssaproxy's config: plain HTTP on port 80 becomes verified HTTPS on 443, name from the Host header"
cat > ssaproxy.toml <<EOF
[policy]
trust_store = "$WORK/ca.pem"     # the demo CA; omit it to use the system store

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "http-to-https"
destination = "0.0.0.0/0"
ports = [80]
tls_port = 443
hostname_from = "http-host"
EOF
cat ssaproxy.toml
ssaproxy check-config ssaproxy.toml

step "The iptables rules (the daemon runs as root here, so root's own connections are excluded)"
ssaproxy iptables print --config ssaproxy.toml --uid 0
ip netns exec "$NS_APP" ssaproxy iptables apply --config ssaproxy.toml --uid 0

step "The daemon"
ip netns exec "$NS_APP" twistd -n --pidfile= ssaproxy --config ssaproxy.toml > daemon.log 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q "ssaproxy started" daemon.log && break; sleep 0.1; done
grep -q "ssaproxy started" daemon.log || { cat daemon.log; exit 1; }

as_app() { ip netns exec "$NS_APP" setpriv --reuid 65534 --regid 65534 --clear-groups "$@"; }

step "An unmodified program (curl, as user nobody) fetches http://www.demo.test/ -> verified TLS"
page=$(as_app curl -sS --max-time 10 --resolve www.demo.test:80:10.88.0.2 http://www.demo.test/)
grep -m1 -E "^(New|Reused), " <<< "$page"

step "The same request to a server with a self-signed certificate -> reset, nothing sent in plaintext"
if as_app curl -sS --max-time 10 --resolve www.demo.test:80:10.88.0.3 http://www.demo.test/; then
    echo "UNEXPECTED: the request succeeded"; exit 1
fi

step "The daemon's log: one line per connection"
sleep 0.2
grep -E "conn [0-9]+ " daemon.log | sed 's/^.*OutboundConnection#[a-z]*\] //'

ip netns exec "$NS_APP" ssaproxy iptables remove --config ssaproxy.toml
step "Done: rules removed; namespaces and files are removed on exit"
