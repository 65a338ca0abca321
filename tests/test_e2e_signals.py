"""Scenario: the daemon dies mid-transfer, by every signal that would end it, and by SIGKILL.

Whatever ends the daemon, a program in the middle of a stream must read a reset, never a clean
end of a cut stream: signals whose default action is to terminate are handled as an orderly
stop that resets what is open (here with `[daemon] drain_timeout = 0`: tests/test_e2e_drain.py
has the drain), and a daemon killed outright (SIGKILL, the OOM killer) leaves
the kernel to reset every relayed socket, which is set to close with SO_LINGER 0 unless it is
being closed cleanly.  Covered on all three faces: outbound (a redirected legacy client),
inbound (a TLS client, and the backend behind it) and the local socket API.  SIGHUP is the
exception: it reloads the configuration, and a stream open through it goes on untouched.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api_harness import ApiDaemon, free_port
from tests.lab import CLIENT_PY, NOBODY, PEERS, SERVER_V4, Lab, log_events, poll, stop
from tests.pki import PKI
from tests.reload_harness import Echo, Front

TOTAL = 400_000_000  # far more than the socket buffers hold: the stream is cut mid-way
HANDLED = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT]  # SIGHUP reloads: see the last test


def _report(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text().strip().splitlines()[-1]))


def _expected_exit(sig: int) -> int:
    return -signal.SIGKILL if sig == signal.SIGKILL else 0


@pytest.mark.parametrize("sig", [*HANDLED, signal.SIGKILL], ids=lambda s: signal.Signals(s).name)
def test_outbound_client_reads_a_reset(lab: Lab, pki: PKI, tmp_path: Path, sig: int) -> None:
    port = 24600 + sig
    config = tmp_path / "ssaproxy.toml"
    config.write_text(f'[daemon]\ndrain_timeout = 0\n[policy]\ntrust_store = "{pki.root_pem}"\n'
                      '[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
                      f'[[outbound.route]]\ndestination = "{SERVER_V4}/32"\nports = [{port}]\n'
                      'hostname = "backend.test"\n')
    lab.tls_server("source", pki.server("good"), port, tmp_path / "source.log", extra=["--bytes", str(TOTAL)])
    lab.apply_rules(config)
    log = tmp_path / "daemon.log"
    daemon = lab.start_daemon(config, log)
    out = tmp_path / "client.json"
    # The client reads only after a pause, so the daemon holds a full pipe when it dies.
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, str(port), "--read-delay", "3",
                               "--timeout", "20"], log=out, user=NOBODY)
    try:
        assert poll(lambda: f"{SERVER_V4}:{port}" in lab.ns(lab.c, ["ss", "-Htn", "state", "established"]).stdout)
        time.sleep(1)
        assert stop(daemon, sig) == _expected_exit(sig)
        assert client.wait(30) == 0
        r = _report(out)
        assert r["end"] == "reset" and r["received"] < TOTAL, r
        if sig != signal.SIGKILL:
            text = log.read_text()
            assert f"{signal.Signals(sig).name} received: stopping" in text and "Traceback" not in text
            assert any(" shutdown: " in e for e in log_events(log))
    finally:
        lab.flush_rules()
        for tool in ("iptables", "ip6tables"):
            lab.ns(lab.c, [tool, "-t", "nat", "-X"], check=False)
        stop(client)
        stop(daemon)


def test_inbound_client_and_backend_read_a_reset_when_the_daemon_is_killed(lab: Lab, pki: PKI,
                                                                          tmp_path: Path) -> None:
    good = pki.server("good")
    config = tmp_path / "ssaproxy.toml"
    config.write_text(f'[[inbound]]\nlisten = "tcp:24643:interface={SERVER_V4}"\nbackend = "tcp:127.0.0.1:24680"\n'
                      f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\n')
    lab.backend("echo", 24680, tmp_path / "echo.log")
    log = tmp_path / "daemon.log"
    daemon = lab.start_daemon(config, log, ns=lab.s)
    out = tmp_path / "client.json"
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, "24643", "--tls-ca-pem",
                               pki.root_pem.read_text(), "--sni", "backend.test", "--send", "half an upload",
                               "--timeout", "20"], log=out)
    try:
        assert poll(lambda: "127.0.0.1:24680" in lab.ns(lab.s, ["ss", "-Htn", "state", "established"]).stdout)
        time.sleep(0.5)
        assert stop(daemon, signal.SIGKILL) == -signal.SIGKILL
        assert client.wait(20) == 0
        r = _report(out)
        # Python's ssl reports a reset during a TLS read as either; the backend below is plain TCP.
        assert r["end"] in ("reset", "unclean"), r
        backend = poll(lambda: [json.loads(x) for x in (tmp_path / "echo.log").read_text().splitlines()
                                if x.startswith("{")])
        assert "error" in backend[-1], backend  # the backend: a reset, not a FIN
    finally:
        stop(client)
        stop(daemon)


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGKILL], ids=lambda s: signal.Signals(s).name)
def test_api_program_reads_a_reset(pki: PKI, tmp_path: Path, sig: int) -> None:
    api = ApiDaemon(tmp_path / "api", pki, extra="[daemon]\ndrain_timeout = 0\n").start()
    try:
        port = api.tls_server("source", pki.server("good"), "--bytes", str(TOTAL))
        found: dict[str, Any] = {}

        def program() -> None:
            found.update(api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.connect(("127.0.0.1", {port}))
result["connected"] = True
time.sleep(1.5)
n = 0
try:
    while True:
        data = s.recv(65536)
        if not data:
            result["end"] = "eof"
            break
        n += len(data)
except OSError as e:
    result["end"] = errno.errorcode.get(e.errno, str(e))
result["received"] = n
""", timeout=40))

        t = threading.Thread(target=program)
        t.start()
        assert poll(lambda: f"127.0.0.1:{port}" in subprocess.run(
            ["ss", "-Htn", "state", "established"], capture_output=True, text=True).stdout, 20)
        time.sleep(0.5)
        assert api.proc is not None
        assert stop(api.proc, sig) == _expected_exit(sig)
        t.join(45)
        assert found.get("connected") and found.get("end") == "ECONNRESET" and found["received"] < TOTAL, found
    finally:
        api.stop()


def test_sighup_leaves_a_live_stream_untouched(pki: PKI, tmp_path: Path) -> None:
    front = Front(pki, tmp_path)
    port = free_port()
    try:
        front.start(("app", port))
        assert front.daemon is not None
        with front.connect(port) as s:
            stream = Echo(s, 3_000_000)
            for n in range(1, 4):
                stream.exchange(500_000)
                front.hup()
                front.wait_log("reloaded (SIGHUP)", n)
            stream.finish()  # byte-exact both ways, to a clean end
        front.wait_log("inbound 1 closed: ")
        assert front.daemon.poll() is None and "stopping" not in front.log.read_text()
    finally:
        front.stop()
