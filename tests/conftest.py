"""Shared fixtures.

End-to-end tests need root, iptables and network namespaces.  Where those are missing they are
skipped on a developer's machine, but with SSAPROXY_REQUIRE_NETNS=1 (set by .ci/run) a missing
requirement is a failure: a test skipped in CI is a test that does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import ApiDaemon
from tests.lab import Lab, missing_requirements
from tests.pki import PKI
from tests.unhandled import no_unhandled_deferred_errors  # noqa: F401  (autouse, tests/unhandled.py)

REQUIRE_NETNS = os.environ.get("SSAPROXY_REQUIRE_NETNS") == "1"

# Daemons the tests start run as one process unless their config says `[daemon] workers`: the
# suite stays fast and its logs simple; tests/test_e2e_workers.py runs the worker processes.
os.environ["SSAPROXY_WORKERS"] = "1"


def require_lab() -> None:
    reason = missing_requirements()
    if reason is None:
        return
    if REQUIRE_NETNS:
        pytest.fail(f"end-to-end test cannot run: {reason} (SSAPROXY_REQUIRE_NETNS=1)", pytrace=False)
    pytest.skip(f"end-to-end test: {reason}")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def api(pki: PKI, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ApiDaemon]:
    """A daemon serving the local socket API, one per test module (tests/api_harness.py)."""
    daemon = ApiDaemon(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]), pki).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def api_quick_timeouts(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    """For tests that wait for the daemon to give up: its deadline for a connection (connect
    plus handshake) is 2.5 s instead of the 6 s of `api`."""
    daemon = ApiDaemon(tmp_path_factory.mktemp("api-quick"), pki, connect_timeout=1, handshake_timeout=1.5).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_lab()
    tag = Path(str(request.node.fspath)).stem.replace("test_", "")[:24]  # unique per module
    lab = Lab(tag)
    try:
        yield lab
    finally:
        lab.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that use the lab are marked, so `-m "not netns"` runs only the fast pure ones.
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.netns)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under SSAPROXY_REQUIRE_NETNS=1 (CI) a skip of any kind is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_NETNS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"
