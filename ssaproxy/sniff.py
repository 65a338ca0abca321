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
_MAX_RECORD = 16384
# The most a caller needs to buffer to get an answer: one whole TLS record.
CLIENT_HELLO_PEEK = 5 + _MAX_RECORD
# handshake header (4) + legacy_version (2) + random (32) + session_id length (1)
_FIXED = 4 + 2 + 32 + 1


def looks_like_client_hello(data: bytes) -> Optional[bool]:  # noqa: PLR0911 - one return per case reads best
    """True if `data` starts with a whole TLS record carrying a well-formed ClientHello, False
    if it cannot, None if more bytes are needed (at most CLIENT_HELLO_PEEK).

    A first byte of 0x16 is also the first byte of other binary protocols, and a wrong "yes"
    would pass that protocol's plaintext through unencrypted.  So "yes" needs the whole first
    record and a ClientHello whose lengths add up (session id, cipher suites, compression
    methods, extensions); "no" is answered as soon as any byte rules it out.
    """
    if not data:
        return None
    if data[0] != _TLS_HANDSHAKE:
        return False
    if len(data) >= 2 and data[1] != 0x03:
        return False
    if len(data) >= 3 and data[2] > 0x04:
        return False
    if len(data) < 5:
        return None
    record_len = int.from_bytes(data[3:5], "big")
    if not _FIXED + 2 + 2 + 1 + 1 <= record_len <= _MAX_RECORD:
        return False
    body = data[5:5 + record_len]
    if len(body) >= 1 and body[0] != _CLIENT_HELLO:
        return False
    if len(body) >= 4 and int.from_bytes(body[1:4], "big") < _FIXED - 4 + 2 + 2 + 1 + 1:
        return False
    if len(body) >= 6 and not (body[4] == 0x03 and body[5] <= 0x04):
        return False
    if len(body) < record_len:
        return None
    return _client_hello_fields_fit(body)


def _client_hello_fields_fit(body: bytes) -> bool:
    """Walk the ClientHello's variable-length fields inside one complete record."""
    end = 4 + int.from_bytes(body[1:4], "big")  # where the handshake message ends
    limit = min(end, len(body))  # a message longer than the record continues in the next one
    session_id_len = body[_FIXED - 1]
    pos = _FIXED + session_id_len
    if session_id_len > 32 or pos + 2 > limit:
        return False
    suites_len = int.from_bytes(body[pos:pos + 2], "big")
    pos += 2 + suites_len
    if suites_len == 0 or suites_len % 2 or pos + 1 > limit:
        return False
    compression_len = body[pos]
    pos += 1 + compression_len
    if compression_len == 0 or pos > limit:
        return False
    if end > len(body) or pos == end:
        return True  # fragmented across records, or no extensions: nothing more to check here
    if pos + 2 > end:
        return False
    return pos + 2 + int.from_bytes(body[pos:pos + 2], "big") == end


@attrs.frozen
class HostResult:
    """Outcome of looking for an HTTP/1.x Host header: `host` (a DNS name or IP literal) or an
    `error` text; `complete` is False while more bytes could still settle it."""

    complete: bool
    host: Optional[str] = None
    error: Optional[str] = None


_NEED_MORE = HostResult(complete=False)


def http_host(data: bytes, limit: int) -> HostResult:  # noqa: PLR0911 - one return per case reads best
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
