"""A two-namespace network lab for end-to-end tests with real processes and real iptables.

    client namespace (C)                        server namespace (S)
    legacy app (uid nobody) --> iptables nat OUTPUT REDIRECT
    twistd ssaproxy (root) on 127.0.0.1:15001 / [::1]:15001
        veth c0 10.77.0.1/24 fd77::1/64  <------>  veth s0 10.77.0.2/24 fd77::2/64
                                                   TLS servers (openssl s_server, Python ssl)

The legacy app runs as uid 65534 so that `ssaproxy iptables print --uid 0` (the daemon is
root) redirects it and not the daemon's own upstream connections.  Every process is started
with a recorded PID and ended by that PID; namespaces are deleted on close.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
CLIENT_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
SERVER_V4 = "10.77.0.2"
SERVER_V6 = "fd77::2"


def missing_requirements() -> Optional[str]:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "ip6tables", "setpriv", "openssl", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw)


class Lab:
    def __init__(self, tag: str) -> None:
        self.c = f"ssapc-{tag}-{os.getpid()}"
        self.s = f"ssaps-{tag}-{os.getpid()}"
        self.procs: list[subprocess.Popen[Any]] = []
        self._up()

    # ---- topology
    def _up(self) -> None:
        for ns in (self.c, self.s):
            run(["ip", "netns", "add", ns])
        veth_c, veth_s = f"vc{os.getpid() % 100000}", f"vs{os.getpid() % 100000}"
        run(["ip", "link", "add", veth_c, "type", "veth", "peer", "name", veth_s])
        run(["ip", "link", "set", veth_c, "netns", self.c, "name", "c0"])
        run(["ip", "link", "set", veth_s, "netns", self.s, "name", "s0"])
        for ns, dev, v4, v6 in ((self.c, "c0", "10.77.0.1/24", "fd77::1/64"),
                                (self.s, "s0", "10.77.0.2/24", "fd77::2/64")):
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
            self.ns(ns, ["ip", "addr", "add", v4, "dev", dev])
            self.ns(ns, ["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"])
            self.ns(ns, ["ip", "link", "set", dev, "up"])

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p)
        for ns in (self.c, self.s):
            run(["ip", "netns", "del", ns], check=False)

    def ns(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *argv], **kw)

    def spawn(self, ns: str, argv: Sequence[str], *, log: Path, user: Sequence[str] = ()) -> subprocess.Popen[Any]:
        with open(log, "wb") as f:  # the child has its own copy once Popen returns
            p = subprocess.Popen(["ip", "netns", "exec", ns, *user, *argv], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    # ---- pieces
    def apply_rules(self, config: Path) -> str:
        rules = run([sys.executable, "-m", "ssaproxy.cli", "iptables", "print", "--config", str(config),
                     "--uid", "0"], cwd=REPO).stdout
        self.ns(self.c, ["sh", "-e", "-c", rules])
        return rules

    def flush_rules(self) -> None:
        self.ns(self.c, ["iptables", "-t", "nat", "-F"], check=False)
        self.ns(self.c, ["ip6tables", "-t", "nat", "-F"], check=False)

    def start_daemon(self, config: Path, log: Path, *, wait: float = 20, ns: Optional[str] = None) \
            -> subprocess.Popen[Any]:
        p = self.spawn(ns or self.c, [_twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(config)], log=log)
        wait_for_text(log, "ssaproxy started", p, wait)
        return p

    def tls_server(self, mode: str, creds: Any, port: int, log: Path, *, host: str = SERVER_V4,
                   extra: Sequence[str] = ()) -> subprocess.Popen[Any]:
        argv = [sys.executable, str(PEERS / "tls_server.py"), "--host", host, "--port", str(port),
                "--mode", mode]
        if creds is not None:
            argv += ["--cert", str(creds.chain), "--key", str(creds.key)]
        p = self.spawn(self.s, [*argv, *extra], log=log)
        wait_for_text(log, "READY", p, 15)
        return p

    def backend(self, mode: str, port: int, log: Path, *extra: str, host: str = "127.0.0.1") \
            -> subprocess.Popen[Any]:
        """A plaintext backend in the server namespace (tests/peers/backend.py)."""
        p = self.spawn(self.s, [CLIENT_PY, str(PEERS / "backend.py"), host, str(port), mode, *extra], log=log)
        wait_for_text(log, "READY", p, 15)
        return p

    def openssl_server(self, creds: Any, port: int, log: Path, *args: str, host: str = SERVER_V4) \
            -> subprocess.Popen[Any]:
        p = self.spawn(self.s, ["openssl", "s_server", "-accept", f"{host}:{port}" if ":" not in host
                                else f"[{host}]:{port}", "-cert", str(creds.chain), "-key", str(creds.key),
                                *args], log=log)
        wait_listening(self, self.s, port, p)
        return p

    def client(self, host: str, port: int, *args: str, timeout: float = 30, root: bool = False) -> dict[str, Any]:
        """Run the legacy plaintext client (as nobody unless `root`) in the client namespace; its
        JSON report."""
        user = [] if root else NOBODY
        out = self.ns(self.c, [*user, CLIENT_PY, str(PEERS / "client.py"), host, str(port), *args],
                      timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def curl(self, url: str, *args: str, timeout: float = 30, root: bool = False) -> subprocess.CompletedProcess[str]:
        user = [] if root else NOBODY
        return self.ns(self.c, [*user, "curl", "-sS", "--max-time", "15", *args, url], check=False,
                       timeout=timeout)


def _twistd() -> str:
    found = shutil.which("twistd", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise RuntimeError("twistd not found next to the running Python")
    return found


def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> Optional[int]:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.returncode


def wait_for_text(log: Path, text: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    body = log.read_text(errors="replace") if log.exists() else "(no log)"
    raise RuntimeError(f"{text!r} did not appear in {log} (exit={proc.poll()}):\n{body[-3000:]}")


def wait_listening(lab: Lab, ns: str, port: int, proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.ns(ns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} in {ns} (exit={proc.poll()})")


def log_events(log: Path) -> list[str]:
    """The daemon's one-line-per-connection events."""
    return [line for line in log.read_text(errors="replace").splitlines() if "OutboundConnection" in line]


T = TypeVar("T")


def poll(probe: Callable[[], T], timeout: float = 10) -> T:
    """Call `probe` until it returns something truthy or `timeout` passes; its last result."""
    deadline = time.monotonic() + timeout
    result = probe()
    while not result and time.monotonic() < deadline:
        time.sleep(0.05)
        result = probe()
    return result


def wait_events(log: Path, count: int, timeout: float = 15) -> list[str]:
    def enough() -> list[str]:
        events = log_events(log)
        return events if len(events) >= count else []

    return poll(enough, timeout) or log_events(log)
