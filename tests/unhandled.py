"""Fail any test that leaves a Deferred with an unhandled error behind, cheaply.

Theory of operation: Twisted reports "Unhandled error in Deferred" from exactly one place,
`DebugInfo.__del__`, and only while that DebugInfo's `failResult` is set; `Deferred` sets it
whenever its callback chain comes to rest on a Failure and clears it when a later callback
handles the error.  We put a subclass in place of `twisted.internet.defer.DebugInfo` whose
`failResult` is a property recording, in a WeakSet, every DebugInfo that holds a failure right
now.  At the end of a test:

* an empty set means nothing can report later (each DebugInfo that died already reported, and
  the log observer saw it), so the test is done without a garbage collection;
* otherwise one `gc.collect()` runs the `__del__` of the unreachable ones (a Failure's
  traceback often keeps its Deferred in a reference cycle), and their reports fail the test.

So a full collection runs only after a test whose Deferreds actually failed, not after the
hundreds of pure tests that never touch Twisted.  Reports are seen through the global log
publisher, as before.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

_holding_failure: "weakref.WeakSet[defer.DebugInfo]" = weakref.WeakSet()
stats = {"tests": 0, "collections": 0}  # read by the fixture's own tests


class _WatchedDebugInfo(defer.DebugInfo):
    @property  # type: ignore[override]
    def failResult(self) -> Any:
        return self.__dict__.get("_watched_fail_result")

    @failResult.setter
    def failResult(self, value: Any) -> None:
        self.__dict__["_watched_fail_result"] = value
        if value is None:
            _holding_failure.discard(self)
        else:
            _holding_failure.add(self)


def install() -> None:
    """Idempotent; `defer` looks `DebugInfo` up by name each time it makes one."""
    if defer.DebugInfo is not _WatchedDebugInfo:
        defer.DebugInfo = _WatchedDebugInfo  # type: ignore[misc]


install()


@pytest.fixture(autouse=True)
def no_unhandled_deferred_errors() -> Iterator[None]:
    """Fail a test that leaves a Deferred with an unhandled error behind (a silent bug)."""
    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if "Unhandled error in Deferred" in str(event.get("log_format", "")):
            seen.append(str(event.get("log_failure", "")))

    install()
    stats["tests"] += 1
    globalLogPublisher.addObserver(observe)
    try:
        yield
        if _holding_failure:
            stats["collections"] += 1
            gc.collect()  # unreachable ones report from __del__ now
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not seen, f"unhandled error in Deferred: {seen}"
