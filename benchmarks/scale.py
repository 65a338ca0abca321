#!/usr/bin/env python3
"""One daemon holding many relayed connections at once: descriptors and memory before, during
and after, and how long a new connection takes while they are held.

    python benchmarks/scale.py                 # 10,000 connections (about a minute on 2 CPUs)
    python benchmarks/scale.py --count 2000    # smaller

What runs (all on 127.0.0.1, as root so the limits can be raised):

* an echo backend: an asyncio server in this process;
* ssaproxy: `twistd -n --pidfile= ssaproxy` with one `[[inbound]]` listener (TLS terminated,
  plaintext to the backend), `[daemon] workers = 1` (one process, so its /proc figures are the
  daemon's), started with the open files limit of a typical service (soft 1024) under a hard
  limit that allows the connections: the daemon raises its own soft limit at start-up;
* the clients: asyncio TLS connections from this process (full TLS 1.3 handshakes), each of
  which sends a line and reads its echo, so every connection counted is relayed end to end.

Measured: the daemon's open descriptors (/proc/PID/fd) and resident memory (VmRSS) once it is
up, with every connection open, and after they have all closed; the time for one more
connection (TCP connect, TLS handshake, one echo) while the others are held.  A measurement, not
a test: tests/test_e2e_scale.py asserts the behaviour at a smaller count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pki import write_pki  # noqa: E402 - a sibling module

CONFIG = """
[daemon]
workers = {workers}
drain_timeout = 1
watch_interval = 0

[[inbound]]
name = "scale"
listen = "tcp:{port}:interface=127.0.0.1:backlog=4096"
backend = "tcp:127.0.0.1:{backend_port}"
max_connections = {cap}
worker_affinity = "none"   # every client is 127.0.0.1: spread them over the workers
certificates = [ {{ chain = "{chain}", key = "{key}" }} ]
"""

BATCH = 200  # handshakes in flight at once while filling up
TRIM_WAIT = 6.0  # seconds after the last close before memory is measured (the daemon looks every 5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes(pid: int) -> list[int]:
    """The daemon: its main process and, with workers, its children."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in processes(pid))


def rss_kib(pid: int) -> int:
    total = 0
    for p in processes(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def workers_needed(count: int) -> int:
    """One process holds 2 descriptors per relayed connection under the hard open files limit,
    which only a process with CAP_SYS_RESOURCE can raise: beyond it, more workers."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = (hard - 256) // 2 if hard != resource.RLIM_INFINITY else count
    return max(1, -(-count // max(room, 1)))


def throwaway_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(chain, key, CA) for backend.test from a throwaway CA."""
    return write_pki(directory, "backend.test")


def _service_limits() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # a service's usual soft limit


def backend(port_file: Path) -> None:
    """`--role backend`: the echo server, in a process of its own (its descriptors are not the
    clients')."""
    async def serve() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=4096)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await server.serve_forever()
    _raise_own_limit()
    asyncio.run(serve())


