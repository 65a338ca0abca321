"""The API's listening sockets: a cap for all users together and a share for each user (half),
so that one user's programs cannot take every slot (api/requests.py)."""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any

import pytest

from ssaproxy.api.listener import Listener
from ssaproxy.api.requests import Requests
from ssaproxy.api.settings import ApiError


def _listener(uid: int) -> Listener:
    listener = Listener.__new__(Listener)  # only its owner's credentials matter here
    listener.control = SimpleNamespace(creds=SimpleNamespace(uid=uid))
    return listener


def _asker(uid: int, active: list[Any], cap: int = 8) -> Requests:
    asker = Requests.__new__(Requests)
    asker.factory = SimpleNamespace(caps=SimpleNamespace(listeners=cap), active=active)
    asker.creds = SimpleNamespace(uid=uid)  # type: ignore[assignment]
    return asker


def test_a_user_gets_half_of_the_listening_sockets_and_the_others_still_get_theirs() -> None:
    active: list[Any] = [_listener(1000) for _ in range(4)]
    with pytest.raises(ApiError) as refused:
        _asker(1000, active)._check_listener_shares()
    assert refused.value.code == errno.EAGAIN and "share" in str(refused.value)
    _asker(1001, active)._check_listener_shares()  # another user is served


def test_the_total_holds_for_everyone() -> None:
    active: list[Any] = [_listener(uid) for uid in (1, 1, 2, 2, 3, 3, 4, 4)]
    with pytest.raises(ApiError) as refused:
        _asker(5, active)._check_listener_shares()
    assert refused.value.code == errno.EAGAIN and "8 listening sockets already" in str(refused.value)
