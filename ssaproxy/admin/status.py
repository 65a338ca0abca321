"""What /status and /readyz report: the daemon's listeners, its live connections, its last
failures, and whether it is ready.  Read at request time from the running services, so the
answers are never a copy that could drift from what the daemon is doing.

Bounded: at most `MAX_CONNECTIONS` connections are listed (the oldest, which are the ones worth
a look), each with a handful of short fields; failures are the metrics module's short ring.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from ssaproxy import __version__, metrics
from ssaproxy.admin.peers import Peers
from ssaproxy.capacity import Listener
from ssaproxy.config import Config
from ssaproxy.lifecycle import Lifecycle
from ssaproxy.state import DaemonState, WorkerRole

MAX_CONNECTIONS = 200
FIELD_LIMIT = 200  # characters of any one text field


def _text(value: object) -> Optional[str]:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= FIELD_LIMIT else text[:FIELD_LIMIT] + "…"


def listener_facts(service: Any) -> Optional[dict[str, object]]:
    """One of the daemon's listeners as a row, or None for a service that is not one."""
    if isinstance(service, Listener):
        inbound = getattr(service.factory, "inbound", None)
        address = service.address
        host = address.interface or "0.0.0.0"
        shown = f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
        return {"face": "inbound" if inbound is not None else "outbound",
                "name": inbound.name if inbound is not None else "outbound", "address": shown,
                "bound": service.port is not None}
    api = getattr(service, "api", None)
    if api is not None and hasattr(service, "port"):
        return {"face": "api", "name": "api", "address": api.socket, "bound": service.port is not None}
    return None


def describe(conn: Lifecycle, now: float) -> dict[str, object]:
    """A live connection: its face, age and bytes, and where it goes, from its own record."""
    rl = conn.relay
    near_to_far, far_to_near = (rl.bytes_out, rl.bytes_in) if rl is not None else (conn.bytes_out, conn.bytes_in)
    try:
        fields = conn.record("active", None)
    except Exception:  # noqa: BLE001 - a half-built connection still gets a row, without details
        fields = {}
    return {"kind": conn.kind, "conn_id": conn.conn_id, "state": conn.state.value,
            "age": round(max(now - conn.started, 0.0), 3),
            "bytes_near_to_far": near_to_far, "bytes_far_to_near": far_to_near,
            "where": _text(fields.get("route") or fields.get("inbound")),
            "peer": _text(fields.get("peer") or fields.get("client")),
            "destination": _text(fields.get("orig_dst") or fields.get("target") or fields.get("backend")),
            "hostname": _text(fields.get("hostname") or fields.get("sni"))}


class StatusSource:
    """Everything the admin endpoint reads, gathered by the service wiring."""

    def __init__(self, *, config: Config, state: DaemonState, services: Iterable[Any], factories: Iterable[Any],
                 reactor: Any, worker: Optional[WorkerRole] = None) -> None:
        self.config = config
        self.state = state
        self.services = services  # the live service tree and factory list: a reload adds to them
        self.factories = factories
        self.reactor = reactor
        self.started = reactor.seconds()
        self.peers = Peers(worker, self._snapshot) if worker is not None else None

    def listeners(self) -> list[dict[str, object]]:
        return [row for row in map(listener_facts, self.services) if row is not None]

    def connections(self) -> list[Lifecycle]:
        return [c for f in self.factories for c in list(f.active) if isinstance(c, Lifecycle) and not c.done]

    def status(self) -> dict[str, object]:
        now = self.reactor.seconds()
        live = sorted(self.connections(), key=lambda c: c.started)
        answer: dict[str, Any] = {
            "version": __version__, "config": self.config.source, "uptime": round(now - self.started, 3),
            "draining": self.state.draining, "listeners": self.listeners(),
            "active_total": len(live), "active": [describe(c, now) for c in live[:MAX_CONNECTIONS]],
            "truncated": max(len(live) - MAX_CONNECTIONS, 0),
            "failures": metrics.recent_failures()}
        if self.peers is not None:
            self._merge(answer)
        return answer

    def _snapshot(self) -> dict[str, Any]:
        """This worker's part of the daemon's /status and /readyz (ssaproxy.admin.peers)."""
        own = self.status_alone()
        return {"ready": self.own_not_ready(), "draining": own["draining"], "active_total": own["active_total"],
                "active": own["active"], "failures": own["failures"]}

    def status_alone(self) -> dict[str, Any]:
        peers, self.peers = self.peers, None
        try:
            return self.status()
        finally:
            self.peers = peers

    def _merge(self, answer: dict[str, Any]) -> None:
        """The other workers' snapshots into this worker's answer: one daemon's status."""
        assert self.peers is not None
        role = self.peers.role
        for row in answer["active"]:
            row["worker"] = role.index
        rows = [{"index": role.index, "pid": os.getpid(), "ready": self.own_not_ready() is None,
                 "active_total": answer["active_total"]}]
        for index, snap in self.peers.others().items():
            if snap is None:
                rows.append({"index": index, "pid": None, "ready": False, "active_total": None})
                continue
            rows.append({"index": index, "pid": snap["pid"], "ready": snap["ready"] is None,
                         "active_total": snap["active_total"]})
            answer["active_total"] += snap["active_total"]
            answer["draining"] = answer["draining"] or snap["draining"]
            answer["active"] += [dict(row, worker=index) for row in snap["active"]]
            answer["failures"] += snap["failures"]
        answer["active"].sort(key=lambda row: -row["age"])
        answer["truncated"] = max(answer["active_total"] - MAX_CONNECTIONS, 0)
        answer["active"] = answer["active"][:MAX_CONNECTIONS]
        answer["failures"] = sorted(answer["failures"], key=lambda f: f.get("time", 0))[-metrics.RECENT_FAILURES:]
        answer["workers"] = sorted(rows, key=lambda row: row["index"])

    def not_ready(self) -> Optional[str]:
        """Why the daemon should get no new traffic now (every worker, if there are several);
        None when it is ready."""
        reason = self.own_not_ready()
        if reason is not None or self.peers is None:
            return reason
        for index, snap in sorted(self.peers.others().items()):
            if snap is None:
                return f"worker {index} not running (or not answering)"
            if snap["ready"] is not None:
                return f"worker {index}: {snap['ready']}"
        return None

    def own_not_ready(self) -> Optional[str]:
        """Why this process should get no new traffic now; None when it is ready."""
        if self.state.draining:
            return "draining"
        unbound = [f"{r['face']} {r['name']} ({r['address']})" for r in self.listeners() if not r["bound"]]
        if unbound or not self.state.listeners_bound:
            return "listeners not bound: " + (", ".join(unbound) or "still starting")
        expired = [c for c in metrics.certificates() if c.seconds_left() <= 0]  # wall-clock time, as notAfter
        if expired:
            return "certificate expired or unreadable: " + ", ".join(f"{c.scope} {c.name} {c.file}" for c in expired)
        return None
