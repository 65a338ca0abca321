"""`[daemon] workers = 2` end to end: a real `twistd ssaproxy` main process and its two workers,
an inbound listener in front of a real backend, TLS clients from Python's ssl, the API through
the client library, and the admin endpoint.  `workers = 1` keeps the single process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import free_port
from tests.lab import poll
from tests.loopback import LoopbackDaemon, certificates
from tests.pki import PKI

NOBODY = 65534

CONFIG = """
[daemon]
workers = {workers}
user = "nobody"
drain_timeout = 10
watch_interval = 0

[policy]
trust_store = "{trust}"

[[inbound]]
name = "web"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
worker_affinity = "none"   # the kernel's spread (test_e2e_affinity.py tests the default)
{certificates}

[api]
socket = "{api_dir}/api.sock"

[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"
"""


@pytest.fixture
def trust(pki: PKI) -> Iterator[Path]:
    """The test root, and the server's chain and key, where the daemon's user (nobody) may read
    them again after the drop (a reload does)."""
    directory = Path(tempfile.mkdtemp(prefix="ssaproxy-workers-"))
    try:
        os.chmod(directory, 0o755)
        good = pki.server("good")
        for source, name in ((pki.root_pem, "root.pem"), (good.chain, "chain.pem"), (good.key, "key.pem")):
            shutil.copyfile(source, directory / name)
            os.chmod(directory / name, 0o644)
        yield directory / "root.pem"
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def start(pki: PKI, tmp_path: Path, trust: Path, workers: int = 2) -> Iterator[LoopbackDaemon]:
    with LoopbackDaemon(pki, tmp_path, CONFIG, workers=workers, trust=trust, api_dir=tmp_path / "run",
                        certificates=certificates(trust.parent / "chain.pem", trust.parent / "key.pem")) as d:
        if workers > 1:
            d.wait_log(f"all {workers} workers ready", 20)
        yield d


def worker_pids(d: LoopbackDaemon) -> set[int]:
    return {int(p) for p in re.findall(r"worker \d+ started: pid (\d+)", d.text())}


def live_workers(d: LoopbackDaemon) -> list[int]:
    assert d.daemon is not None
    return children(d.daemon.pid)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def ids(pid: int) -> tuple[list[int], list[int]]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gid = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uid is not None and gid is not None
    return [int(x) for x in uid.group(1).split()], [int(x) for x in gid.group(1).split()]


def echo(d: LoopbackDaemon, payload: bytes = b"ping\n") -> bytes:
    with d.connect() as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def served_by(d: LoopbackDaemon) -> set[int]:
    """The pids of the workers whose log says they relayed an inbound connection."""
    return {int(p) for p in re.findall(r"\[worker \d+ pid (\d+)\] inbound \d+ [a-z-]+: listener=web", d.text())}


def admin(d: LoopbackDaemon, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.admin_port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_both_workers_serve_as_nobody_and_admin_answers_for_both(pki: PKI, tmp_path: Path, trust: Path) -> None:
    with start(pki, tmp_path, trust) as d:
        assert d.daemon is not None
        workers = live_workers(d)
        assert len(workers) == 2 and set(workers) == worker_pids(d)
        for _ in range(40):
            assert echo(d) == b"ping\n"
        # SO_REUSEPORT spreads by the connection's addresses: 40 connections all on one worker
        # would be a 1 in 2**39 chance, or a shared queue one worker drains.
        assert poll(lambda: served_by(d) == set(workers), 10), d.text()[-3000:]
        # The privilege drop holds in every worker; the main process keeps its identity.
        for pid in workers:
            assert ids(pid) == ([NOBODY] * 4, [NOBODY] * 4)
        assert ids(d.daemon.pid)[0][0] == 0
        status, body = admin(d, "/status")
        assert status == 200
        answer = json.loads(body)
        assert {w["pid"] for w in answer["workers"]} == set(workers)
        assert all(w["ready"] for w in answer["workers"])
        assert admin(d, "/readyz") == (200, b"ready\n")
        shown = subprocess.run([str(Path(sys.executable).parent / "ssaproxy"), "status", "--admin",
                                f"http://127.0.0.1:{d.admin_port}"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "workers (2)" in shown.stdout, shown.stdout + shown.stderr
        assert all(str(pid) in shown.stdout for pid in workers), shown.stdout
        # Counters summed over both workers, whichever of them answers the scrape.
        for _ in range(3):
            _, metrics = admin(d, "/metrics")
            total = sum(float(m) for m in re.findall(
                rb'^ssaproxy_connections_total\{[^}]*kind="inbound"[^}]*\} (\S+)$', metrics, re.M))
            assert total == 40, metrics.decode()[:3000]


def test_a_killed_worker_is_restarted_and_service_continues(pki: PKI, tmp_path: Path, trust: Path) -> None:
    with start(pki, tmp_path, trust) as d:
        first = live_workers(d)
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        d.wait_log(f"pid {victim}) ended after", 10)
        assert "signal SIGKILL" in d.wait_log("starting it again")
        assert poll(lambda: len(worker_pids(d)) == 3 and len(live_workers(d)) == 2, 20), d.text()[-3000:]
        now = live_workers(d)
        assert victim not in now and first[1] in now
        d.wait_log("ssaproxy started", 10)
        # Served throughout, by both workers again (the replacement took the dead one's sockets).
        replacement = (set(now) - set(first)).pop()
        for _ in range(200):
            assert echo(d) == b"ping\n"
            if replacement in served_by(d):
                break
        assert poll(lambda: replacement in served_by(d), 10), d.text()[-3000:]
        assert ids(replacement)[0] == [NOBODY] * 4


def test_sighup_reaches_every_worker_and_sigterm_drains_them_all(pki: PKI, tmp_path: Path, trust: Path) -> None:
    # The workers reload as nobody: the config file must be one nobody can read.
    with start(pki, trust.parent, trust) as d:
        assert d.daemon is not None
        workers = live_workers(d)
        d.daemon.send_signal(signal.SIGHUP)
        assert poll(lambda: {int(p) for p in re.findall(r"pid (\d+)\] reloaded \(SIGHUP\)", d.text())}
                    == set(workers), 15), d.text()[-3000:]
        held = d.connect()
        try:
            held.sendall(b"before\n")
            assert held.recv(100) == b"before\n"
            d.daemon.send_signal(signal.SIGTERM)
            assert poll(lambda: len(re.findall(r"\] stopping: no longer accepting", d.text())) == 2, 15)
            # The held connection still carries bytes while both workers drain, and new ones are refused.
            held.sendall(b"during\n")
            assert held.recv(100) == b"during\n"
            assert d.daemon.poll() is None
            with pytest.raises(ConnectionRefusedError):
                echo(d)
        finally:
            held.close()
        code = d.daemon.wait(20)
        assert code in (0, -signal.SIGTERM), code
        text = d.text()
        assert text.count("drain ended (every connection finished)") == 2, text[-3000:]
        assert "every worker has ended" in text
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert not (trust.parent / "run" / "api.sock").exists()


def test_ctrl_c_at_a_terminal_drains_the_workers_once(pki: PKI, tmp_path: Path, trust: Path) -> None:
    """SIGINT to the daemon's whole process group, as a terminal's Ctrl-C sends it: the workers
    are not in that group, so each hears one stop (from the main process) and drains; they do
    not take the forwarded SIGTERM for a second signal that ends the drain at once."""
    with LoopbackDaemon(pki, tmp_path, CONFIG, workers=2, trust=trust, api_dir=tmp_path / "run",
                        certificates=certificates(trust.parent / "chain.pem", trust.parent / "key.pem"),
                        preexec_fn=os.setsid) as d:
        d.wait_log("all 2 workers ready", 20)
        assert d.daemon is not None
        workers = live_workers(d)
        assert all(os.getpgid(pid) != d.daemon.pid for pid in workers)
        held = d.connect()
        try:
            held.sendall(b"before\n")
            assert held.recv(100) == b"before\n"
            os.killpg(d.daemon.pid, signal.SIGINT)  # the daemon leads its own session's group
            assert poll(lambda: len(re.findall(r"\] stopping: no longer accepting", d.text())) == 2, 15)
            held.sendall(b"during\n")
            assert held.recv(100) == b"during\n"  # still draining: not cut short by a second signal
        finally:
            held.close()
        assert d.daemon.wait(20) in (0, -signal.SIGINT, -signal.SIGTERM)
        assert d.text().count("drain ended (every connection finished)") == 2, d.text()[-3000:]


API_CLIENT = """
import sys, ssaproxy
s = ssaproxy.socket(ssaproxy.AF_INET, ssaproxy.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"through the api\\n")
got = b""
while not got.endswith(b"\\n"):
    chunk = s.recv(100)
    if not chunk:
        break
    got += chunk
print(got.decode().strip())
"""


def test_the_api_works_with_workers(pki: PKI, tmp_path: Path, trust: Path) -> None:
    with start(pki, tmp_path, trust) as d:
        script = tmp_path / "client.py"
        script.write_text(API_CLIENT.replace("ssaproxy.AF_INET", "__import__('socket').AF_INET")
                          .replace("ssaproxy.SOCK_STREAM", "__import__('socket').SOCK_STREAM"))
        env = dict(os.environ, SSAPROXY_SOCKET=str(tmp_path / "run" / "api.sock"))
        for _ in range(6):
            r = subprocess.run([sys.executable, str(script), str(d.port)], capture_output=True, text=True, env=env,
                               timeout=30)
            assert r.stdout.strip() == "through the api", r.stderr
        served = r"\[worker \d+ pid (\d+)\] api session \d+ connect closed: .* verified=True"
        api_workers = {int(p) for p in re.findall(served, d.text())}
        assert api_workers and api_workers <= set(live_workers(d)), d.text()[-3000:]


def test_one_worker_is_one_process(pki: PKI, tmp_path: Path, trust: Path) -> None:
    with start(pki, tmp_path, trust, workers=1) as d:
        assert d.daemon is not None
        assert echo(d) == b"ping\n"
        assert children(d.daemon.pid) == []
        assert "workers ready" not in d.text() and "[worker " not in d.text()
        assert ids(d.daemon.pid)[0] == [NOBODY] * 4


def test_the_main_process_tells_systemd_once_all_are_ready_and_sigusr1_stops(
        pki: PKI, tmp_path: Path, trust: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    try:
        with start(pki, tmp_path, trust) as d:
            assert d.daemon is not None
            ready = manager.recv(4096).decode().split("\n")
            # One datagram, from the main process, once both workers are ready; none from them.
            assert "READY=1" in ready and f"MAINPID={d.daemon.pid}" in ready, ready
            assert "STATUS=serving with 2 workers" in ready
            workers = live_workers(d)
            assert len(workers) == 2
            d.daemon.send_signal(signal.SIGUSR1)
            assert "STOPPING=1" in manager.recv(4096).decode().split("\n")
            assert d.daemon.wait(20) in (0, -signal.SIGTERM)
            assert "SIGUSR1 received: stopping" in d.text()
            assert d.text().count("drain ended") == 2
            assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        manager.close()


def test_a_reload_moves_a_listener_in_every_worker_and_a_restarted_worker_serves_it(
        pki: PKI, tmp_path: Path, trust: Path) -> None:
    with start(pki, trust.parent, trust) as d:
        assert d.daemon is not None
        old_port, new_port = d.port, free_port()
        d.config.write_text(d.config.read_text().replace('name = "web"', 'name = "moved"')
                            .replace(f"tcp:{old_port}:", f"tcp:{new_port}:"))
        d.daemon.send_signal(signal.SIGHUP)
        assert poll(lambda: len(re.findall(r"\] reloaded \(SIGHUP\)", d.text())) == 2, 15), d.text()[-3000:]
        # The old address is gone for good (the main process closed its copies too) ...
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
        # ... and the new one, which each worker bound itself after its drop, is served by both.
        d.port = new_port
        workers = live_workers(d)
        for _ in range(40):
            assert echo(d) == b"ping\n"

        def moved() -> set[int]:
            return {int(p) for p in re.findall(r"\[worker \d+ pid (\d+)\] inbound \d+ [a-z-]+: listener=moved",
                                               d.text())}
        assert poll(lambda: moved() == set(workers), 10), d.text()[-3000:]
        # A worker started after the reload reads the file as it is now and binds the new
        # listener beside its sibling's (same owner, so SO_REUSEPORT groups them).
        os.kill(workers[0], signal.SIGKILL)
        assert poll(lambda: len(worker_pids(d)) == 3 and len(live_workers(d)) == 2, 20), d.text()[-3000:]
        replacement = (set(live_workers(d)) - set(workers)).pop()
        d.wait_log(f"pid {replacement}] ssaproxy started", 15)
        for _ in range(200):
            assert echo(d) == b"ping\n"
            if replacement in moved():
                break
        assert poll(lambda: replacement in moved(), 10), d.text()[-3000:]
