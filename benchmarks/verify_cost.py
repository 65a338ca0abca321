#!/usr/bin/env python3
"""What the second verifier costs per handshake: CPU time of in-memory TLS handshakes through
ssaproxy's own client context, with OpenSSL's verification only, with cryptography's verifier
beside it uncached, and with its result cache.

    python benchmarks/verify_cost.py            # 400 handshakes per mode
    python benchmarks/verify_cost.py -n 2000

Both ends run in this process over memory BIOs (no sockets), so the numbers are CPU seconds
of the client handshake plus the server handshake; the server's share is the same in every
mode, so the differences are the verifier's.  Modes run in interleaved rounds and the best
round of each counts, so that other load on the machine does not land on one mode only.  The
chain is root -> intermediate -> leaf, as a public server sends, for P-256 and for RSA-2048.
"OpenSSL only" replaces the context's `PathValidator` by one that accepts every chain: a
measuring device, never used by the daemon.
The second block times `PathValidator.check_server` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import tempfile
import time
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from ssaproxy.config.policy import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS
from ssaproxy.tls.context import REQUIRE_PEER, load_trust, new_context
from ssaproxy.tls.paths import Outcome, PathValidator, load_anchors
from ssaproxy.tls.verify import Verifier, install

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


class _AcceptAll(PathValidator):
    """Measuring device: the cost of OpenSSL's verification alone."""

    def check_server(self, chain: object, *, hostname: object = None, ip: object = None) -> Outcome:  # type: ignore[override]
        return Outcome()


def _cert(cn: str, key: object, issuer: tuple[str, object], *, ca: bool) -> x509.Certificate:
    ikey = issuer[1]
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())  # type: ignore[attr-defined]
         .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)  # type: ignore[attr-defined]
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ikey.public_key()), False))  # type: ignore[attr-defined]
    if not ca:
        b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.test")]), False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    return b.sign(ikey, hashes.SHA256())  # type: ignore[arg-type]


def chain(kind: str, directory: Path) -> tuple[list[x509.Certificate], object, Path]:
    new: Callable[[], object] = ((lambda: ec.generate_private_key(ec.SECP256R1())) if kind == "p256"
                                 else (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    rk, ik, lk = new(), new(), new()
    root = _cert("bench root", rk, ("bench root", rk), ca=True)
    inter = _cert("bench intermediate", ik, ("bench root", rk), ca=True)
    leaf = _cert("bench.test", lk, ("bench intermediate", ik), ca=False)
    trust = directory / f"root-{kind}.pem"
    trust.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return [leaf, inter], lk, trust


def handshakes(n: int, certs: list[x509.Certificate], key: object, trust: Path, mode: str) -> float:
    """CPU seconds per handshake (both ends) under `mode`."""
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.use_certificate(certs[0])
    for extra in certs[1:]:
        server_ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    server_ctx.use_privatekey(key)  # type: ignore[arg-type]
    server_ctx.set_options(SSL.OP_NO_TICKET)
    client_ctx = new_context("TLSv1.2", "TLSv1.3", DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS,
                             verify=REQUIRE_PEER)
    load_trust(client_ctx, str(trust))  # installs the real validator, anchors read once
    if mode == "openssl only":
        install(client_ctx, _AcceptAll(load_anchors(str(trust))))
    elif mode == "uncached":
        install(client_ctx, PathValidator(load_anchors(str(trust)), cache_size=0))
    start = time.process_time()
    for _ in range(n):
        verifier = Verifier(hostname="bench.test")
        client = SSL.Connection(client_ctx, None)
        client.set_app_data(verifier)
        client.set_tlsext_host_name(b"bench.test")
        client.set_connect_state()
        server = SSL.Connection(server_ctx, None)
        server.set_accept_state()
        _pump(client, server)
        if not verifier.verified:
            raise SystemExit(f"{mode}: not verified: {verifier.error}")
    return (time.process_time() - start) / n


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    for _ in range(20):
        done = 0
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
        if done == 2:
            return
    raise SystemExit("handshake did not finish")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=400, help="handshakes per mode")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the best one counts)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(f"{'chain':8} {'mode':14} {'CPU per handshake':>18} {'vs OpenSSL only':>16}")
        for kind in ("p256", "rsa2048"):
            certs, key, trust = chain(kind, Path(d))
            modes = ("openssl only", "uncached", "cached")
            best = dict.fromkeys(modes, float("inf"))
            for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared
                for mode in modes:
                    best[mode] = min(best[mode], handshakes(args.n // args.rounds, certs, key, trust, mode))
            base = best["openssl only"]
            for mode in modes:
                cost = best[mode]
                print(f"{kind:8} {mode:14} {cost * 1e6:15.0f} us {100 * (cost / base - 1):+15.1f}%")
            validator = PathValidator(load_anchors(str(trust)), cache_size=0)
            cached = PathValidator(load_anchors(str(trust)))
            for label, v in (("check_server, uncached", validator), ("check_server, cached", cached)):
                start = time.process_time()
                for _ in range(args.n):
                    v.check_server(certs, hostname="bench.test")
                print(f"{kind:8} {label:24} {(time.process_time() - start) / args.n * 1e6:8.0f} us")


if __name__ == "__main__":
    main()
