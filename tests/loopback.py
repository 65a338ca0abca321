"""A real `twistd -n ssaproxy` daemon on loopback in front of a plaintext backend
(tests/peers/backend.py), for end-to-end tests that need no network namespace.

    with LoopbackDaemon(pki, tmp_path, CONFIG, mode="echo") as d:
        with d.connect() as s: ...

`CONFIG` is a TOML snippet formatted with free ports and the test certificate: `{port}`,
`{backend_port}`, `{admin_port}`, `{certificates}` (the "good" server's chain and key), plus any
keyword values given.  Processes are started with recorded PIDs and stopped by them (daemon
first, then the backend).  The pieces (spawn_backend, spawn_daemon, wait_started, certificates,
client_context, tls_client) serve harnesses that rewrite their config themselves.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

from tests.api_harness import free_port
from tests.lab import PEERS, _twistd, poll, stop, wait_for_text
from tests.pki import PKI

Proc = subprocess.Popen[bytes]


def certificates(chain: Union[str, Path], key: Union[str, Path]) -> str:
    """An inbound's `certificates` line for one chain and key."""
    return f'certificates = [ {{ chain = "{chain}", key = "{key}" }} ]'


def spawn_backend(port: int, mode: str, log: Path, *args: str) -> Proc:
    """tests/peers/backend.py on 127.0.0.1:`port` in `mode` (echo, source, reset, http); not waited for."""
    with log.open("wb") as out:  # the child has its own copy once Popen returns
        return subprocess.Popen([sys.executable, str(PEERS / "backend.py"), "127.0.0.1", str(port), mode, *args],
                                stdout=out, stderr=subprocess.STDOUT)


def spawn_daemon(config: Path, log: Path, *, preexec_fn: Optional[Callable[[], Any]] = None) -> Proc:
    """`twistd -n ssaproxy --config CONFIG`, output to `log`; not waited for."""
    with log.open("wb") as out:
        return subprocess.Popen([_twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)  # noqa: PLW1509 - no threads yet


def wait_started(backend: Proc, backend_log: Path, daemon: Proc, log: Path) -> None:
    """Until the backend says READY (15 s) and the daemon "ssaproxy started" (20 s)."""
    wait_for_text(backend_log, "READY", backend, 15)
    wait_for_text(log, "ssaproxy started", daemon, 20)


def client_context(pki: PKI) -> ssl.SSLContext:
    """A TLS client context trusting the test PKI's root."""
    return ssl.create_default_context(cadata=pki.root_pem.read_text())


def tls_client(trust: Union[PKI, ssl.SSLContext], port: int, *, timeout: float = 10,
               suppress_ragged_eofs: bool = False) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:`port` for backend.test, handshake done."""
    ctx = trust if isinstance(trust, ssl.SSLContext) else client_context(trust)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="backend.test", suppress_ragged_eofs=suppress_ragged_eofs)
    except BaseException:
        raw.close()
        raise


class LoopbackDaemon:
    """The daemon, its backend and their logs in `directory`; a context manager."""

    def __init__(self, pki: PKI, directory: Path, config: str, *, mode: str = "echo",
                 backend_args: tuple[str, ...] = (), stop_signal: int = signal.SIGTERM,
                 preexec_fn: Optional[Callable[[], Any]] = None, **values: Any) -> None:
        self.pki = pki
        self.directory = directory
        self.mode, self.backend_args = mode, backend_args
        self.stop_signal, self.preexec_fn = stop_signal, preexec_fn
        self.port, self.backend_port, self.admin_port = free_port(), free_port(), free_port()
        good = pki.server("good")
        self.values: dict[str, Any] = {"port": self.port, "backend_port": self.backend_port,
                                       "admin_port": self.admin_port,
                                       "certificates": certificates(good.chain, good.key), **values}
        self.config = directory / "ssaproxy.toml"
        self.config.write_text(config.format(**self.values))
        self.log = directory / "daemon.log"
        self.backend_log = directory / "backend.log"
        self.context = client_context(pki)
        self.daemon: Optional[Proc] = None
        self.backend: Optional[Proc] = None

    def start(self) -> LoopbackDaemon:
        try:
            self.backend = spawn_backend(self.backend_port, self.mode, self.backend_log, *self.backend_args)
            self.daemon = spawn_daemon(self.config, self.log, preexec_fn=self.preexec_fn)
            wait_started(self.backend, self.backend_log, self.daemon, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            stop(self.daemon, self.stop_signal)
        if self.backend is not None:
            stop(self.backend)

    def __enter__(self) -> LoopbackDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """The last daemon log line containing `text`, once there is one (asserted)."""
        found = poll(lambda: [x for x in self.text().splitlines() if text in x], timeout)
        assert found, self.text()[-3000:]
        return found[-1]

    def connect(self, port: Optional[int] = None, *, timeout: float = 10,
                suppress_ragged_eofs: bool = False) -> ssl.SSLSocket:
        """A TLS client to the inbound listener (`port`, by default the `{port}` one)."""
        return tls_client(self.context, self.port if port is None else port, timeout=timeout,
                          suppress_ragged_eofs=suppress_ragged_eofs)

