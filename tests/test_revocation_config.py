"""The revocation keys ([policy] revocation, crl_files, revocation_timeout; per route and per
listener) and the socket API's options 102-106, without a daemon."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ssaproxy.api.settings import ApiError, Settings, apply, get
from ssaproxy.config import Config, Policy
from ssaproxy.errors import ConfigError
from ssaproxy.proto import options as o
from ssaproxy.tls.load import check_config


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(Config.from_toml(text))
    return info.value


def test_defaults() -> None:
    p = Config.from_toml("").policy
    assert (p.revocation, p.crl_files, p.revocation_timeout) == ("soft", (), 5.0)


def test_policy_keys_parse(tmp_path: Path) -> None:
    p = Config.from_toml('[policy]\nrevocation = "hard"\ncrl_files = ["/a.pem", "/b.der"]\n'
                         "revocation_timeout = 2\n").policy
    assert (p.revocation, p.crl_files, p.revocation_timeout) == ("hard", ("/a.pem", "/b.der"), 2.0)


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ('[policy]\nrevocation = "maybe"\n', "policy.revocation", 2, "off"),
    ('[policy]\ncrl_files = ["relative.pem"]\n', "policy.crl_files", 2, "absolute"),
    ('[policy]\nrevocation_timeout = 0\n', "policy.revocation_timeout", 2, ""),
    ('[policy]\n\ncrl_files = ["/nonexistent/ca.crl"]\n', "policy.crl_files[0]", 3, "cannot load"),
    ('[[outbound.route]]\ndestination = "10.0.0.0/8"\naction = "passthrough"\nrevocation = "hard"\n',
     "outbound.route[0].revocation", 4, "only applies"),
    ('[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "a.test"\nrevocation = "strict"\n',
     "outbound.route[0].revocation", 4, "off"),
])
def test_bad_values_name_key_and_line(text: str, key: str, line: int, words: str) -> None:
    e = _error(text)
    assert e.key == key and e.line == line, (e.key, e.line, str(e))
    assert words in str(e)


def test_a_crl_file_must_be_a_crl(tmp_path: Path) -> None:
    bad = tmp_path / "bad.crl"
    bad.write_text("not a CRL")
    e = _error(f'[policy]\ncrl_files = ["{bad}"]\n')
    assert e.key == "policy.crl_files[0]" and "not a CRL" in str(e)


def test_route_override_parses() -> None:
    c = Config.from_toml('[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "a.test"\nrevocation = "off"\n')
    assert c.outbound.routes[0].revocation == "off"


INBOUND = """[[inbound]]
name = "x"
listen = "tcp:8443"
backend = "tcp:127.0.0.1:8080"
certificates = [ {{ chain = "/c.pem", key = "/k.pem" }} ]
{extra}
"""


def test_inbound_revocation_needs_client_certificates() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(INBOUND.format(extra='revocation = "hard"'))
    assert info.value.key == "inbound[0].revocation" and "client_auth" in str(info.value)


def test_inbound_stapling_keys() -> None:
    i = Config.from_toml(INBOUND.format(extra='client_auth = "require"\nclient_ca = "/ca.pem"\nrevocation = "hard"\n'
                                              'ocsp_response_file = "/r.der"')).inbound[0]
    assert (i.revocation, i.ocsp_stapling, i.ocsp_response_file) == ("hard", True, "/r.der")
    with pytest.raises(ConfigError) as info:
        Config.from_toml(INBOUND.format(extra='ocsp_stapling = false\nocsp_response_file = "/r.der"'))
    assert info.value.key == "inbound[0].ocsp_response_file"


# ---- the socket API: a program may demand more checking, never less
@pytest.mark.parametrize("number", o.REVOCATION_OPTIONS)
def test_turning_a_check_off_is_eperm_where_the_admin_checks(number: int) -> None:
    for mode in ("soft", "hard"):
        with pytest.raises(ApiError) as info:
            apply(Settings(), Policy(revocation=mode), number, o.pack_int(0))
        assert info.value.code == errno.EPERM
        assert get(Settings(), Policy(revocation=mode), number) == o.pack_int(1)


@pytest.mark.parametrize("number", o.REVOCATION_OPTIONS)
def test_turning_a_check_on_where_the_admin_does_not(number: int) -> None:
    off = Policy(revocation="off")
    assert get(Settings(), off, number) == o.pack_int(0)
    assert apply(Settings(), off, number, o.pack_int(0)) == Settings()  # off stays off: nothing loosened
    on = apply(Settings(), off, number, o.pack_int(1))
    assert on.revocation_mode(off) == "soft" and get(on, off, number) == o.pack_int(1)


def test_hard_is_a_program_s_to_ask_for_and_keep() -> None:
    soft = Policy(revocation="soft")
    hard = apply(Settings(), soft, o.TLS_REVOCATION_CHECKS, o.pack_int(2))
    assert hard.revocation_mode(soft) == "hard"
    assert apply(hard, soft, o.TLS_OCSP_CHECKS, o.pack_int(1)).revocation_mode(soft) == "hard"  # not back to soft
    with pytest.raises(ApiError) as info:
        apply(Settings(), soft, o.TLS_CRL_CHECKS, o.pack_int(2))
    assert info.value.code == errno.EINVAL
