"""The library's errors: an OSError with the errno a kernel socket would give, as the
subclass Python's own sockets raise for it (ConnectionRefusedError for ECONNREFUSED, ...)."""

from __future__ import annotations

import errno

_CLASSES: dict[int, type[OSError]] = {
    errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
    errno.ECONNABORTED: ConnectionAbortedError, errno.ETIMEDOUT: TimeoutError, errno.EPERM: PermissionError,
}


def error(code: int, text: str) -> OSError:
    return _CLASSES.get(code, OSError)(code, text)
