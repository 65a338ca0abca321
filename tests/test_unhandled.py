"""The autouse fixture of tests/unhandled.py: a test leaving an unhandled error in a Deferred
is red, whether its Deferred dies at once or only in a reference cycle; tests whose Deferreds
never fail pay for no garbage collection."""

from __future__ import annotations

import pytest

from tests.lab import REPO

pytest_plugins = ["pytester"]

INNER = '''
import gc

from twisted.internet import defer

from tests import unhandled


def test_pure():
    assert 1 + 1 == 2


def test_handled_failure():
    d = defer.fail(ValueError("handled"))
    d.addErrback(lambda f: None)


def test_failure_handled_later():
    d = defer.Deferred()
    d.errback(ValueError("handled later"))
    d.addErrback(lambda f: None)


def test_no_collection_so_far():
    assert unhandled.stats == {"tests": 4, "collections": 0}


def test_dropped():
    defer.fail(ValueError("dropped at once"))


def test_in_a_cycle():
    gc.disable()  # only the fixture's own collection may find it (re-enabled by the process exit)
    d = defer.Deferred()
    d.me = d
    d.errback(ValueError("kept alive by a cycle"))


def test_raised_by_a_callback():
    defer.succeed(1).addCallback(lambda _: 1 / 0)
'''


def test_the_fixture_fails_tests_leaving_unhandled_errors(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest("from tests.unhandled import no_unhandled_deferred_errors  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7, errors=3)  # the fixture fails them in its teardown
    out = result.stdout.str()
    for name in ("test_dropped", "test_in_a_cycle", "test_raised_by_a_callback"):
        assert f"ERROR at teardown of {name}" in out, out
    for text in ("dropped at once", "kept alive by a cycle", "ZeroDivisionError"):
        assert text in out, out
    for name in ("test_pure", "test_handled_failure", "test_failure_handled_later"):
        assert f"of {name}" not in out, out
