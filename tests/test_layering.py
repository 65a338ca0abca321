"""The layering of ssaproxy as a checked contract: `lint-imports` with the contracts of
pyproject.toml ([tool.importlinter]) over the source tree, and proof that those very contracts
catch a low module importing Twisted or the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.lab import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(source_root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the contracts are about this tree, not a copy installed in site-packages.
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
                          env=env, cwd=source_root, capture_output=True, text=True, timeout=120)


def test_the_source_keeps_every_layering_contract() -> None:
    r = lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


def test_a_pure_module_importing_twisted_or_the_api_breaks_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(REPO / "ssaproxy", tmp_path / "ssaproxy", ignore=shutil.ignore_patterns("__pycache__"))
    sniff = tmp_path / "ssaproxy" / "sniff.py"
    sniff.write_text(sniff.read_text() + "\nimport twisted.internet.reactor  # noqa\n")
    wire = tmp_path / "ssaproxy" / "proto" / "wire.py"
    wire.write_text(wire.read_text() + "\nimport ssaproxy.api.server  # noqa\n")
    stream = tmp_path / "ssaproxy" / "tls" / "stream.py"
    stream.write_text(stream.read_text() + "\nimport ssaproxy.outbound  # noqa\n")
    relay = tmp_path / "ssaproxy" / "relay.py"
    relay.write_text(relay.read_text() + "\nimport ssaproxy.inbound  # noqa\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "ssaproxy.sniff is not allowed to import twisted" in r.stdout, r.stdout
    assert "ssaproxy.proto is not allowed to import ssaproxy.api" in r.stdout, r.stdout
    assert "ssaproxy.tls is not allowed to import ssaproxy.outbound" in r.stdout, r.stdout
    assert "ssaproxy.relay is not allowed to import ssaproxy.inbound" in r.stdout, r.stdout
    assert "No import cycles among ssaproxy's packages and modules BROKEN" in r.stdout, r.stdout  # api -> proto
