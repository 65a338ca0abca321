"""The admin endpoint of one worker among several: what the other workers are doing.

Theory of operation.  Every worker serves the admin listener (the main process bound one
SO_REUSEPORT socket per worker for it, as for the others), so a request lands on any of them
and must answer for the whole daemon.  /metrics does so through prometheus_client's
multiprocess mode (ssaproxy.metrics).  For /status and /readyz each worker writes a snapshot of
its own (ready or why not, draining, live connections, recent failures) into the directory the
workers share, every `EVERY` seconds and atomically (write, then rename), and the one that
answers merges its live view with the others' snapshots.  A snapshot older than `STALE` seconds,
or missing (a worker being restarted), makes the daemon "not ready" with the worker named.
So /status is at most `EVERY` seconds behind for the other workers; the answering one is exact.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

from ssaproxy.state import WorkerRole

EVERY = 1.0
STALE = 5.0
SHOWN = 200  # live connections per snapshot, the oldest


def _path(role: WorkerRole, index: int) -> str:
    return os.path.join(role.shared_dir, f"worker-{index}.json")


class Peers:
    def __init__(self, role: WorkerRole, own: Callable[[], dict[str, Any]]) -> None:
        self.role = role
        self.own = own  # this worker's snapshot, from the status source

    def publish(self) -> None:
        snapshot = dict(self.own(), index=self.role.index, pid=os.getpid(), time=time.time())
        path = _path(self.role, self.role.index)
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(snapshot, f, default=str)
            os.replace(temporary, path)
        except OSError:
            pass  # the directory is gone (the main process is stopping): nothing to tell

    def others(self) -> dict[int, Optional[dict[str, Any]]]:
        """Every other worker's snapshot by number; None for a missing or stale one."""
        found: dict[int, Optional[dict[str, Any]]] = {}
        now = time.time()
        for index in range(self.role.workers):
            if index == self.role.index:
                continue
            try:
                with open(_path(self.role, index), encoding="utf-8") as f:
                    snapshot: dict[str, Any] = json.load(f)
            except (OSError, ValueError):
                found[index] = None
                continue
            found[index] = snapshot if now - float(snapshot.get("time", 0)) <= STALE else None
        return found
