"""The package as users install it: a wheel whose twistd plugin is discoverable."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.lab import REPO, _twistd


def test_wheel_ships_the_plugin_without_shadowing_twisted(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ssaproxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/ssaproxy_plugin.py" in names
    # An __init__.py here would replace Twisted's own package and break every other plugin.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert {"ssaproxy/tls/verify.py", "ssaproxy/outbound.py", "ssaproxy/proto/wire.py", "ssaproxy/api/server.py",
            "ssaproxy/client/__init__.py", "twisted/plugins/ssaproxy_endpoint.py", "ssaproxy/py.typed"} <= names


def test_a_users_type_checker_sees_the_library(tmp_path: Path) -> None:
    program = tmp_path / "client.py"
    program.write_text("import socket\n\nimport ssaproxy\n\n"
                       "s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)\n"
                       "s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_REMOTE_HOSTNAME, b'example.com')\n"
                       "version: int = ssaproxy.TLS1_3_VERSION\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_twistd_finds_the_plugin_outside_the_source_tree(tmp_path: Path) -> None:
    r = subprocess.run([_twistd(), "ssaproxy", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout and "embedded default" in r.stdout


def test_the_ssa_endpoint_string_is_found_outside_the_source_tree(tmp_path: Path) -> None:
    code = ("from twisted.internet import reactor\n"
            "from twisted.internet.endpoints import clientFromString\n"
            "print(type(clientFromString(reactor, 'ssa:host=example.com:port=443')).__name__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SSAClientEndpoint"
