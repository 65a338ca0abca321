"""The path-validation corpus: every case through ssaproxy's own verification code.

Each case is a chain generated with cryptography (tests/pathcorpus.py), the name asked for and
the expected verdict with its refusal category.  A case runs as a real TLS handshake in memory:
ssaproxy's client context (or, for `face="client"`, its inbound server context) with the
case's trust anchor, OpenSSL building and checking the chain, our own checks and
cryptography's verifier behind it, exactly as a connection of the daemon would; the peer is a
plain pyOpenSSL endpoint presenting the chain.  `by` says who is expected to refuse: OpenSSL
(its verify error), ours (identity, key size, signature hash) or cryptography ("path
validation refused the chain").  A subset goes through real daemons and openssl in
tests/test_e2e_path_corpus.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from ssaproxy.config.policy import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS
from ssaproxy.tls.context import REQUIRE_PEER, load_trust, new_context, strict_checks
from ssaproxy.tls.paths import PathValidator
from ssaproxy.tls.verify import ClientCheck, PeerCheck, Verifier
from tests.pathcorpus import POLICY_A, Built, Case, Cert, Corpus, ca

# What a refusal's reason must match, per category.
CATEGORIES: dict[str, str] = {
    "expired": r"has expired",
    "not-yet-valid": r"not yet valid",
    "name": r"identity mismatch|subjectAltName|unusable for identity|2\.5\.29\.17",
    "name-constraints": r"subtree violation|name constraint",
    "eku": r"unsuitable certificate purpose|unsupported certificate purpose|EKU",
    "key-usage": r"key usage|keyUsage|keyCertSign|2\.5\.29\.15|digitalSignature",
    "ca": r"invalid CA certificate|basicConstraints|2\.5\.29\.19",
    "path-length": r"path length",
    "policy": r"policy|2\.5\.29\.36|2\.5\.29\.54",
    "weak": r"too weak|signed with|bits is below|EC key on|Forbidden",
    "untrusted": r"self-signed|local issuer|unable to get|candidates exhausted|chain construction|chain too long",
    "rfc5280": r"authority key identifier|authorityKeyIdentifier|RFC 5280|subject key identifier|"
               r"critical|2\.5\.29\.35|2\.5\.29\.14|does not include key usage",
    "critical-ext": r"unhandled critical extension|unaccounted-for critical",
}
CRYPTOGRAPHY = "path validation refused the chain"
ROOT = ca(aki=False)
L = Cert()  # the good server leaf
CL = Cert(eku=("client",), san=("dns:client.test", "uri:spiffe://corpus/a"))  # the good client leaf


def leaf(**kw: object) -> Cert:
    return Cert(**kw)  # type: ignore[arg-type]


def cl(**kw: object) -> Cert:
    return replace(CL, **kw)  # type: ignore[arg-type]


def _c(name: str, expect: str, by: str = "", **kw: object) -> tuple[Case, str]:
    return Case(name=name, expect=expect, **kw), by  # type: ignore[arg-type]


NC = ca  # a name-constrained intermediate (a name for the table's readers)
TABLE: list[tuple[Case, str]] = [
    # ---- good chains
    _c("good", "ok"),
    _c("good_two_intermediates", "ok", chain=(ca(), ca())),
    _c("good_no_intermediate", "ok", chain=()),
    _c("good_rsa2048", "ok", leaf=leaf(key="rsa2048"), chain=(ca(key="rsa2048"),)),
    _c("good_p384_sha384", "ok", leaf=leaf(key="p384", hash="sha384"), chain=(ca(key="p384", hash="sha384"),)),
    _c("good_ed25519_leaf", "ok", leaf=leaf(key="ed25519")),
    _c("good_wildcard", "ok", leaf=leaf(san=("dns:*.a.test",)), target="x.a.test"),
    _c("good_many_sans", "ok", leaf=leaf(san=("dns:b.test", "dns:a.test", "ip:10.0.0.1")), target="a.test"),
    _c("good_ke_and_ds", "ok", leaf=leaf(ku=("ds", "ke"), key="rsa2048")),
    _c("good_no_leaf_ku", "ok", leaf=leaf(ku=None)),
    _c("good_no_leaf_eku", "ok", leaf=leaf(eku=None)),
    _c("good_server_and_client_eku", "ok", leaf=leaf(eku=("server", "client"))),
    _c("good_leaf_without_ski", "ok", leaf=leaf(ski=False)),
    _c("intermediate_without_aki", "rfc5280", "openssl", chain=(ca(aki=False),)),
    _c("intermediate_without_aki_waived", "ok", chain=(ca(aki=False),), strict=False),
    _c("good_root_with_nc_bc_noncritical", "ok", root=ca(aki=False, bc_critical=False)),
    _c("root_without_ku", "rfc5280", "openssl", root=ca(aki=False, ku=None)),
    _c("root_without_ku_waived", "ok", root=ca(aki=False, ku=None), strict=False),
    _c("good_trailing_dot_name", "ok", target="a.test."),
    _c("good_upper_case_name", "ok", leaf=leaf(san=("dns:A.Test",)), target="a.test"),
    # ---- wrong names
    _c("wrong_name", "name", "ours", target="b.test"),
    _c("wildcard_two_labels", "name", "ours", leaf=leaf(san=("dns:*.a.test",)), target="x.y.a.test"),
    _c("wildcard_bare_domain", "name", "ours", leaf=leaf(san=("dns:*.a.test",)), target="a.test"),
    _c("wildcard_partial_label", "name", "ours", leaf=leaf(san=("dns:x*.a.test",)), target="xy.a.test"),
    _c("no_san", "name", "ours", leaf=leaf(san=None)),
    _c("san_only_uri", "name", "ours", leaf=leaf(san=("uri:https://a.test/",))),
    _c("cn_is_not_used", "name", "ours", leaf=leaf(san=("dns:other.test",)), target="leaf"),
    _c("suffix_is_not_a_match", "name", "ours", leaf=leaf(san=("dns:test",)), target="a.test"),
    # ---- IP SANs
    _c("ip_v4", "ok", leaf=leaf(san=("ip:127.0.0.1",)), target="127.0.0.1"),
    _c("ip_v6", "ok", leaf=leaf(san=("ip:::1",)), target="::1"),
    _c("ip_mismatch", "name", "ours", leaf=leaf(san=("ip:127.0.0.2",)), target="127.0.0.1"),
    _c("ip_in_dns_san_is_not_ip", "name", "ours", leaf=leaf(san=("dns:127.0.0.1",)), target="127.0.0.1"),
    _c("ip_asked_dns_san", "name", "ours", target="10.0.0.1"),
    _c("dns_asked_ip_san", "name", "ours", leaf=leaf(san=("ip:10.0.0.1",)), target="a.test"),
    _c("ip_v4_mapped_is_not_v4", "name", "ours", leaf=leaf(san=("ip:::ffff:127.0.0.1",)), target="127.0.0.1"),
    # ---- name constraints, DNS
    _c("nc_permitted", "ok", chain=(NC(permit=("dns:a.test",)),)),
    _c("nc_permitted_subdomain", "ok", leaf=leaf(san=("dns:x.a.test",)), target="x.a.test",
       chain=(NC(permit=("dns:a.test",)),)),
    _c("nc_not_permitted", "name-constraints", "openssl", chain=(NC(permit=("dns:b.test",)),)),
    _c("nc_excluded", "name-constraints", "openssl", chain=(NC(exclude=("dns:a.test",)),)),
    _c("nc_excluded_parent", "name-constraints", "openssl", leaf=leaf(san=("dns:x.a.test",)), target="x.a.test",
       chain=(NC(exclude=("dns:a.test",)),)),
    _c("nc_permitted_label_boundary", "name-constraints", "openssl", leaf=leaf(san=("dns:xa.test",)),
       target="xa.test", chain=(NC(permit=("dns:a.test",)),)),
    _c("nc_on_root", "name-constraints", "openssl", root=ca(aki=False, permit=("dns:b.test",))),
    _c("nc_on_upper_intermediate", "name-constraints", "openssl",
       chain=(ca(), NC(exclude=("dns:a.test",)))),
    _c("nc_other_san_violates", "name-constraints", "openssl",
       leaf=leaf(san=("dns:a.test", "dns:evil.test")), chain=(NC(permit=("dns:a.test",)),)),
    # wildcards against name constraints: the CVE-2025-61727 pattern and its relatives
    _c("nc_wildcard_covers_excluded", "name-constraints", "cryptography", leaf=leaf(san=("dns:*.example.com",)),
       target="bar.example.com", chain=(NC(exclude=("dns:bar.example.com",)),)),
    _c("nc_wildcard_covers_excluded_other_name", "name-constraints", "cryptography",
       leaf=leaf(san=("dns:*.example.com",)), target="foo.example.com",
       chain=(NC(exclude=("dns:bar.example.com",)),)),
    _c("nc_wildcard_excluded_on_root", "name-constraints", "cryptography", leaf=leaf(san=("dns:*.example.com",)),
       target="bar.example.com", root=ca(aki=False, exclude=("dns:bar.example.com",))),
    _c("nc_wildcard_within_permitted", "ok", leaf=leaf(san=("dns:*.example.com",)), target="x.example.com",
       chain=(NC(permit=("dns:example.com",)),)),
    _c("nc_wildcard_outside_permitted", "name-constraints", "openssl", leaf=leaf(san=("dns:*.example.org",)),
       target="x.example.org", chain=(NC(permit=("dns:example.com",)),)),
    _c("nc_wildcard_excluded_parent", "name-constraints", "openssl", leaf=leaf(san=("dns:*.example.com",)),
       target="x.example.com", chain=(NC(exclude=("dns:example.com",)),)),
    # IP and mixed constraints
    _c("nc_ip_permitted", "ok", leaf=leaf(san=("ip:10.1.2.3",)), target="10.1.2.3",
       chain=(NC(permit=("ip:10.0.0.0/8",)),)),
    _c("nc_ip_not_permitted", "name-constraints", "openssl", leaf=leaf(san=("ip:192.0.2.1",)), target="192.0.2.1",
       chain=(NC(permit=("ip:10.0.0.0/8",)),)),
    _c("nc_ip_excluded", "name-constraints", "openssl", leaf=leaf(san=("ip:10.1.2.3",)), target="10.1.2.3",
       chain=(NC(exclude=("ip:10.1.0.0/16",)),)),
    _c("nc_ipv6_permitted", "ok", leaf=leaf(san=("ip:2001:db8::1",)), target="2001:db8::1",
       chain=(NC(permit=("ip:2001:db8::/32",)),)),
    _c("nc_mixed_dns_and_ip_ok", "ok", leaf=leaf(san=("dns:a.test", "ip:10.0.0.1")),
       chain=(NC(permit=("dns:a.test", "ip:10.0.0.0/8")),)),
    _c("nc_mixed_ip_violates", "name-constraints", "openssl", leaf=leaf(san=("dns:a.test", "ip:192.0.2.1")),
       chain=(NC(permit=("dns:a.test", "ip:10.0.0.0/8")),)),
    _c("nc_dns_only_ip_san_free", "ok", leaf=leaf(san=("dns:a.test", "ip:192.0.2.1")),
       chain=(NC(permit=("dns:a.test",)),)),
    # ---- EKU
    _c("eku_client_only", "eku", "openssl", leaf=leaf(eku=("client",))),
    _c("eku_code_signing", "eku", "openssl", leaf=leaf(eku=("code",))),
    _c("eku_any_only", "eku", "openssl", leaf=leaf(eku=("any",))),
    _c("eku_intermediate_client_only", "eku", "openssl", chain=(ca(eku=("client",)),)),
    _c("eku_intermediate_server", "ok", chain=(ca(eku=("server",)),)),
    # ---- key usage
    _c("ku_leaf_cert_sign_only", "key-usage", "openssl", leaf=leaf(ku=("kcs",))),
    _c("ku_leaf_ke_only_ec", "key-usage", "ours", leaf=leaf(ku=("ke",))),
    _c("ku_leaf_ke_only_rsa", "key-usage", "ours", leaf=leaf(ku=("ke",), key="rsa2048")),
    _c("ku_intermediate_without_cert_sign", "ca", "openssl", chain=(ca(ku=("crl",)),)),
    _c("ku_intermediate_missing", "rfc5280", "openssl", chain=(ca(ku=None),)),
    _c("ku_intermediate_missing_waived", "ok", chain=(ca(ku=None),), strict=False),
    # ---- basic constraints and path length
    _c("bc_intermediate_not_ca", "ca", "openssl", chain=(ca(ca=False, ku=None),)),
    _c("bc_intermediate_missing", "ca", "openssl", chain=(ca(ca=None, ku=None),)),
    _c("bc_intermediate_noncritical", "rfc5280", "cryptography", chain=(ca(bc_critical=False),)),
    _c("bc_intermediate_noncritical_waived", "ok", chain=(ca(bc_critical=False),), strict=False),
    _c("bc_leaf_is_ca", "ca", "cryptography", leaf=leaf(ca=True, ku=("ds", "kcs"))),
    _c("pathlen_0_ok", "ok", chain=(ca(pathlen=0),)),
    _c("pathlen_0_exceeded", "path-length", "openssl", chain=(ca(), ca(pathlen=0))),
    _c("pathlen_1_ok", "ok", chain=(ca(), ca(pathlen=1))),
    _c("pathlen_root_0_exceeded", "path-length", "openssl", root=ca(aki=False, pathlen=0)),
    _c("pathlen_root_1_exceeded", "path-length", "openssl", chain=(ca(), ca()), root=ca(aki=False, pathlen=1)),
    _c("chain_too_long", "untrusted", "openssl", chain=tuple(ca() for _ in range(9))),
    # ---- policy constraints
    # OpenSSL (without X509_V_FLAG_POLICY_CHECK) lets these pass; cryptography does not process
    # policies and refuses a critical extension it does not process, as RFC 5280 4.2 asks.
    _c("policy_require_explicit_on_root", "policy", "cryptography", root=ca(aki=False, require_explicit=0)),
    _c("policy_require_explicit_with_policy", "policy", "cryptography",
       leaf=leaf(policies=(POLICY_A,)), chain=(ca(policies=(POLICY_A,)),), root=ca(aki=False, require_explicit=0)),
    _c("policy_inhibit_any", "policy", "cryptography", chain=(ca(inhibit_any=0),)),
    _c("policy_plain_policies_ok", "ok", leaf=leaf(policies=(POLICY_A,)), chain=(ca(policies=(POLICY_A,)),)),
    # ---- validity
    _c("expired_leaf", "expired", "openssl", leaf=leaf(days=(-30, -1))),
    _c("expired_intermediate", "expired", "openssl", chain=(ca(days=(-30, -1)),)),
    _c("expired_root", "expired", "openssl", root=ca(aki=False, days=(-30, -1))),
    _c("not_yet_valid_leaf", "not-yet-valid", "openssl", leaf=leaf(days=(1, 30))),
    _c("not_yet_valid_intermediate", "not-yet-valid", "openssl", chain=(ca(days=(1, 30)),)),
    _c("leaf_outlives_issuer", "ok", leaf=leaf(days=(-1, 400))),
    # ---- signature algorithms and keys
    _c("sha1_leaf", "weak", "openssl", leaf=leaf(hash="sha1")),
    _c("sha1_intermediate", "weak", "openssl", chain=(ca(hash="sha1"),)),
    _c("sha1_self_signature_of_root_ok", "ok", root=ca(aki=False, hash="sha1")),
    _c("md5_leaf_rsa", "weak", "openssl", leaf=leaf(hash="md5", key="rsa2048"), chain=(ca(key="rsa2048"),)),
    _c("md5_intermediate_rsa", "weak", "openssl", chain=(ca(hash="md5"),), root=ca(aki=False, key="rsa2048")),
    _c("rsa1024_leaf", "weak", "openssl", leaf=leaf(key="rsa1024")),
    _c("rsa1024_intermediate", "weak", "openssl", chain=(ca(key="rsa1024"),)),
    _c("p224_intermediate", "weak", "ours", chain=(ca(key="p224"),)),
    _c("ed25519_intermediate", "weak", "cryptography", chain=(ca(key="ed25519"),)),
    # ---- AKI / SKI and other strict RFC 5280 points
    _c("leaf_without_aki", "rfc5280", "openssl", leaf=leaf(aki=False)),
    _c("leaf_without_aki_waived", "ok", leaf=leaf(aki=False), strict=False),
    _c("intermediate_without_ski", "rfc5280", "openssl", chain=(ca(ski=False),)),
    _c("intermediate_without_ski_waived", "ok", chain=(ca(ski=False),), strict=False),
    _c("empty_subject_critical_san", "ok", leaf=leaf(empty_subject=True)),
    _c("san_critical_with_subject", "rfc5280", "cryptography", leaf=leaf(san_critical=True)),
    _c("unknown_critical_leaf", "critical-ext", "openssl", leaf=leaf(unknown_critical=True)),
    _c("unknown_critical_intermediate", "critical-ext", "openssl", chain=(ca(unknown_critical=True),)),
    _c("unknown_critical_leaf_waived", "critical-ext", "openssl", leaf=leaf(unknown_critical=True), strict=False),
    _c("waiver_does_not_waive_names", "name", "ours", leaf=leaf(aki=False), target="b.test", strict=False),
    _c("waiver_does_not_waive_wildcard_nc", "name-constraints", "cryptography",
       leaf=leaf(san=("dns:*.example.com",), aki=False), target="bar.example.com",
       chain=(NC(exclude=("dns:bar.example.com",)),), strict=False),
    _c("waiver_does_not_waive_expiry", "expired", "openssl", leaf=leaf(aki=False, days=(-30, -1)), strict=False),
    # ---- trust
    _c("incomplete_chain", "untrusted", "openssl", send=False),
    _c("untrusted_root", "untrusted", "openssl", foreign_root=True),
    _c("self_signed_leaf_untrusted", "untrusted", "openssl", chain=(), foreign_root=True),
    _c("self_signed_leaf_pinned", "ok", self_signed=True, leaf=leaf(aki=True)),
    _c("self_signed_leaf_pinned_without_aki", "rfc5280", "cryptography", self_signed=True, leaf=leaf(aki=False)),
    _c("self_signed_leaf_pinned_without_aki_waived", "ok", self_signed=True, leaf=leaf(aki=False), strict=False),
    # ---- client certificates (inbound mTLS)
    _c("client_good", "ok", face="client", leaf=CL),
    _c("client_two_intermediates", "ok", face="client", leaf=CL, chain=(ca(), ca())),
    _c("client_no_eku", "ok", face="client", leaf=cl(eku=None)),
    _c("client_server_eku", "eku", "openssl", face="client", leaf=cl(eku=("server",))),
    _c("client_expired", "expired", "openssl", face="client", leaf=cl(days=(-30, -1))),
    _c("client_not_yet_valid", "not-yet-valid", "openssl", face="client", leaf=cl(days=(1, 30))),
    _c("client_untrusted", "untrusted", "openssl", face="client", leaf=CL, foreign_root=True),
    _c("client_incomplete", "untrusted", "openssl", face="client", leaf=CL, send=False),
    _c("client_sha1", "weak", "openssl", face="client", leaf=cl(hash="sha1")),
    _c("client_rsa1024", "weak", "openssl", face="client", leaf=cl(key="rsa1024")),
    _c("client_without_aki", "rfc5280", "openssl", face="client", leaf=cl(aki=False)),
    _c("client_without_aki_waived", "ok", face="client", leaf=cl(aki=False), strict=False),
    _c("client_no_san", "name", "cryptography", face="client", leaf=cl(san=None)),
    _c("client_no_san_waived", "ok", face="client", leaf=cl(san=None), strict=False),
    _c("client_nc_excluded", "name-constraints", "openssl", face="client", leaf=CL,
       chain=(NC(exclude=("dns:client.test",)),)),
    _c("client_nc_wildcard", "name-constraints", "cryptography", face="client",
       leaf=cl(san=("dns:*.corp.test",)), chain=(NC(exclude=("dns:bar.corp.test",)),)),
    _c("client_intermediate_not_ca", "ca", "openssl", face="client", leaf=CL, chain=(ca(ca=False, ku=None),)),
    _c("client_pathlen_exceeded", "path-length", "openssl", face="client", leaf=CL, chain=(ca(), ca(pathlen=0))),
]
CASES = {case.name: (case, by) for case, by in TABLE}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) == len(TABLE) >= 100
    assert {c.expect for c, _ in TABLE} - {"ok"} <= set(CATEGORIES)
    assert sum(1 for c, _ in TABLE if c.face == "client") >= 15


@pytest.mark.parametrize("name", list(CASES))
def test_case(corpus: Corpus, name: str) -> None:
    case, by = CASES[name]
    built = corpus.build(case)
    verified, reason, check = run(case, built)
    if case.expect == "ok":
        assert verified, reason
        # The waiver reports each chain it let through that strict RFC 5280 refuses, and only those.
        assert (check.waived is not None) == (not case.strict), check.waived
        return
    assert not verified, f"{name} was accepted"
    assert reason is not None and re.search(CATEGORIES[case.expect], reason, re.I), reason
    if by == "cryptography":
        assert CRYPTOGRAPHY in reason, reason
    elif by in ("openssl", "ours"):
        assert CRYPTOGRAPHY not in reason, reason  # caught before the second opinion, in its own words


def run(case: Case, built: Built) -> tuple[bool, Optional[str], PeerCheck]:
    """One in-memory handshake of ssaproxy's verifying side against a peer presenting `built`."""
    strict = case.strict
    if case.face == "server":
        ours = new_context("TLSv1.2", "TLSv1.3", DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS,
                           verify=REQUIRE_PEER)
        load_trust(ours, str(built.trust), strict=strict)
        target = case.target.rstrip(".") if case.target.endswith(".") else case.target
        check: PeerCheck = (Verifier(ip=target) if _is_ip(target) else Verifier(hostname=target))
        client = SSL.Connection(ours, None)
        client.set_app_data(check)
        server = SSL.Connection(_presenting(built, server=True), None)
    else:
        ours = new_context("TLSv1.2", "TLSv1.3", DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS,
                           server=True, verify=REQUIRE_PEER)
        _serving_identity(ours)
        ours.load_verify_locations(str(built.trust))
        strict_checks(ours, PathValidator.from_location(str(built.trust), strict=strict))
        check = ClientCheck(required=True)
        server = SSL.Connection(ours, None)
        server.set_app_data(check)
        client = SSL.Connection(_presenting(built, server=False), None)
    client.set_connect_state()
    server.set_accept_state()
    failure = _pump(client, server)
    mine = client if case.face == "server" else server
    if failure is None and check.accept(mine):
        return True, None, check
    return False, str(check.error) if check.error is not None else failure, check


