"""benchmarks/sampler.py (the CPU-tick stack sampler) and profile_daemon.py's API mode.

The sampler is checked in this process: it records the stacks of work this test does, with
weights that are CPU time (positive, and never more than the CPU the process used meanwhile).
profile_daemon.py --mode api --sample runs end to end at a tiny size: the Python library's
connections go through the daemon (its log counts them), and the sampled profile holds the
API's own code.  Nothing asserts how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import sampler  # noqa: E402 - a benchmark module, found through the path above


def _busy(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += sum(range(i % 1000))
    return total


def test_sampler_records_the_stacks_it_interrupts(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    s = sampler.Sampler()
    before = time.process_time()
    s.start()
    for _ in range(400):  # bounded: stops once there are samples enough, or after 400 rounds
        _busy(2000)
        if s.samples >= 20:
            break
    s.stop(str(out))
    used = time.process_time() - before
    data = json.loads(out.read_text())
    assert data["samples"] == s.samples >= 20
    weights = list(data["stacks"].values())
    assert all(w >= 0 for w in weights)
    assert 0 < sum(weights) <= used
    busy = sum(w for stack, w in data["stacks"].items() if stack.split(";")[-1].endswith("(_busy)"))
    assert busy > 0  # the loop (and the C sum it calls) is where the samples land


def test_report_names_the_functions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"samples": 3, "stacks": {"a.py:1(main);b.py:5(work)": 0.003,
                                                         "a.py:1(main)": 0.001,
                                                         "x.py:1(other)": 0.002}}))
    sampler.report(str(path), 2.0, "connection", 5, within="main")
    text = capsys.readouterr().out
    assert "3 samples, 0.00 s CPU = 2000 µs per connection" in text  # x.py's sample is outside main
    assert "1500.0" in text and "b.py:5(work)" in text  # self: 0.003 s over 2 connections
    assert "x.py:1(other)" not in text


@pytest.mark.netns
def test_profile_daemon_api_mode_samples_the_api_path() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_daemon.py"), "--mode", "api",
                        "--load", "conns", "--n", "60", "--concurrency", "1", "--repeat", "1", "--sample",
                        "--top", "200", "--budget", "240"],
                       capture_output=True, text=True, timeout=360, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "api conns: median" in r.stdout
    assert "outcomes: {'closed': 110}" in r.stdout  # 50 warm-up and 60 measured, each a whole API session
    assert "ssaproxy/api/server.py" in r.stdout  # the control connection's code was sampled
    assert "system" in r.stdout and "user" in r.stdout
