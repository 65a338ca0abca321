"""The `[[profile]]` tables: per-application policy.

A profile is a named set of `[policy]` keys that applies to some programs instead of the
admin's `[policy]`: the keys it does not set are the admin's.  It is selected

- for socket-API sessions by the program's credentials (SO_PEERCRED: uid, primary gid, and
  the executable /proc/PID/exe names), the first profile in file order that matches;
- for redirected traffic by the iptables owner match: a profile with `listen` has its own
  transparent listener, and `ssaproxy iptables` sends its users' and groups' connections there
  before the general rule (an owner match cannot see executables, so such a profile selects by
  `match_users` and `match_groups` only).

Tighten, or adjust where that is the point: every key a profile may set has a rule in
`PROFILE_RULES`, and a key without one is refused ("cannot be set per profile").  Ordered
keys may only move the safe way (versions within the admin's span, a minimum key size at
least the admin's); cipher suites and groups must be among the admin's (suites are checked
with OpenSSL in `ssaproxy.tls.load`); the trust store may be replaced, which is what a
profile is for when a program talks to a private CA — verification itself is never turned off.
A new `[policy]` key becomes settable per profile with one line in `PROFILE_RULES` (for a key
whose values are ordered from weak to strict, `ordered(...)` makes its rule).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import attrs

from ssaproxy.config.endpoints import parse_listener
from ssaproxy.config.enums import TLSVersion
from ssaproxy.config.policy import Policy, parse_policy
from ssaproxy.config.reader import Reader
from ssaproxy.errors import ConfigError

_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_MAX_ID = (1 << 32) - 2

# A rule says why a profile's value loosens the admin's (None: it does not).
Rule = Callable[[Any, Any], Optional[str]]


def _not_below(admin: Any, mine: Any) -> Optional[str]:
    low = TLSVersion(admin).rank if isinstance(admin, str) else admin
    value = TLSVersion(mine).rank if isinstance(mine, str) else mine
    return f"{mine} is below the admin's {admin}" if value < low else None


def _not_above(admin: Any, mine: Any) -> Optional[str]:
    return f"{mine} is above the admin's {admin}" if TLSVersion(mine).rank > TLSVersion(admin).rank else None


def _among(admin: str, mine: str) -> Optional[str]:
    allowed = {x.strip().lower() for x in admin.split(":") if x.strip()}
    extra = [x for x in mine.split(":") if x.strip() and x.strip().lower() not in allowed]
    return f"{', '.join(extra)} not among the admin's {admin!r}" if extra else None


def ordered(*weakest_first: str) -> Rule:
    """A rule for a key whose values go from weakest to strictest, say
    `"revocation": ordered("off", "soft", "hard")`: a profile may only move up."""
    rank = {value: i for i, value in enumerate(weakest_first)}

    def rule(admin: Any, mine: Any) -> Optional[str]:
        return f"{mine!r} is weaker than the admin's {admin!r}" if rank[str(mine)] < rank[str(admin)] else None

    return rule


def _adjustable(admin: Any, mine: Any) -> Optional[str]:
    return None


def _no_waiver(admin: Any, mine: Any) -> Optional[str]:
    """An insecure waiver is the admin's to write in [policy]; a profile may only drop it."""
    return "only [policy] may waive a check" if mine and not admin else None


def _superset(admin: Any, mine: Any) -> Optional[str]:
    missing = [f for f in admin if f not in mine]
    return f"leaves out the admin's {', '.join(missing)}" if missing else None


def _process_wide(admin: Any, mine: Any) -> Optional[str]:
    return "is one setting for the whole process: set it in [policy]" if mine != admin else None


def _checked_later(admin: Any, mine: Any) -> Optional[str]:
    """OpenSSL decides (ssaproxy.tls.load: the profile's suites must be among the admin's)."""
    return None


PROFILE_RULES: dict[str, Rule] = {
    "min_version": _not_below,
    "max_version": _not_above,
    "ciphers": _checked_later,
    "ciphersuites": _checked_later,
    "groups": _among,
    "trust_store": _adjustable,  # another set of anchors (a private CA); never no verification
    "min_rsa_bits": _not_below,
    "insecure_allow_non_rfc5280_chains": _no_waiver,
    "session_resumption": ordered("True", "False"),  # a profile may turn resumption off
    "session_cache_size": _process_wide,  # one client session cache per process
    "session_lifetime": _process_wide,
    "revocation": ordered("off", "soft", "hard"),
    "crl_files": _superset,  # more CRLs, never fewer
    "revocation_timeout": _not_below,  # a shorter wait turns more answers into "unknown"
}


