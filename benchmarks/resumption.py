#!/usr/bin/env python3
"""Handshake CPU of the daemon with and without TLS session resumption, per connection.

    python benchmarks/resumption.py                 # 300 connections per case and round, 3 rounds
    python benchmarks/resumption.py --conns 100 --rounds 1 --key rsa
    python benchmarks/resumption.py --workers 2     # a main process and two workers

Everything runs on loopback: a throwaway CA (bench_pki.py), a Python ssl TLS server (threads, one
line in, the same line out, counting resumed handshakes), a plaintext echo backend, and
`twistd -n ssaproxy` with the socket API and one inbound listener.  Two faces are measured:

* client side (the socket API): a program opens sequential connections to the TLS server
  through the daemon with TLS_SESSION_REUSE 0 or 1 (the daemon is the TLS client);
* server side (an inbound listener): a Python ssl client opens sequential connections to the
  listener, offering its previous session or not (the daemon is the TLS server).

With `--workers N` (above 1) the daemon runs N worker processes and the inbound face is
measured on two listeners: one with the default `worker_affinity = "source-address"` (each
client address kept to one worker, whose tickets it resumes) and one with `worker_affinity =
"none"` (the kernel's spread: a ticket resumes only where it was made, about one in N).

For each case the daemon's CPU time (utime + stime from /proc/PID/stat, summed over the main
process and its workers) over the batch is divided by the number of connections.  Cases
alternate within each round (off, on, on, off, ...) and the median over rounds is printed.
The TLS server's and the client's own counts of resumed handshakes are printed too, so
"resumed" is checked, not assumed.  Nothing asserts on timings; this prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pki import write_pki  # noqa: E402 - a sibling module

DEADLINE = time.monotonic() + 600  # the whole run


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of its children (the workers), as they are now."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += sum(cpu_seconds(int(c)) for c in (task / "children").read_text().split())
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.full = self.resumed = 0

    def add(self, resumed: bool) -> None:
        with self.lock:
            if resumed:
                self.resumed += 1
            else:
                self.full += 1


def serve(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while time.monotonic() < DEADLINE:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(raw,), daemon=True).start()


def tls_server(chain: Path, key: Path, counter: Counter) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain), str(key))
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def handle(raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                counter.add(conn.session_reused)
                line = conn.recv(100)
                conn.sendall(line)
                with contextlib.suppress(ssl.SSLError, OSError):
                    conn.unwrap()
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, args=(listener, handle), daemon=True).start()
    return int(listener.getsockname()[1])


def echo_backend() -> int:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def handle(raw: socket.socket) -> None:
        raw.settimeout(10)
        with raw:
            try:
                while data := raw.recv(4096):
                    raw.sendall(data)
            except OSError:
                pass

    threading.Thread(target=serve, args=(listener, handle), daemon=True).start()
    return int(listener.getsockname()[1])


def start_daemon(work: Path, ca_pem: Path, chain: Path, key: Path, backend: int,
                 inbound: int, workers: int, spread: int) -> subprocess.Popen[bytes]:
    config = work / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{ca_pem}"

[api]
socket = "{work / 'api.sock'}"

[daemon]
workers = {workers}   # 1: one process, one listener's ticket keys

[[inbound]]
name = "bench"
listen = "tcp:{inbound}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend}"
certificates = [ {{ chain = "{chain}", key = "{key}" }} ]

[[inbound]]
name = "spread"
listen = "tcp:{spread}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend}"
certificates = [ {{ chain = "{chain}", key = "{key}" }} ]
worker_affinity = "none"
""")
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "ssaproxy", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    while time.monotonic() < DEADLINE:
        if ("ssaproxy started" if workers == 1 else f"all {workers} workers ready") in \
                (work / "daemon.log").read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise SystemExit("the daemon did not start:\n" + (work / "daemon.log").read_text()[-3000:])
        time.sleep(0.1)
    raise SystemExit("the daemon did not start in time")


def api_batch(port: int, n: int, reuse: bool) -> int:
    """`n` connections through the socket API; how many the daemon reported as resumed."""
    import ssaproxy  # noqa: PLC0415 - after SSAPROXY_SOCKET is set

    resumed = 0
    for _ in range(n):
        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        s.settimeout(10)
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_SESSION_REUSE, int(reuse))
        s.connect(("127.0.0.1", port))
        s.sendall(b"ping\n")
        s.recv(100)
        resumed += s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_RESUMED_SESSION)
        s.close()
    return resumed


def inbound_batch(port: int, ctx: ssl.SSLContext, n: int, reuse: bool) -> int:
    """`n` connections to the inbound listener; how many resumed (the client's view)."""
    session: Optional[ssl.SSLSession] = None
    resumed = 0
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="backend.test", session=session if reuse else None) as conn:
            conn.sendall(b"ping\n")
            conn.recv(100)  # TLS 1.3: the tickets came before this
            resumed += conn.session_reused
            session = conn.session
            with contextlib.suppress(ssl.SSLError, OSError):
                conn.unwrap()
    return resumed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--key", choices=["ec", "rsa"], default="ec", help="the servers' key type")
    p.add_argument("--workers", type=int, default=1, help="[daemon] workers (default 1: one process)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ssaproxy-resumption-"))
    chain, key, ca_pem = write_pki(work, "backend.test", use_rsa=args.key == "rsa")
    counter = Counter()
    upstream = tls_server(chain, key, counter)
    backend, inbound, spread = echo_backend(), free_port(), free_port()
    os.environ["SSAPROXY_SOCKET"] = str(work / "api.sock")
    daemon = start_daemon(work, ca_pem, chain, key, backend, inbound, args.workers, spread)
    faces = ["api (daemon is the client)", "inbound (daemon is the server)"]
    if args.workers > 1:
        faces = [faces[0], "inbound, worker_affinity = source-address", "inbound, worker_affinity = none"]
    client_ctx = ssl.create_default_context(cafile=str(ca_pem))
    results: dict[str, list[float]] = {}
    resumed: dict[str, int] = {}
    try:
        api_batch(upstream, 5, True)  # warm up both faces (imports, first contexts)
        inbound_batch(inbound, client_ctx, 5, True)
        inbound_batch(spread, client_ctx, 5, True)
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            for face in faces:
                for reuse in order:
                    before_full, before_resumed = counter.full, counter.resumed
                    cpu = cpu_seconds(daemon.pid)
                    start = time.monotonic()
                    if face.startswith("api"):
                        got = api_batch(upstream, args.conns, reuse)
                    else:
                        port = spread if face.endswith("none") else inbound
                        got = inbound_batch(port, client_ctx, args.conns, reuse)
                    wall = time.monotonic() - start
                    used = cpu_seconds(daemon.pid) - cpu
                    name = f"{face}, resumption {'on' if reuse else 'off'}"
                    results.setdefault(name, []).append(used / args.conns * 1e3)
                    resumed[name] = resumed.get(name, 0) + got
                    server = (f"; upstream counted {counter.full - before_full} full, "
                              f"{counter.resumed - before_resumed} resumed") if face.startswith("api") else ""
                    print(f"round {r + 1}: {name}: {used / args.conns * 1e3:.3f} ms daemon CPU/conn, "
                          f"{args.conns / wall:.0f} conn/s, {got} resumed{server}", flush=True)
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nkey: {args.key}; {args.workers} worker(s); {args.conns} connections per case, {args.rounds} round(s); "
          "median daemon CPU per connection:")
    for name, values in results.items():
        print(f"  {name:64s} {statistics.median(values):7.3f} ms  ({resumed[name]} of "
              f"{args.conns * args.rounds} connections resumed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
