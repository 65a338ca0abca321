"""What the running daemon is doing now, for the parts that must agree on it (readiness, drain).

Mutable on purpose, and tiny: one object made by the service wiring and handed by reference to
whoever reads or flips a flag.  Kept apart from the services that change it and the endpoints
that read it, and free of Twisted, so that anything (the admin endpoint's /readyz, a test, a
metric) can depend on it without depending on the machinery that drives it.
"""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class DaemonState:
    """The daemon's live state: one instance per daemon, shared by reference (so, unlike the
    config values, mutable)."""

    # True from the moment a stop begins: listeners are closed and live connections are being
    # given `[daemon] drain_timeout` to finish.  It never turns back: the daemon is on its way
    # out.  A readiness probe answers "not ready" from then on, while a liveness probe should
    # still pass, or the orchestrator kills the process and cuts the drain short.
    draining: bool = False
    listeners_bound: bool = False  # every configured listener (and the API socket) is listening


@attrs.frozen(kw_only=True)
class WorkerRole:
    """This process is worker `index` of `workers` under a main process (ssaproxy.supervisor):
    what the wiring does differently then.  `api_fd`: the API socket the main process bound;
    `notify_fd`: where readiness goes (to the main process, not the service manager);
    `shared_dir`: the directory the workers' metrics and status snapshots share."""

    index: int
    workers: int
    api_fd: int | None
    notify_fd: int
    shared_dir: str
