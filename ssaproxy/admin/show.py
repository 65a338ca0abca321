"""`ssaproxy status`: the admin endpoint's /status as a table a person reads at a terminal.

Standard library only (urllib): the command must work where the daemon's heavy imports would
only slow it down, and it talks to the daemon the way a monitoring script would.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence, TextIO

DEFAULT_ADMIN = "http://127.0.0.1:9901"
TIMEOUT = 5.0
LIMIT = 1 << 22  # bytes of /status read at most


def fetch(base: str) -> dict[str, Any]:
    url = base.rstrip("/") + "/status"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - an admin URL we were given
        data: dict[str, Any] = json.loads(response.read(LIMIT))
    return data


def _size(n: object) -> str:
    value = float(n) if isinstance(n, (int, float)) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _age(seconds: object) -> str:
    s = float(seconds) if isinstance(seconds, (int, float)) else 0.0
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _table(rows: Sequence[Sequence[object]], out: TextIO) -> None:
    text = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(text[0]))]
    for r in text:
        out.write("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def render(status: dict[str, Any], out: TextIO) -> None:
    out.write(f"ssaproxy {status.get('version')}  config {status.get('config')}  "
              f"up {_age(status.get('uptime'))}{'  DRAINING' if status.get('draining') else ''}\n\n")
    listeners = status.get("listeners") or []
    out.write(f"listeners ({len(listeners)})\n")
    if listeners:
        _table([("FACE", "NAME", "ADDRESS", "BOUND")]
               + [(x.get("face"), x.get("name"), x.get("address"), "yes" if x.get("bound") else "NO")
                  for x in listeners], out)
    workers = status.get("workers") or []
    if workers:  # [daemon] workers above 1: one row per worker
        out.write(f"\nworkers ({len(workers)})\n")
        _table([("WORKER", "PID", "READY", "ACTIVE")]
               + [(w.get("index"), w.get("pid") or "-", "yes" if w.get("ready") else "NO",
                   "-" if w.get("active_total") is None else w.get("active_total")) for w in workers], out)
    active = status.get("active") or []
    out.write(f"\nactive connections ({status.get('active_total', len(active))})\n")
    if active:
        _table([("FACE", "ID", "STATE", "AGE", "OUT", "IN", "ROUTE/LISTENER", "PEER", "DESTINATION", "HOSTNAME")]
               + [(c.get("kind"), c.get("conn_id"), c.get("state"), _age(c.get("age")),
                   _size(c.get("bytes_near_to_far")), _size(c.get("bytes_far_to_near")), c.get("where"),
                   c.get("peer"), c.get("destination"), c.get("hostname")) for c in active], out)
    if status.get("truncated"):
        out.write(f"  … and {status['truncated']} more\n")
    failures = status.get("failures") or []
    out.write(f"\nlast failures ({len(failures)})\n")
    if failures:
        _table([("WHEN", "FACE", "ID", "OUTCOME", "ROUTE/LISTENER", "DETAIL")]
               + [(time.strftime("%H:%M:%S", time.localtime(float(f.get("time", 0)))), f.get("kind"),
                   f.get("conn_id"), f.get("outcome"), f.get("route") or f.get("inbound"), f.get("detail"))
                  for f in reversed(failures)], out)


def run(admin: Optional[str]) -> int:
    base = admin or DEFAULT_ADMIN
    try:
        status = fetch(base)
    except (OSError, urllib.error.URLError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        print(f"ssaproxy: cannot read {base.rstrip('/')}/status: {reason}", file=sys.stderr)
        return 1
    render(status, sys.stdout)
    return 0
