"""Scenario: a real daemon on loopback under a small open files limit (soft = hard, so it cannot
raise it), with an inbound listener in front of a plaintext echo backend.

Running out of file descriptors is an overload: every client beyond the limit is reset (never a
FIN, never left hanging), the daemon says so once per burst with a count, and serves normally
again once descriptors are free.  Listen queues get the admin's backlog or the kernel's somaxconn.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from typing import Iterator

import pytest

from ssaproxy.kernel import somaxconn
from tests.api_harness import free_port
from tests.lab import poll
from tests.loopback import LoopbackDaemon
from tests.pki import PKI

FD_LIMIT = 96
BACKLOG = 37


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


CONFIG = """
[[inbound]]
name = "cap"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}
handshake_timeout = 30

[[inbound]]
name = "queue"
listen = "tcp:{quiet_port}:interface=127.0.0.1:backlog={backlog}"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}
"""


@pytest.fixture(scope="module")
def scene(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDaemon]:
    with LoopbackDaemon(pki, tmp_path_factory.mktemp("capacity"), CONFIG, mode="echo", preexec_fn=_limit_fds,
                        quiet_port=free_port(), backlog=BACKLOG) as d:
        yield d


TCP_ESTABLISHED, TCP_CLOSE, TCP_CLOSE_WAIT = 1, 7, 8  # linux/tcp_states.h


def _state(sock: socket.socket) -> str:
    """What the daemon did to a connection, from the kernel's TCP state of our end (Python's
    ssl module may report a reset as an EOF; the state cannot lie): "held" (still open),
    "reset" (an RST closed it) or "fin" (the daemon closed its side)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return {TCP_ESTABLISHED: "held", TCP_CLOSE: "reset", TCP_CLOSE_WAIT: "fin"}.get(state, f"state-{state}")


def _ping(s: LoopbackDaemon, held: list[socket.socket]) -> str:
    """One TLS client: "ok" if its bytes came back, else how the daemon ended it."""
    try:
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=3)
    except ConnectionResetError:
        return "reset"  # on loopback the reset can come before connect() returns
    t = s.context.wrap_socket(raw, server_hostname="backend.test", do_handshake_on_connect=False)
    held.append(t)  # `raw` is detached: `t` owns the descriptor, and stays open to be looked at
    try:
        t.do_handshake()
        t.sendall(b"ping")
        if t.recv(4) == b"ping":
            return "ok"
    except TimeoutError:
        return "hang"
    except OSError:
        pass  # reset or EOF, as Python's ssl module sees it: the TCP state tells which
    ended = poll(lambda: _state(t) != "held", timeout=3)
    return _state(t) if ended else "hang"


def _round_trip(s: LoopbackDaemon, payload: bytes) -> bytes:
    with s.connect(timeout=3, suppress_ragged_eofs=True) as t:
        t.sendall(payload)
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = t.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _overload_lines(s: LoopbackDaemon) -> list[str]:
    return [x for x in s.text().splitlines() if " overload: out of file descriptors" in x]


def test_the_limit_is_what_the_daemon_got_and_it_says_so(scene: LoopbackDaemon) -> None:
    assert f"open files limit: {FD_LIMIT} -> {FD_LIMIT} (hard limit {FD_LIMIT})" in scene.text()
    # 2 x (10000 + 10000) + reserve does not fit in 96: a warning naming the caps and the budget
    assert "inbound.cap.max_connections=10000, inbound.queue.max_connections=10000" in scene.text()
    assert f"the open files limit is {FD_LIMIT}" in scene.text()


def test_out_of_descriptors_clients_are_reset_then_served_again(scene: LoopbackDaemon) -> None:
    payload = os.urandom(100_000)
    assert _round_trip(scene, payload) == payload  # served normally before
    before = len(_overload_lines(scene))
    hogs: list[socket.socket] = []
    try:
        # Connections that never handshake hold one descriptor each in the daemon; open more of
        # them than it has descriptors.
        refused = 0
        for _ in range(FD_LIMIT + 20):
            try:
                hogs.append(socket.create_connection(("127.0.0.1", scene.port), timeout=3))
            except ConnectionResetError:
                refused += 1  # on loopback the reset can come before connect() returns

        def settled() -> list[str]:
            if _listen_queue(scene.port)[0]:
                return []  # the daemon has not looked at every connection yet
            states = [_state(h) for h in hogs]
            return states if "reset" in states + ["reset"] * refused and states.count("held") > 10 else []

        states = poll(settled, timeout=5)
        assert states, [_state(h) for h in hogs]
        assert set(states) <= {"held", "reset"}, states  # never a FIN, never data
        states += ["reset"] * refused
        resets = states.count("reset")
        assert resets >= 20, states
        # A TLS client now is reset too: not a FIN, not a hang.
        assert _ping(scene, hogs) == "reset"
        lines = poll(lambda: _overload_lines(scene)[before:], timeout=5)
        assert lines, scene.text()[-3000:]
        counted = sum(int(x.split("), ")[1].split(" waiting")[0]) for x in lines)
        assert counted >= resets + 1, lines
        assert len(lines) <= 3, lines  # once per burst, not once per connection
    finally:
        for h in hogs:
            h.close()
    # Descriptors free again: served normally, byte-exact.
    served = poll(lambda: _try_round_trip(scene, payload), timeout=10)
    assert served == payload


def _try_round_trip(s: LoopbackDaemon, payload: bytes) -> bytes:
    try:
        return _round_trip(s, payload)
    except OSError:
        return b""


def _relays_until_reset(s: LoopbackDaemon, held: list[socket.socket]) -> list[str]:
    outcomes: list[str] = []
    for _ in range(FD_LIMIT):
        outcomes.append(_ping(s, held))
        if outcomes[-3:] == ["reset"] * 3:
            break
    return outcomes


def test_relays_up_to_the_limit_then_resets(scene: LoopbackDaemon) -> None:
    """Relays cost two descriptors each (the client's and the backend's): opened one by one,
    each is relayed or reset, whether accept runs out or the backend's socket does.  One idle
    connection more or less decides which, so both are tried; the backend's socket running out
    is an overload refusal of that connection, in its own record."""
    records = len(_connect_overloads(scene))
    for parity in (0, 1):
        held: list[socket.socket] = []
        try:
            held += [socket.create_connection(("127.0.0.1", scene.port), timeout=3) for _ in range(parity)]
            outcomes = _relays_until_reset(scene, held)
            assert outcomes.count("ok") >= 10, outcomes
            assert outcomes[-3:] == ["reset"] * 3 and set(outcomes) == {"ok", "reset"}, outcomes
        finally:
            for t in held:
                t.close()
        assert poll(lambda: _try_round_trip(scene, b"again" * 1000), timeout=10) == b"again" * 1000
    assert len(_connect_overloads(scene)) > records, scene.text()[-3000:]


def _connect_overloads(s: LoopbackDaemon) -> list[str]:
    return [x for x in s.text().splitlines() if " overload: " in x and "InboundConnection" in x
            and "Too many open files" in x]


def _listen_queue(port: int) -> tuple[int, int]:
    """A listening socket's (waiting connections, backlog): Recv-Q and Send-Q in `ss -ltn`."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    fields = out.split()
    return int(fields[1]), int(fields[2])


def test_listen_backlog_is_the_admins_or_somaxconn(scene: LoopbackDaemon) -> None:
    assert _listen_queue(scene.values["quiet_port"])[1] == BACKLOG
    assert _listen_queue(scene.port)[1] == somaxconn()
