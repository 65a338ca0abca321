"""A CPU-time sampling profiler for the daemon, with nothing to install.

cProfile charges a fixed cost to every Python call, so code made of many small calls (a
protocol codec, accounting, Twisted's dispatch) looks several times dearer than it is next to
one long C call (a TLS handshake).  This sampler instead interrupts the process every
`interval` seconds of its own CPU time (ITIMER_PROF: user + system, so time spent waiting in
epoll is never sampled) and records the Python stack it was in.  The kernel delivers the
timer on its scheduler tick (4 ms at HZ=250) whatever interval is asked for, so each sample is
weighted by the process's CPU time since the previous one: the weights add up to the CPU the
process used while sampled.  A C function's time goes to the Python frame that called it, which
is where a change would be made anyway.

The profile file it writes is JSON: {"samples": n, "stacks": {"f1;f2;...": CPU seconds}},
outermost frame first; `report` turns it into self and inclusive time per function.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
import time
from types import FrameType
from typing import Optional


class Sampler:
    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.stacks: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self.last = 0.0

    def _tick(self, _signum: int, frame: Optional[FrameType]) -> None:
        names: list[str] = []
        depth = 0
        while frame is not None and depth < 200:
            code = frame.f_code
            names.append(f"{short(code.co_filename)}:{code.co_firstlineno}({code.co_name})")
            frame = frame.f_back
            depth += 1
        now = time.process_time()
        self.stacks[";".join(reversed(names))] += now - self.last
        self.last = now
        self.samples += 1

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._tick)
        self.last = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self, path: str) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(path, "w") as f:
            json.dump({"samples": self.samples, "stacks": self.stacks}, f)


def short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    return filename


def report(path: str, units: float, unit: str, top: int, *, within: str = "") -> None:
    """Self and inclusive CPU per unit for the `top` functions; `within`: only samples whose
    stack contains a frame matching it (e.g. 'mainLoop': the serving, not the start-up)."""
    with open(path) as f:
        data = json.load(f)
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    counted = 0.0
    for stack, n in data["stacks"].items():
        frames = stack.split(";")
        if within and not any(within in fr for fr in frames):
            continue
        counted += n
        own[frames[-1]] += n
        for fr in set(frames):
            incl[fr] += n
    per = 1e6 / units
    print(f"  sampled: {data['samples']} samples, {counted:.2f} s CPU = {counted * per:.0f} µs per {unit}"
          f"{' (within ' + within + ')' if within else ''}")
    print(f"  {'self µs/' + unit:>16} {'share':>6}  function (self: itself and the C it calls)")
    for name, n in own.most_common(top):
        print(f"  {n * per:16.1f} {n / max(1, counted):6.1%}  {name}")
    print(f"  {'incl µs/' + unit:>16} {'share':>6}  function (inclusive)")
    for name, n in incl.most_common(top):
        print(f"  {n * per:16.1f} {n / max(1, counted):6.1%}  {name}")


if __name__ == "__main__":  # python sampler.py FILE UNITS [TOP] [WITHIN]: print a saved profile
    report(sys.argv[1], float(sys.argv[2]), "unit", int(sys.argv[3]) if len(sys.argv) > 3 else 40,
           within=sys.argv[4] if len(sys.argv) > 4 else "")
