"""TLS_CONTEXT ids: per user, a snapshot without the hostname, bounded."""

from __future__ import annotations

import errno

import pytest

from ssaproxy.api.contexts import Contexts
from ssaproxy.api.settings import ApiError, Settings


def test_same_settings_same_id_and_the_hostname_stays_the_sockets_own() -> None:
    contexts = Contexts()
    mine = Settings(hostname="a.test", alpn=("h2",))
    number = contexts.register(1000, mine)
    assert contexts.register(1000, Settings(hostname="b.test", alpn=("h2",))) == number  # hostname aside: equal
    adopted = contexts.adopt(1000, number, Settings(hostname="c.test"))
    assert adopted == Settings(hostname="c.test", alpn=("h2",))


def test_another_users_id_is_einval() -> None:
    contexts = Contexts()
    number = contexts.register(1000, Settings(alpn=("h2",)))
    with pytest.raises(ApiError) as info:
        contexts.adopt(1001, number, Settings())
    assert info.value.code == errno.EINVAL
    with pytest.raises(ApiError):
        contexts.adopt(1000, number + 1, Settings())


def test_bounded_per_user_oldest_first_out() -> None:
    contexts = Contexts(per_uid=2)
    ids = [contexts.register(7, Settings(alpn=(f"p{n}",))) for n in range(3)]
    with pytest.raises(ApiError):
        contexts.adopt(7, ids[0], Settings())
    assert contexts.adopt(7, ids[2], Settings()).alpn == ("p2",)


def test_an_id_is_not_valid_under_another_profile_of_the_same_user() -> None:
    """Settings checked against one profile's policy never reach a program under another."""
    contexts = Contexts()
    number = contexts.register((1000, "loose"), Settings(min_version="TLSv1.2"))
    with pytest.raises(ApiError) as e:
        contexts.adopt((1000, "strict"), number, Settings())
    assert e.value.code == errno.EINVAL
    assert contexts.adopt((1000, "loose"), number, Settings()).min_version == "TLSv1.2"
