"""Scenario: `ssaproxy iptables apply/remove` on real iptables, in a namespace of its own.

apply is idempotent and leaves exactly one jump; a later config without IPv6 routes removes
the IPv6 chain an earlier one installed; remove leaves no trace in either family.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.lab import REPO, Lab
from tests.pki import PKI

BOTH = r"""
[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\:\:1']
[[outbound.route]]
destination = "10.0.0.0/8"
hostname = "a.test"
[[outbound.route]]
destination = "2001:db8::/32"
hostname = "b.test"
"""
V4_ONLY = """
[[outbound.route]]
destination = "192.0.2.0/24"
ports = [80, 8080]
hostname_from = "http-host"
"""


def _cli(lab: Lab, *args: str) -> str:
    return lab.ns(lab.c, [sys.executable, "-m", "ssaproxy.cli", "iptables", *args], cwd=REPO).stdout


def _save(lab: Lab, tool: str) -> str:
    return lab.ns(lab.c, [tool, "-t", "nat", "-S"]).stdout


def test_apply_replace_and_remove(lab: Lab, tmp_path: Path) -> None:
    both, v4 = tmp_path / "both.toml", tmp_path / "v4.toml"
    both.write_text(BOTH)
    v4.write_text(V4_ONLY)

    _cli(lab, "apply", "--config", str(both), "--uid", "0")
    first = (_save(lab, "iptables"), _save(lab, "ip6tables"))
    assert "-A SSAPROXY_OUTPUT -d 10.0.0.0/8" in first[0] and "-A SSAPROXY_OUTPUT -d 2001:db8::/32" in first[1]
    _cli(lab, "apply", "--config", str(both), "--uid", "0")
    assert (_save(lab, "iptables"), _save(lab, "ip6tables")) == first  # idempotent

    # A jump an admin added by hand a second time is folded back to one.
    lab.ns(lab.c, ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "SSAPROXY_OUTPUT"])
    _cli(lab, "apply", "--config", str(v4), "--uid", "0")
    v4_rules = _save(lab, "iptables")
    assert v4_rules.count("-A OUTPUT -p tcp -j SSAPROXY_OUTPUT") == 1
    assert "10.0.0.0/8" not in v4_rules and "192.0.2.0/24" in v4_rules and "80,8080" in v4_rules
    assert "SSAPROXY" not in _save(lab, "ip6tables")  # the earlier config's IPv6 chain is gone

    _cli(lab, "remove")
    assert "SSAPROXY" not in _save(lab, "iptables") and "SSAPROXY" not in _save(lab, "ip6tables")
    _cli(lab, "remove")  # nothing left: still fine


def test_inbound_chain_lives_and_goes_with_the_config(lab: Lab, tmp_path: Path, pki: PKI) -> None:
    good = pki.server("good")
    with_inbound = tmp_path / "in.toml"
    with_inbound.write_text(V4_ONLY + f"""
[iptables]
exclude_cidrs = ["192.0.2.128/25"]

[[inbound]]
listen = "tcp6:15006"
backend = "original"
ports = [8080, 9090]
certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]
""")
    v4 = tmp_path / "v4.toml"
    v4.write_text(V4_ONLY)
    for _ in range(2):  # idempotent
        _cli(lab, "apply", "--config", str(with_inbound), "--uid", "0")
    for tool in ("iptables", "ip6tables"):  # a tcp6 listener on [::] takes both families
        saved = _save(lab, tool)
        assert saved.count("-A PREROUTING -p tcp -j SSAPROXY_INBOUND") == 1, saved
        assert "--dports 8080,9090" in saved and "--to-ports 15006" in saved
    assert "-A SSAPROXY_INBOUND -s 192.0.2.128/25 -j RETURN" in _save(lab, "iptables")
    _cli(lab, "apply", "--config", str(v4), "--uid", "0")
    assert "SSAPROXY_INBOUND" not in _save(lab, "iptables") + _save(lab, "ip6tables")
    assert "SSAPROXY_OUTPUT" in _save(lab, "iptables")
    _cli(lab, "apply", "--config", str(with_inbound), "--uid", "0")
    _cli(lab, "remove")
    assert "SSAPROXY" not in _save(lab, "iptables") + _save(lab, "ip6tables")
