"""Container health: every listener in the config accepts a TCP connection (exit 0), else 1."""

from __future__ import annotations

import socket
import sys

from ssaproxy.config import Config, parse_listener


def main(path: str) -> int:
    config = Config.from_file(path)
    targets = [(("::1" if x.family == 6 else "127.0.0.1"), x.port) for x in map(parse_listener, config.outbound.listen)]
    targets += [("127.0.0.1", i.listen_port) for i in config.inbound]
    for host, port in targets:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as e:
            print(f"unhealthy: {host}:{port}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/etc/ssaproxy/ssaproxy.toml"))