def _raise_own_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _connect(port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="backend.test")
    writer.write(b"hello\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 30)
    if line != b"hello\n":
        raise RuntimeError(f"echo answered {line!r}")
    return reader, writer


def _one_new(port: int, context: ssl.SSLContext) -> float:
    """One new connection with a blocking client (asyncio's own TLS client adds tens of ms on
    loopback, which would hide the daemon's part): connect, handshake, one echo; seconds."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="backend.test") as tls:
        tls.sendall(b"hello\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = tls.recv(100)
            if not chunk:
                break
            got += chunk
        elapsed = time.perf_counter() - t0
    if got != b"hello\n":
        raise RuntimeError(f"echo answered {got!r}")
    return elapsed


async def _time_new(port: int, context: ssl.SSLContext, rounds: int = 5) -> float:
    """The median time, in ms, of `rounds` new connections, one at a time, while this
    process's event loop (and the connections it holds) stays idle."""
    times = [await asyncio.to_thread(_one_new, port, context) for _ in range(rounds)]
    return sorted(times)[len(times) // 2] * 1000


async def _wait_for(probe: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        await asyncio.sleep(0.1)
    return probe()


async def _run(count: int, work: Path, certs: tuple[Path, Path, Path], workers: int, rounds: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    chain, key, root = certs
    port_file = work / "backend.port"
    echo = subprocess.Popen([sys.executable, __file__, "--role", "backend", str(port_file)])
    daemon: Optional[subprocess.Popen[bytes]] = None
    held: list[asyncio.StreamWriter] = []
    try:
        if not await _wait_for(lambda: port_file.exists() and port_file.read_text() != "", 20):
            raise RuntimeError("the echo backend did not start")
        backend_port = int(port_file.read_text())
        port = free_port()
        config = work / "scale.toml"
        config.write_text(CONFIG.format(port=port, backend_port=backend_port, cap=count + 100, chain=chain, key=key,
                                        workers=workers))
        daemon_log = work / "daemon.log"
        twistd = str(Path(sys.executable).parent / "twistd")
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen([twistd, "-n", "--pidfile=", "ssaproxy", "--config", str(config)], stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=_service_limits)  # noqa: PLW1509
        ready = "ssaproxy started" if workers == 1 else "workers ready"
        if not await _wait_for(lambda: ready in daemon_log.read_text(errors="replace")
                               or daemon.poll() is not None, 30) or daemon.poll() is not None:
            raise RuntimeError(f"the daemon did not start:\n{daemon_log.read_text(errors='replace')[-2000:]}")
        pid = daemon.pid
        limit = next(line for line in daemon_log.read_text().splitlines() if "open files limit" in line)
        context = ssl.create_default_context(cafile=str(root))
        figures: dict[str, Any] = {"count": count, "limit_line": limit.split("] ", 1)[-1], "workers": workers}
        # A few connections first: what the daemon makes once, on first use (a worker's metrics
        # files, lazily imported modules), is not the cost of holding connections.
        figures["idle_connection_ms"] = await _time_new(port, context)
        await asyncio.sleep(1.5)
        figures["fds_before"], figures["rss_before"] = fds(pid), rss_kib(pid)
        baseline = figures["fds_before"]
        for round_number in range(1, rounds + 1):
            suffix = "" if round_number == 1 else f"_{round_number}"
            started = time.perf_counter()
            for first in range(0, count, BATCH):
                batch = await asyncio.gather(*(_connect(port, context) for _ in range(min(BATCH, count - first))))
                held += [writer for _, writer in batch]
                if len(held) % 2000 == 0:
                    log(f"  round {round_number}: {len(held)} connections open")
            figures["fill_seconds" + suffix] = time.perf_counter() - started
            await asyncio.sleep(1)  # let the daemon settle (nothing in flight)
            figures["fds_during" + suffix], figures["rss_during" + suffix] = fds(pid), rss_kib(pid)
            figures["new_connection_ms" + suffix] = await _time_new(port, context)
            for writer in held:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in held), return_exceptions=True)
            held.clear()
            figures["fds_back" + suffix] = await _wait_for(lambda: fds(pid) == baseline, 60)
            await asyncio.sleep(TRIM_WAIT)  # the daemon gives memory back at its next look (capacity.MemoryTrim)
            figures["fds_after" + suffix], figures["rss_after" + suffix] = fds(pid), rss_kib(pid)
        figures["daemon_pid"] = pid
        return figures
    finally:
        for writer in held:
            writer.transport.abort()
        for process in (daemon, echo):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def run(count: int, work: Path, certs: Optional[tuple[Path, Path, Path]] = None, workers: int = 1,
        rounds: int = 1, log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Measure with `count` connections, opened and closed `rounds` times; the figures as a
    dict (a second round's keys end in _2).  `certs`: (chain, key, CA) for backend.test
    (default: a throwaway CA, bench_pki.py)."""
    _raise_own_limit()  # the clients' ends are in this process
    return asyncio.run(_run(count, work, certs or throwaway_certificates(work), workers, rounds, log))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="connections held at once (default 10000)")
    parser.add_argument("--workers", type=int, default=0,
                        help="[daemon] workers (default: 1, or as many as the hard open files limit needs)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fill and empty the daemon this many times (default 2: the second shows reuse)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("port_file", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "backend":
        backend(Path(args.port_file))
        return
    workers = args.workers or workers_needed(args.count)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with tempfile.TemporaryDirectory(prefix="ssaproxy-scale-") as work:
        print(f"opening {args.count} relayed TLS connections through one daemon with {workers} worker(s) "
              f"(hard open files limit {hard}) ...", flush=True)
        f = run(args.count, Path(work), workers=workers, rounds=args.rounds, log=lambda text: print(text, flush=True))
    print(f"\n{f['limit_line']}")
    print(f"{'':34}{'before':>10}{'during':>10}{'after':>10}")
    for r in range(1, args.rounds + 1):
        x = "" if r == 1 else f"_{r}"
        print(f"{f'round {r}: daemon open descriptors':34}{f['fds_before']:>10}{f['fds_during' + x]:>10}"
              f"{f['fds_after' + x]:>10}")
        print(f"{f'round {r}: daemon RSS (KiB)':34}{f['rss_before']:>10}{f['rss_during' + x]:>10}"
              f"{f['rss_after' + x]:>10}")
    print(f"descriptors per held connection: {(f['fds_during'] - f['fds_before']) / f['count']:.2f}; memory per "
          f"held connection: {(f['rss_during'] - f['rss_before']) / f['count']:.1f} KiB")
    print(f"opening all {f['count']}: {f['fill_seconds']:.1f} s; descriptors back to baseline after each round: "
          f"{[f['fds_back' + ('' if r == 1 else f'_{r}')] for r in range(1, args.rounds + 1)]}")
    print(f"a new connection (blocking client: connect + TLS handshake + echo), median of 5: "
          f"{f['idle_connection_ms']:.1f} ms "
          f"with none held, {f['new_connection_ms']:.1f} ms while {f['count']} are held")

if __name__ == "__main__":
    main()
