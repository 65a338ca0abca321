"""What the daemon as a whole is doing, for the parts that must agree on it (readiness, drain).

Mutable on purpose, and tiny: one object made by the service wiring and handed to whoever
needs to read or flip a flag.  The admin endpoint's /readyz reads it; the listeners' wiring sets
`listeners_bound`; the drain on SIGTERM sets `draining`.
"""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class DaemonState:
    draining: bool = False  # stopping gracefully: no longer ready for new connections
    listeners_bound: bool = False  # every configured listener (and the API socket) is listening
