"""One error hierarchy for the whole daemon.

"The peer misbehaved" (`PeerError`) is its own branch, so that logs, and later the socket
API's errno table, can tell it from our own refusals.  Errors carry structured fields (the
OpenSSL verify code, the chain depth), not just strings.
"""

from __future__ import annotations

from typing import Optional


class SsaproxyError(Exception):
    """Base class of every error ssaproxy raises on purpose."""


class ConfigError(SsaproxyError):
    """The configuration is malformed; `key` is the dotted path, `line` where it stands."""

    def __init__(self, key: str, message: str, line: Optional[int] = None) -> None:
        self.key = key
        self.message = message
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.key or '<top>'}{where}: {self.message}"

    def at(self, line: Optional[int]) -> "ConfigError":
        return ConfigError(self.key, self.message, line)


class PeerError(SsaproxyError):
    """The remote peer misbehaved or could not prove who it is."""


class VerificationFailed(PeerError):
    """The peer's certificate was refused.

    `code` is OpenSSL's X509_V_ERR_* number when OpenSSL found the problem (else None),
    `depth` the position in the chain (0 = leaf), `reason` a short human text.
    """

    def __init__(self, reason: str, *, code: Optional[int] = None, depth: Optional[int] = None) -> None:
        self.reason = reason
        self.code = code
        self.depth = depth
        super().__init__(reason)

    def __str__(self) -> str:
        parts = [self.reason]
        if self.code is not None:
            parts.append(f"openssl_code={self.code}")
        if self.depth is not None:
            parts.append(f"depth={self.depth}")
        return " ".join(parts)


class StartupError(SsaproxyError):
    """The daemon cannot start: a listener or path it needs is unusable.  `what` names the
    config key or path (``outbound.listen``, ``api.socket``), `reason` says why in words; the
    daemon prints the one line and exits 2 instead of a traceback, like `check-config`."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"
