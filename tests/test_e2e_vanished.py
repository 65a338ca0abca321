"""Scenario: an upstream server vanishes mid-relay (no FIN, no RST: its host drops everything).

Before idle timeouts, such a relay pinned its two descriptors until the daemon stopped.  With
`idle_timeout = 1` on the outbound face, the daemon resets the program's connection (never a
clean end), logs `idle-timeout`, and lets go of both sockets; a relay that keeps talking is
left alone meanwhile.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.lab import CLIENT_PY, NOBODY, PEERS, SERVER_V4, Lab, log_events, poll, stop
from tests.pki import PKI

PORT = 24700


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_vanished_server_ends_its_relay(lab: Lab, pki: PKI, tmp_path: Path) -> None:
    config = tmp_path / "ssaproxy.toml"
    config.write_text(f'[policy]\ntrust_store = "{pki.root_pem}"\n'
                      '[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\nidle_timeout = 1\n'
                      f'[[outbound.route]]\ndestination = "{SERVER_V4}/32"\nports = [{PORT}]\n'
                      'hostname = "backend.test"\n')
    lab.tls_server("echo", pki.server("good"), PORT, tmp_path / "echo.log")
    lab.apply_rules(config)
    log = tmp_path / "daemon.log"
    daemon = lab.start_daemon(config, log)
    out = tmp_path / "client.json"
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, str(PORT), "--send", "hello",
                               "--timeout", "20"], log=out, user=NOBODY)
    try:
        assert poll(lambda: f"{SERVER_V4}:{PORT}" in lab.ns(lab.c, ["ss", "-Htn", "state", "established"]).stdout)
        time.sleep(0.3)  # the echo is back: the relay is idle from here on
        relaying = _fds(daemon.pid)
        # The server's host vanishes: everything to and from it is dropped, nothing is answered.
        lab.ns(lab.s, ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP"])
        lab.ns(lab.s, ["iptables", "-I", "OUTPUT", "-p", "tcp", "--sport", str(PORT), "-j", "DROP"])
        assert client.wait(20) == 0
        r = json.loads(out.read_text().strip().splitlines()[-1])
        assert r["end"] == "reset" and r["head"] == "hello", r  # a reset after the echo, not a clean end
        event = poll(lambda: [e for e in log_events(log) if " idle-timeout: " in e])
        assert event and "bytes_out=5 bytes_in=5" in event[-1], log_events(log)
        assert poll(lambda: _fds(daemon.pid) <= relaying - 2), (relaying, _fds(daemon.pid))  # both sockets freed
    finally:
        lab.ns(lab.s, ["iptables", "-F"], check=False)
        lab.flush_rules()
        for tool in ("iptables", "ip6tables"):
            lab.ns(lab.c, [tool, "-t", "nat", "-X"], check=False)
        stop(client)
        stop(daemon)
