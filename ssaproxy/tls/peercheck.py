"""Our own fail-closed certificate verification: the machinery both sides share.

Theory of operation: OpenSSL builds and checks the chain against the trust store (validity
dates, CA flags, path length, name constraints, purpose/EKU, security level) and calls
`verify_callback` once per certificate, root first, leaf (depth 0) last.  The callback never
overrides a failure OpenSSL reported; it adds checks of its own on each certificate (key size,
signature hash) and, at depth 0, the identity check through service-identity.  Any exception
anywhere is a rejection.  The per-connection `Verifier` records the outcome, and the relay
additionally refuses a finished handshake whose verifier did not pass the leaf (so a callback
that was somehow never called cannot mean "accepted").

After OpenSSL and our checks passed the leaf, the chain OpenSSL built goes through a second,
independent verifier: cryptography's (`tls/paths.py`), installed per `SSL.Context` with
`install` when the context's trust store is loaded.  The stricter of the two decides, so every
refusal OpenSSL already made keeps its words, and what only cryptography catches (name
constraints against wildcard SANs, its profile of EKU, key usage and extensions) is refused
with its own "path validation refused the chain" reason.  A context that verifies peers but
has no validator installed refuses every peer.

A resumed handshake calls no callback at all.  A client connection then counts as verified
only through the cache entry it offered (`Verifier.offered`, see `tls.sessions`), which
carries what the full handshake proved; a resumed server-side session (a client certificate
in a ticket this listener issued under its session id context) has its leaf checked again.

What each side's peer must prove (a server's name or address, a client's CA and allow-list)
is `ssaproxy.tls.verify`; the rules for one certificate on its own are `tls/certchecks.py`.
"""

from __future__ import annotations

import datetime
import weakref
from typing import Any, Optional

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from ssaproxy.errors import VerificationFailed
from ssaproxy.tls._openssl import session_reused, verify_error_string
from ssaproxy.tls.certchecks import key_problem, signature_problem, usage_problem
from ssaproxy.tls.paths import Outcome, PathValidator

_VALIDATORS: "weakref.WeakKeyDictionary[SSL.Context, PathValidator]" = weakref.WeakKeyDictionary()
_log = Logger(namespace="ssaproxy.tls.verify")


def install(ctx: SSL.Context, validator: PathValidator) -> None:
    """Make `validator` (cryptography's verifier over the same anchors OpenSSL loaded into
    `ctx`) the second judge of every chain verified under `ctx`."""
    _VALIDATORS[ctx] = validator


def validator_of(ctx: SSL.Context) -> Optional[PathValidator]:
    return _VALIDATORS.get(ctx)


