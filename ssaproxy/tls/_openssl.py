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


# ---- the relay's hot path: whole batches of records through one reused buffer per direction.
# pyOpenSSL's recv() and bio_read() allocate a fresh buffer per call and answer "nothing more"
# with a raised WantReadError; over a relay that is one allocation and one exception per
# record, per event.  The reactor is one thread, so one module-level buffer per direction
# serves every connection: each call copies what it read out before returning.

BATCH = 1 << 18  # bytes of plaintext (or ciphertext) handed on per call
_plain = _ffi.new("char[]", BATCH)
_cipher = _ffi.new("char[]", BATCH)


def read_batch(conn: SSL.Connection) -> tuple[bytes, Optional[Exception]]:
    """SSL_read until OpenSSL wants more input or BATCH bytes are read.

    Returns the plaintext of every complete record read (b"" if none) and the exception that
    stopped reading early, exactly as pyOpenSSL's recv() would have raised it (ZeroReturnError
    for close_notify, an SSL.Error for anything else), or None.  A caller that got BATCH bytes
    and no exception calls again: there may be more."""
    ssl = conn._ssl
    got = 0
    failure: Optional[Exception] = None
    while got < BATCH:
        n = _lib.SSL_read(ssl, _plain + got, BATCH - got)
        if n > 0:
            got += n
            continue
        failure = _stopped(conn, n, quiet_want_read=True)
        break
    data: bytes = _ffi.buffer(_plain, got)[:] if got else b""
    return data, failure


def _stopped(conn: SSL.Connection, result: int, *, quiet_want_read: bool) -> Optional[Exception]:
    """Why an SSL_read or SSL_write returned `result` <= 0: the exception pyOpenSSL would have
    raised (None for "wants more input" when `quiet_want_read`), without its traceback, which
    would hold the caller's frame, which holds the exception (a cycle that keeps a finished
    connection alive until the cycle collector runs)."""
    ssl = conn._ssl
    ctx = conn._context
    try:
        # What pyOpenSSL checks first: an exception a callback (verification, ALPN) raised inside
        # this call.
        for helper in (ctx._verify_helper, ctx._alpn_select_helper, ctx._ocsp_helper):
            if helper is not None:
                helper.raise_if_problem()
        if quiet_want_read and _lib.SSL_get_error(ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        conn._raise_ssl_error(ssl, result)
    except Exception as e:  # noqa: BLE001 - handed to the caller, after the data before it
        return e.with_traceback(None)
    return None


def take_output(conn: SSL.Connection) -> bytes:
    """Everything OpenSSL has queued for the peer in the connection's memory BIO (up to
    BATCH bytes; call again while it returns that much), b"" if nothing.  An empty memory BIO
    is not an error, so this raises nothing."""
    bio = conn._from_ssl
    got = 0
    while got < BATCH:
        n = _lib.BIO_read(bio, _cipher + got, BATCH - got)
        if n <= 0:
            break
        got += n
    return _ffi.buffer(_cipher, got)[:] if got else b""


def write_all(conn: SSL.Connection, data: bytes) -> tuple[int, Optional[Exception]]:
    """SSL_write until all of `data` is in records in the memory BIO (which never refuses).

    pyOpenSSL turns on SSL_MODE_ENABLE_PARTIAL_WRITE, so each SSL_write may take only part;
    its send() then costs a wrapper, a helper check and an error check per part.  Returns the
    bytes taken and the exception that stopped it early, exactly as send() would have raised
    it (WantReadError, an SSL.Error), or None."""
    ssl = conn._ssl
    size = len(data)
    total = 0
    failure: Optional[Exception] = None
    with _ffi.from_buffer(data) as buf:
        while total < size:
            n = _lib.SSL_write(ssl, buf + total, size - total)
            if n > 0:
                total += n
                continue
            failure = _stopped(conn, n, quiet_want_read=False) or SSL.Error("SSL_write took nothing")
            break
    return total, failure
