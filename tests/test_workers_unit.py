"""`[daemon] workers` without processes: the key, the default, and the start-up state."""

from __future__ import annotations

import os

import pytest

from ssaproxy import startup
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


def test_shared_secret_is_the_main_processes_in_every_worker() -> None:
    exported = startup.export()
    mine = startup.shared_secret("tls-ticket-key", 48)
    assert len(mine) == 48 and startup.shared_secret("tls-ticket-key", 48) == mine
    assert startup.shared_secret("another-use", 48) != mine
    startup.adopt({"secret": __import__("base64").b64encode(os.urandom(32)).decode()})
    assert startup.shared_secret("tls-ticket-key", 48) != mine  # another daemon's secret
    startup.provide("answer", 42)
    startup.adopt(exported)  # what a worker does with the main process's document
    assert startup.shared_secret("tls-ticket-key", 48) == mine
    assert startup.extra("answer") is None and startup.extra("answer", 0) == 0