class PeerCheck:
    """Verification state of one connection's peer: OpenSSL's chain verdict plus our checks,
    and how it went.  Subclasses decide what the leaf must prove (`_check_leaf`)."""

    def __init__(self, *, min_rsa_bits: int = 2048) -> None:
        self.min_rsa_bits = min_rsa_bits
        self.error: Optional[VerificationFailed] = None
        self.leaf_passed = False
        self._anchor_depth: Optional[int] = None  # OpenSSL reports the trust anchor first
        self.presented = False  # the peer sent a certificate (chain)
        self.validator: Optional[PathValidator] = None  # set by verify_callback from the context
        self.store: Optional[crypto.X509Store] = None  # OpenSSL's store of the same context
        self.waived: Optional[str] = None  # the strict RFC 5280 refusal an insecure setting overrode
        self._path: list[x509.Certificate] = []  # OpenSSL's chain as reported, anchor first
        self.resumed = False  # the handshake resumed an earlier session
        self.resumed_chain: tuple[crypto.X509, ...] = ()  # its verified chain, from the cache
        self.by_depth: dict[int, x509.Certificate] = {}  # the verified chain, as OpenSSL walked it
        self.revocation: Optional[Any] = None  # a tls.revcheck.RevocationCheck, when one applies

    @property
    def verified(self) -> bool:
        return self.leaf_passed and self.error is None

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The path both verifiers accepted, leaf first, anchor last (empty unless verified):
        for checks after the handshake, such as revocation."""
        return tuple(self._path[::-1]) if self.verified else ()

    def fail(self, error: VerificationFailed) -> bool:
        if self.error is None:
            self.error = error
        self.leaf_passed = False
        return False

    def check(self, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        self.presented = True
        if self.error is not None:
            return False
        if not ok:
            return self.fail(VerificationFailed(_openssl_reason(code), code=code, depth=depth))
        if self._anchor_depth is None:
            self._anchor_depth = depth
        c = self.by_depth[depth] = cert.to_cryptography()
        self._path.append(c)
        anchor = depth == self._anchor_depth and c.issuer == c.subject
        problem = (key_problem(c, self.min_rsa_bits) or (None if anchor else signature_problem(c))
                   or (usage_problem(c) if depth == 0 else None))
        if problem:
            return self.fail(VerificationFailed(problem, depth=depth))
        if depth == 0:
            if not self._identity(c):
                return False
            self._second_opinion()
            if self.error is not None:
                return False
            self.leaf_passed = True
            self._revocation_in_handshake()
        return self.error is None

    def _revocation_in_handshake(self) -> None:
        """A server judges its client's revocation here (a client does in the status callback)."""

    def fail_revocation(self, why: str) -> None:
        self.fail(VerificationFailed(why, depth=0))

    def _second_opinion(self) -> None:
        """cryptography's verdict on the chain OpenSSL built (leaf first)."""
        if self.validator is None:
            self.fail(VerificationFailed("certificate verify failed: no path validator for this context", depth=0))
            return
        try:
            outcome = self._validate_path(self.validator, self._path[::-1])
        except Exception as e:  # noqa: BLE001 - any surprise is a rejection
            outcome = Outcome(error=f"{type(e).__name__}: {e}")
        if outcome.error is not None:
            # OpenSSL reports name-constraint and policy violations only after this last call for
            # the leaf: where it refuses the chain too, its words are the reason.
            later = _openssl_verdict(self.store, self._path[::-1])
            if later is not None:
                self.fail(VerificationFailed(_openssl_reason(later[0]), code=later[0], depth=later[1]))
                return
            self.fail(VerificationFailed(f"certificate verify failed: path validation refused the chain: "
                                         f"{outcome.error}", depth=0))
        elif outcome.waived is not None:
            self.waived = outcome.waived
            _log.warn("insecure_allow_non_rfc5280_chains accepted a chain for {peer} that strict RFC 5280 "
                      "refuses: {waived}", peer=self.describe(), waived=outcome.waived)

    def describe(self) -> str:
        return "a client" if not self._path else self._path[-1].subject.rfc4514_string()

    def _validate_path(self, validator: PathValidator, chain: list[x509.Certificate]) -> Outcome:
        raise NotImplementedError

    def settled(self) -> None:
        """The connection is relaying: drop what only the handshake's checks needed (the parsed
        chain, the store), some kilobytes per connection for as long as it lives."""
        self._path, self.by_depth, self.store, self.validator, self.revocation = [], {}, None, None, None

    def accept(self, conn: SSL.Connection) -> bool:
        """After a finished handshake: may this connection carry data?"""
        if session_reused(conn):
            self.resumed = True
            return self.accept_resumed(conn)
        return self.verified

    def accept_resumed(self, conn: SSL.Connection) -> bool:
        """A resumed handshake: no callback ran.  Refused unless a subclass knows better."""
        return self.fail(VerificationFailed("resumed a session that was never verified"))

    def leaf_again(self, cert: crypto.X509) -> bool:
        """Our own checks of a leaf carried in a resumed session (the chain was verified when
        the session was made)."""
        self.presented = True
        c = cert.to_cryptography()
        if c.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            return self.fail(VerificationFailed("certificate verify failed: certificate has expired (a resumed "
                                                "session)", depth=0))
        problem = key_problem(c, self.min_rsa_bits) or signature_problem(c)
        if problem:
            return self.fail(VerificationFailed(problem, depth=0))
        if not self._identity(c):
            return False
        self.leaf_passed = True
        return True

    def _identity(self, leaf: x509.Certificate) -> bool:
        """The subclass's check of what the leaf must prove, failing closed."""
        try:
            self._check_leaf(leaf)
        except Exception as e:  # noqa: BLE001 - any surprise in identity checking is a rejection
            self.fail(VerificationFailed(f"identity check failed: {type(e).__name__}: {e}", depth=0))
        return self.error is None

    def explain(self, openssl_reason: str) -> Optional[str]:
        """Why a failed handshake failed, if it was our verification's doing."""
        return str(self.error) if self.error is not None else None

    def _check_leaf(self, cert: x509.Certificate) -> None:
        raise NotImplementedError


def verify_callback(conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
    """The context-wide callback: dispatch to the connection's PeerCheck, fail closed."""
    try:
        verifier = conn.get_app_data()
        if not isinstance(verifier, PeerCheck):
            return False
        if verifier.validator is None:
            ctx = conn.get_context()
            verifier.validator, verifier.store = validator_of(ctx), ctx.get_cert_store()
        return verifier.check(cert, code, depth, ok)
    except Exception as e:  # noqa: BLE001 - fail closed on anything unexpected
        try:
            v = conn.get_app_data()
            if isinstance(v, PeerCheck):
                v.fail(VerificationFailed(f"verification raised {type(e).__name__}: {e}", depth=depth))
        except Exception:  # noqa: BLE001
            pass
        return False


def _openssl_verdict(store: Optional[crypto.X509Store], chain: list[x509.Certificate]) -> Optional[tuple[int, int]]:
    """OpenSSL's own refusal of `chain` (leaf first) under `store`, as (code, depth); None if it
    accepts (or cannot say)."""
    if store is None or not chain:
        return None
    try:
        certs = [crypto.X509.from_cryptography(c) for c in chain]
        crypto.X509StoreContext(store, certs[0], certs[1:]).verify_certificate()
    except crypto.X509StoreContextError as e:
        errors = list(e.errors)
        return (int(errors[0]), int(errors[1])) if len(errors) >= 2 else None
    except Exception:  # noqa: BLE001 - no second word from OpenSSL; cryptography's stands
        return None
    return None


def _openssl_reason(code: int) -> str:
    return f"certificate verify failed: {verify_error_string(code)}"
