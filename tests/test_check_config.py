"""`ssaproxy check-config` finds what the daemon would refuse: listeners that collide, files the
daemon's user cannot read (`--as-user`), and OpenSSL's refusals in words; and it warns about a
configuration that would do nothing (exit 1)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from OpenSSL import SSL

from ssaproxy import cli
from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.tls.load import load_certificate
from ssaproxy.tls.reasons import ssl_text
from tests.pki import PKI

ROUTE = '[[outbound.route]]\ndestination = "0.0.0.0/0"\nhostname = "a.test"\n'


def inbound(listen: str, chain: str = "/c.pem", key: str = "/k.pem") -> str:
    return (f'[[inbound]]\nlisten = "{listen}"\nbackend = "tcp:127.0.0.1:8080"\n'
            f'certificates = [ {{ chain = "{chain}", key = "{key}" }} ]\n')


@pytest.mark.parametrize(("text", "key", "line"), [
    ('[outbound]\nlisten = ["tcp:15001:interface=127.0.0.1", "tcp:15001:interface=127.0.0.1"]\n' + ROUTE,
     "outbound.listen", 2),
    ('[outbound]\nlisten = "tcp:8443:interface=127.0.0.1"\n' + ROUTE + inbound("tcp:8443"),
     "inbound[0].listen", 7),  # 0.0.0.0 takes 127.0.0.1 too
    ('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n' + ROUTE + '[admin]\nlisten = "tcp6:15001"\n',
     "admin.listen", 7),  # [::] takes IPv4 too
    (inbound("tcp6:8443:interface=\\\\:\\\\:1") + inbound("tcp6:8443"), "inbound[1].listen", 6),
    (inbound("tcp:8443") + inbound("tcp:8443:interface=10.1.2.3"), "inbound[1].listen", 6),
])
def test_listeners_on_the_same_port_and_overlapping_addresses_are_refused(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(text)
    assert (info.value.key, info.value.line) == (key, line), info.value
    assert "both listen on port" in info.value.message


@pytest.mark.parametrize("text", [
    '[outbound]\nlisten = ["tcp:15001:interface=127.0.0.1", "tcp6:15001:interface=\\\\:\\\\:1"]\n' + ROUTE,
    inbound("tcp:8443:interface=127.0.0.1") + inbound("tcp:8443:interface=127.0.0.2"),
    inbound("tcp:8443") + inbound("tcp6:8443:interface=\\\\:\\\\:1"),  # IPv4 wildcard, IPv6 address
    '[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n' + ROUTE + '[admin]\nlisten = "tcp:9901"\n',
])
def test_listeners_that_can_bind_together_are_accepted(text: str) -> None:
    Config.from_toml(text)


@pytest.mark.parametrize(("text", "words"), [
    ("", "every redirected connection would be reset"),
    ("# nothing but a comment\n[policy]\n", "every redirected connection would be reset"),
    ('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n', "no [[outbound.route]]"),
])
def test_a_config_that_does_nothing_is_a_warning_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            text: str, words: str) -> None:
    path = tmp_path / "idle.toml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"ssaproxy: {path}: warning: ") and words in captured.err
    assert captured.err.count("\n") == 1


def test_an_api_only_config_does_something(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api.toml"
    path.write_text('[api]\nsocket = "/run/ssaproxy/api.sock"\n')
    assert cli.main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (0 routes, 0 inbound, api on)\n"


# --------------------------------------------------------------------------- files, in words


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ssaproxy-check-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _copy(pki: PKI, shared: Path, key_mode: int) -> tuple[Path, Path]:
    good = pki.server("good")
    chain, key = shared / "chain.pem", shared / "key.pem"
    shutil.copy(good.chain, chain)
    shutil.copy(good.key, key)
    chain.chmod(0o644)
    key.chmod(key_mode)
    return chain, key


@pytest.mark.skipif(os.geteuid() != 0, reason="becomes another user")
def test_as_user_checks_readability_as_that_user(pki: PKI, shared: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    chain, key = _copy(pki, shared, 0o600)  # root's alone
    config = shared / "c.toml"
    config.write_text(inbound("tcp:8443", str(chain), str(key)))
    assert cli.main(["check-config", str(config)]) == 0  # root reads it
    capsys.readouterr()
    assert cli.main(["check-config", "--as-user", "nobody", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (f"ssaproxy: {config}: inbound[0].certificates[0].key (line 4): cannot load '{key}': "
                   "Permission denied\n")
    key.chmod(0o644)
    assert cli.main(["check-config", "--as-user", "nobody", str(config)]) == 0
    assert capsys.readouterr().out.endswith(", readable by nobody)\n")
    shared.chmod(0o700)  # a directory on the way counts too: the kernel decides, not the file's mode bits
    assert cli.main(["check-config", "--as-user", "65534", str(config)]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_as_an_unknown_user_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\n')
    assert cli.main(["check-config", "--as-user", "no-such-user-here", str(path)]) == 2
    assert "no such user 'no-such-user-here'" in capsys.readouterr().err


@pytest.mark.parametrize(("which", "content", "words"), [
    ("chain", None, "No such file or directory"),
    ("key", None, "No such file or directory"),
    ("chain", "dir", "Is a directory"),
    ("chain", "junk", "no PEM data found (no start line)"),
    ("key", "junk", "not a private key OpenSSL can decode"),
])
def test_file_errors_are_words(pki: PKI, tmp_path: Path, which: str, content: str | None, words: str) -> None:
    good = pki.server("good")
    paths = {"chain": str(good.chain), "key": str(good.key)}
    bad = tmp_path / "bad.pem"
    if content == "dir":
        bad.mkdir()
    elif content == "junk":
        bad.write_text("not PEM at all\n")
    paths[which] = str(bad)
    with pytest.raises(ConfigError) as info:
        load_certificate(paths["chain"], paths["key"], "c", "k")
    assert info.value.key == ("c" if which == "chain" else "k")
    assert info.value.message == f"cannot load {str(bad)!r}: {words}" or words in info.value.message
    assert "routines" not in info.value.message and "('" not in info.value.message


def test_a_key_of_another_certificate_is_key_values_mismatch(pki: PKI) -> None:
    good, other = pki.server("good"), pki.server("good_rsa2048")
    with pytest.raises(ConfigError) as info:
        load_certificate(str(good.chain), str(other.key), "c", "k")
    assert info.value.message.endswith("key values mismatch (an RSA key, an EC certificate)")


def test_ssl_text_reads_the_queue_as_words(tmp_path: Path) -> None:
    unreadable = tmp_path / "missing.pem"
    raw = SSL.Error([("system library", "", ""), ("BIO routines", "", "no such file"),
                     ("x509 certificate routines", "", "BIO lib")])
    assert ssl_text(raw, str(unreadable)) == "No such file or directory"
    assert ssl_text(raw) == "system error while reading a file"
    assert ssl_text(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca"), ("SSL routines", "", "SSL lib")])) \
        == "tlsv1 alert unknown ca"
    assert ssl_text(SSL.SysCallError(104, "ECONNRESET")) == "Connection reset by peer"
    assert ssl_text(SSL.SysCallError(-1, "Unexpected EOF")) == "Unexpected EOF"
    assert ssl_text(PermissionError(13, "Permission denied")) == "Permission denied"
