"""The strict reader (`ssaproxy.config.reader`): typed takes, unknown keys, and the line of a
dotted key path."""

from __future__ import annotations

import pytest

from ssaproxy.config.reader import Reader, line_of, toml_type
from ssaproxy.errors import ConfigError

TEXT = """\
[policy]
min_version = "TLSv1.2"

[[outbound.route]]
name = "a"

[[outbound.route]]
name = "b"
ports = [1]

[[inbound]]
certificates = [ { chain = "c.pem", key = "k.pem" } ]
"""


@pytest.mark.parametrize(("key", "line"), [
    ("policy.min_version", 2),
    ("policy", 1),
    ("policy.absent", 1),  # an absent key: its table's header
    ("outbound.route[1].ports", 9),
    ("outbound.route[1]", 7),
    ("outbound.route[1].absent", 7),
    ("inbound[0].certificates[0].key", 12),  # inside an inline table: the enclosing key's line
    ("nowhere.at.all", None),
    ("", None),
    ("!", None),
])
def test_line_of(key: str, line: int | None) -> None:
    assert line_of(TEXT, key) == line


def test_take_checks_types_and_leaves_unknown_keys() -> None:
    r = Reader({"n": 3, "b": True, "f": 2, "s": "x", "extra": 1}, "t")
    assert r.take("f", float) == 2.0 and isinstance(r.take("n", float, what="a number"), float)
    with pytest.raises(ConfigError) as info:
        r.take("b", int)  # TOML true is never a number
    assert (info.value.key, info.value.message) == ("t.b", "expected an integer, got a boolean")
    assert r.take("s", str) == "x" and r.take("missing", str, "default") == "default"
    with pytest.raises(ConfigError) as info:
        r.done()
    assert (info.value.key, info.value.message) == ("t.extra", "unknown key")


def test_helpers_name_the_key() -> None:
    r = Reader({}, "outbound.route[0]")
    with pytest.raises(ConfigError) as info:
        r.one_of("action", "drop", ("upgrade", "reject"))
    assert str(info.value) == "outbound.route[0].action: must be one of 'upgrade', 'reject', got 'drop'"
    with pytest.raises(ConfigError, match="port must be 1-65535, got 0"):
        r.ports("ports", [80, 0])
    with pytest.raises(ConfigError, match="must be an array of integers"):
        r.ports("ports", [True])
    assert r.positive("t", 0.5, 300) == 0.5 and toml_type([]) == "an array" and toml_type(1.5) == "a number"
