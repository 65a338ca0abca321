"""`[[profile]]`: parsing, tighten-only rules, selection, iptables rules, check-config."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from ssaproxy import netfilter
from ssaproxy.api.profiles import Chooser
from ssaproxy.cli import main
from ssaproxy.config import PROFILE_RULES, Config, Policy, TLSVersion
from ssaproxy.config.profiles import ordered
from ssaproxy.errors import ConfigError
from ssaproxy.kernel import Creds
from ssaproxy.tls.load import check_config, floor_removes

BASE = """\
[policy]
min_version = "TLSv1.2"

[outbound]
listen = ["tcp:15001:interface=127.0.0.1"]

[[outbound.route]]
name = "web"
destination = "10.0.0.0/8"
ports = [80]
tls_port = 443
hostname_from = "http-host"
"""


def _config(profiles: str, base: str = BASE) -> Config:
    return Config.from_toml(base + profiles)


def _error(profiles: str, base: str = BASE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(_config(profiles, base))
    return info.value


def test_a_profile_is_the_admins_policy_with_its_own_keys() -> None:
    c = _config('[[profile]]\nname = "strict"\nmatch_users = ["nobody", 1000]\nmin_version = "TLSv1.3"\n')
    (p,) = c.profiles
    assert p.name == "strict" and p.users == ("nobody", "1000")
    assert p.policy == Policy(min_version=TLSVersion.TLSv1_3)  # every other key is the admin's
    assert c.policy.min_version == TLSVersion.TLSv1_2


@pytest.mark.parametrize(("body", "key", "words"), [
    ('min_version = "TLSv1.3"\n', "profile[0].name", "needs match_users"),
    ('match_users = [1]\nmax_version = "TLSv1.2"\n', None, None),  # lowering the ceiling tightens
    ('match_users = [1]\nmin_rsa_bits = 1024\n', "profile[0].min_rsa_bits", "at least 2048"),
    ('match_users = [1]\nmin_rsa_bits = 3072\n', None, None),
    ('match_users = [1]\ngroups = "X25519:P-521"\n', "profile[0].groups", "P-521 not among"),
    ('match_users = [1]\nfoo = 1\n', "profile[0].foo", "unknown key"),
    ('match_users = ["bad name!"]\n', "profile[0].match_users", "names or numbers"),
    ('match_executables = ["curl"]\n', "profile[0].match_executables", "absolute paths"),
    ('match_users = [1]\nclient_certificate = "/x"\n', "profile[0].client_key", "go together"),
    ('match_executables = ["/usr/bin/curl"]\nlisten = "tcp:15002:interface=127.0.0.1"\n', "profile[0].listen",
     "cannot see executables"),
    ('match_users = [1]\nlisten = "tcp:15001:interface=127.0.0.1"\n', "profile[0].listen", "own"),
    ('match_users = [1]\nlisten = "tcp:15002:interface=10.1.2.3"\n', "profile[0].listen", "loopback"),
])
def test_profile_errors_name_the_key_and_line(body: str, key: str | None, words: str | None) -> None:
    text = BASE + '\n[[profile]]\nname = "p"\n' + body
    if key is None:
        Config.from_toml(text)
        return
    with pytest.raises(ConfigError) as info:
        Config.from_toml(text)
    e = info.value
    assert e.key == key and words is not None and words in e.message, e
    assert e.line is not None and e.line > BASE.count("\n"), e  # the profile's own line


def test_a_profile_cannot_go_below_the_admins_minimum_version() -> None:
    base = BASE.replace('min_version = "TLSv1.2"', 'min_version = "TLSv1.3"')
    with pytest.raises(ConfigError) as info:
        _config('[[profile]]\nname = "p"\nmatch_users = [1]\nmin_version = "TLSv1.2"\n', base)
    assert info.value.key == "profile[0].min_version" and "tighten, not loosen" in info.value.message


def test_suites_outside_the_admins_are_refused_by_openssl_with_the_key() -> None:
    base = BASE.replace('[policy]\n', '[policy]\nciphers = "ECDHE+AESGCM"\n')
    e = _error('[[profile]]\nname = "p"\nmatch_users = [1]\nciphers = "ECDHE-ECDSA-CHACHA20-POLY1305"\n', base)
    assert e.key == "profile[0].ciphers" and "CHACHA20" in e.message and e.line is not None
    check_config(_config('[[profile]]\nname = "p"\nmatch_users = [1]\nciphers = "ECDHE-RSA-AES256-GCM-SHA384"\n',
                         base))
    e = _error('[[profile]]\nname = "p"\nmatch_users = [1]\nciphersuites = "TLS_AES_128_CCM_SHA256"\n')
    assert e.key == "profile[0].ciphersuites" and "TLS_AES_128_CCM_SHA256" in e.message


def test_unknown_users_and_groups_are_named() -> None:
    assert _error('[[profile]]\nname = "p"\nmatch_users = ["no-such-user-x"]\n').key == "profile[0].match_users"
    assert _error('[[profile]]\nname = "p"\nmatch_groups = ["no-such-group-x"]\n').key == "profile[0].match_groups"


def test_every_policy_key_has_a_tighten_rule() -> None:
    """A new [policy] key is refused in a profile until it has a rule (one line in PROFILE_RULES)."""
    assert set(PROFILE_RULES) == set(attrs.fields_dict(Policy))


def test_first_match_wins_and_every_listed_kind_must_match() -> None:
    c = _config('[[profile]]\nname = "a"\nmatch_users = [1000]\nmatch_groups = [50]\n'
                '[[profile]]\nname = "b"\nmatch_users = [1000]\n'
                '[[profile]]\nname = "c"\nmatch_executables = ["/usr/bin/curl"]\n')
    chooser = Chooser(c.profiles)

    def who(uid: int, gid: int, exe: str) -> str | None:
        creds = Creds(-1, uid, gid)
        creds.exe = exe
        p = chooser.choose(creds)
        return p.name if p is not None else None

    assert who(1000, 50, "/bin/x") == "a"
    assert who(1000, 51, "/bin/x") == "b"  # a needs both its user and its group
    assert who(1001, 50, "/usr/bin/curl") == "c"
    assert who(1001, 50, "/bin/x") is None  # the admin's [policy]
    assert who(0, 0, "/usr/bin/curl") == "c"


def test_iptables_rules_lead_profile_owners_to_their_listener_first() -> None:
    c = _config('[[profile]]\nname = "p"\nmatch_users = ["alice", 7]\nmatch_groups = [9]\n'
                'listen = "tcp:15002:interface=127.0.0.1"\n'
                '[[profile]]\nname = "api-only"\nmatch_users = [8]\n')
    rules = netfilter.chain_rules(c, 0, 4)
    redirects = [r for r in rules if "REDIRECT" in r]
    owners = [r[r.index("owner") + 1:r.index("comment") - 1] for r in redirects[:-1]]
    assert owners == [["--uid-owner", "alice", "--gid-owner", "9"], ["--uid-owner", "7", "--gid-owner", "9"]]
    assert [r[-1] for r in redirects] == ["15002", "15002", "15001"]
    assert netfilter.chain_rules(c, 0, 6) == []  # no IPv6 routes
    assert c.profile_for_port(15002) is c.profiles[0] and c.profile_for_port(15001) is None


def test_a_profile_listener_must_cover_every_routed_family() -> None:
    base = BASE + '\n[[outbound.route]]\nname = "v6"\ndestination = "::/0"\nhostname_from = "address"\n'
    base = base.replace('listen = ["tcp:15001:interface=127.0.0.1"]',
                        'listen = ["tcp:15001:interface=127.0.0.1", "tcp6:15001:interface=\\\\:\\\\:1"]')
    with pytest.raises(ConfigError) as info:
        _config('[[profile]]\nname = "p"\nmatch_users = [1]\nlisten = "tcp:15002:interface=127.0.0.1"\n', base)
    assert info.value.key == "profile[0].listen" and "IPv6" in info.value.message


def test_check_config_names_the_suites_the_floor_removes(tmp_path: object, capsys: pytest.CaptureFixture[str]) \
        -> None:
    path = Path(str(tmp_path)) / "c.toml"
    path.write_text(BASE.replace('[policy]\n', '[policy]\nciphers = "ECDHE+AESGCM:AES128-SHA:AES256-GCM-SHA384"\n'))
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "policy.ciphers (line 2)" in err and "AES128-SHA" in err and "AES256-GCM-SHA384" in err, err
    assert "ECDHE-RSA-AES256-GCM-SHA384" not in err  # kept suites are not named
    assert floor_removes(Config.from_toml(BASE)) == []  # the default string loses nothing


def test_an_ordered_rule_lets_a_profile_move_only_up() -> None:
    rule = ordered("off", "soft", "hard")  # how a key like [policy] revocation gets its rule
    assert rule("soft", "hard") is None and rule("soft", "soft") is None
    why = rule("soft", "off")
    assert why is not None and "weaker" in why


def test_review_findings_on_profiles(tmp_path: Path) -> None:
    """A profile keeps the admin's waiver unless it drops it; an identity is never given to
    whoever runs an executable; a profile's own CRL files are checked like [policy]'s."""
    waived = BASE.replace("[policy]\n", "[policy]\ninsecure_allow_non_rfc5280_chains = true\n", 1)
    assert "insecure_allow_non_rfc5280_chains = true" in waived
    kept = _config('[[profile]]\nname = "p"\nmatch_users = [1]\nmin_version = "TLSv1.3"\n', waived)
    assert kept.profiles[0].policy.insecure_allow_non_rfc5280_chains
    dropped = _config('[[profile]]\nname = "p"\nmatch_users = [1]\ninsecure_allow_non_rfc5280_chains = false\n',
                      waived)
    assert not dropped.profiles[0].policy.insecure_allow_non_rfc5280_chains
    with pytest.raises(ConfigError) as e:
        _config('[[profile]]\nname = "p"\nmatch_executables = ["/usr/bin/curl"]\n'
                'client_certificate = "/c.pem"\nclient_key = "/c.key"\n')
    assert e.value.key == "profile[0].client_certificate", e.value
    missing = tmp_path / "gone.crl"
    e2 = _error(f'[[profile]]\nname = "p"\nmatch_users = [1]\ncrl_files = ["{missing}"]\n')
    assert e2.key == "profile[0].crl_files[0]", e2
