"""Fair shares of the local socket API: what each local user (SO_PEERCRED uid) holds, against a
cap per user and a cap for everyone, so that one user can never deny the API to the others.

Theory of operation: the API socket may be open to every local user, and everything a
program makes the daemon hold costs the daemon a descriptor or memory.  Four resources are
counted, each under two caps (per uid, and all uids together):

* `CONTROLS`: control connections open;
* `SESSIONS`: TLS sessions alive (connect, upgrade, and connections accepted for a listener);
* `FDS`: descriptors in flight: received from a program and not yet paired with their frame,
  plus the program's ends of carriers sent and not yet known to be delivered (a CARRIER's until
  its control connection closes, an ACCEPTED's until the program's ACK);
* `BUFFER`: bytes a control connection holds that are not a whole request yet.

Pure bookkeeping, no I/O: `Ledger.take` admits or refuses a unit before it is held (controls,
sessions); `Ledger.charge` records what is already held (bytes read, descriptors received) and
says whether that is over a cap (the caller then refuses, which gives everything back).  The
caps themselves come from the config, lowered at start by `fit_to_fd_budget` so that the
API's worst case stays within half of the daemon's descriptors: the outbound and inbound
faces always keep room.  root is counted like everyone else.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Optional

import attrs


class Resource(enum.Enum):
    CONTROLS = "controls"
    SESSIONS = "sessions"
    FDS = "descriptors in flight"
    BUFFER = "buffered bytes"

    # Members are singletons compared by identity: the identity hash agrees with that, and is
    # computed in C (Enum's own hashes the name in Python; the ledger hashes a member per use).
    __hash__ = object.__hash__


LISTENERS = 128  # programs' listening sockets at most (each has an accept thread)


@attrs.frozen(kw_only=True)
class Caps:
    """The effective caps: `total` for all users together, `per_uid` for each."""

    total: dict[Resource, int] = attrs.field(hash=False)
    per_uid: dict[Resource, int] = attrs.field(hash=False)
    listeners: int = LISTENERS

    def __attrs_post_init__(self) -> None:
        for res in Resource:
            if self.total.get(res, 0) < 1 or self.per_uid.get(res, 0) < 1:
                raise ValueError(f"cap for {res.value} must be at least 1")

    @property
    def fds_worst_case(self) -> int:
        """Descriptors the API may hold at worst: one per control connection, two per session
        (the carrier's daemon end, the far end), the descriptors in flight, one per listener."""
        t = self.total
        return t[Resource.CONTROLS] + 2 * t[Resource.SESSIONS] + t[Resource.FDS] + self.listeners


def fair(caps: Caps) -> Caps:
    """No user may hold more than half of any total cap (at least 1): one user alone never
    exhausts a resource everyone shares."""
    per_uid = {res: min(caps.per_uid[res], max(1, caps.total[res] // 2)) for res in Resource}
    return attrs.evolve(caps, per_uid=per_uid)


def fit_to_fd_budget(caps: Caps, nofile: Optional[int]) -> tuple[Caps, Optional[str]]:
    """`caps` lowered so that their worst case fits in half of `nofile` (the daemon's soft
    RLIMIT_NOFILE; None for unlimited), and why, or `caps` unchanged and None."""
    if nofile is None or caps.fds_worst_case <= nofile // 2:
        return fair(caps), None
    budget = max(8, nofile // 2)
    scale = budget / caps.fds_worst_case
    total = dict(caps.total)
    for res in (Resource.CONTROLS, Resource.SESSIONS, Resource.FDS):
        total[res] = max(1, int(caps.total[res] * scale))
    listeners = max(1, int(caps.listeners * scale))
    lowered = fair(attrs.evolve(caps, total=total, listeners=listeners))
    why = (f"the API's worst case of {caps.fds_worst_case} descriptors exceeds half of the daemon's limit "
           f"of {nofile}: lowered to {lowered.fds_worst_case} (controls {total[Resource.CONTROLS]}, "
           f"sessions {total[Resource.SESSIONS]}, descriptors in flight {total[Resource.FDS]}, "
           f"listeners {listeners}; per uid: controls {lowered.per_uid[Resource.CONTROLS]}, "
           f"sessions {lowered.per_uid[Resource.SESSIONS]}, descriptors {lowered.per_uid[Resource.FDS]})")
    return lowered, why


class Ledger:
    """What each uid holds now.  Every `take` or `charge` that went through is given back with
    `give` or a negative `charge` by the same owner; a uid holding nothing is forgotten."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.total: Counter[Resource] = Counter()
        self.by_uid: dict[int, Counter[Resource]] = {}

    def held(self, uid: int, res: Resource) -> int:
        held = self.by_uid.get(uid)
        return held[res] if held is not None else 0

    def over(self, uid: int, res: Resource, more: int = 0) -> Optional[str]:
        """Why `more` of `res` for `uid` would break a cap, or None."""
        if self.held(uid, res) + more > self.caps.per_uid[res]:
            return f"uid {uid} holds {self.caps.per_uid[res]} {res.value} (the per-user limit)"
        if self.total[res] + more > self.caps.total[res]:
            return f"the API holds {self.caps.total[res]} {res.value} (the daemon's limit)"
        return None

    def take(self, uid: int, res: Resource, n: int = 1) -> Optional[str]:
        """Hold `n` more if both caps allow (None), else nothing changes and the reason."""
        why = self.over(uid, res, n)
        if why is None:
            self._add(uid, res, n)
        return why

    def give(self, uid: int, res: Resource, n: int = 1) -> None:
        self._add(uid, res, -n)

    def charge(self, uid: int, res: Resource, delta: int) -> Optional[str]:
        """Record `delta` (already held, or given back); the reason if that is over a cap."""
        self._add(uid, res, delta)
        return self.over(uid, res) if delta > 0 else None

    def _add(self, uid: int, res: Resource, n: int) -> None:
        if n == 0:
            return
        held = self.by_uid.setdefault(uid, Counter())
        held[res] += n
        self.total[res] += n
        if held[res] < 0 or self.total[res] < 0:
            raise AssertionError(f"uid {uid} gave back more {res.value} than it held")
        if not any(held.values()):
            del self.by_uid[uid]
