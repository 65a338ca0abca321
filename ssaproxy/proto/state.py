"""Compatibility names for the session phases and tables, which live in
`ssaproxy.proto.connection` now (one vocabulary for the daemon and the library).

`State` is `Phase`; `check` and `OUTCOME_ERRNO` are the connection module's.  Note for
ssaproxy/api/session.py: it imports OUTCOME_ERRNO from here, and that keeps working; the
table itself is `ssaproxy.proto.connection.OUTCOME_ERRNO`.
"""

from __future__ import annotations

from ssaproxy.proto.connection import OUTCOME_ERRNO, Phase, check

State = Phase

__all__ = ["OUTCOME_ERRNO", "State", "check"]
