"""The `[api]` table: where the local socket API listens and who may use it.

Whether `group` names a group on this host is a fact of the system, not of the text: it is
checked by `ssaproxy.tls.load`, after parsing.
"""

from __future__ import annotations

import re
from typing import Optional

import attrs

from ssaproxy.config.reader import Reader

DEFAULT_API_SOCKET = "/run/ssaproxy/api.sock"


@attrs.frozen(kw_only=True)
class Api:
    """The local socket API (docs/api.md): where it listens and who may use it."""

    socket: str = DEFAULT_API_SOCKET
    mode: int = 0o660  # the socket file's permissions: who may ask the daemon for TLS
    group: Optional[str] = None  # None: the daemon's own group
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_sessions: int = 10000  # control connections at once, and TLS sessions at once


def parse_api(r: Reader) -> Api:
    path: str = r.take("socket", str, DEFAULT_API_SOCKET)
    r.check("socket", path.startswith("/") and "\x00" not in path and len(path.encode()) < 108,
            f"must be an absolute path shorter than 108 bytes, got {path!r}")
    raw_mode: int | str = r.take("mode", (int, str), 0o660, "an octal number (0o660) or a string (\"0660\")")
    if isinstance(raw_mode, str):
        r.check("mode", bool(re.fullmatch(r"0?[0-7]{3}", raw_mode)),
                f"must be an octal mode like \"0660\", got {raw_mode!r}")
        mode = int(raw_mode, 8)
    else:
        mode = raw_mode
    r.check("mode", 0 <= mode <= 0o777, f"must be between 0o000 and 0o777, got {mode:#o}")
    group: Optional[str] = r.take("group", str, None)
    api = Api(socket=path, mode=mode, group=group,
              connect_timeout=r.positive("connect_timeout", r.take("connect_timeout", float, 10.0), 300),
              handshake_timeout=r.positive("handshake_timeout", r.take("handshake_timeout", float, 10.0), 300),
              max_sessions=int(r.positive("max_sessions", r.take("max_sessions", int, 10000), 1_000_000)))
    r.done()
    return api
