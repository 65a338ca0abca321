"""A small PKI with revocation: a CA with an OpenSSL CA database (index.txt), a delegated OCSP
responder certificate, a CRL, and leaf certificates that point at a real `openssl ocsp`
responder (AIA) and an HTTP server holding the CRL (CRL distribution point).

    pki = RevPKI(tmp_path, host="127.0.0.1", ocsp_port=..., crl_port=...)
    responder = pki.spawn_responder()   # openssl ocsp -index index.txt ...
    crl_server = pki.spawn_crl_server() # python -m http.server over pki.crl_dir

Leaves (server unless named client_*): good (AIA and CDP), revoked (AIA only), crl_good,
crl_revoked (CDP only), must_staple (TLS Feature status_request, AIA), client_good,
client_revoked (AIA and CDP).  Revoked ones are "R" in index.txt and listed in the CRL.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

SERVER_NAME = "rev.test"


@attrs.frozen
class Leaf:
    name: str
    chain: Path  # leaf then CA
    cert: Path  # leaf alone
    key: Path
    serial: int
    hostname: str = SERVER_NAME


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class RevPKI:
    SERVERS = ("good", "revoked", "crl_good", "crl_revoked", "must_staple")
    CLIENTS = ("client_good", "client_revoked")
    REVOKED = ("revoked", "crl_revoked", "client_revoked")

    def __init__(self, directory: Path, *, host: str, ocsp_port: int, crl_port: int,
                 server_names: Sequence[str] = (SERVER_NAME,), extra_ips: Sequence[str] = ()) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host, self.ocsp_port, self.crl_port = host, ocsp_port, crl_port
        self.now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = self._sign(_name("ssaproxy revocation test CA"), self.ca_key.public_key(), ca=True,
                             serial=1, self_signed=True)
        self.ca_pem = self.dir / "rev-ca.pem"
        self.ca_pem.write_bytes(_pem(self.ca))
        self.ca_key_pem = self.dir / "rev-ca.key"
        self.ca_key_pem.write_bytes(_key_pem(self.ca_key))
        # The delegated responder: certified by the CA for OCSP signing only.
        rkey = ec.generate_private_key(ec.SECP256R1())
        responder = self._sign(_name("ssaproxy test OCSP responder"), rkey.public_key(), serial=2,
                               eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
        self.responder_pem, self.responder_key = self.dir / "ocsp.pem", self.dir / "ocsp.key"
        self.responder_pem.write_bytes(_pem(responder))
        self.responder_key.write_bytes(_key_pem(rkey))
        self.ocsp_url = f"http://{host}:{ocsp_port}/"
        self.crl_url = f"http://{host}:{crl_port}/ca.crl"
        self.crl_dir = self.dir / "crl"
        self.crl_dir.mkdir(exist_ok=True)
        self.leaves: dict[str, Leaf] = {}
        self._index: list[str] = []
        serial = 0x1000
        for name in self.SERVERS + self.CLIENTS:
            serial += 1
            self.leaves[name] = self._leaf(name, serial, server_names, extra_ips)
        (self.dir / "index.txt").write_text("".join(self._index))
        (self.dir / "index.txt.attr").write_text("unique_subject = no\n")
        self.crl_pem = self.dir / "ca-crl.pem"
        self.write_crl()

    # ---- building
    def _sign(self, subject: x509.Name, public_key: Any, *, serial: int, ca: bool = False,
              self_signed: bool = False, eku: Optional[list[x509.ObjectIdentifier]] = None,
              sans: Sequence[x509.GeneralName] = (), extra: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
        issuer = subject if self_signed else self.ca.subject
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
             .serial_number(serial).not_valid_before(self.now - datetime.timedelta(days=1))
             .not_valid_after(self.now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        if not self_signed:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                                critical=False)
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                              crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(self.ca_key if not self_signed else self.ca_key, hashes.SHA256())

    def _leaf(self, name: str, serial: int, server_names: Sequence[str], extra_ips: Sequence[str]) -> Leaf:
        import ipaddress  # noqa: PLC0415

        key = ec.generate_private_key(ec.SECP256R1())
        client = name.startswith("client_")
        extra: list[x509.ExtensionType] = []
        if not name.startswith("crl_"):
            extra.append(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url))]))
        if name not in ("must_staple", "revoked"):  # "revoked" is OCSP only: no CRL can answer for it
            extra.append(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.crl_url)], relative_name=None, reasons=None,
                crl_issuer=None)]))
        if name == "must_staple":
            extra.append(x509.TLSFeature([x509.TLSFeatureType.status_request]))
        sans: list[x509.GeneralName] = (
            [x509.UniformResourceIdentifier(f"spiffe://test/{name}")] if client
            else [x509.DNSName(n) for n in server_names]
            + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips])
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
        cert = self._sign(_name(f"rev {name}"), key.public_key(), serial=serial, eku=eku, sans=sans, extra=extra)
        leaf = Leaf(name=name, chain=self.dir / f"{name}-chain.pem", cert=self.dir / f"{name}.pem",
                    key=self.dir / f"{name}.key", serial=serial)
        leaf.cert.write_bytes(_pem(cert))
        leaf.chain.write_bytes(_pem(cert) + _pem(self.ca))
        leaf.key.write_bytes(_key_pem(key))
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        subject = f"/CN=rev {name}"
        if name in self.REVOKED:
            revoked_at = (self.now - datetime.timedelta(hours=1)).strftime("%y%m%d%H%M%SZ")
            self._index.append(f"R\t{expiry}\t{revoked_at},keyCompromise\t{serial:04X}\tunknown\t{subject}\n")
        else:
            self._index.append(f"V\t{expiry}\t\t{serial:04X}\tunknown\t{subject}\n")
        return leaf

    def write_crl(self, *, next_update: Optional[datetime.datetime] = None) -> None:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
             .last_update(self.now - datetime.timedelta(minutes=10))
             .next_update(next_update or self.now + datetime.timedelta(days=1)))
        for name in self.REVOKED:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(self.leaves[name].serial)
                .revocation_date(self.now - datetime.timedelta(hours=1))
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
        crl = b.sign(self.ca_key, hashes.SHA256())
        self.crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        (self.crl_dir / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))

    # ---- real peers
    def responder_argv(self) -> list[str]:
        """A real OCSP responder over the CA database (answers valid for a day: nextUpdate set)."""
        return ["openssl", "ocsp", "-index", str(self.dir / "index.txt"), "-port", str(self.ocsp_port),
                "-rsigner", str(self.responder_pem), "-rkey", str(self.responder_key), "-CA", str(self.ca_pem),
                "-ndays", "1", "-ignore_err"]

    def crl_server_argv(self) -> list[str]:
        return [sys.executable, "-m", "http.server", str(self.crl_port), "--bind", self.host,
                "--directory", str(self.crl_dir)]

    def ocsp_response(self, name: str, out: Path) -> Path:
        """Ask the responder (running) for `name`'s status; the DER response in `out`."""
        subprocess.run(["openssl", "ocsp", "-issuer", str(self.ca_pem), "-cert", str(self.leaves[name].cert),
                        "-url", self.ocsp_url, "-respout", str(out), "-noverify", "-timeout", "5"],
                       check=True, capture_output=True, timeout=20)
        return out
