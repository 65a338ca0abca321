"""tls/paths.py (cryptography's verifier, its anchors and its cache) and how it is wired:
one validator per context, read once; the strictness setting and its config errors."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from ssaproxy.config import Config, Policy
from ssaproxy.config.policy import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS
from ssaproxy.errors import ConfigError
from ssaproxy.tls.context import REQUIRE_PEER, client_context, new_context
from ssaproxy.tls.load import check_config
from ssaproxy.tls.paths import REFUSAL_TTL, PathValidator, insecure_rfc5280, load_anchors
from ssaproxy.tls.server import server_context
from ssaproxy.tls.verify import Verifier, validator_of
from tests.pathcorpus import Case, Cert, Corpus
from tests.pki import PKI
from tests.test_path_corpus import _presenting, _pump, run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("paths"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _chain(corpus: Corpus, **leaf: object) -> list[x509.Certificate]:
    built = corpus.build(Case(name="c", expect="ok", leaf=Cert(**leaf)))  # type: ignore[arg-type]
    return [built.leaf, *built.intermediates]


def test_results_are_cached_per_chain_name_and_kind_until_the_earliest_not_after(corpus: Corpus) -> None:
    chain = _chain(corpus)
    clock = Clock(chain[0].not_valid_before_utc.timestamp() + 3600)
    v = PathValidator(load_anchors(str(corpus.default_root_pem)), clock=clock)
    assert v.check_server(chain, hostname="a.test").error is None
    assert v.check_server(chain, hostname="a.test").error is None
    assert (v.hits, v.misses) == (1, 1)
    assert v.check_server(chain, hostname="b.test").error is not None  # another name: its own entry
    assert v.check_client(chain).error is not None  # another kind (serverAuth only): its own entry
    assert v.misses == 3
    earliest = min(c.not_valid_after_utc.timestamp() for c in chain)
    clock.now = earliest + 1  # past the earliest notAfter, the acceptance is not reused
    outcome = v.check_server(chain, hostname="a.test")
    assert v.misses == 4 and outcome.error is not None and "not valid" in outcome.error


def test_refusals_are_cached_for_a_minute_and_the_cache_is_bounded(corpus: Corpus) -> None:
    chain = _chain(corpus)
    clock = Clock(chain[0].not_valid_before_utc.timestamp() + 3600)
    v = PathValidator(load_anchors(str(corpus.default_root_pem)), clock=clock, cache_size=2)
    v.check_server(chain, hostname="x.test")
    v.check_server(chain, hostname="x.test")
    assert v.hits == 1
    clock.now += REFUSAL_TTL
    v.check_server(chain, hostname="x.test")
    assert v.misses == 2
    for name in ("a.test", "b.test", "c.test"):
        v.check_server(chain, hostname=name)
    assert len(v._cache) == 2  # least recently used went first


def test_a_different_chain_is_a_different_entry(corpus: Corpus) -> None:
    v = PathValidator(load_anchors(str(corpus.default_root_pem)))
    one, other = _chain(corpus), _chain(corpus)  # same names and keys, new serial numbers
    assert v.check_server(one, hostname="a.test").error is None
    assert v.check_server(other, hostname="a.test").error is None
    assert (v.hits, v.misses) == (0, 2)


def test_anchors_from_a_file_a_hashed_directory_and_the_system(corpus: Corpus, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = x509.load_pem_x509_certificate(corpus.default_root_pem.read_bytes())
    junk = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(junk + corpus.default_root_pem.read_bytes() + corpus.default_root_pem.read_bytes())
    assert load_anchors(str(bundle)) == [root]  # the unreadable block skipped, the duplicate once
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    shutil.copy(corpus.default_root_pem, hashed / "root.pem")
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    (hashed / "README").write_text("not a certificate")
    assert load_anchors(str(hashed)) == [root]
    monkeypatch.setenv("SSL_CERT_FILE", str(corpus.default_root_pem))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "nowhere"))
    assert load_anchors(None) == [root]
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("SSL_CERT_DIR")
    system = load_anchors(None)
    assert len(system) > 50 or not os.path.exists("/etc/ssl/certs/ca-certificates.crt")


def test_a_hashed_directory_as_trust_store_verifies(corpus: Corpus, tmp_path: Path) -> None:
    shutil.copy(corpus.default_root_pem, tmp_path / "root.pem")
    subprocess.run(["openssl", "rehash", str(tmp_path)], check=True, capture_output=True)
    case = Case(name="hashed", expect="ok")
    built = corpus.build(case)
    object.__setattr__(built, "trust", tmp_path)
    ok, reason, _ = run(case, built)
    assert ok, reason


def test_anchors_are_read_once_per_context_and_anew_on_reload(corpus: Corpus) -> None:
    policy = Policy(trust_store=str(corpus.default_root_pem))
    ctx = client_context(policy)
    assert client_context(policy) is ctx and validator_of(ctx) is validator_of(ctx)
    fresh = client_context.__wrapped__(policy)  # what a reload builds
    assert validator_of(fresh) is not None and validator_of(fresh) is not validator_of(ctx)
    strict = validator_of(ctx)
    lax = validator_of(client_context(Policy(trust_store=str(corpus.default_root_pem),
                                             insecure_allow_non_rfc5280_chains=True)))
    assert strict is not None and strict.strict and lax is not None and not lax.strict


def test_a_verifying_context_without_a_validator_refuses(corpus: Corpus) -> None:
    built = corpus.build(Case(name="novalidator", expect="ok"))
    ctx = new_context("TLSv1.2", "TLSv1.3", DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS,
                      verify=REQUIRE_PEER)
    ctx.load_verify_locations(str(built.trust))  # OpenSSL's anchors, but nobody installed a PathValidator
    check = Verifier(hostname="a.test")
    client = SSL.Connection(ctx, None)
    client.set_app_data(check)
    client.set_connect_state()
    server = SSL.Connection(_presenting(built, server=True), None)
    server.set_accept_state()
    _pump(client, server)
    assert not check.verified and "no path validator" in str(check.error)


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[policy]\ninsecure_allow_non_rfc5280_chains = "yes"\n', "policy.insecure_allow_non_rfc5280_chains",
     "expected true or false"),
    ('[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:80"\n'
     'certificates = [ { chain = "/c.pem", key = "/k.pem" } ]\ninsecure_allow_non_rfc5280_chains = true\n',
     "inbound[0].insecure_allow_non_rfc5280_chains", "only applies with client_auth"),
])
def test_config_errors_name_the_key_and_line(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_config(Config.from_toml(text))
    assert info.value.key == key and message in info.value.message, info.value
    assert info.value.line == text.splitlines().index(next(x for x in text.splitlines()
                                                           if x.startswith("insecure"))) + 1


def test_the_waiver_is_named_at_start_up(corpus: Corpus) -> None:
    root = corpus.default_root_pem
    text = (f'[policy]\ninsecure_allow_non_rfc5280_chains = true\ntrust_store = "{root}"\n'
            f'[[inbound]]\nname = "mtls"\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:80"\n'
            f'certificates = [ {{ chain = "/c.pem", key = "/k.pem" }} ]\nclient_auth = "require"\n'
            f'client_ca = "{root}"\ninsecure_allow_non_rfc5280_chains = true\n')
    config = Config.from_toml(text)
    assert insecure_rfc5280(config) == [f"policy.trust_store ({root})", f"inbound.mtls.client_ca ({root})"]
    assert insecure_rfc5280(Config.from_toml("")) == []


def test_a_fingerprint_names_the_chain_exactly(corpus: Corpus) -> None:
    chain = _chain(corpus)
    assert chain[0].fingerprint(hashes.SHA256()) != chain[1].fingerprint(hashes.SHA256())
    assert chain[0].public_bytes(serialization.Encoding.DER)  # DER is what the digest covers


def test_check_config_takes_a_hashed_directory_and_refuses_an_empty_one(corpus: Corpus, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as info:
        check_config(Config.from_toml(f'[policy]\ntrust_store = "{empty}"\n'))
    assert info.value.key == "policy.trust_store" and "openssl rehash" in info.value.message
    assert info.value.line == 2
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    shutil.copy(corpus.default_root_pem, hashed / "root.pem")
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    check_config(Config.from_toml(f'[policy]\ntrust_store = "{hashed}"\n'))


@pytest.mark.filterwarnings("ignore:Parsed a serial number")  # one root in Debian's bundle has a negative serial
def test_every_system_root_can_anchor_a_chain_for_cryptography() -> None:
    """The system bundle's roots as anchors: each root's twin (its subject and extensions, a new
    key) signs a leaf, and cryptography's verifier must accept the chain.  Its stock CA profile
    would refuse roots whose basicConstraints is not critical or that lack keyUsage; anchors
    are exempt from the profile (docs/verification.md)."""
    roots = load_anchors(None)
    assert len(roots) > 50, "no system trust bundle on this host"
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    refused = []
    for root in roots:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - day).not_valid_after(now + 30 * day))
        for ext in root.extensions:
            if isinstance(ext.value, x509.SubjectKeyIdentifier):
                b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), ext.critical)
            elif not isinstance(ext.value, x509.AuthorityKeyIdentifier):
                b = b.add_extension(ext.value, ext.critical)
        twin = b.sign(key, hashes.SHA256())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
        leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(root.subject)
                .public_key(leaf_key.public_key()).serial_number(1)
                .not_valid_before(now - day).not_valid_after(now + day)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
                .sign(key, hashes.SHA256()))
        outcome = PathValidator([twin]).check_server([leaf, twin], hostname="a.test")
        if outcome.error is not None:
            refused.append((root.subject.rfc4514_string(), outcome.error))
    assert refused == []


def test_anchors_are_parsed_again_when_a_file_changes(corpus: Corpus, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(corpus.default_root_pem.read_bytes())
    first = load_anchors(str(bundle))
    assert load_anchors(str(bundle))[0] is first[0]  # unchanged: the same parse
    (tmp_path / "other").mkdir()
    other = Corpus(tmp_path / "other")
    bundle.write_bytes(other.default_root_pem.read_bytes())
    assert load_anchors(str(bundle))[0].subject == first[0].subject  # both are "root" ...
    assert load_anchors(str(bundle))[0] != first[0]  # ... but the new file's certificate
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    shutil.copy(corpus.default_root_pem, hashed / "root.pem")
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    before = load_anchors(str(hashed))
    (hashed / "root.pem").write_bytes(other.default_root_pem.read_bytes())  # in place, same name
    assert load_anchors(str(hashed)) != before


@pytest.mark.parametrize("waived", [False, True])
def test_an_inbound_listener_carries_its_own_strictness(pki: PKI, waived: bool) -> None:
    good = pki.server("good")
    text = (f'[[inbound]]\nname = "mtls"\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:80"\n'
            f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\nclient_auth = "require"\n'
            f'client_ca = "{pki.client_ca_pem}"\ninsecure_allow_non_rfc5280_chains = {str(waived).lower()}\n')
    config = Config.from_toml(text)
    check_config(config)
    ctx = server_context.__wrapped__(config.inbound[0], config.policy)
    validator = validator_of(ctx)
    assert validator is not None and validator.strict is not waived and validator.anchor_count == 1
    assert validator_of(client_context(config.policy)) is not None  # the policy's own stays strict
    assert validator_of(client_context(config.policy)).strict  # type: ignore[union-attr]


def test_a_verified_check_offers_the_accepted_path(corpus: Corpus) -> None:
    case = Case(name="path", expect="ok", chain=(Cert(san=None, eku=None, ku=("kcs", "crl"), ca=True),))
    built = corpus.build(case)
    ok, _, check = run(case, built)
    assert ok and [c.subject for c in check.chain] == [built.leaf.subject, built.intermediates[0].subject,
                                                         x509.load_pem_x509_certificate(built.trust.read_bytes()).subject]
    refused = Case(name="path-refused", expect="name", target="b.test")
    ok, _, check = run(refused, corpus.build(refused))
    assert not ok and check.chain == ()
