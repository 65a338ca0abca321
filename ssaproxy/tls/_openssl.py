"""The one home of pyOpenSSL's private bindings (`OpenSSL._util`).

Theory of operation: pyOpenSSL wraps most of libssl, but not everything ssaproxy needs: the
key-exchange group list, whether a session was resumed (and when a TLS 1.3 ticket replaced
it, and a copy of a session), and OpenSSL's text for a verify error code.  Those few calls go through the cffi `lib`
object pyOpenSSL keeps in `OpenSSL._util`, which is not a public API and may change between
releases.  Keeping every such use behind the small typed functions below means an upgrade
that breaks one breaks it here, in one place (ruff's banned-api rule keeps `OpenSSL._util` out
of every other module).
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from OpenSSL.crypto import X509StoreFlags


def set_groups_list(ctx: SSL.Context, groups: str) -> bool:
    """SSL_CTX_set1_groups_list (exported under its older name, curves_list): the key-exchange
    groups a context offers, in order.  False if OpenSSL refused the list."""
    return bool(_lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode("ascii")))


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the finished handshake of `conn` resumed an earlier session."""
    return bool(_lib.SSL_session_reused(conn._ssl))


def session_handle(conn: SSL.Connection) -> int:
    """The address of the SSL_SESSION `conn` holds now (0: none).  A TLS 1.3 client replaces
    its session object with a new one for every NewSessionTicket it processes, so a changed
    handle is how a ticket's arrival shows; pyOpenSSL has no callback for it."""
    return int(_ffi.cast("uintptr_t", _lib.SSL_get_session(conn._ssl)))


def session_copy(conn: SSL.Connection) -> Optional[SSL.Session]:
    """An independent copy of the session `conn` holds (None: none, or it does not encode).

    OpenSSL marks a session not resumable when a connection using it is freed without having
    sent close_notify (a reset relay, say); a copy made (by encoding and decoding it, the
    public way) while the connection was healthy is not touched by that."""
    current = _lib.SSL_get_session(conn._ssl)
    if current == _ffi.NULL:
        return None
    size = _lib.i2d_SSL_SESSION(current, _ffi.NULL)
    if size <= 0:
        return None
    buf = _ffi.new("unsigned char[]", size)
    out = _ffi.new("unsigned char **", buf)
    if _lib.i2d_SSL_SESSION(current, out) != size:
        return None
    src = _ffi.new("const unsigned char **", buf)
    copy = _lib.d2i_SSL_SESSION(_ffi.NULL, src, size)
    if copy == _ffi.NULL:
        return None
    session = SSL.Session.__new__(SSL.Session)
    session._session = _ffi.gc(copy, _lib.SSL_SESSION_free)
    session._context = conn.get_context()
    return session


def verify_error_string(code: int) -> str:
    """OpenSSL's own text for an X509_V_ERR_* code."""
    text: bytes = _ffi.string(_lib.X509_verify_cert_error_string(code))
    return text.decode("ascii", "replace")


def x509_strict_flags() -> int:
    """The X509_V_FLAG_X509_STRICT store flag: strict RFC 5280 checks of every chain."""
    return int(X509StoreFlags.X509_STRICT)
