"""Scenario: the daemon's life as an admin sees it.

`twistd -n ssaproxy` with no --config runs on the embedded default (loopback only, both
families, system
trust store: the lab's private CA is not trusted, so verification fails closed); SIGTERM and
SIGINT stop it cleanly, with `drain_timeout = 0` resetting connections still in flight at once
(tests/test_e2e_drain.py: the drain); a broken config stops it before it starts, naming the key
and line.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import CLIENT_PY, NOBODY, PEERS, REPO, SERVER_V4, SERVER_V6, Lab, _twistd, log_events, poll, stop
from tests.pki import PKI


def test_embedded_default_listens_on_loopback_and_trusts_only_the_system_store(
        lab: Lab, pki: PKI, tmp_path: Path) -> None:
    lab.tls_server("http", pki.server("good"), 443, tmp_path / "web.log")
    lab.tls_server("http", pki.server("good"), 443, tmp_path / "web6.log", host=SERVER_V6)
    rules = lab.ns(lab.c, [sys.executable, "-m", "ssaproxy.cli", "iptables", "print", "--uid", "0"], cwd=REPO)
    lab.ns(lab.c, ["sh", "-e", "-c", rules.stdout])
    log = tmp_path / "daemon.log"
    daemon = lab.spawn(lab.c, [_twistd(), "-n", "--pidfile=", "ssaproxy"], log=log)
    try:
        poll(lambda: "ssaproxy started" in log.read_text())
        assert "config=<embedded default>" in log.read_text()
        listening = lab.ns(lab.c, ["ss", "-Hltn"]).stdout.split()
        assert {x for x in listening if x.endswith(":15001")} == {"127.0.0.1:15001", "[::1]:15001"}, listening
        r = lab.curl("http://backend.test/", "--resolve", f"backend.test:80:{SERVER_V4}")
        assert r.returncode == 56, (r.returncode, r.stdout, r.stderr)  # reset: the lab CA is not trusted
        event = poll(lambda: log_events(log))[-1]
        assert " verify-failed: " in event and "unable to get local issuer certificate" in event
        assert "hostname=backend.test" in event
        # IPv6 HTTP is redirected too (an IPv4-only default would let it out in plaintext).
        r6 = lab.curl(f"http://[{SERVER_V6}]/", "-g", "-H", "Host: backend.test")
        assert r6.returncode == 56, (r6.returncode, r6.stdout, r6.stderr)
        event6 = poll(lambda: [e for e in log_events(log) if f"orig_dst=[{SERVER_V6}]:80 " in e])[-1]
        assert " verify-failed: " in event6 and "route=http-to-https-v6" in event6
        assert "GET" not in (tmp_path / "web6.log").read_text()  # nothing reached it in plaintext
    finally:
        _clear_rules(lab)
        code = stop(daemon)
    assert code == -signal.SIGTERM  # twistd ends by re-raising the signal after a clean shutdown
    assert "Main loop terminated." in log.read_text()


def _one_route(config: Path, pki: PKI, port: int, daemon: str = "") -> None:
    config.write_text(f'{daemon}[policy]\ntrust_store = "{pki.root_pem}"\n'
                      '[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
                      f'[[outbound.route]]\ndestination = "{SERVER_V4}/32"\nports = [{port}]\n'
                      'hostname = "backend.test"\n')


def _clear_rules(lab: Lab) -> None:
    lab.flush_rules()
    lab.ns(lab.c, ["iptables", "-t", "nat", "-X"], check=False)
    lab.ns(lab.c, ["ip6tables", "-t", "nat", "-X"], check=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_resets_live_connections(lab: Lab, pki: PKI, tmp_path: Path, sig: int) -> None:
    config = tmp_path / "ssaproxy.toml"
    port = 24000 + sig
    _one_route(config, pki, port, "[daemon]\ndrain_timeout = 0\n")
    lab.tls_server("echo", pki.server("good"), port, tmp_path / "echo.log")
    lab.apply_rules(config)
    log = tmp_path / "daemon.log"
    daemon = lab.start_daemon(config, log)
    out = tmp_path / "client.json"
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, str(port), "--send", "live",
                               "--timeout", "20"], log=out, user=NOBODY)
    try:
        assert poll(lambda: f"{SERVER_V4}:{port}" in lab.ns(lab.c, ["ss", "-Htn", "state", "established"]).stdout)
        time.sleep(0.5)  # let the echo come back to the client
        assert stop(daemon, sig) == -sig  # twistd re-raises the signal after a clean shutdown
        assert client.wait(20) == 0
        r = json.loads(out.read_text().strip().splitlines()[-1])
        assert r["head"] == "live" and r["end"] == "reset", r  # an error, not a silent clean end
        text = log.read_text()
        assert "Main loop terminated." in text and "Traceback" not in text
        assert any(" shutdown: " in e for e in log_events(log))
        assert "drain ended (drain_timeout is 0)" in text and "0 connections finished, 1 reset" in text
    finally:
        _clear_rules(lab)
        stop(client)
        stop(daemon)


def test_broken_config_stops_twistd_before_it_starts(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[policy]\nmin_version = "TLSv1.2"\nmax_version = "TLSv1.0"\n')
    r = subprocess.run([_twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(config)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "policy.max_version (line 3)" in r.stdout + r.stderr


def test_console_script_checks_configs(tmp_path: Path) -> None:
    script = shutil.which("ssaproxy", path=str(Path(sys.executable).parent))
    assert script, "the ssaproxy console script is not installed next to this Python"
    good = tmp_path / "good.toml"
    good.write_text((REPO / "config" / "ssaproxy.toml").read_text())
    assert subprocess.run([script, "check-config", str(good)], capture_output=True, timeout=60).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[outbound]\nlisten = "tcp:15001"\nlisen = "typo"\n')
    r = subprocess.run([script, "check-config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "outbound.lisen (line 3): unknown key" in r.stderr


def test_json_log_observer_gives_connection_events_as_fields(lab: Lab, pki: PKI, tmp_path: Path) -> None:
    config = tmp_path / "ssaproxy.toml"
    _one_route(config, pki, 24100)
    lab.tls_server("echo", pki.server("good"), 24100, tmp_path / "echo.log")
    lab.apply_rules(config)
    log = tmp_path / "daemon.json"
    daemon = lab.spawn(lab.c, [_twistd(), "-n", "--pidfile=", "--logger", "ssaproxy.logs.json_lines", "ssaproxy",
                               "--config", str(config)], log=log)
    try:
        poll(lambda: "ssaproxy started" in log.read_text())
        r = lab.client(SERVER_V4, 24100, "--send", "json\\n", "--shutdown")
        assert r["end"] == "eof" and r["head"] == "json\n"

        def conn_events() -> list[dict[str, object]]:
            out = []
            for line in log.read_text().splitlines():
                event = json.loads(line)  # every line is one JSON object
                if "outcome" in event:
                    out.append(event)
            return out

        (event,) = poll(conn_events)
        assert event["outcome"] == "closed" and event["verified"] is True
        assert event["orig_dst"] == f"{SERVER_V4}:24100" and event["hostname"] == "backend.test"
        assert event["bytes_out"] == 5 and event["bytes_in"] == 5 and event["tls_version"] == "TLSv1.3"
    finally:
        _clear_rules(lab)
        stop(daemon)


def test_sigterm_resets_inbound_connections_on_both_sides(lab: Lab, pki: PKI, tmp_path: Path) -> None:
    """A backend must not take a half-sent upload, cut by the daemon's exit, for a complete one."""
    good = pki.server("good")
    config = tmp_path / "ssaproxy.toml"
    config.write_text(f'[daemon]\ndrain_timeout = 0\n'  # reset at once (the drain: tests/test_e2e_drain.py)
                      f'[[inbound]]\nlisten = "tcp:24443:interface={SERVER_V4}"\nbackend = "tcp:127.0.0.1:24080"\n'
                      f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\n')
    lab.backend("echo", 24080, tmp_path / "echo.log")
    log = tmp_path / "daemon.log"
    daemon = lab.start_daemon(config, log, ns=lab.s)
    out = tmp_path / "client.json"
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, "24443", "--tls-ca-pem",
                               pki.root_pem.read_text(), "--sni", "backend.test", "--send", "half an upload",
                               "--timeout", "20"], log=out)
    try:
        assert poll(lambda: "127.0.0.1:24080" in lab.ns(lab.s, ["ss", "-Htn", "state", "established"]).stdout)
        time.sleep(0.5)
        assert stop(daemon) == -signal.SIGTERM
        assert client.wait(20) == 0
        r = json.loads(out.read_text().strip().splitlines()[-1])
        assert r["end"] in ("reset", "unclean"), r  # the client: an error, not close_notify
        backend = poll(lambda: [json.loads(x) for x in (tmp_path / "echo.log").read_text().splitlines()
                                if x.startswith("{")])
        assert "error" in backend[-1], backend  # the backend: a reset, not a FIN
    finally:
        stop(client)
        stop(daemon)