def _pump(client: SSL.Connection, server: SSL.Connection) -> Optional[str]:
    """Both handshakes to their end, bounded; the first error (None: both finished)."""
    done = {id(client): False, id(server): False}
    for _ in range(30):
        for a, b in ((client, server), (server, client)):
            if not done[id(a)]:
                try:
                    a.do_handshake()
                    done[id(a)] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    return f"handshake: {e}"
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                b.bio_write(data)
        if all(done.values()):
            try:  # TLS 1.3: the server judges the client's certificate on its Finished
                server.recv(1)
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                return f"handshake: {e}"
            return None
    return "handshake did not finish"


def _presenting(built: Built, *, server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    ctx.use_certificate(built.leaf)
    for extra in built.intermediates:
        ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    ctx.use_privatekey(built.key)  # type: ignore[arg-type]
    return ctx


_IDENTITY: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}


def _serving_identity(ctx: SSL.Context) -> None:
    """Any server certificate: the client side of these cases does not verify it."""
    if not _IDENTITY:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "corpus server")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        _IDENTITY["x"] = (cert, key)
    cert, key = _IDENTITY["x"]
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_case(corpus: Corpus, case: Case, directory: Path) -> tuple[Path, Path, Path]:
    """chain.pem (leaf first), key.pem and trust.pem of `case`, for real peers."""
    built = corpus.build(case)
    directory.mkdir(parents=True, exist_ok=True)
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(pem(built.leaf) + b"".join(pem(c) for c in built.intermediates))
    key.write_bytes(built.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return chain, key, built.trust
