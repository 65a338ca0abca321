"""The check step after parsing (`ssaproxy.tls.load`): parsing names files and OpenSSL strings
without touching them; the check step refuses what does not load, naming key and line."""

from __future__ import annotations

import grp
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.tls.load import check_config, load_certificate, read_config
from tests.pki import PKI

MISSING = "/nonexistent/ssaproxy/missing.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-load"))


def checked(text: str) -> ConfigError:
    config = Config.from_toml(text)  # parsing alone accepts it ...
    with pytest.raises(ConfigError) as info:
        check_config(config)  # ... the check step does not
    return info.value


def test_missing_inbound_certificate_parses_and_fails_the_check_with_key_and_line() -> None:
    text = ('[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:8080"\n'
            f'certificates = [ {{ chain = "{MISSING}", key = "{MISSING}" }} ]\n')
    (inbound,) = Config.from_toml(text).inbound
    assert inbound.certificates[0].chain == MISSING  # only the path: nothing was read
    e = checked(text)
    assert (e.key, e.line) == ("inbound[0].certificates[0].chain", 4)
    assert f"cannot load {MISSING!r}" in e.message


def test_missing_client_ca_is_named_by_the_check(pki: PKI) -> None:
    good = pki.server("good")
    text = ('[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:8080"\n'
            f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\n'
            f'client_auth = "require"\nclient_ca = "{MISSING}"\n')
    e = checked(text)
    assert (e.key, e.line) == ("inbound[0].client_ca", 6) and "cannot load" in e.message


def test_missing_route_client_certificate_is_named_by_the_check() -> None:
    text = ('[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "a.test"\n'
            f'client_certificate = "{MISSING}"\nclient_key = "{MISSING}"\n')
    e = checked(text)
    assert (e.key, e.line) == ("outbound.route[0].client_certificate", 4)


@pytest.mark.parametrize(("line", "key"), [
    ('ciphers = "NOT-A-CIPHER"', "policy.ciphers"),
    ('ciphersuites = "TLS_FAKE_SUITE"', "policy.ciphersuites"),
    ('groups = "P-999"', "policy.groups"),
    (f'trust_store = "{MISSING}"', "policy.trust_store"),
])
def test_openssl_strings_are_judged_by_the_check_not_the_parser(line: str, key: str) -> None:
    e = checked(f"[policy]\n\n{line}\n")
    assert (e.key, e.line) == (key, 3)
    assert ("cannot load" if key == "policy.trust_store" else "OpenSSL refused") in e.message


def test_unknown_api_group_is_named_by_the_check() -> None:
    name = "ssaproxy-no-such-group"
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    e = checked(f'[api]\ngroup = "{name}"\n')
    assert (e.key, e.line, e.message) == ("api.group", 2, f"no such group {name!r}")


@pytest.mark.parametrize(("key", "what"), [("match_users", "user"), ("match_groups", "group")])
def test_a_profiles_unknown_user_or_group_is_named_by_the_check_and_a_number_needs_no_entry(key: str,
                                                                                           what: str) -> None:
    e = checked(f'[[profile]]\nname = "p"\n{key} = [54321, "ssaproxy-no-such-{what}"]\nmin_version = "TLSv1.3"\n')
    assert (e.key, e.line, e.message) == (f"profile[0].{key}", 3, f"no such {what} 'ssaproxy-no-such-{what}'")


def test_a_config_built_from_a_mapping_is_checked_without_lines() -> None:
    config = Config.from_mapping({"policy": {"ciphers": "NOT-A-CIPHER"}})
    with pytest.raises(ConfigError) as info:
        check_config(config)
    assert (info.value.key, info.value.line) == ("policy.ciphers", None)


def test_the_source_text_is_not_part_of_the_value() -> None:
    a = Config.from_toml("[policy]\n")
    b = Config.from_toml('# a comment\n[policy]\nmin_version = "TLSv1.2"\n')
    assert a == b and hash(a) == hash(b)
    assert "comment" not in repr(b)


def test_read_config_checks_a_file_and_the_default(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[policy]\ngroups = "P-999"\n')
    assert Config.from_file(str(path)).policy.groups == "P-999"
    with pytest.raises(ConfigError) as info:
        read_config(str(path))
    assert (info.value.key, info.value.line) == ("policy.groups", 2)
    assert read_config(None) == Config.default()


def test_load_certificate_reports_names_and_key_type(pki: PKI) -> None:
    good = pki.server("good")
    loaded = load_certificate(str(good.chain), str(good.key))
    assert (loaded.names, loaded.key_type) == (("backend.test",), "EC")
    with pytest.raises(ConfigError) as info:
        load_certificate(str(good.chain), str(pki.server("good_rsa2048").key), "c", "k")
    assert info.value.key == "k" and "is not the private key" in info.value.message


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=60, cwd=str(Path(__file__).parent.parent))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_parsing_imports_no_openssl() -> None:
    out = _run(f"""
        import sys
        from ssaproxy.config import Config
        Config.default()
        Config.from_toml('''[policy]
        ciphers = "NOT-A-CIPHER"
        trust_store = "{MISSING}"
        [api]
        group = "ssaproxy-no-such-group"
        [[inbound]]
        listen = "tcp:8443"
        backend = "tcp:127.0.0.1:8080"
        certificates = [ {{ chain = "{MISSING}", key = "{MISSING}" }} ]
        client_auth = "require"
        client_ca = "{MISSING}"
        ''')
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] in ("OpenSSL", "cryptography", "twisted") or m.startswith("ssaproxy.tls")))
        """)
    assert out == "[]"
