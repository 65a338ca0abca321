"""The C library's framing (ssaproxy/c/wire.c) checked alone: tests/peers/wire_unit.c compiles
wire.c from the source tree with AddressSanitizer (a unit test of internals, so not the
installed library) and checks that a frame over 1 MiB is refused without a stale buffer (once a
double free), and that descriptors which arrived with a frame the library refuses, or cut
short, are closed (once leaked)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clib import WARNINGS
from tests.lab import PEERS


def test_the_frame_builder_and_reader_keep_their_memory_and_descriptors(tmp_path: Path) -> None:
    binary = tmp_path / "wire_unit"
    build = subprocess.run(["gcc", *WARNINGS, "-fsanitize=address", "-g", str(PEERS / "wire_unit.c"), "-o",
                            str(binary)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0 and not build.stderr, build.stderr
    r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r
    assert r.stdout.split() == ["frame_1048512", "ok", "frame_1048568", "ok", "frame_1048576", "ok",
                                "fd_eproto", "ok", "fd_eproto_short", "ok", "fd_header_cut", "ok"], r.stdout
