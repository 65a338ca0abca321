"""Real processes for the local socket API tests: the daemon under twistd with the API on a
socket in a temporary directory, TLS peers on loopback, and programs in subprocesses that use
the client library exactly as an application would.

Every process is started with a recorded PID and ended by that PID.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from tests.lab import PEERS, REPO, _twistd, poll, stop, wait_for_text
from tests.pki import PKI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} (exit={proc.poll()})")


class ApiDaemon:
    """`twistd -n ssaproxy` serving the API only, trusting the test PKI's root."""

    def __init__(self, directory: Path, pki: PKI, extra: str = "", mode: str = "0666",
                 connect_timeout: float = 3, handshake_timeout: float = 3) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Outside pytest's private temporary tree, so programs run as nobody can reach it.
        self.rundir = tempfile.mkdtemp(prefix="ssaproxy-api-")
        os.chmod(self.rundir, 0o711)
        self.socket = os.path.join(self.rundir, "api.sock")
        self.log = directory / "daemon.log"
        self.config = directory / "ssaproxy.toml"
        self.config.write_text(f'[policy]\ntrust_store = "{pki.root_pem}"\n'
                               f'[api]\nsocket = "{self.socket}"\nmode = "{mode}"\n'
                               f"connect_timeout = {connect_timeout}\nhandshake_timeout = {handshake_timeout}\n"
                               + extra)
        self.proc: Optional[subprocess.Popen[Any]] = None
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, prefix: Sequence[str] = ()) -> "ApiDaemon":
        """`prefix`: a command to run twistd under (`prlimit --nofile=256:256 --`, say)."""
        self.proc = subprocess.Popen([*prefix, _twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(self.config)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=self.directory)
        wait_for_text(self.log, "ssaproxy started", self.proc, 20)
        return self

    def start_failing(self, timeout: float = 20) -> int:
        """Start, expecting twistd to give up; its exit status."""
        proc = subprocess.Popen([_twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(self.config)],
                                stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=self.directory)
        try:
            return proc.wait(timeout)
        finally:
            stop(proc)

    def stop(self, sig: int = 15) -> Optional[int]:
        for p in self.procs:
            stop(p)
        self.procs = []
        code = stop(self.proc, sig) if self.proc is not None else None
        shutil.rmtree(self.rundir, ignore_errors=True)
        return code

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SSAPROXY_SOCKET": self.socket, "PYTHONPATH": str(REPO)}

    def events(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if "api session" in line]

    def wait_event(self, text: str, timeout: float = 10) -> str:
        found = poll(lambda: [e for e in self.events() if text in e], timeout)
        assert found, f"no api event with {text!r}:\n" + "\n".join(self.events()[-10:])
        return found[-1]

    # ---- peers
    def tls_server(self, mode: str, creds: Any, *extra: str) -> int:
        port = free_port()
        log = self.directory / f"tls-{mode}-{port}.log"
        argv = [sys.executable, str(PEERS / "tls_server.py"), "--host", "127.0.0.1", "--port", str(port),
                "--mode", mode]
        if creds is not None:
            argv += ["--cert", str(creds.chain), "--key", str(creds.key)]
        p = subprocess.Popen([*argv, *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        wait_for_text(log, "READY", p, 15)
        return port

    def s_server(self, creds: Any, *args: str) -> tuple[int, Path]:
        port = free_port()
        log = self.directory / f"s_server-{port}.log"
        p = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(creds.chain),
                              "-cert_chain", str(creds.chain), "-key", str(creds.key), *args],
                             stdin=subprocess.PIPE, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        wait_port(port, p)
        return port, log

    def spawn(self, argv: Sequence[str], log: Path, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(list(argv), stdout=log.open("ab"), stderr=subprocess.STDOUT, env=self.env, **kw)
        self.procs.append(p)
        return p

    # ---- programs
    def program(self, code: str, *, timeout: float = 30, user: Optional[str] = None) -> dict[str, Any]:
        """Run `code` (Python, with `ssaproxy`, `socket`, `os`, `errno`, `json` imported and
        `result` a dict) in a subprocess; `result` as it printed it (JSON, last line)."""
        body = ("import errno, json, os, socket, sys, time\nimport ssaproxy\nresult = {}\n"
                "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") +
                "\nfinally:\n    print(json.dumps(result, default=repr))\n")
        argv = [sys.executable, "-c", body]
        if user is not None:
            entry = pwd.getpwnam(user)
            argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd="/")
        lines = r.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"program printed nothing (exit {r.returncode}):\n{r.stderr[-3000:]}")
        out = json.loads(lines[-1])
        out["_exit"], out["_stderr"] = r.returncode, r.stderr
        return out
