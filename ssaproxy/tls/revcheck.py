"""One connection's revocation check, in its two steps (see `ssaproxy.tls.fetch`).

Theory of operation: a `RevocationCheck` rides on the connection's `PeerCheck` (`.revocation`).
In the handshake it judges the peer's leaf with what is at hand: a client does so in OpenSSL's
OCSP status callback (`status_callback`, installed on every client context; it runs after the
chain was verified and sees the staple), a server at the end of its verify callback (clients
staple nothing).  A refusal there fails the handshake with OpenSSL's alert
(bad_certificate_status_response for a client).  When nothing at hand answers, `after_handshake`
fetches before the stream may carry a byte; its refusal resets.  The check covers the leaf;
the chain above it is the admin's trust store's business (and the CRL files').
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer

from ssaproxy.config import Policy
from ssaproxy.tls import revocation as rv
from ssaproxy.tls.fetch import Revocation, shared


class RevocationCheck:
    def __init__(self, service: Revocation, mode: str, kind: str, *, use_cache: bool = True) -> None:
        self.service = service
        self.mode = mode
        self.kind = kind  # the face, for the metrics
        self.use_cache = use_cache
        self.judged = False
        self.pending: Optional[tuple[x509.Certificate, x509.Certificate]] = None

    def in_handshake(self, chain: list[x509.Certificate], staple: Optional[bytes], *, client: bool,
                     resumed: bool = False) -> Optional[str]:
        """None to go on (perhaps with a fetch pending), else the refusal.  `resumed`: a resumed
        session, where no server staples (must-staple binds the full handshake that made it)."""
        if not chain:
            return None  # a resumed handshake verified nothing now: judged after it (`after_handshake`)
        self.judged = True
        if self.mode == "off" or len(chain) < 2:
            return None  # a lone trust anchor (a pinned self-signed peer) has nobody to revoke it
        leaf, issuer = chain[0], chain[1]
        stapled = rv.judge_ocsp(staple, leaf, issuer) if staple else None
        if stapled is not None and stapled.status is rv.Status.UNKNOWN and stapled.until is None:
            self.service.conclude(self.mode, self.kind, stapled, "staple", leaf)
            return f"invalid stapled OCSP response: {stapled.detail}"
        if client and not resumed and rv.must_staple(leaf) and (stapled is None or stapled.status is rv.Status.UNKNOWN):
            self.service.conclude(self.mode, self.kind, rv.unknown("must-staple"), "staple", leaf)
            return "must-staple certificate without a valid stapled OCSP response"
        answer = self.service.judge_now(leaf, issuer, staple, use_cache=self.use_cache)
        if answer is not None:
            return self.service.conclude(self.mode, self.kind, answer, "staple" if stapled else "local", leaf)
        if not rv.ocsp_urls(leaf) and not rv.crl_urls(leaf):  # nobody to ask: decided here, in the handshake
            return self.service.conclude(self.mode, self.kind, rv.unknown("the certificate names no OCSP responder "
                                                                          "or CRL distribution point"), "none", leaf)
        self.pending = (leaf, issuer)
        return None

    def after_handshake(self, conn: SSL.Connection, verdict: Callable[[Optional[str]], None], *, client: bool,
                        chain: Sequence[x509.Certificate] = ()) -> Optional[defer.Deferred[None]]:
        """After a finished handshake: None if the verdict is already given, else the fetch.
        `chain`: the verified chain a resumed session carries (leaf first), if any."""
        if not self.judged:  # no callback judged (a resumed session): judge now
            path = list(chain) or list(conn.get_verified_chain(as_cryptography=True) or [])
            if not path and conn.get_peer_certificate() is None:  # an anonymous client (client_auth =
                verdict(None)  # "request"): no certificate, nothing revoked; the verifier said if that may be
                return None
            if not path:  # a certificate, but no chain to check it with: unknown (refused under hard)
                why = self.service.conclude(self.mode, self.kind, rv.unknown("no verified chain to check"), "none",
                                            None)
            else:
                why = self.in_handshake(path, None, client=client, resumed=bool(chain))
            if why is not None:
                verdict(why)
                return None
        if self.pending is None:
            verdict(None)
            return None
        leaf, issuer = self.pending
        return self.service.check(self.mode, self.kind, verdict, leaf, issuer)


def status_callback(conn: SSL.Connection, staple: bytes, data: Any = None) -> bool:
    """The OCSP status callback of every client context: False fails the handshake with
    bad_certificate_status_response.  Fail closed: an exception is a refusal."""
    check = conn.get_app_data()
    revocation = getattr(check, "revocation", None)
    if revocation is None:
        return True
    try:
        chain = list(conn.get_verified_chain(as_cryptography=True) or [])
        why = revocation.in_handshake(chain, staple, client=True)
    except Exception as e:  # noqa: BLE001
        why = f"revocation check raised {type(e).__name__}: {e}"
    if why is None:
        return True
    check.fail_revocation(why)
    return False


def for_connection(reactor: Any, policy: Policy, mode: Optional[str], kind: str) -> Optional[RevocationCheck]:
    """The check for one connection under `mode` (None: the policy's), or None when off."""
    mode = mode or policy.revocation
    if mode == "off":
        return None
    return RevocationCheck(shared(reactor, policy.crl_files, policy.revocation_timeout), mode, kind)


def start_stapling(ctx: SSL.Context, reactor: Any, policy: Policy) -> None:
    """Begin fetching the OCSP responses an inbound context staples (tls/stapling.py), if any."""
    stapler = ctx.get_app_data()
    if stapler is not None and hasattr(stapler, "start"):
        stapler.start(reactor, shared(reactor, policy.crl_files, policy.revocation_timeout).http)