@attrs.frozen(kw_only=True)
class Profile:
    """One `[[profile]]`: who it is for, and the policy they get."""

    name: str
    users: tuple[str, ...] = ()  # names or numbers, as written
    groups: tuple[str, ...] = ()
    executables: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()  # its own transparent listeners (outbound), if any
    ports: tuple[int, ...] = ()  # their ports: how an outbound connection knows its profile
    policy: Policy  # the admin's, with this profile's keys
    client_certificate: Optional[str] = None  # presented for its programs (redirected; API clients without one)
    client_key: Optional[str] = None

    def selects(self, uids: frozenset[int], gids: frozenset[int], uid: int, gid: int, exe: str) -> bool:
        """Whether a program with `uid`, `gid` and `exe` is this profile's (`uids`, `gids`: its
        users and groups as numbers).  Every kind of selector it lists must match; any value
        of a kind does."""
        return ((not self.users or uid in uids) and (not self.groups or gid in gids)
                and (not self.executables or exe in self.executables))


def _ids(r: Reader, name: str) -> tuple[str, ...]:
    raw: list[Any] = r.take(name, list, [])
    out: list[str] = []
    for value in raw:
        if isinstance(value, int) and not isinstance(value, bool):
            r.check(name, 0 <= value <= _MAX_ID, f"must be names or numbers 0-{_MAX_ID}, got {value}")
            out.append(str(value))
        else:
            r.check(name, isinstance(value, str) and bool(_ID_RE.fullmatch(value)),
                    f"must be an array of names or numbers, got {value!r}")
            out.append(value)
    return tuple(out)


def parse_profiles(r: Reader, admin: Policy) -> tuple[Profile, ...]:
    out: list[Profile] = []
    for i, table in enumerate(r.tables("profile", "an array of tables ([[profile]])")):
        profile = _one(table, i, admin)
        if profile.name in {p.name for p in out}:
            raise ConfigError(table.key("name"), f"duplicate profile name {profile.name!r}")
        taken = {port for p in out for port in p.ports}
        clash = sorted(taken & set(profile.ports))
        if clash:
            raise ConfigError(table.key("listen"), f"port(s) {clash} already taken by an earlier profile")
        out.append(profile)
    return tuple(out)


def _one(r: Reader, index: int, admin: Policy) -> Profile:
    r.check("name", "name" in r.data, "is required: the log names the profile that applied")
    name = r.name(f"profile{index}")
    users, groups = _ids(r, "match_users"), _ids(r, "match_groups")
    executables: list[Any] = r.take("match_executables", list, [])
    for exe in executables:
        r.check("match_executables", isinstance(exe, str) and exe.startswith("/") and "\x00" not in exe,
                f"must be an array of absolute paths, got {exe!r}")
    r.check("name", bool(users or groups or executables),
            "a profile needs match_users, match_groups or match_executables (whom it applies to)")
    listen_raw: str | list[Any] = r.take("listen", (str, list), [], "a string or an array of strings")
    listen = (listen_raw,) if isinstance(listen_raw, str) else tuple(listen_raw)
    r.check("listen", all(isinstance(x, str) and x for x in listen), "must be Twisted server endpoint strings")
    for text in listen:
        try:
            parse_listener(text)
        except ConfigError as e:
            raise ConfigError(r.key("listen"), e.message) from None
    if listen:
        r.check("listen", not executables, "an iptables owner match cannot see executables: a profile with its "
                                           "own listener selects by match_users and match_groups only")
        r.check("listen", bool(users or groups), "its listener needs match_users or match_groups for the owner match "
                                                    "rules")
    cert: Optional[str] = r.take("client_certificate", str, None)
    key: Optional[str] = r.take("client_key", str, None)
    r.check("client_key" if cert else "client_certificate", (cert is None) == (key is None),
            "client_certificate and client_key go together")
    r.check("client_certificate", cert is None or bool(users or groups),
            "an identity is given to users or groups, not to whoever runs an executable (anyone can run "
            "it): add match_users or match_groups")
    for field in list(r.data):
        if field in attrs.fields_dict(Policy):
            r.check(field, field in PROFILE_RULES, "cannot be set per profile (no tighten rule for it yet)")
    policy = parse_policy(r, admin)  # the keys left are [policy] keys; the rest are unknown keys
    for field, rule in PROFILE_RULES.items():
        why = rule(getattr(admin, field), getattr(policy, field))
        if why is not None:
            raise ConfigError(r.key(field), f"a profile may tighten, not loosen: {why}")
    return Profile(name=name, users=users, groups=groups, executables=tuple(executables), listen=listen,
                   ports=tuple(parse_listener(x).port for x in listen), policy=policy, client_certificate=cert,
                   client_key=key)

