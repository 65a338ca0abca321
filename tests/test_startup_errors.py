"""A daemon that cannot start says why in one line, and exits 2 (as `check-config` does).

Each case runs the real `twistd -n ssaproxy` from the installed package: a port in use, a low
port without root, an API socket another daemon serves, an API socket directory the daemon's
user cannot write, a certificate key the daemon's user cannot read, a certificate that is not
there.  Before this, each was a 30-40 line traceback and exit 1 (or, for the API socket, a
traceback logged by a daemon that went on running).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.api_harness import free_port
from tests.lab import NOBODY, _twistd
from tests.pki import PKI

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the daemon as root and as nobody")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory nobody can read (pytest's tmp_path is root's alone): configs and certificates
    for a daemon started as nobody."""
    path = Path(tempfile.mkdtemp(prefix="ssaproxy-startup-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start(config: Path, *, as_nobody: bool = False) -> tuple[int, list[str], str]:
    """Exit status, stderr lines and log (stdout) of a daemon that is expected not to start."""
    cmd = [*(NOBODY if as_nobody else []), _twistd(), "-n", "--pidfile=", "ssaproxy", "--config", str(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=config.parent)
    return r.returncode, r.stderr.splitlines(), r.stdout


def refused(config: Path, *words: str, as_nobody: bool = False) -> str:
    code, err, log = start(config, as_nobody=as_nobody)
    assert code == 2, (code, err, log[-3000:])
    assert len(err) == 1, err
    assert "Traceback" not in log, log[-3000:]
    (line,) = err
    assert line.startswith("ssaproxy: cannot start: "), line
    for word in words:
        assert word in line, (word, line)
    print(line)  # the report quotes these (pytest -s)
    return line


def outbound(port: int, interface: str = "127.0.0.1") -> str:
    return (f'[outbound]\nlisten = "tcp:{port}:interface={interface}"\n'
            '[[outbound.route]]\ndestination = "0.0.0.0/0"\nhostname = "a.test"\n')


def test_port_in_use(shared: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = shared / "c.toml"
    config.write_text(outbound(port))
    try:
        refused(config, "outbound.listen", f"127.0.0.1:{port}", "Address already in use")
    finally:
        busy.close()


def test_inbound_port_in_use_names_the_listener(shared: Path, pki: PKI) -> None:
    good = pki.server("good")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = shared / "c.toml"
    config.write_text(f'[[inbound]]\nname = "web"\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
                      f'backend = "tcp:127.0.0.1:8080"\n'
                      f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\n')
    try:
        refused(config, "inbound.web.listen", f"127.0.0.1:{port}", "Address already in use")
    finally:
        busy.close()


def _free_low_port() -> int:
    for port in range(1000, 600, -1):
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    pytest.skip("no free port below 1024")


def test_low_port_without_root(shared: Path) -> None:
    unprivileged = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if unprivileged.exists() and int(unprivileged.read_text()) <= 600:
        pytest.skip("every port is unprivileged on this host")
    port = _free_low_port()
    config = shared / "c.toml"
    config.write_text(outbound(port))
    refused(config, "outbound.listen", f"127.0.0.1:{port}", "Permission denied", "CAP_NET_BIND_SERVICE",
            as_nobody=True)


def test_api_socket_served_by_a_live_daemon(shared: Path) -> None:
    path = shared / "api.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    config = shared / "c.toml"
    config.write_text(f'[api]\nsocket = "{path}"\n')
    try:
        refused(config, "api.socket", str(path), "in use")
    finally:
        other.close()
    assert path.exists(), "the live daemon's socket was left alone"


def test_api_socket_directory_not_writable(shared: Path) -> None:
    directory = shared / "run"
    directory.mkdir(mode=0o755)  # root's: nobody cannot create the socket in it
    config = shared / "c.toml"
    config.write_text(f'[api]\nsocket = "{directory}/api.sock"\n')
    refused(config, "api.socket", str(directory), "not writable", as_nobody=True)


def test_api_socket_path_is_not_a_socket(shared: Path) -> None:
    path = shared / "api.sock"
    path.write_text("a file\n")
    config = shared / "c.toml"
    config.write_text(f'[api]\nsocket = "{path}"\n')
    refused(config, "api.socket", str(path), "not a socket")


def _inbound(shared: Path, pki: PKI, key_mode: int, chain: Optional[str] = None) -> Path:
    good = pki.server("good")
    shutil.copy(good.chain, shared / "chain.pem")
    shutil.copy(good.key, shared / "key.pem")
    (shared / "chain.pem").chmod(0o644)
    (shared / "key.pem").chmod(key_mode)
    config = shared / "c.toml"
    chain = chain or str(shared / "chain.pem")
    config.write_text(f'[[inbound]]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
                      'backend = "tcp:127.0.0.1:8080"\n'
                      f'certificates = [ {{ chain = "{chain}", key = "{shared / "key.pem"}" }} ]\n')
    return config


def test_certificate_key_unreadable(shared: Path, pki: PKI) -> None:
    config = _inbound(shared, pki, 0o600)  # root's alone
    line = refused(config, str(config), "inbound[0].certificates[0].key (line 4)", "Permission denied",
                   as_nobody=True)
    assert str(shared / "key.pem") in line


def test_certificate_missing(shared: Path, pki: PKI) -> None:
    config = _inbound(shared, pki, 0o600, chain=str(shared / "missing.pem"))
    refused(config, "inbound[0].certificates[0].chain (line 4)", "No such file or directory")
