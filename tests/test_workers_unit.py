"""`[daemon] workers` without processes: the key, the default, and the start-up state."""

from __future__ import annotations

import os

import pytest

from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.tap import worker_count


def test_workers_key() -> None:
    assert Config.from_toml("[daemon]\nworkers = 3\n").daemon.workers == 3
    assert Config.from_toml("").daemon.workers is None
    for bad, words in (("0", "must be 1-256"), ("257", "must be 1-256"), ('"4"', "expected an integer"),
                       ("2.5", "expected an integer")):
        with pytest.raises(ConfigError) as e:
            Config.from_toml(f"[daemon]\ndrain_timeout = 1\nworkers = {bad}\n")
        assert str(e.value).startswith("daemon.workers (line 3): ") and words in str(e.value), str(e.value)


def test_worker_count_default() -> None:
    assert worker_count(4, {"SSAPROXY_WORKERS": "1"}) == 4  # the file wins
    assert worker_count(None, {"SSAPROXY_WORKERS": "3"}) == 3
    assert worker_count(None, {}) == len(os.sched_getaffinity(0))
    for bad in ("0", "x", "999"):
        with pytest.raises(ConfigError, match="SSAPROXY_WORKERS must be 1-256"):
            worker_count(None, {"SSAPROXY_WORKERS": bad})


def test_the_main_process_binds_every_profile_listener() -> None:
    """Bound before the privilege drop, kept across worker restarts: never left for a local
    user to take while no worker holds it."""
    from ssaproxy.groups import tcp_listeners  # noqa: PLC0415

    config = Config.from_toml('[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
                              '[[outbound.route]]\nname = "r"\ndestination = "192.0.2.1/32"\nports = [80]\n'
                              'tls_port = 443\nhostname = "r.test"\n'
                              '[[profile]]\nname = "p"\nmatch_users = [1]\nlisten = "tcp:15002:interface=127.0.0.1"\n')
    assert [(k, a.port) for k, a in tcp_listeners(config)] == [("outbound.listen", 15001),
                                                                 ("profile.p.listen", 15002)]
