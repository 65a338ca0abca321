"""Option values as a program gives them, turned into what travels in SETOPT.

PEM options take PEM bytes or a path, and the path is read here, in the program's own
process: the daemon never opens a file a program names (docs/api.md)."""

from __future__ import annotations

import errno
import os
import struct
from typing import Any, Optional, Union

from ssaproxy.client._io import error
from ssaproxy.proto import options as o

Value = Union[bytes, bytearray, str, int, "os.PathLike[Any]"]


def pem(value: Value, what: str) -> bytes:
    """PEM bytes as given, or read from the path given."""
    if isinstance(value, (bytes, bytearray)) and b"-----BEGIN" in value:
        return bytes(value)
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode("ascii")
    if isinstance(value, int):
        raise error(errno.EINVAL, f"{what}: give PEM bytes or a file path")
    path = os.fsdecode(bytes(value).rstrip(b"\x00") if isinstance(value, (bytes, bytearray)) else value)
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise error(e.errno or errno.EINVAL, f"{what}: cannot read {path}: {e.strerror}") from None


def split_key(pem_bytes: bytes) -> tuple[bytes, Optional[bytes]]:
    """A combined file (chain and key, as haproxy and stunnel take): (chain, key)."""
    marker = b"-----BEGIN "
    chain: list[bytes] = []
    key: list[bytes] = []
    for block in pem_bytes.split(marker)[1:]:
        (key if block.split(b"-----", 1)[0].endswith(b"PRIVATE KEY") else chain).append(marker + block)
    return b"".join(chain), (b"".join(key) or None)


def encode(number: int, value: Value) -> bytes:
    """The SETOPT value for option `number` (EINVAL for a value of the wrong kind)."""
    option = o.OPTIONS.get(number)
    kind = option.kind if option else o.TEXT
    name = option.name if option else str(number)
    if kind == o.PEM:
        return pem(value, name)
    if kind == o.INT:
        if isinstance(value, bool) or not isinstance(value, (int, bytes, bytearray)):
            raise error(errno.EINVAL, f"{name} takes an integer")
        if isinstance(value, (bytes, bytearray)):  # a C int, as setsockopt(2) passes it
            if len(value) != 4:
                raise error(errno.EINVAL, "an integer option takes 4 bytes")
            value = int(struct.unpack("=i", value)[0])
        return o.pack_int(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise error(errno.EINVAL, f"option {number} takes bytes or text")


def decode(number: int, raw: bytes) -> Any:
    """A getsockopt value as the library returns it: int options as ints, others as bytes."""
    option = o.OPTIONS.get(number)
    return o.unpack_int(raw) if option is not None and option.kind == o.INT else raw
