"""config/ssaproxy.toml shows every key a parser accepts (commented out where it must not be
active), and `ssaproxy check-config` passes it.

The keys are not listed by hand: the test records every name the parsers ask the strict reader
for (`Reader.take`) while parsing a document that has every table, so a key added to a parser
and not to the example fails here.
"""

from __future__ import annotations

import re

import pytest

from ssaproxy import cli
from ssaproxy.config import Config
from ssaproxy.config.reader import Reader
from tests.lab import REPO

EXAMPLE = REPO / "config" / "ssaproxy.toml"

# Every table, so that every parser runs (each asks for all of its keys, present or not).
EVERY_TABLE = """\
[policy]
[outbound]
listen = "tcp:15001:interface=127.0.0.1"
[[outbound.route]]
destination = "10.0.0.0/8"
hostname = "a.test"
[iptables]
[[inbound]]
listen = "tcp:8443"
backend = "tcp:127.0.0.1:8080"
certificates = [ { chain = "/c.pem", key = "/k.pem" } ]
[api]
[daemon]
[admin]
[[profile]]
name = "p"
match_users = [1]
"""


def keys_asked_for(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    asked: set[str] = set()
    take = Reader.take

    def recording(self: Reader, name: str, *args: object, **kwargs: object) -> object:
        asked.add(re.sub(r"\[\d+\]", "", self.key(name)))  # inbound[0].listen -> inbound.listen
        return take(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Reader, "take", recording)
    Config.from_toml(EVERY_TABLE)
    return asked


def sections(text: str) -> dict[str, str]:
    """Each table's text (commented-out headers and keys count), by table name."""
    out: dict[str, str] = {"": ""}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", line)
        if header:
            current = header.group(1)
            out.setdefault(current, "")
            continue
        out[current] += line + "\n"
    return out


def shown(key: str, tables: dict[str, str]) -> bool:
    """`key` has its table's header, or is written (maybe commented out) in its table, as
    `name =` (keys of inline tables: every part of the path inside the table's text)."""
    if key in tables:
        return True
    parts = key.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        table = ".".join(parts[:cut])
        if table in tables:
            return all(re.search(rf"(^|[\s{{,#]){re.escape(p)}\s*=", tables[table], re.M) for p in parts[cut:])
    return False


def test_the_recorder_sees_the_parsers_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = keys_asked_for(monkeypatch)
    for key in ("policy.min_rsa_bits", "outbound.route.client_key", "inbound.certificates.chain",
                "api.max_buffer_per_uid", "daemon.watch_interval", "admin.listen", "iptables.exclude_ports"):
        assert key in asked, key


def test_the_example_shows_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = sections(EXAMPLE.read_text())
    missing = sorted(key for key in keys_asked_for(monkeypatch) if not shown(key, tables))
    assert not missing, f"config/ssaproxy.toml does not show: {', '.join(missing)}"


def test_check_config_passes_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(EXAMPLE)]) == 0, capsys.readouterr().err

