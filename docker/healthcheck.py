"""Container health: every listener in the config accepts a TCP connection (exit 0), else 1.

The daemon answers such a direct connection with a reset and an info-level `not-redirected`
(or `client-gone`) line, not a warning."""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from typing import Optional

from ssaproxy.config import Config, parse_listener


def _interface(listen: str) -> Optional[str]:
    found = re.search(r"interface=((?:\\.|[^:])+)", listen)
    return found.group(1).replace("\\", "") if found else None


def _probe_address(interface: Optional[str], family: int) -> str:
    """Where a listener can be reached from inside its own network namespace."""
    if interface is None or ipaddress.ip_address(interface).is_unspecified:
        return "::1" if family == 6 else "127.0.0.1"
    return interface


def main(path: str) -> int:
    config = Config.from_file(path)
    targets = [(_probe_address(x.interface, x.family), x.port) for x in map(parse_listener, config.outbound.listen)]
    targets += [(_probe_address(_interface(i.listen), i.families[-1]), i.listen_port) for i in config.inbound]
    for host, port in targets:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as e:
            print(f"unhealthy: {host}:{port}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/etc/ssaproxy/ssaproxy.toml"))
