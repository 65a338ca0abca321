"""Scenario: `[daemon] workers = 2` and session resumption on an inbound listener.

Each worker has ticket keys of its own, so a ticket resumes only on the worker that issued it;
worker affinity (ssaproxy.reuseport, on by default) sends every connection from one client
address to one worker.  A real `twistd ssaproxy` main process with two workers terminates TLS
in front of an echo backend; `openssl s_client` and Python's ssl reconnect with their saved
sessions, from several loopback addresses, and every reconnection resumes.  The log says which
worker served each connection (`[worker N pid P] inbound ... peer=ADDRESS:PORT`), which must be
the worker `reuseport.index_for` names: the main process's socket order is the workers' order.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
from pathlib import Path
from typing import Iterator, Optional

import pytest

from ssaproxy import reuseport
from tests.api_harness import free_port
from tests.lab import poll
from tests.loopback import LoopbackDaemon
from tests.pki import PKI
from tests.test_e2e_resumption_inbound import s_client

CONFIG = """
[daemon]
workers = 2
drain_timeout = 5
watch_interval = 0

[[inbound]]
name = "sticky"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}

[[inbound]]
name = "six"
listen = 'tcp6:{six_port}:interface=\\:\\:1'
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}

[[inbound]]
name = "spread"
listen = "tcp:{spread_port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
worker_affinity = "none"
{certificates}
"""

RECONNECTIONS = 10
CANDIDATES = [f"127.0.{n}.{n * 3 % 250 + 1}" for n in range(1, 60)]


@pytest.fixture(scope="module")
def daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDaemon]:
    d = LoopbackDaemon(pki, tmp_path_factory.mktemp("affinity"), CONFIG, six_port=free_port(),
                       spread_port=free_port())
    with d:
        d.wait_log("all 2 workers ready", 20)
        yield d


def sources_for(worker: int, count: int, down: tuple[int, ...] = ()) -> list[str]:
    return [a for a in CANDIDATES if reuseport.index_for(a, 2, down) == worker][:count]


class Client:
    """Python ssl from one source address, offering the session it was last given."""

    def __init__(self, d: LoopbackDaemon, source: str, port: Optional[int] = None) -> None:
        self.d, self.source = d, source
        self.port = d.port if port is None else port
        self.session: Optional[ssl.SSLSession] = None

    def connect(self) -> tuple[bool, int]:
        """One connection carrying a line; (resumed, the worker whose log line shows it)."""
        family = socket.AF_INET6 if ":" in self.source else socket.AF_INET
        seen = len(self.d.text())  # the line is looked for in what is logged from now on
        raw = socket.socket(family)
        raw.settimeout(10)
        raw.bind((self.source, 0))
        raw.connect((self.source if family == socket.AF_INET6 else "127.0.0.1", self.port))
        local = raw.getsockname()[1]
        with self.d.context.wrap_socket(raw, server_hostname="backend.test", session=self.session) as conn:
            conn.sendall(b"sticky\n")
            assert conn.recv(100) == b"sticky\n"  # the tickets came before the echo
            resumed = conn.session_reused
            self.session = conn.session
            with contextlib.suppress(ssl.SSLError, OSError):
                conn.unwrap()
        shown = self.source if family == socket.AF_INET else f"[{self.source}]"
        lines = poll(lambda: [x for x in self.d.text()[seen:].splitlines() if f"peer={shown}:{local} " in x], 20)
        assert lines, self.d.text()[-3000:]
        line = lines[-1]
        found = re.search(r"\[worker (\d+) pid \d+\] inbound", line)
        assert found, line
        assert f"resumed={resumed}" in line, line
        return resumed, int(found.group(1))


def test_s_client_resumes_every_reconnection(daemon: LoopbackDaemon, tmp_path: Path) -> None:
    for version in ("-tls1_3", "-tls1_2"):
        session = tmp_path / f"session{version}.pem"
        first = s_client(daemon, daemon.port, tmp_path, version, "-sess_out", str(session))
        assert first.new and not first.reused, first.output
        for n in range(RECONNECTIONS):
            following = tmp_path / f"session{version}-{n}.pem"
            again = s_client(daemon, daemon.port, tmp_path, version, "-sess_in", str(session), "-sess_out",
                             str(following))
            assert again.reused, (n, again.output)
            assert "Verify return code: 0 (ok)" in again.output
            if following.exists():  # a TLS 1.3 ticket came with it; TLS 1.2 keeps its ticket
                session = following


@pytest.mark.parametrize("worker", [0, 1])
def test_clients_of_each_worker_resume_on_it(daemon: LoopbackDaemon, worker: int) -> None:
    for source in sources_for(worker, 2):
        client = Client(daemon, source)
        served = [client.connect() for _ in range(RECONNECTIONS + 1)]
        assert [r for r, _ in served] == [False] + [True] * RECONNECTIONS, (source, served)
        assert {w for _, w in served} == {worker}, (source, served)


def test_an_ipv6_client_resumes_every_reconnection(daemon: LoopbackDaemon) -> None:
    client = Client(daemon, "::1", daemon.values["six_port"])
    served = [client.connect() for _ in range(RECONNECTIONS + 1)]
    assert [r for r, _ in served] == [False] + [True] * RECONNECTIONS, served
    assert {w for _, w in served} == {reuseport.index_for("::1", 2)}


def test_without_affinity_one_address_reaches_both_workers(daemon: LoopbackDaemon) -> None:
    """`worker_affinity = "none"`: the kernel's hash of the four-tuple, so one client address
    meets both workers (40 connections on one worker: a chance of 1 in 2**39)."""
    client = Client(daemon, "127.0.0.1", daemon.values["spread_port"])
    workers = set()
    for _ in range(40):
        client.session = None
        workers.add(client.connect()[1])
    assert workers == {0, 1}
    text = daemon.text()
    assert f"127.0.0.1:{daemon.port}: each client address keeps to one of 2 workers" in text
    assert f"127.0.0.1:{daemon.values['spread_port']}: each client" not in text


def test_a_dead_workers_clients_go_to_the_other_until_it_is_back(pki: PKI, tmp_path: Path) -> None:
    with LoopbackDaemon(pki, tmp_path, CONFIG, six_port=free_port(), spread_port=free_port()) as d:
        d.wait_log("all 2 workers ready", 20)
        pids = {int(i): int(p) for i, p in re.findall(r"worker (\d+) started: pid (\d+)", d.text())}
        source = sources_for(1, 1)[0]
        client = Client(d, source)
        assert client.connect() == (False, 1)
        assert client.connect() == (True, 1)
        os.kill(pids[1], signal.SIGKILL)
        d.wait_log(f"worker 1 (pid {pids[1]}) ended after")  # logged after the steering changed
        assert "clients of worker(s) 1 go to the others meanwhile" in d.text()
        # Not queued for a replacement: served now, by worker 0, with a full handshake (its
        # ticket was worker 1's), and resumed there next time.
        assert client.connect() == (False, 0)
        assert client.connect() == (True, 0)
        other = Client(d, sources_for(0, 1)[0])
        assert other.connect() == (False, 0)
        d.wait_log("every worker serves its own clients again", 20)
        assert poll(lambda: len(re.findall(r"worker 1 started: pid", d.text())) == 2, 10)
        # Back on the replacement: a full handshake (new keys), then resumed there.
        assert client.connect() == (False, 1)
        assert client.connect() == (True, 1)
        assert other.connect() == (True, 0)  # worker 0's clients never moved
