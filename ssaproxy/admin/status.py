"""What /status and /readyz report: the daemon's listeners, its live connections, its last
failures, and whether it is ready.  Read at request time from the running services, so the
answers are never a copy that could drift from what the daemon is doing.

Bounded: at most `MAX_CONNECTIONS` connections are listed (the oldest, which are the ones worth
a look), each with a handful of short fields; failures are the metrics module's short ring.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from ssaproxy import __version__, metrics
from ssaproxy.capacity import Listener
from ssaproxy.config import Config
from ssaproxy.lifecycle import Lifecycle
from ssaproxy.state import DaemonState

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
                 reactor: Any) -> None:
        self.config = config
        self.state = state
        self.services = services  # the live service tree and factory list: a reload adds to them
        self.factories = factories
        self.reactor = reactor
        self.started = reactor.seconds()

    def listeners(self) -> list[dict[str, object]]:
        return [row for row in map(listener_facts, self.services) if row is not None]

    def connections(self) -> list[Lifecycle]:
        return [c for f in self.factories for c in list(f.active) if isinstance(c, Lifecycle) and not c.done]

    def status(self) -> dict[str, object]:
        now = self.reactor.seconds()
        live = sorted(self.connections(), key=lambda c: c.started)
        return {"version": __version__, "config": self.config.source, "uptime": round(now - self.started, 3),
                "draining": self.state.draining, "listeners": self.listeners(),
                "active_total": len(live), "active": [describe(c, now) for c in live[:MAX_CONNECTIONS]],
                "truncated": max(len(live) - MAX_CONNECTIONS, 0),
                "failures": metrics.recent_failures()}

    def not_ready(self) -> Optional[str]:
        """Why the daemon should get no new traffic now; None when it is ready."""
        if self.state.draining:
            return "draining"
        unbound = [f"{r['face']} {r['name']} ({r['address']})" for r in self.listeners() if not r["bound"]]
        if unbound or not self.state.listeners_bound:
            return "listeners not bound: " + (", ".join(unbound) or "still starting")
        expired = [c for c in metrics.certificates() if c.seconds_left() <= 0]  # wall-clock time, as notAfter
        if expired:
            return "certificate expired or unreadable: " + ", ".join(f"{c.scope} {c.name} {c.file}" for c in expired)
        return None
