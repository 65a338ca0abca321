"""The API's fair shares: the ledger's bookkeeping and the caps fitted to the descriptor budget."""

from __future__ import annotations

from errno import ESHUTDOWN

import pytest
from twisted.internet.testing import MemoryReactorClock

from ssaproxy.api.quota import Caps, Ledger, Resource, fair, fit_to_fd_budget
from ssaproxy.api.server import ApiFactory, caps_of
from ssaproxy.api.settings import ApiError
from ssaproxy.config import Api, Config

R = Resource


def _caps(total: int, per_uid: int) -> Caps:
    return Caps(total=dict.fromkeys(R, total), per_uid=dict.fromkeys(R, per_uid))


def test_take_refuses_beyond_the_per_uid_and_the_total_cap_and_changes_nothing() -> None:
    ledger = Ledger(_caps(total=3, per_uid=2))
    assert ledger.take(0, R.CONTROLS) is None and ledger.take(0, R.CONTROLS) is None
    why = ledger.take(0, R.CONTROLS)
    assert why is not None and "per-user" in why and ledger.held(0, R.CONTROLS) == 2
    assert ledger.take(65534, R.CONTROLS) is None  # another user is not affected
    why = ledger.take(1000, R.CONTROLS)
    assert why is not None and "daemon's limit" in why and ledger.held(1000, R.CONTROLS) == 0
    for uid in (0, 0, 65534):
        ledger.give(uid, R.CONTROLS)
    assert ledger.by_uid == {} and not +ledger.total  # everything given back, nobody remembered


def test_charge_records_what_is_held_and_says_when_it_is_over() -> None:
    ledger = Ledger(_caps(total=100, per_uid=10))
    assert ledger.charge(7, R.BUFFER, 10) is None
    assert ledger.charge(7, R.BUFFER, 1) is not None  # held anyway: the caller refuses and gives back
    assert ledger.charge(7, R.BUFFER, -11) is None and ledger.by_uid == {}
    with pytest.raises(AssertionError):
        ledger.give(7, R.SESSIONS)  # more back than held is a bug


def test_no_user_gets_more_than_half_of_a_total() -> None:
    caps = fair(_caps(total=10, per_uid=100))
    assert all(caps.per_uid[r] == 5 for r in R)
    assert fair(_caps(total=1, per_uid=100)).per_uid[R.CONTROLS] == 1


def test_caps_fit_half_of_the_descriptor_limit_and_say_so() -> None:
    caps = caps_of(Api())
    same, why = fit_to_fd_budget(caps, None)
    assert why is None and same.total == caps.total
    assert fit_to_fd_budget(caps, 10 * caps.fds_worst_case)[1] is None
    lowered, why = fit_to_fd_budget(caps, 256)
    assert why is not None and "256" in why
    assert lowered.fds_worst_case <= 128
    assert all(lowered.per_uid[r] <= max(1, lowered.total[r] // 2) for r in R)
    assert lowered.total[R.BUFFER] == caps.total[R.BUFFER]  # memory, not descriptors


def test_a_reloaded_api_generation_carries_sessions_shares_and_the_drain() -> None:
    api = Config.from_toml('[api]\nsocket = "/tmp/x.sock"\n').api
    assert api is not None
    old = ApiFactory(api, Config.from_toml("").policy, MemoryReactorClock())
    new = ApiFactory(api, Config.from_toml("").policy, MemoryReactorClock())
    session = object()
    old.active.add(session)
    old.succeeded_by(new)
    assert session in new.active and new.ledger is old.ledger  # one count of sessions and shares
    new.stop_accepting()  # the drain reaches the newest generation only ...
    with pytest.raises(ApiError) as info:
        old.check_accepting()  # ... and control connections made before still see it
    assert info.value.code == ESHUTDOWN
