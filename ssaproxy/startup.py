"""Start-up state one daemon shares across its processes: today a master secret, from which
each user derives the bytes it needs (the TLS ticket key, say), identical in every worker.

Theory of operation.  With `[daemon] workers = 1` there is one process and the secret is
made in it, once, from os.urandom.  With more, the main process (ssaproxy.supervisor) makes
it before it starts any worker and writes it, with the rest of a worker's start-up facts,
into a pipe the worker reads before it builds anything (ssaproxy.worker calls `adopt`); a
worker the main process restarts gets the same secret, so what was derived from it (tickets
issued by the dead worker) stays valid.  The secret never reaches a file, a log or the
network; it lives as long as the main process.

    from ssaproxy import startup
    key = startup.shared_secret("tls-ticket-key", 48)  # same 48 bytes in every worker

Labels keep uses apart: two labels never give related bytes (HKDF-SHA256, RFC 5869).
`extra(name)` carries other small JSON values the main process sets with `provide`.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_SIZE = 32

_master: Optional[bytes] = None
_extra: dict[str, Any] = {}


def master_secret() -> bytes:
    """This daemon's master secret (made on first use in a process that was handed none)."""
    global _master  # noqa: PLW0603 - one per process, by design
    if _master is None:
        _master = os.urandom(MASTER_SIZE)
    return _master


def shared_secret(label: str, size: int = 32) -> bytes:
    """`size` bytes for `label`, the same in every process of this daemon."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=b"ssaproxy " + label.encode())
    return hkdf.derive(master_secret())


def provide(name: str, value: Any) -> None:
    """In the main process, before workers start: a JSON value every worker gets as `extra(name)`."""
    _extra[name] = value


def extra(name: str, default: Any = None) -> Any:
    return _extra.get(name, default)


def export() -> dict[str, Any]:
    """What the main process hands each worker (JSON)."""
    return {"secret": base64.b64encode(master_secret()).decode(), "extra": dict(_extra)}


def adopt(state: dict[str, Any]) -> None:
    """In a worker, before anything is built: take the main process's state."""
    global _master  # noqa: PLW0603
    _master = base64.b64decode(state["secret"])
    _extra.clear()
    _extra.update(state.get("extra", {}))
