"""What a peer must prove, side by side: a server we connect to, its DNS name or IP address
(service-identity, never the subject CN); a client of an inbound listener, a chain to the
client CA and, with an allow-list, one of its SANs.  Both are `PeerCheck`s
(`tls/peercheck.py`: OpenSSL's callback, our checks, the second verifier, resumption), which
this module also offers to its callers with `install` and `verify_callback`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Optional

from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError as IdentityUnusable
from service_identity import VerificationError as IdentityError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from ssaproxy.errors import VerificationFailed
from ssaproxy.tls._openssl import session_reused
from ssaproxy.tls.certchecks import normal_identity, san_identities
from ssaproxy.tls.paths import Outcome, PathValidator
from ssaproxy.tls.peercheck import PeerCheck, install, validator_of, verify_callback

if TYPE_CHECKING:
    from ssaproxy.tls.sessions import CachedSession

__all__ = ["ClientCheck", "PeerCheck", "Verifier", "install", "san_identities", "validator_of", "verify_callback"]


class Verifier(PeerCheck):
    """A server we connect to must prove a DNS name or an IP address (service-identity)."""

    def __init__(self, hostname: Optional[str] = None, ip: Optional[str] = None, *,
                 min_rsa_bits: int = 2048) -> None:
        if (hostname is None) == (ip is None):
            raise ValueError("exactly one of hostname or ip is required")
        super().__init__(min_rsa_bits=min_rsa_bits)
        self.hostname = hostname
        self.ip = ipaddress.ip_address(ip) if ip is not None else None
        self.offered: Optional[CachedSession] = None  # the cached session set on the connection

    def accept_resumed(self, conn: SSL.Connection) -> bool:
        offered = self.offered
        if offered is None or offered.identity != self.identity or self.error is not None:
            return self.fail(VerificationFailed("resumed a session that was not verified for "
                                                f"{self.identity!r}"))
        self.presented = True
        self.resumed_chain = offered.chain
        self.leaf_passed = True
        return True

    @property
    def identity(self) -> str:
        return self.hostname if self.hostname is not None else str(self.ip)

    def describe(self) -> str:
        return self.identity

    def _validate_path(self, validator: PathValidator, chain: list[x509.Certificate]) -> Outcome:
        if self.ip is not None:
            return validator.check_server(chain, ip=str(self.ip))
        return validator.check_server(chain, hostname=self.hostname)

    def _check_leaf(self, cert: x509.Certificate) -> None:
        try:
            if self.ip is not None:
                verify_certificate_ip_address(cert, str(self.ip))
            else:
                assert self.hostname is not None
                verify_certificate_hostname(cert, self.hostname)
        except IdentityError as e:
            self.fail(VerificationFailed(f"identity mismatch: {self.identity!r} not in certificate "
                                         f"({_mismatch_text(e)})", depth=0))
        except IdentityUnusable as e:
            # e.g. no subjectAltName at all: we never fall back to the subject CN.
            self.fail(VerificationFailed(f"certificate unusable for identity checks: {e}", depth=0))


class ClientCheck(PeerCheck):
    """A client of an inbound listener: a chain to the client CA (OpenSSL checks the
    clientAuth purpose) and, if an allow-list is set, one of its SANs on it, exactly.  No CN."""

    def __init__(self, *, allow: tuple[str, ...] = (), required: bool = False, min_rsa_bits: int = 2048) -> None:
        super().__init__(min_rsa_bits=min_rsa_bits)
        self.allow = frozenset(normal_identity(a) for a in allow)
        self.required = required
        self.identities: tuple[str, ...] = ()  # "dns:…", "uri:…" of the presented leaf

    def _validate_path(self, validator: PathValidator, chain: list[x509.Certificate]) -> Outcome:
        return validator.check_client(chain)

    def _check_leaf(self, cert: x509.Certificate) -> None:
        self.identities = san_identities(cert)
        if self.allow and not self.allow.intersection(map(normal_identity, self.identities)):
            shown = ", ".join(self.identities) or "no subjectAltName"
            self.fail(VerificationFailed(f"client identity not allowed ({shown})", depth=0))

    def explain(self, openssl_reason: str) -> Optional[str]:
        reason = openssl_reason.lower()
        if self.error is None and ("did not return a certificate" in reason or "certificate required" in reason):
            return "no client certificate"  # OpenSSL's own refusal (certificate_required alert)
        return super().explain(openssl_reason)

    def accept_resumed(self, conn: SSL.Connection) -> bool:
        # Only a ticket this listener issued (its context's keys, its session id context) can
        # resume, and it was issued after a full handshake that passed; the leaf it carries is
        # checked again against today's rules, and no certificate means no certificate.
        cert = conn.get_peer_certificate()
        if cert is None:
            return self._anonymous()
        return self.leaf_again(cert)

    def _anonymous(self) -> bool:
        if self.required or self.allow:
            self.fail(VerificationFailed("no client certificate"))
            return False
        return self.error is None  # anonymous, where the listener allows it

    def _revocation_in_handshake(self) -> None:
        if self.revocation is not None:
            chain = [self.by_depth[d] for d in sorted(self.by_depth)]
            why = self.revocation.in_handshake(chain, None, client=False)
            if why is not None:
                self.fail_revocation(why)

    def accept(self, conn: SSL.Connection) -> bool:
        if not session_reused(conn) and conn.get_peer_certificate() is None:
            return self._anonymous()
        return super().accept(conn)


def _mismatch_text(e: IdentityError) -> str:
    errors = getattr(e, "errors", None) or []
    return "; ".join(str(x) for x in errors) or str(e)
