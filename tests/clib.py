"""The C library in tests: where the installed package keeps it, and C programs (the examples,
tests/peers/ssa_probe.c) compiled with gcc against it, as a user builds them.

Tests use the *installed* library (`pip install .` built it), never one built from the tree."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from tests.lab import PEERS, REPO

EXAMPLES = REPO / "examples"
WARNINGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]


@functools.cache
def installed() -> Path:
    """ssaproxy/c/ of the installed package (asked from a directory outside the tree)."""
    out = subprocess.run([sys.executable, "-c", "import os, ssaproxy; print(os.path.dirname(ssaproxy.__file__))"],
                         cwd="/", capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    return Path(out.stdout.strip()) / "c"


def flags() -> list[str]:
    lib = installed()
    return [f"-I{lib / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lssaproxy"]


def compile_c(source: Path, out_dir: Path, *extra: str, link: bool = True) -> Path:
    """gcc SOURCE with -Wall -Wextra -Werror against the installed library; the binary."""
    binary = out_dir / source.stem
    argv = ["gcc", *WARNINGS, str(source), "-o", str(binary), *extra, "-pthread"]
    argv += flags() if link else [f"-I{installed() / 'include'}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr, f"{' '.join(argv)}\n{r.stderr}"
    return binary


@functools.cache
def _probe_cache(out_dir: str) -> Path:
    return compile_c(PEERS / "ssa_probe.c", Path(out_dir))


def probe_binary(out_dir: Path) -> Path:
    return _probe_cache(str(out_dir))


def probe(binary: Path, *commands: str, env: Optional[dict[str, str]] = None, timeout: float = 60,
          user: Optional[str] = None) -> list[list[str]]:
    """Run the probe; one [command, rc, errno name, value] per call it made."""
    argv: list[str] = [str(binary), *commands]
    if user is not None:
        argv = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", *argv]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"probe exited {r.returncode}: {r.stderr}"
    return [line.split(" ", 3) + [""] * (4 - len(line.split(" ", 3))) for line in r.stdout.splitlines()]


def preload_env(env: Optional[dict[str, Any]] = None, **more: str) -> dict[str, str]:
    """An environment that preloads the installed library into an unmodified program."""
    base = dict(os.environ if env is None else env)
    base["LD_PRELOAD"] = str(installed() / "libssaproxy.so")
    base.update(more)
    return base


def run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    return subprocess.run(list(argv), **kw)
