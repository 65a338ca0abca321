"""Pure inspection of a client's first bytes: is it TLS already, and what Host does it name?

Both answers are three-valued because bytes arrive in pieces: `None` means "not enough bytes
yet to say".  Callers bound how long and how much they wait.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import attrs

from ssaproxy.config import is_valid_hostname

_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01


def looks_like_client_hello(data: bytes) -> Optional[bool]:
    """True if `data` starts a TLS record carrying a ClientHello, False if it cannot, None if
    more bytes are needed.  A 0x16 first byte alone is not enough: it is also a valid first byte
    of arbitrary binary protocols, so we wait for the record header and handshake type."""
    if not data:
        return None
    if data[0] != _TLS_HANDSHAKE:
        return False
    if len(data) >= 2 and data[1] != 0x03:
        return False
    if len(data) >= 3 and data[2] > 0x04:
        return False
    if len(data) >= 5:
        length = int.from_bytes(data[3:5], "big")
        if length == 0 or length > 16384 + 2048:
            return False
    if len(data) < 6:
        return None
    return data[5] == _CLIENT_HELLO


@attrs.frozen
class HostResult:
    """Outcome of looking for an HTTP/1.x Host header: `host` (a DNS name or IP literal) or an
    `error` text; `complete` is False while more bytes could still settle it."""

    complete: bool
    host: Optional[str] = None
    error: Optional[str] = None


_NEED_MORE = HostResult(complete=False)


def http_host(data: bytes, limit: int) -> HostResult:
    """Find the Host header of the request at the start of `data`.

    The header block must end (CRLF CRLF) within `limit` bytes.  Exactly one Host header is
    accepted; its value must be a DNS name or an IP literal (bracketed for IPv6), optionally with
    a port, which is dropped.
    """
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        first_line_end = data.find(b"\r\n", 0, limit)
        if first_line_end >= 0 and not _is_request_line(data[:first_line_end]):
            return HostResult(complete=True, error="not an HTTP/1.x request")
        if len(data) >= limit:
            return HostResult(complete=True, error=f"no end of HTTP headers within {limit} bytes")
        return _NEED_MORE
    lines = data[:end].split(b"\r\n")
    if not _is_request_line(lines[0]):
        return HostResult(complete=True, error="not an HTTP/1.x request")
    hosts = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or name != name.strip() or not name:
            return HostResult(complete=True, error="malformed header line")
        if name.lower() == b"host":
            hosts.append(value.strip(b" \t"))
    if len(hosts) != 1:
        return HostResult(complete=True, error=f"expected one Host header, found {len(hosts)}")
    try:
        text = hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return HostResult(complete=True, error="Host header is not ASCII")
    host = _strip_port(text)
    if host is None:
        return HostResult(complete=True, error=f"Host header {text!r} is not a name or address")
    return HostResult(complete=True, host=host)


def _is_request_line(line: bytes) -> bool:
    parts = line.split(b" ")
    return (
        len(parts) == 3
        and parts[0].isalpha()
        and parts[0].isupper()
        and bool(parts[1])
        and parts[2] in (b"HTTP/1.0", b"HTTP/1.1")
    )


def _strip_port(value: str) -> Optional[str]:
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _is_port(rest)):
            return None
        try:
            return str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not _is_port(":" + port):
        return None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    host = host.rstrip(".").lower() if host.endswith(".") and len(host) > 1 else host.lower()
    return host if is_valid_hostname(host) else None


def _is_port(text: str) -> bool:
    digits = text[1:]
    return text.startswith(":") and digits.isdigit() and len(digits) <= 5 and 0 < int(digits) < 65536


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
