"""The deterministic byte stream the test peers send and check (stdlib only).

A prime-length block, cycled: chunk boundaries never line up with its period, so a dropped or
duplicated chunk changes the digest.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

CHUNK = 65536
_BLOCK = hashlib.shake_256(b"ssaproxy test pattern").digest(65521)


def pattern_stream(total: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """`total` bytes of the cycled block, in pieces of at most `chunk`."""
    sent = 0
    while sent < total:
        start = sent % len(_BLOCK)
        n = min(chunk, total - sent, len(_BLOCK) - start)
        yield _BLOCK[start:start + n]
        sent += n


def pattern(n: int) -> bytes:
    return b"".join(pattern_stream(n))


def pattern_digest(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_stream(n):
        h.update(piece)
    return h.hexdigest()
