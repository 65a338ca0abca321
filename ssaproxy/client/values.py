"""Option values as a program gives them, turned into what travels in SETOPT.

PEM options take PEM bytes or a path, and the path is read here, in the program's own
process: the daemon never opens a file a program names (docs/api.md)."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from typing import Any, Iterator, Optional, Union

from ssaproxy.client._io import error
from ssaproxy.proto import options as o

Value = Union[bytes, bytearray, str, int, "os.PathLike[Any]"]


MAX_READ = 1 << 20  # bytes read for one option
MAX_DIRECTORY = MAX_READ - 4096  # a directory's certificates together: one SETOPT frame (1 MiB) holds them


def pem(value: Value, what: str, directory: bool = False) -> bytes:
    """PEM bytes as given, or read from the path given; with `directory`, a directory path
    gives the certificates of every regular file in it (a hashed CA directory, say)."""
    if isinstance(value, (bytes, bytearray)) and b"-----BEGIN" in value:
        return bytes(value)
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode("ascii")
    if not isinstance(value, (bytes, bytearray, str, os.PathLike)):
        raise error(errno.EINVAL, f"{what}: give PEM bytes or a file path")
    path = os.fsdecode(bytes(value).rstrip(b"\x00") if isinstance(value, (bytes, bytearray)) else value)
    if "\x00" in path:
        raise error(errno.EINVAL, f"{what}: a path with a NUL byte")
    try:
        if directory and os.path.isdir(path):
            return _directory(path, what)
        with open(path, "rb") as f:
            return f.read(MAX_READ)
    except OSError as e:
        raise error(e.errno or errno.EINVAL, f"{what}: cannot read {path}: {e.strerror}") from None


def _directory(path: str, what: str) -> bytes:
    """The PEM certificates of every regular file in `path` (not below), in name order; files
    holding none (a README, a CRL) are skipped.  EINVAL if there are none, or over MAX_READ."""
    out, seen = b"", set()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):  # follows links: a hashed directory is links to files
            continue
        with open(full, "rb") as f:
            data = f.read(MAX_READ + 1)
        blocks = [b"-----BEGIN CERTIFICATE-----" + block.split(b"-----END CERTIFICATE-----")[0]
                  + b"-----END CERTIFICATE-----\n" for block in data.split(b"-----BEGIN CERTIFICATE-----")[1:]
                  if b"-----END CERTIFICATE-----" in block]
        for block in blocks:
            if block in seen:  # a hashed directory links several names to one file
                continue
            seen.add(block)
            if len(out) + len(block) > MAX_DIRECTORY:
                raise error(errno.EINVAL, f"{what}: the certificates in {path} are over {MAX_DIRECTORY} bytes together")
            out += block
    if not out:
        raise error(errno.EINVAL, f"{what}: no PEM certificate in any file of {path}")
    return out


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
        return pem(value, name, directory=number in (o.TLS_TRUSTED_PEER_CERTIFICATES,
                                                     o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY))
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


def encoded_int(value: Any) -> int:
    """An int as setsockopt(2) takes it: a Python int, or a C int's 4 bytes."""
    return int(value) if not isinstance(value, (bytes, bytearray)) else int(struct.unpack("=i", value)[0])


@contextlib.contextmanager
def option_errors(number: int, record: Any) -> Iterator[None]:
    """Around one option call: TLS_ERROR (`record.error`) is cleared first, as SSA does (reading
    TLS_ERROR keeps it), and a value of the wrong type or size fails with OSError(EINVAL), as
    setsockopt(2) would, never with another exception."""
    if number != o.TLS_ERROR:
        record.error = ""
    try:
        yield
    except OSError:
        raise
    except (TypeError, ValueError, OverflowError, struct.error, LookupError) as e:
        record.error = f"option {number}: bad value ({type(e).__name__}: {e})"
        raise error(errno.EINVAL, record.error) from None
