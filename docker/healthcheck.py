"""Container health from the daemon's admin endpoint: exit 0 when it answers 200, else 1.

usage: healthcheck.py [--ready] [CONFIG]

GET /healthz (the daemon is alive), or with --ready GET /readyz (listeners bound, certificates
valid, not draining).  The address comes from the config's `[admin] listen`; an unspecified
interface is reached on 127.0.0.1, which works whether or not the host has IPv6 (a probe of ::1
fails forever where IPv6 is disabled).  A config without `[admin]` falls back to a TCP probe of
every listener, trying each loopback address its family allows until one answers.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
import urllib.request
from typing import Optional

from ssaproxy.config import Config, ListenAddress, parse_listener

TIMEOUT = 2.0


def _interface(listen: str) -> Optional[str]:
    found = re.search(r"interface=((?:\\.|[^:])+)", listen)
    return found.group(1).replace("\\", "") if found else None


def _probe_hosts(interface: Optional[str]) -> list[str]:
    """Where a listener can be reached from inside its own network namespace: an unspecified
    address (IPv4's, or IPv6's, which is dual-stack) on IPv4 loopback first, then IPv6's."""
    if not interface or ipaddress.ip_address(interface).is_unspecified:
        return ["127.0.0.1", "::1"]
    return [interface]


def _http(listen: str, path: str) -> Optional[str]:
    address = ListenAddress.parse(listen, "admin.listen")
    host = _probe_hosts(address.interface)[0]
    url = f"http://{f'[{host}]' if ':' in host else host}:{address.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - our own admin endpoint
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except OSError as e:  # urllib's HTTPError (503 not ready) and URLError are OSErrors
        return f"{url}: {e}"


def _tcp(config: Config) -> Optional[str]:
    targets = [(_probe_hosts(x.interface), x.port) for x in map(parse_listener, config.outbound.listen)]
    targets += [(_probe_hosts(_interface(i.listen)), i.listen_port) for i in config.inbound]
    for hosts, port in targets:
        errors = []
        for host in hosts:
            try:
                socket.create_connection((host, port), timeout=TIMEOUT).close()
                break
            except OSError as e:
                errors.append(f"{host}:{port}: {e}")
        else:
            return "; ".join(errors)
    return None


def main(argv: list[str]) -> int:
    ready = "--ready" in argv
    paths = [a for a in argv if a != "--ready"]
    config = Config.from_file(paths[0] if paths else "/etc/ssaproxy/ssaproxy.toml")
    if config.admin is not None:
        problem = _http(config.admin.listen, "/readyz" if ready else "/healthz")
    else:
        problem = _tcp(config)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
