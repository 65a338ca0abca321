"""Log observer factories for `twistd --logger`.

`twistd -n --logger ssaproxy.logs.json_lines ssaproxy ...` writes one JSON object per event
to standard output, so the per-connection events (conn_id, orig_dst, route, hostname,
tls_version, cipher, verified, verify_error, bytes_in, bytes_out, duration, outcome, detail)
reach a log shipper as fields rather than as text to parse.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_lines() -> ILogObserver:
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
