"""The README's self-contained transparent-mode example must keep working as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_lab
from tests.lab import REPO


def test_transparent_demo_script(tmp_path: Path) -> None:
    require_lab()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(REPO / "examples" / "transparent-demo.sh")], capture_output=True, text=True,
                       timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "New, TLSv1.3, Cipher is" in out  # the page s_server sent back through the proxy
    assert "curl: (56) Recv failure: Connection reset by peer" in r.stdout + r.stderr
    assert "verified=True" in out and "verify-failed" in out and "self-signed certificate" in out
    assert "ssademo-app" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
