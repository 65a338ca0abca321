"""The client session cache: TLS sessions to resume, one process-wide cache, keyed by trust.

Theory of operation: OpenSSL resumes a session the client offers with `set_session`, and on a
resumed handshake it calls no verify callback: the server sends no certificate to check.  So a
cached session is worth exactly what the connection that made it proved, and the cache keeps
that proof beside it (`CachedSession`: the identity verified, the verified chain).  A session
is stored only after our verification passed (`SessionSaver.verified`), and a resumed
connection counts as verified only through the entry it was offered (`Verifier.accept`).

The key (`SessionKey`) holds everything that decides whether a session may stand in for a full
handshake: the context (one `SSL.Context` per policy, trust store and client certificate; a
rebuilt context, as after a reload, gets a new token, so nothing made under the old trust is
offered again), the name verified, the peer address and port, the ALPN offered and the RSA
floor; and, for the socket API, the local user (one user's sessions never make another's
connections linkable to them).  Anything a later change adds to trust goes in as one more
field.

TLS 1.2 sessions are complete when the handshake is; TLS 1.3 tickets arrive after it, in
NewSessionTicket messages OpenSSL processes inside `recv`.  A TLS 1.3 client replaces its
session object for each ticket, so the saver watches the session handle after each read and
stores the first ticketed session it sees.  Entries expire after the configured lifetime (the
server's own ticket lifetime is enforced by OpenSSL on both ends: a TLS 1.3 client does not
offer a ticket older than its lifetime, and a server refuses an expired one), and the cache
drops its least recently used entry when full.
"""

from __future__ import annotations

import collections
import itertools
import time
import weakref
from typing import Callable, Optional

import attrs
from OpenSSL import SSL, crypto

from ssaproxy.tls._openssl import session_copy, session_handle, session_reused

_tokens = itertools.count(1)
_context_tokens: weakref.WeakKeyDictionary[SSL.Context, int] = weakref.WeakKeyDictionary()


def context_token(ctx: SSL.Context) -> int:
    """A number for this context object that no other context of the process ever gets (an
    `id()` can be reused once a context is gone)."""
    token = _context_tokens.get(ctx)
    if token is None:
        token = _context_tokens[ctx] = next(_tokens)
    return token


@attrs.frozen(kw_only=True)
class SessionKey:
    """Everything a resumed session must share with the connection that made it."""

    context: int  # context_token(): versions, suites, trust store, client certificate
    identity: str  # the DNS name or IP address verified
    peer: str  # the address (or host name) connected to
    port: int
    alpn: tuple[str, ...] = ()
    min_rsa_bits: int = 2048
    owner: int = -1  # the local user whose sessions these are (socket API: its uid); -1: the daemon's


@attrs.frozen(kw_only=True)
class CachedSession:
    """A session and what its full handshake proved."""

    session: SSL.Session
    identity: str
    chain: tuple[crypto.X509, ...]  # the verified chain, leaf first
    expires: float


class SessionCache:
    """A bounded LRU map of SessionKey -> CachedSession.  One per process (`CACHE`)."""

    def __init__(self, *, size: int = 1000, lifetime: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.lifetime = lifetime
        self.clock = clock
        self._entries: collections.OrderedDict[SessionKey, CachedSession] = collections.OrderedDict()

    def configure(self, *, size: int, lifetime: float) -> None:
        self.size, self.lifetime = size, lifetime
        self._trim()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SessionKey) -> Optional[CachedSession]:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: SessionKey, session: SSL.Session, identity: str, chain: tuple[crypto.X509, ...],
            *, not_after: Optional[float] = None) -> Optional[CachedSession]:
        """Keep `session` for at most `lifetime`, never past the earliest notAfter in `chain`
        (what the full handshake verified stops being true then), nor past `not_after` (on this
        cache's clock: a resumed session's new ticket keeps the expiry of the session it resumed,
        so one full verification is never stretched by resuming)."""
        if self.size <= 0 or self.lifetime <= 0:
            return None
        now = self.clock()
        expires = now + self.lifetime
        if chain:
            earliest = min(c.to_cryptography().not_valid_after_utc.timestamp() for c in chain)
            expires = min(expires, now + (earliest - time.time()))
        if not_after is not None:
            expires = min(expires, not_after)
        if expires <= now:
            self._entries.pop(key, None)
            return None
        entry = self._entries[key] = CachedSession(session=session, identity=identity, chain=chain,
                                                   expires=expires)
        self._entries.move_to_end(key)
        self._trim()
        return entry

    def forget(self, key: SessionKey) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def _trim(self) -> None:
        while len(self._entries) > max(self.size, 0):
            self._entries.popitem(last=False)


CACHE = SessionCache()


def configure(*, size: int, lifetime: float) -> None:
    """The process-wide cache's bounds, from `[policy]` (at start-up and on every reload)."""
    CACHE.configure(size=size, lifetime=lifetime)


class SessionSaver:
    """Stores one client connection's session once it is worth keeping.

    `offered` is the entry set on the connection before the handshake (None: a fresh one)."""

    def __init__(self, cache: SessionCache, key: SessionKey, offered: Optional[CachedSession]) -> None:
        self.cache = cache
        self.key = key
        self.offered = offered
        self.waiting = False  # a TLS 1.3 ticket is still to come
        self._seen = 0
        self._held: Optional[SSL.Session] = None  # keeps the watched session alive (and its address unique)
        self._identity = ""
        self._chain: tuple[crypto.X509, ...] = ()
        self._stored: Optional[CachedSession] = None

    def verified(self, conn: SSL.Connection, identity: str, chain: tuple[crypto.X509, ...]) -> None:
        """After a handshake our verification accepted (or a resumption of a verified session)."""
        self._identity, self._chain = identity, chain
        self._stored = self.offered
        if conn.get_protocol_version_name() == "TLSv1.3":
            self._held = conn.get_session()
            self._seen = session_handle(conn)
            self.waiting = True
            return
        if session_reused(conn) and self.offered is not None:
            return  # the same TLS 1.2 session, already cached
        self._store(conn)

    def poll(self, conn: SSL.Connection) -> None:
        """After reading: store the session if a TLS 1.3 ticket replaced it."""
        if not self.waiting:
            return
        handle = session_handle(conn)
        if handle in (self._seen, 0):
            return
        self.waiting = False
        self._held = None
        self._store(conn)

    def failed(self) -> None:
        """The connection ended in a TLS error after its handshake: its session (RFC 5246 7.2.2:
        one ended by a fatal alert) is not offered again."""
        self.waiting = False
        if self._stored is not None and self.cache.get(self.key) is self._stored:
            self.cache.forget(self.key)

    def refused(self) -> None:
        """The handshake resumed the offered session but the connection was refused after it (its
        chain found revoked): that session is not offered again."""
        self.waiting = False
        if self.offered is not None and self.cache.get(self.key) is self.offered:
            self.cache.forget(self.key)

    def _store(self, conn: SSL.Connection) -> None:
        session = session_copy(conn)
        if session is not None:
            inherited = self.offered.expires if self.offered is not None and session_reused(conn) else None
            self._stored = self.cache.put(self.key, session, self._identity, self._chain, not_after=inherited)
