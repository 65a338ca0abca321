"""The step after parsing: check what a `Config` names on this system, and load certificates.

Theory of operation: `ssaproxy.config` turns text into frozen values without I/O.  Everything
that needs OpenSSL or the file system to judge is here: OpenSSL parses the cipher, suite and
group strings and the trust stores (scratch `SSL.Context`s, thrown away), certificate chains and
keys are read and matched, and the API's group is looked up.  Errors are `ConfigError`s naming
the same key and line the parser would name, so `ssaproxy check-config` and the daemon refuse
the same files with the same words.  Every entry point that loads a configuration to *use* it
goes through `read_config` (or `check_config` on a value it parsed itself).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from typing import Callable, Optional

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ssaproxy.config import Config, Inbound, Policy, Profile
from ssaproxy.errors import ConfigError
from ssaproxy.tls.context import CIPHER_FLOOR, set_groups
from ssaproxy.tls.fetch import split_crls
from ssaproxy.tls.paths import load_anchors
from ssaproxy.tls.reasons import os_reason, ssl_text
from ssaproxy.tls.stapling import stapler_for


@attrs.frozen(kw_only=True)
class LoadedCertificate:
    """A certificate chain and key that load and match, with what SNI selection needs."""

    chain: str  # PEM file: leaf first, then intermediates
    key: str
    names: tuple[str, ...]  # the leaf's DNS SANs, lower case, no trailing dot
    key_type: str  # "RSA" | "EC" | "Ed25519" | ...


def read_config(path: Optional[str]) -> Config:
    """The configuration in `path` (None: the embedded default), parsed and checked."""
    config = Config.from_file(path) if path else Config.default()
    check_config(config)
    return config


def check_config(config: Config) -> None:
    """Raise the `ConfigError` (key and line) of the first thing `config` names that does not
    load, in the order the parser reads the document."""
    try:
        _check_policy(config.policy)
        for i, inbound in enumerate(config.inbound):
            _check_inbound(inbound, f"inbound[{i}]")
        for i, route in enumerate(config.outbound.routes):
            if route.client_certificate is not None and route.client_key is not None:
                path = f"outbound.route[{i}]"
                load_certificate(route.client_certificate, route.client_key,
                                 f"{path}.client_certificate", f"{path}.client_key")
        for i, profile in enumerate(config.profiles):
            _check_profile(profile, config.policy, f"profile[{i}]")
        if config.api is not None and config.api.group is not None:
            try:
                grp.getgrnam(config.api.group)
            except KeyError:
                raise ConfigError("api.group", f"no such group {config.api.group!r}") from None
    except ConfigError as e:
        raise config.locate(e) from None


def load_certificates(inbound: Inbound, path: Optional[str] = None) -> tuple[LoadedCertificate, ...]:
    """The listener's certificates, read; errors name `path` (default: the listener's name)."""
    where = path or f"inbound.{inbound.name}"
    return tuple(load_certificate(c.chain, c.key, f"{where}.certificates[{n}].chain",
                                  f"{where}.certificates[{n}].key")
                 for n, c in enumerate(inbound.certificates))


def load_certificate(chain: str, key: str, chain_key: str = "chain", key_key: str = "key") -> LoadedCertificate:
    """Read a PEM chain and its private key and check that they belong together; errors name
    `chain_key` or `key_key`."""
    _readable(chain_key, chain)
    _readable(key_key, key)
    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate_chain_file(chain)
    except Exception as e:  # OpenSSL decides what a usable chain file is
        raise ConfigError(chain_key, f"cannot load {chain!r}: {ssl_text(e, chain)}") from None
    try:
        ctx.use_privatekey_file(key)
    except Exception as e:
        raise ConfigError(key_key, f"cannot load {key!r}: {ssl_text(e, key)}") from None
    mismatch = _mismatch(chain, key)
    if mismatch is not None:
        raise ConfigError(key_key, f"{key!r} is not the private key of the certificate in {chain!r}: {mismatch}")
    try:
        with open(chain, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:  # OpenSSL read it a moment ago; it changed under us
        raise ConfigError(chain_key, f"cannot load {chain!r}: {ssl_text(e, chain)}") from None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return LoadedCertificate(chain=chain, key=key, names=names, key_type=_kind(leaf.public_key()))


def _mismatch(chain: str, key: str) -> Optional[str]:
    """Why `key` is not the private key of `chain`'s leaf (None: it is).  OpenSSL keeps keys of
    different types in different slots and says only "no certificate assigned", so the public
    halves are compared here, in OpenSSL's words for a mismatch."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_chain_file(chain)
    ctx.use_privatekey_file(key)
    try:
        ctx.check_privatekey()
    except SSL.Error:
        pass
    else:
        return None
    try:
        with open(chain, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
        with open(key, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return "key values mismatch"
    have, want = _kind(private.public_key()), _kind(leaf.public_key())
    return "key values mismatch" if have == want else f"key values mismatch (an {have} key, an {want} certificate)"


def _kind(public_key: object) -> str:
    name = type(public_key).__name__.replace("PublicKey", "").replace("_", "")
    return "EC" if "EllipticCurve" in name else name


def _check_policy(policy: Policy) -> None:
    _openssl_judges("policy.ciphers", policy.ciphers, _check_ciphers)
    _openssl_judges("policy.ciphersuites", policy.ciphersuites, _check_ciphersuites)
    _openssl_judges("policy.groups", policy.groups, lambda groups: set_groups(SSL.Context(SSL.TLS_METHOD), groups))
    if policy.trust_store is not None:
        _check_trust_store("policy.trust_store", policy.trust_store)
    _check_crl_files("policy", policy.crl_files)


def _check_crl_files(path: str, files: tuple[str, ...]) -> None:
    for n, crl in enumerate(files):
        _readable(f"{path}.crl_files[{n}]", crl)
        try:
            with open(crl, "rb") as f:
                split_crls(f.read())
        except ValueError as e:
            raise ConfigError(f"{path}.crl_files[{n}]", f"{crl!r} is not a CRL (PEM or DER): {e}") from None


def _check_profile(profile: Profile, admin: Policy, path: str) -> None:
    """What only OpenSSL and the system can judge of a profile: its suites are among the
    admin's (a profile tightens), its trust store loads, its users, groups and identity exist."""
    policy = profile.policy
    for field, judge, tls13 in (("ciphers", _check_ciphers, False), ("ciphersuites", _check_ciphersuites, True)):
        mine, theirs = getattr(policy, field), getattr(admin, field)
        if mine != theirs:
            _openssl_judges(f"{path}.{field}", mine, judge)
            extra = sorted(set(suites(mine, tls13=tls13)) - set(suites(theirs, tls13=tls13)))
            if extra:
                raise ConfigError(f"{path}.{field}", f"a profile may tighten, not loosen: {', '.join(extra)} not "
                                                     f"allowed by the admin's [policy] {field}")
    if policy.groups != admin.groups:
        _openssl_judges(f"{path}.groups", policy.groups, lambda groups: set_groups(SSL.Context(SSL.TLS_METHOD), groups))
    if policy.trust_store is not None and policy.trust_store != admin.trust_store:
        _check_trust_store(f"{path}.trust_store", policy.trust_store)
    _check_crl_files(path, tuple(f for f in policy.crl_files if f not in admin.crl_files))
    lookups: tuple[tuple[str, tuple[str, ...], Callable[[str], object]], ...] = (
        ("user", profile.users, pwd.getpwnam), ("group", profile.groups, grp.getgrnam))
    for what, names, lookup in lookups:
        for name in (n for n in names if not n.isdigit()):  # a number needs no entry
            try:
                lookup(name)
            except KeyError:
                raise ConfigError(f"{path}.match_{what}s", f"no such {what} {name!r}") from None
    if profile.client_certificate is not None and profile.client_key is not None:
        load_certificate(profile.client_certificate, profile.client_key, f"{path}.client_certificate",
                         f"{path}.client_key")


def suites(value: str, *, tls13: bool, floor: bool = True) -> list[str]:
    """The suite names an OpenSSL string gives: TLS 1.3 `ciphersuites`, or a TLS 1.2 `ciphers`
    list (with ssaproxy's floor appended unless `floor` is False)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    if tls13:
        ctx.set_cipher_list(b"ECDHE+AESGCM")
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_tls13_ciphersuites(value.encode("ascii"))
    else:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list((value + (CIPHER_FLOOR if floor else ":@SECLEVEL=0")).encode("ascii"))
    return SSL.Connection(ctx).get_cipher_list()


def floor_removes(config: Config) -> list[tuple[str, list[str]]]:
    """For `ssaproxy check-config`: each `ciphers` key whose string names TLS 1.2 suites that
    ssaproxy's floor (tls.context.CIPHER_FLOOR: no RSA key exchange, no SHA-1 MAC, security
    level 2, ...) will silently drop, with those suites."""
    out: list[tuple[str, list[str]]] = []
    keyed = [("policy.ciphers", config.policy.ciphers)]
    keyed += [(f"profile[{i}].ciphers", p.policy.ciphers) for i, p in enumerate(config.profiles)
              if p.policy.ciphers != config.policy.ciphers]
    for key, value in keyed:
        kept = set(suites(value, tls13=False))
        dropped = [name for name in suites(value, tls13=False, floor=False) if name not in kept]
        if dropped:
            out.append((key, dropped))
    return out


def _check_ciphers(value: str) -> None:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_cipher_list((value + CIPHER_FLOOR).encode("ascii"))
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    if not SSL.Connection(ctx).get_cipher_list():
        raise ValueError("no TLS 1.2 cipher left after ssaproxy's floor of exclusions")


def _check_ciphersuites(value: str) -> None:
    if not value:
        raise ValueError("empty")
    SSL.Context(SSL.TLS_METHOD).set_tls13_ciphersuites(value.encode("ascii"))


def _check_trust_store(key: str, path: str) -> None:
    if os.path.isdir(path):  # a hashed directory (openssl rehash): both verifiers read the same files
        try:
            anchors = load_anchors(path)
        except OSError as e:
            raise ConfigError(key, f"cannot load {path!r}: {e.strerror or e}") from None
        if not anchors:
            raise ConfigError(key, f"no hashed certificates in {path!r} (run `openssl rehash {path}`)")
        return
    _readable(key, path)
    try:
        SSL.Context(SSL.TLS_METHOD).load_verify_locations(path)
    except Exception as e:  # OpenSSL decides what a usable CA file is
        raise ConfigError(key, f"cannot load {path!r}: {ssl_text(e, path)}") from None


def _check_inbound(inbound: Inbound, path: str) -> None:
    load_certificates(inbound, path)
    if inbound.client_ca is not None:
        _check_trust_store(f"{path}.client_ca", inbound.client_ca)
    if inbound.ocsp_response_file is not None:
        stapler_for(inbound.name, [c.chain for c in inbound.certificates], inbound.ocsp_response_file,
                    f"{path}.ocsp_response_file")


def _openssl_judges(key: str, value: str, check: Callable[[str], None]) -> None:
    try:
        check(value)
    except Exception as e:  # OpenSSL's own parser is the judge of these strings.
        raise ConfigError(key, f"OpenSSL refused {value!r}: {ssl_text(e)}") from None


def _readable(key: str, path: str) -> None:
    """Refuse a file this process cannot read, in the OS's words ("Permission denied", "No such
    file or directory", "Is a directory"): OpenSSL would say "no such file" or "no start line"."""
    why = os_reason(path)
    if why is not None:
        raise ConfigError(key, f"cannot load {path!r}: {why}")


def check_config_as(config: Config, user: str) -> None:
    """`check_config` as `user` would run it: in a forked child that takes the user's uid, gid
    and supplementary groups, so that the kernel's own permission checks (ACLs, capabilities,
    every directory on the way) decide, not a guess from mode bits.  Needs root (or `user` being
    the caller); the child's first `ConfigError` comes back through a pipe."""
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ConfigError("", f"no such user {user!r}") from None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user for good, check, report, exit without cleanup
        os.close(read_end)
        status = 0
        try:
            os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            check_config(config)
            report: dict[str, object] = {}
        except ConfigError as e:
            report = {"key": e.key, "message": e.message, "line": e.line}
        except OSError as e:
            report = {"key": "", "message": f"cannot become {entry.pw_name!r}: {e.strerror}", "line": None}
        except BaseException as e:  # noqa: BLE001 - whatever happens, the parent hears of it
            report = {"key": "", "message": f"check as {entry.pw_name!r} failed: {e!r}", "line": None}
            status = 1
        try:
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    report = json.loads(raw) if raw else {"key": "", "message": f"check as {entry.pw_name!r} died", "line": None}
    if report:
        line = report.get("line")
        raise ConfigError(str(report["key"]), str(report["message"]), line if isinstance(line, int) else None)
