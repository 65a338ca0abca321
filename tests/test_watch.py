"""The certificate watcher's loop (ssaproxy.watch.Watcher) on a clock of its own."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from ssaproxy.watch import Watcher, stamps


def test_a_change_is_reported_once_and_the_interval_follows_the_config(tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"A")
    clock, heard = Clock(), []
    watcher = Watcher(clock, stamps((str(chain),)), heard.append)
    watcher.every(5)
    clock.advance(5)
    assert heard == []
    chain.write_bytes(b"BB")
    clock.advance(4)
    assert heard == []  # not looked yet
    clock.advance(1)
    assert heard == [[str(chain)]]
    clock.advance(5)
    assert heard == [[str(chain)]]  # the same change is not reported again
    chain.unlink()
    clock.advance(5)
    assert heard == [[str(chain)], [str(chain)]]  # gone is a change too
    (look,) = clock.getDelayedCalls()
    watcher.every(5)  # the same interval keeps its rhythm
    assert clock.getDelayedCalls() == [look]
    watcher.every(0)
    assert clock.getDelayedCalls() == []
