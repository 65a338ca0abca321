"""Log observer factories for `twistd --logger`.

`twistd -n --logger ssaproxy.logs.json_lines ssaproxy ...` writes one JSON object per event
to standard output, so the per-connection events (conn_id, orig_dst, route, hostname,
tls_version, cipher, verified, verify_error, bytes_in, bytes_out, duration, outcome, detail)
reach a log shipper as fields rather than as text to parse.  With worker processes the main
process logs its workers' events (`worker_event`), so one observer sees the whole daemon.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.logger import ILogObserver, LogLevel, eventFromJSON, formatEvent, globalLogPublisher, jsonFileLogObserver


def json_lines() -> ILogObserver:
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def worker_event(line: bytes, index: int, pid: Optional[int]) -> None:
    """One event a worker process wrote (a JSON line: ssaproxy.worker), logged in the main
    process as its own, its text preceded by the worker's number and pid; its fields (conn_id,
    outcome, ...) stay fields, for a JSON observer such as `json_lines`."""
    text = line.decode("utf-8", "replace")
    try:
        event: dict[str, Any] = eventFromJSON(text)
        text = formatEvent(event)
    except (ValueError, TypeError, KeyError):
        event = {}  # not a JSON event (a crash's last words): logged as it is
    event.pop("log_flattened", None)
    event.update(log_format="[worker {worker} pid {worker_pid}] {worker_text}", worker_text=text, worker=index,
                 worker_pid=pid)
    event.setdefault("log_namespace", "ssaproxy.worker")
    if event.get("log_level") is None:
        event["log_level"] = LogLevel.info
    globalLogPublisher(event)
