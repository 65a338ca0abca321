"""OpenSSL's errors in words: the one place that turns an `SSL.Error` into text for a log
line or a config error.

pyOpenSSL hands over OpenSSL's error queue as (library, function, reason) tuples, innermost
first.  The outer entries only say that the layer below failed ("PEM lib", "system lib"), and
a failed fopen is reported by the system library with no reason at all (OpenSSL 3 keeps the
errno in a packed code pyOpenSSL does not pass on) and by the BIO layer as "no such file"
whatever the errno was.  So: drop the "... lib" echoes, and for a system error ask the file
system about the path ourselves, so that a permission problem reads "Permission denied".
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from OpenSSL import SSL

# Reasons that only say "the layer below failed": the layer below has its own entry.
_ECHO_SUFFIX = " lib"
# OpenSSL reasons that read badly on their own, in words an admin can act on.
_WORDS = {
    "no start line": "no PEM data found (no start line)",
    "unsupported": "not a private key OpenSSL can decode (unsupported)",
    "no certificate or crl found": "no certificate found",
}


def os_reason(path: str) -> Optional[str]:
    """Why `path` cannot be read, in the OS's words (None: it can be)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return e.strerror or errno.errorcode.get(e.errno or 0, str(e))
    try:
        os.read(fd, 1)
    except OSError as e:
        return e.strerror or str(e)
    finally:
        os.close(fd)
    return None


def ssl_text(e: BaseException, path: Optional[str] = None) -> str:
    """`e` (an OpenSSL error, an OSError, or anything else) as a short text.  `path`: the file
    OpenSSL was reading, asked about when OpenSSL reports a system error."""
    if isinstance(e, SSL.SysCallError):
        code = e.args[0] if e.args else None
        if isinstance(code, int) and code > 0:
            return os.strerror(code)
        return str(e.args[1]) if len(e.args) > 1 else "unexpected end of file"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, SSL.Error):
        queue = _queue(e)
        if queue is not None:
            return _words(queue, path) or "unknown OpenSSL error"
    return str(e) or type(e).__name__


def _queue(e: SSL.Error) -> Optional[list[tuple[str, str, str]]]:
    try:
        raw = e.args[0]
        return [(str(lib), str(func), str(reason)) for lib, func, reason in raw]
    except (IndexError, TypeError, ValueError):
        return None


def _words(queue: list[tuple[str, str, str]], path: Optional[str]) -> str:
    if any(lib == "system library" for lib, _, _ in queue):
        why = os_reason(path) if path is not None else None
        return why or "system error while reading a file"
    reasons: list[str] = []
    for _, _, reason in queue:
        if not reason or reason.endswith(_ECHO_SUFFIX):
            continue
        text = _WORDS.get(reason, reason)
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons)
