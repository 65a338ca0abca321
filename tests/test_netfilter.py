"""iptables rule generation for transparent outbound mode: pure argv lists, no root needed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ssaproxy import cli
from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.netfilter import CHAIN, INBOUND, Listener, chain_rules, parse_listener, render, restore_script, rules

IPT = ["iptables", "-w", "-t", "nat"]
IP6T = ["ip6tables", "-w", "-t", "nat"]

# --------------------------------------------------------------------------- parse_listener


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:15001:interface=127.0.0.1", Listener(family=4, port=15001, interface="127.0.0.1")),
    (r"tcp6:15001:interface=\:\:1", Listener(family=6, port=15001, interface="::1")),
    (r"tcp6:15002:interface=\:\:", Listener(family=6, port=15002, interface="::")),
    ("tcp6:15003", Listener(family=6, port=15003, interface=None)),
    ("tcp:15004", Listener(family=4, port=15004, interface=None)),
    ("tcp:port=15005:interface=127.0.0.1", Listener(family=4, port=15005, interface="127.0.0.1")),
    ("tcp:interface=127.0.0.1:port=15006", Listener(family=4, port=15006, interface="127.0.0.1")),
    (r"tcp6:port=15007:interface=\:\:1", Listener(family=6, port=15007, interface="::1")),
    # A tcp (not tcp6) endpoint bound to an IPv6 address listens for IPv6.
    (r"tcp:15008:interface=\:\:1", Listener(family=6, port=15008, interface="::1")),
    ("tcp:15009:backlog=10:interface=127.0.0.1", Listener(family=4, port=15009, interface="127.0.0.1")),
    ("tcp:65535", Listener(family=4, port=65535, interface=None)),
    ("tcp:1", Listener(family=4, port=1, interface=None)),
    # Twisted's tcp6 positional order is port:backlog:interface.
    (r"tcp6:15010:50:\:\:1", Listener(family=6, port=15010, interface="::1")),
])
def test_parse_listener(description: str, expected: Listener) -> None:
    assert parse_listener(description) == expected


@pytest.mark.parametrize(("description", "expected"), [
    # Twisted's tcp positional order is port:interface:backlog (twisted.internet.endpoints._parseTCP),
    # unlike tcp6's port:backlog:interface.
    ("tcp:15001:0.0.0.0", Listener(family=4, port=15001, interface="0.0.0.0")),
    ("tcp:15001:127.0.0.1:50", Listener(family=4, port=15001, interface="127.0.0.1")),
    (r"tcp:15001:\:\:1", Listener(family=6, port=15001, interface="::1")),
])
def test_parse_listener_positional_interface_of_tcp(description: str, expected: Listener) -> None:
    assert parse_listener(description) == expected


@pytest.mark.parametrize("description", [
    "unix:/run/ssaproxy.sock", "ssl:443", "tcp", "tcp:", "tcp:0", "tcp:65536", "tcp:http",
    "tcp:-1", "tcp:interface=127.0.0.1", "tcp:port=:interface=127.0.0.1", "TCP:15001", "",
])
def test_parse_listener_refuses(description: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listener(description)
    assert info.value.key == "outbound.listen"
    assert repr(description) in info.value.message


def test_parse_listener_refuses_non_ascii_digits_as_config_error() -> None:
    # "¹".isdigit() is True but int("¹") raises ValueError.
    with pytest.raises(ConfigError) as info:
        parse_listener("tcp:\u00b9\u00b9")
    assert info.value.key == "outbound.listen"


# --------------------------------------------------------------------------- rules

MIXED = r"""
[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15002:interface=\:\:1']

[[outbound.route]]
name = "web"
destination = "0.0.0.0/0"
ports = [80, 8080]
hostname_from = "http-host"

[[outbound.route]]
name = "v6-web"
destination = "::/0"
ports = [80]
hostname_from = "http-host"

[[outbound.route]]
name = "corp"
destination = "10.0.0.0/8"
action = "passthrough"

[[outbound.route]]
name = "v6-block"
destination = "2001:db8::/32"
ports = [25]
action = "reject"
"""


def _redirect(tool: list[str], dest: str, ports: list[str], name: str, to: int) -> list[str]:
    return tool + ["-A", CHAIN, "-p", "tcp", "-d", dest, *ports, "-m", "comment", "--comment",
                   f"ssaproxy route {name}", "-j", "REDIRECT", "--to-ports", str(to)]


def test_rules_for_v4_and_v6_routes() -> None:
    config = Config.from_toml(MIXED)
    assert rules(config, 1000) == [
        IPT + ["-N", "SSAPROXY_OUTPUT"],
        IPT + ["-A", "SSAPROXY_OUTPUT", "-m", "owner", "--uid-owner", "1000", "-j", "RETURN"],
        IPT + ["-A", "SSAPROXY_OUTPUT", "-d", "127.0.0.0/8", "-j", "RETURN"],
        _redirect(IPT, "0.0.0.0/0", ["-m", "multiport", "--dports", "80,8080"], "web", 15001),
        _redirect(IPT, "10.0.0.0/8", [], "corp", 15001),
        IPT + ["-A", "OUTPUT", "-p", "tcp", "-j", "SSAPROXY_OUTPUT"],
        IP6T + ["-N", "SSAPROXY_OUTPUT"],
        IP6T + ["-A", "SSAPROXY_OUTPUT", "-m", "owner", "--uid-owner", "1000", "-j", "RETURN"],
        IP6T + ["-A", "SSAPROXY_OUTPUT", "-d", "::1/128", "-j", "RETURN"],
        _redirect(IP6T, "::/0", ["-m", "multiport", "--dports", "80"], "v6-web", 15002),
        _redirect(IP6T, "2001:db8::/32", ["-m", "multiport", "--dports", "25"], "v6-block", 15002),
        IP6T + ["-A", "OUTPUT", "-p", "tcp", "-j", "SSAPROXY_OUTPUT"],
    ]


def test_rule_order_invariants() -> None:
    config = Config.from_toml(MIXED)
    for family_tool in ("iptables", "ip6tables"):
        family = [argv[4:] for argv in rules(config, 0) if argv[0] == family_tool]
        assert family[0] == ["-N", CHAIN]
        # The daemon's own traffic is excluded before anything else can redirect it.
        assert family[1][:2] == ["-A", CHAIN] and "--uid-owner" in family[1] and family[1][-1] == "RETURN"
        assert family[2][-1] == "RETURN" and "-d" in family[2]
        assert all(argv[-3:-1] == ["REDIRECT", "--to-ports"] for argv in family[3:-1])
        # The jump from OUTPUT comes last, once the chain is complete.
        assert family[-1] == ["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN]
        assert sum(1 for argv in family if "OUTPUT" in argv[:2]) == 1


def test_v4_only_config_emits_no_ip6tables() -> None:
    config = Config.from_toml('[[outbound.route]]\ndestination = "0.0.0.0/0"\nports = [80]\n'
                              'hostname_from = "http-host"\n')
    argvs = rules(config, 42)
    assert {argv[0] for argv in argvs} == {"iptables"}
    assert _redirect(IPT, "0.0.0.0/0", ["-m", "multiport", "--dports", "80"], "route0", 15001) in argvs


def test_embedded_default_covers_both_families() -> None:
    # An IPv4-only default would let IPv6 HTTP leave in plaintext on a dual-stack host.
    argvs = rules(Config.default(), 42)
    assert _redirect(IPT, "0.0.0.0/0", ["-m", "multiport", "--dports", "80"], "http-to-https", 15001) in argvs
    assert _redirect(IP6T, "::/0", ["-m", "multiport", "--dports", "80"], "http-to-https-v6", 15001) in argvs


def test_no_routes_no_rules() -> None:
    config = Config.from_toml('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n')
    assert rules(config, 0) == []
    assert render([]) == ""


def test_more_than_15_ports_are_split_into_several_multiport_rules() -> None:
    ports = list(range(1001, 1032))  # 31 ports: 15 + 15 + 1
    config = Config.from_toml(
        "[[outbound.route]]\nname = \"many\"\ndestination = \"192.0.2.0/24\"\n"
        f"ports = {ports}\naction = \"passthrough\"\n")
    redirects = [argv for argv in rules(config, 7) if "REDIRECT" in argv]
    assert redirects == [
        _redirect(IPT, "192.0.2.0/24", ["-m", "multiport", "--dports", ",".join(map(str, ports[0:15]))],
                  "many", 15001),
        _redirect(IPT, "192.0.2.0/24", ["-m", "multiport", "--dports", ",".join(map(str, ports[15:30]))],
                  "many", 15001),
        _redirect(IPT, "192.0.2.0/24", ["-m", "multiport", "--dports", "1031"], "many", 15001),
    ]
    for argv in redirects:
        assert len(argv[argv.index("--dports") + 1].split(",")) <= 15


def test_exactly_15_ports_is_one_rule() -> None:
    ports = list(range(1, 16))
    config = Config.from_toml(
        f'[[outbound.route]]\ndestination = "192.0.2.0/24"\nports = {ports}\naction = "reject"\n')
    redirects = [argv for argv in rules(config, 7) if "REDIRECT" in argv]
    assert len(redirects) == 1
    assert redirects[0][redirects[0].index("--dports") + 1] == ",".join(map(str, ports))


def test_v6_routes_without_a_tcp6_listener() -> None:
    # Refused when the config loads (so check-config catches it), not first at `iptables print`.
    with pytest.raises(ConfigError) as info:
        Config.from_toml('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
                         '[[outbound.route]]\ndestination = "::/0"\naction = "passthrough"\n')
    assert info.value.key == "outbound.listen" and info.value.line == 2
    assert "IPv6" in info.value.message and "tcp6" in info.value.message


def test_v4_routes_without_a_tcp_listener() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(r"""[outbound]
listen = 'tcp6:15001:interface=\:\:1'
[[outbound.route]]
destination = "0.0.0.0/0"
action = "passthrough"
""")
    assert info.value.key == "outbound.listen" and info.value.line == 2
    assert "IPv4" in info.value.message


def test_first_listener_of_a_family_is_the_target() -> None:
    config = Config.from_toml('[outbound]\nlisten = ["tcp:15011:interface=127.0.0.1", "tcp:15012"]\n'
                              '[[outbound.route]]\ndestination = "0.0.0.0/0"\naction = "passthrough"\n')
    (redirect,) = [argv for argv in rules(config, 0) if "REDIRECT" in argv]
    assert redirect[-1] == "15011"


def test_listener_that_is_not_tcp_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml('[outbound]\nlisten = "unix:/run/ssaproxy.sock"\n')
    assert info.value.key == "outbound.listen" and info.value.line == 2


# --------------------------------------------------------------------------- apply's transaction


def test_restore_script_replaces_the_chain_and_its_rules_in_one_transaction() -> None:
    config = Config.from_toml(MIXED)
    body = chain_rules(config, 7, 4)
    script = restore_script({CHAIN: body}, {}).splitlines()
    assert script[0] == "*nat" and script[-1] == "COMMIT"
    assert script[1] == f":{CHAIN} - [0:0]"  # creates the chain, or empties it, inside the transaction
    assert [shlex.split(line) for line in script[2:-2]] == [["-A", CHAIN, *args] for args in body]
    assert '--comment "ssaproxy route web"' in script[4]  # iptables-restore understands double quotes only
    assert script[-2] == f"-A OUTPUT -p tcp -j {CHAIN}"
    # An existing jump is kept (not added again); duplicates are folded to one.
    assert f"-A OUTPUT -p tcp -j {CHAIN}" not in restore_script({CHAIN: body}, {CHAIN: 1})
    assert restore_script({CHAIN: body}, {CHAIN: 3}).count(f"-D OUTPUT -p tcp -j {CHAIN}") == 2


def test_restore_script_removes_chains_the_config_no_longer_has() -> None:
    script = restore_script({}, {CHAIN: 1, INBOUND: 2}).splitlines()
    assert script == ["*nat", f"-D OUTPUT -p tcp -j {CHAIN}", f"-F {CHAIN}", f"-X {CHAIN}",
                      f"-D PREROUTING -p tcp -j {INBOUND}", f"-D PREROUTING -p tcp -j {INBOUND}",
                      f"-F {INBOUND}", f"-X {INBOUND}", "COMMIT"]


def test_exclusions_come_before_any_redirect() -> None:
    config = Config.from_toml(MIXED + '\n[iptables]\nexclude_cidrs = ["10.9.0.0/16", "2001:db8:9::/48"]\n'
                              'exclude_ports = [22, 5432]\n')
    body = chain_rules(config, 7, 4)
    assert body[2] == ["-d", "10.9.0.0/16", "-j", "RETURN"]
    assert body[3] == ["-p", "tcp", "-m", "multiport", "--dports", "22,5432", "-j", "RETURN"]
    assert all("REDIRECT" in args for args in body[4:])
    assert ["-d", "2001:db8:9::/48", "-j", "RETURN"] in chain_rules(config, 7, 6)


def test_print_and_apply_install_the_same_rules() -> None:
    config = Config.from_toml(MIXED)
    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        printed = [argv[4:] for argv in rules(config, 5) if argv[0] == tool]
        assert printed[1:-1] == [["-A", CHAIN, *args] for args in chain_rules(config, 5, family)]


# --------------------------------------------------------------------------- render and CLI


def test_render_shell_quotes_each_command() -> None:
    text = render([["iptables", "-m", "comment", "--comment", "ssaproxy route a b"], ["true"]])
    assert text == "iptables -m comment --comment 'ssaproxy route a b'\ntrue\n"


def test_cli_iptables_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ssaproxy.toml"
    path.write_text(MIXED)
    assert cli.main(["iptables", "print", "--config", str(path), "--uid", "123"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    expected = rules(Config.from_toml(MIXED), 123)
    assert [shlex.split(line) for line in lines] == expected
    assert lines == [shlex.join(argv) for argv in expected]
    owner_lines = [line for line in lines if "--uid-owner 123" in line]
    assert len(owner_lines) == 2
    assert "iptables -w -t nat -A SSAPROXY_OUTPUT -m owner --uid-owner 123 -j RETURN" in lines
    assert any("--comment 'ssaproxy route web'" in line for line in lines)


def test_cli_iptables_print_uid_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["iptables", "print", "--uid", "root"]) == 0
    out = capsys.readouterr().out
    assert "--uid-owner 0 " in out
    assert out == render(rules(Config.default(), 0))


def test_cli_iptables_print_reports_a_listener_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v6.toml"
    path.write_text('[[outbound.route]]\ndestination = "::/0"\naction = "passthrough"\n')
    assert cli.main(["iptables", "print", "--config", str(path), "--uid", "123"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"ssaproxy: {path}: outbound.listen: ")


def test_cli_iptables_print_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[outbound]\nlisten = 5\n")
    assert cli.main(["iptables", "print", "--config", str(path), "--uid", "1"]) == 2
    assert "outbound.listen (line 2)" in capsys.readouterr().err


def test_cli_requires_the_daemon_uid(capsys: pytest.CaptureFixture[str]) -> None:
    # Guessing (say, root while the daemon runs as its own user) would loop its traffic back.
    with pytest.raises(SystemExit) as info:
        cli.main(["iptables", "print"])
    assert "--uid USER is required" in str(info.value)
