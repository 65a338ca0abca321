"""TLS_CONTEXT: one program socket's settings, shared with its owner's other sockets by number.

Theory of operation: the SSA lets a program read a socket's "TLS context" (an id) and set it on
other sockets, which then use the same settings and the same session cache.  Here a context is
a snapshot of a control connection's `Settings`, registered when a program reads TLS_CONTEXT
and looked up when it sets it; the hostname stays the socket's own (the SSA's one exception).
Ids are per owner, a uid and its [[profile]]: a program can never take another user's client
certificate or trust store by guessing a number, nor settings checked under another profile's
(looser) policy.  Sessions need no extra step: equal settings are one OpenSSL context
(`api.settings.client_context`), and the client session cache is keyed by that context.  The
registry is bounded per uid (the oldest id goes first) and lives as long as the API factory:
a reload that changes the policy starts a new one, and old ids are EINVAL.
"""

from __future__ import annotations

import collections
import errno
import itertools
from collections.abc import Hashable

import attrs

from ssaproxy.api.settings import ApiError, Settings

MAX_PER_UID = 64


class Contexts:
    def __init__(self, per_uid: int = MAX_PER_UID) -> None:
        self.per_uid = per_uid
        self._ids = itertools.count(1)
        self._by_uid: dict[Hashable, collections.OrderedDict[int, Settings]] = {}

    def register(self, uid: Hashable, settings: Settings) -> int:
        """The id of `settings` (without the hostname) for `uid` (an owner: a uid, or a uid and
        its profile's name): the same id for the same settings."""
        shared = attrs.evolve(settings, hostname=None)
        mine = self._by_uid.setdefault(uid, collections.OrderedDict())
        for number, known in mine.items():
            if known == shared:
                mine.move_to_end(number)
                return number
        number = next(self._ids) & 0x7FFFFFFF
        mine[number] = shared
        while len(mine) > self.per_uid:
            mine.popitem(last=False)
        return number

    def adopt(self, uid: Hashable, number: int, settings: Settings) -> Settings:
        """`settings` replaced by context `number` of `uid`, keeping their hostname; EINVAL if unknown."""
        mine = self._by_uid.get(uid)
        shared = mine.get(number) if mine is not None else None
        if shared is None:
            raise ApiError(errno.EINVAL, f"TLS_CONTEXT {number} is not a context of this user")
        return attrs.evolve(shared, hostname=settings.hostname)
