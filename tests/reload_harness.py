"""A real daemon terminating TLS on loopback in front of an echo backend, whose config and
certificate files a test may rewrite: for reload tests (no network namespace needed)."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from cryptography import x509

from tests.api_harness import free_port
from tests.lab import PEERS, poll, stop
from tests.loopback import certificates, spawn_backend, spawn_daemon, tls_client, wait_started
from tests.pki import PKI, ServerCreds

sys.path.insert(0, str(PEERS))
from pattern import pattern  # noqa: E402  (tests/peers is not a package)

STEP = 65536


class Front:
    """The daemon, its echo backend, and the files a reload reads."""

    def __init__(self, pki: PKI, directory: Path, *, watch_interval: float = 0) -> None:
        self.pki = pki
        self.dir = directory
        self.watch_interval = watch_interval
        self.certs = directory / "certs"
        self.certs.mkdir(exist_ok=True)
        self.chain, self.key = self.certs / "chain.pem", self.certs / "key.pem"
        self.install(pki.server("good"))
        self.backend_port = free_port()
        self.config = directory / "ssaproxy.toml"
        self.log = directory / "daemon.log"
        self.backend_log = directory / "backend.log"
        self.daemon: Optional[subprocess.Popen[bytes]] = None
        self.backend: Optional[subprocess.Popen[bytes]] = None

    def install(self, creds: ServerCreds) -> None:
        """Put `creds` in place the way certbot does: write beside, then rename over."""
        for source, target in ((creds.key, self.key), (creds.chain, self.chain)):
            temporary = target.with_suffix(".new")
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)

    def listener(self, name: str, port: int) -> str:
        return (f'[[inbound]]\nname = "{name}"\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
                f'backend = "tcp:127.0.0.1:{self.backend_port}"\n'
                f"{certificates(self.chain, self.key)}\n")

    def write_config(self, *listeners: tuple[str, int], extra: str = "") -> None:
        text = f"[daemon]\nwatch_interval = {self.watch_interval}\n" + extra
        text += "".join(self.listener(name, port) for name, port in listeners)
        temporary = self.config.with_suffix(".new")
        temporary.write_text(text)
        os.replace(temporary, self.config)

    def start(self, *listeners: tuple[str, int]) -> Front:
        self.write_config(*listeners)
        return self.start_as_written()

    def start_as_written(self) -> Front:
        """Start with the config file as it is (a test may write its own)."""
        self.backend = spawn_backend(self.backend_port, "echo", self.backend_log)
        self.daemon = spawn_daemon(self.config, self.log)
        wait_started(self.backend, self.backend_log, self.daemon, self.log)
        return self

    def stop(self) -> None:
        for proc in (self.daemon, self.backend):
            if proc is not None:
                stop(proc)

    def hup(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGHUP)

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    def wait_log(self, text: str, times: int = 1, timeout: float = 10) -> None:
        assert poll(lambda: self.count(text) >= times, timeout), self.log.read_text(errors="replace")[-3000:]

    def connect(self, port: int) -> ssl.SSLSocket:
        return tls_client(self.pki, port)


def serial(s: ssl.SSLSocket) -> int:
    der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def file_serial(path: Path) -> int:
    return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


class Echo:
    """A stream through the daemon to the echo backend: what is sent must come back exactly."""

    def __init__(self, s: ssl.SSLSocket, total: int) -> None:
        self.s = s
        self.data = pattern(total)
        self.offset = 0

    def exchange(self, n: int) -> None:
        """Send the next `n` bytes a piece at a time and read each piece's echo back."""
        end = min(self.offset + n, len(self.data))
        while self.offset < end:
            piece = self.data[self.offset:min(self.offset + STEP, end)]
            self.s.sendall(piece)
            got = b""
            while len(got) < len(piece):
                chunk = self.s.recv(len(piece) - len(got))
                assert chunk, f"eof after {self.offset + len(got)} bytes"
                got += chunk
            assert got == piece, f"bytes differ at offset {self.offset}"
            self.offset += len(piece)

    def finish(self) -> None:
        """Everything else, then a clean end both ways: our close_notify, the daemon's back,
        then the TCP FIN."""
        self.exchange(len(self.data))
        raw: Any = self.s.unwrap()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if raw.recv(4096) == b"":
                break
        raw.close()
