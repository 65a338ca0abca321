"""Scale, at a size the suite can afford: one daemon holds 1,000 relayed TLS connections at
once (real TLS clients, a real echo backend), a new connection completes while they are held,
and the daemon's descriptors return to their baseline once they close.  The measurement at
10,000 is benchmarks/scale.py, which this test drives at a smaller count."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.pki import PKI

COUNT = 1000


def _scale() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"
    spec = importlib.util.spec_from_file_location("ssaproxy_bench_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_thousand_held_connections_and_back_to_baseline(pki: PKI, tmp_path: Path) -> None:
    good = pki.server("good")
    figures = _scale().run(COUNT, tmp_path, certs=(Path(good.chain), Path(good.key), Path(pki.root_pem)))
    # The daemon started with the soft limit of a service (1024) and raised it itself.
    assert figures["limit_line"].startswith("open files limit: 1024 -> "), figures["limit_line"]
    # Every connection held was relayed end to end (each echoed a line) and costs the daemon
    # its two descriptors, near and far.
    assert figures["fds_during"] >= figures["fds_before"] + 2 * COUNT, figures
    # A new connection completed (handshake and echo) while they were held.
    assert figures["new_connection_ms"] > 0
    # Closed: the daemon holds exactly what it held before.
    assert figures["fds_back"], figures
    assert figures["fds_after"] == figures["fds_before"], figures
