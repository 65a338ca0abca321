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
            "ssaproxy/client/__init__.py", "twisted/plugins/ssaproxy_endpoint.py"} <= names


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
