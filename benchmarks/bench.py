#!/usr/bin/env python3
"""ssaproxy vs stunnel, side by side, in the same client-mode topology.

    plaintext client --> proxy --> TLS server (verified, backend.test)

Everything runs on loopback inside a network namespace this script creates and deletes
(`ip netns add ssap-bench-<pid>`), so it needs root, `ip`, `iptables`, `stunnel4` and an
editable install of ssaproxy (`twistd ssaproxy`).

    python benchmarks/bench.py            # full run (about 1.5 minutes on 2 CPUs; budget < 5)
    python benchmarks/bench.py --quick    # smaller sizes, fewer rounds (about 30 seconds)
    python benchmarks/bench.py --keep     # also keep the work directory (logs, configs, certs)

See docs/benchmarks.md for what each number means and a recorded run.

Three processes play the same roles for both proxies:

* the TLS server: this script run as `--role server`, a pre-forked (2 workers), thread per
  connection, blocking `ssl` server on 127.0.0.2:8443 with a certificate for backend.test from
  a throwaway trustme CA.  It speaks a line protocol: PING -> PONG, SINK n (read n bytes, answer
  OK), SOURCE n (send n bytes), INFO, STATS; a close_notify from the client is answered with
  close_notify, then the socket is closed.  It counts handshakes and resumed sessions in shared
  memory, which is how "every handshake was a full one" is checked rather than assumed.
* ssaproxy: `twistd -n --pidfile= ssaproxy --config ...`, listening on 127.0.0.1:15001; an
  iptables nat OUTPUT REDIRECT sends the client's plaintext connections to 127.0.0.2:8080 to it,
  and it opens verified TLS to 127.0.0.2:8443.
* stunnel: client mode, accept 127.0.0.1:15002, connect 127.0.0.2:8443, verifyChain,
  checkHost = backend.test, sessionResume = no, options = NO_TICKET.

The same ssaproxy daemon also serves the local socket API on a Unix socket in the work
directory, and a third client ("ssaproxy API") uses it the way a ported program does:
`ssaproxy.socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)`, TLS_HOSTNAME, connect to
127.0.0.2:8443, then plaintext over the carrier.  Its numbers are reported as ratios to
stunnel as well.

The load generator is this script (the part that runs inside the namespace); it is plain
blocking sockets and threads.  Every loop is bounded by a count and by a time limit, every
socket has a timeout, and the whole run has a global deadline.  Measurements alternate between
the proxies (A/B, then B/A, ...) and the median over the rounds is reported.  A direct TLS
client -> server baseline is measured in the same rounds, to show the server is not the limit.

Nothing here asserts on timings: it prints numbers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import mmap
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib

SERVER_ADDR = ("127.0.0.2", 8443)
SSAPROXY_PORT = 15001
VIRTUAL_ADDR = ("127.0.0.2", 8080)  # what the client dials for ssaproxy; REDIRECTed to 15001
STUNNEL_ADDR = ("127.0.0.1", 15002)
HOSTNAME = "backend.test"
IO_TIMEOUT = 30.0
NCPU = os.cpu_count() or 1
CHUNK = 1 << 20
PATTERN = random.Random(20240601).randbytes(CHUNK)  # the byte stream is PATTERN repeated

FULL = dict(rounds=4, idle_rounds=2, bulk_mb=200, conns=2000, concurrency=16, seq=300, idle=500, budget=280.0)
QUICK = dict(rounds=2, idle_rounds=2, bulk_mb=40, conns=400, concurrency=16, seq=100, idle=150, budget=55.0)


# =========================================================================== small helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def status_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def listening(port: int) -> bool:
    """Is something listening on this TCP port in our network namespace?"""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if listening(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on port {port} after {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    """SIGTERM this one PID, then SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"  ! {what} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def pattern_stream(n: int):
    """memoryviews over PATTERN, n bytes in all."""
    view = memoryview(PATTERN)
    while n > 0:
        k = min(n, CHUNK)
        yield view[:k]
        n -= k


def pattern_crc(n: int) -> int:
    crc = 0
    for chunk in pattern_stream(n):
        crc = zlib.crc32(chunk, crc)
    return crc


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# =========================================================================== the TLS server

_STATS_FIELDS = ("handshakes", "resumed", "handshake_errors", "io_errors", "tls13")
_SLOT = 8 * len(_STATS_FIELDS)


class _Stats:
    """Counters in an anonymous shared mapping: one row per worker process, summed on read."""

    def __init__(self, workers: int) -> None:
        self.mem = mmap.mmap(-1, _SLOT * workers)
        self.workers = workers
        self.row = 0
        self.lock = threading.Lock()

    def add(self, field: str, n: int = 1) -> None:
        off = self.row * _SLOT + 8 * _STATS_FIELDS.index(field)
        with self.lock:
            (v,) = struct.unpack_from("q", self.mem, off)
            struct.pack_into("q", self.mem, off, v + n)

    def totals(self) -> dict[str, int]:
        sums = [0] * len(_STATS_FIELDS)
        for w in range(self.workers):
            for i, v in enumerate(struct.unpack_from(f"{len(_STATS_FIELDS)}q", self.mem, w * _SLOT)):
                sums[i] += v
        return dict(zip(_STATS_FIELDS, sums, strict=True))


def _readline(s: ssl.SSLSocket, buf: bytearray, limit: int = 256):
    while b"\n" not in buf:
        if len(buf) > limit:
            raise ValueError("line too long")
        data = s.recv(65536)
        if not data:
            return None
        buf += data
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[: i + 1]
    return line


def _sink(s: ssl.SSLSocket, buf: bytearray, sink: bytearray, args: list[bytes]) -> bytes:
    """SINK n [crc]: read n bytes (first those already in `buf`); the OK line to answer."""
    n, want_crc = int(args[0]), len(args) > 1
    got, crc = 0, 0
    if buf:
        head = bytes(buf[:n])
        del buf[: len(head)]
        got += len(head)
        if want_crc:
            crc = zlib.crc32(head, crc)
    view = memoryview(sink)
    while got < n:
        k = s.recv_into(view, min(len(sink), n - got))
        if k == 0:
            raise EOFError(f"EOF after {got} of {n} bytes")
        if want_crc:
            crc = zlib.crc32(view[:k], crc)
        got += k
    return f"OK {got} {crc if want_crc else '-'}\n".encode()


def _serve_one(ctx: ssl.SSLContext, raw: socket.socket, stats: _Stats) -> None:
    raw.settimeout(IO_TIMEOUT * 2)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        s.do_handshake()
    except (OSError, ValueError):
        stats.add("handshake_errors")
        raw.close()
        return
    stats.add("handshakes")
    if s.session_reused:
        stats.add("resumed")
    if s.version() == "TLSv1.3":
        stats.add("tls13")
    buf = bytearray()
    sink = bytearray(256 * 1024)
    try:
        while True:
            line = _readline(s, buf)
            if line is None:  # close_notify (or a bare EOF): answer with ours, then close
                with contextlib.suppress(OSError, ValueError):
                    s.unwrap()
                break
            words = line.split()
            cmd, args = (words[0], words[1:]) if words else (b"", [])
            if cmd == b"PING":
                s.sendall(b"PONG\n")
            elif cmd == b"INFO":
                s.sendall(f"{s.version()} {s.cipher()[0]} resumed={int(s.session_reused)}\n".encode())
            elif cmd == b"STATS":
                s.sendall((" ".join(f"{k}={v}" for k, v in stats.totals().items()) + "\n").encode())
            elif cmd == b"SINK":  # SINK n [crc]
                s.sendall(_sink(s, buf, sink, args))
            elif cmd == b"SOURCE":  # SOURCE n
                for chunk in pattern_stream(int(args[0])):
                    s.sendall(chunk)
            else:
                raise ValueError(f"unknown command {line[:40]!r}")
    except (OSError, ValueError, EOFError):
        stats.add("io_errors")
    finally:
        s.close()


def run_server(args: argparse.Namespace) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    # Deliberately left at OpenSSL's defaults: TLS 1.3 tickets are issued and the TLS 1.2
    # session cache is on, so a client that tried to resume could; we count whether one did.
    lsock = socket.create_server(SERVER_ADDR, backlog=4096)
    stats = _Stats(args.workers)
    children = []
    for w in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.alarm(int(args.max_seconds))  # every worker ends by itself
            stats.row = w
            while True:
                try:
                    raw, _ = lsock.accept()
                except OSError:
                    continue
                threading.Thread(target=_serve_one, args=(ctx, raw, stats), daemon=True).start()
        children.append(pid)
    lsock.close()

    def stop(*_):
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:  # reap them (by PID), so no zombie outlives the server
            for _ in range(50):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(args.max_seconds))
    print("READY " + " ".join(map(str, children)), flush=True)
    signal.pause()  # until SIGTERM, or the alarm
    stop()
    return 0


# =========================================================================== client side


class Target:
    """One way of reaching the TLS server: through a proxy (plaintext) or directly (TLS)."""

    def __init__(self, name: str, addr: tuple[str, int], tls_ctx: ssl.SSLContext | None = None,
                 pid_fn=lambda: None) -> None:
        self.name = name
        self.addr = addr
        self.tls_ctx = tls_ctx
        self.pid_fn = pid_fn  # the proxy process, if any

    @property
    def pid(self):
        return self.pid_fn()

    def connect(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=IO_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_ctx is not None:
            s = self.tls_ctx.wrap_socket(s, server_hostname=HOSTNAME)
        return s

    def finish(self, s: socket.socket) -> None:
        """Orderly end: half-close, then expect the server's clean end (EOF), then close."""
        try:
            if self.tls_ctx is not None:
                s.unwrap()  # close_notify, then wait for the server's
            else:
                s.shutdown(socket.SHUT_WR)
                extra = 0
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    extra += len(data)
                if extra:
                    raise RuntimeError(f"{extra} unexpected bytes before EOF")
        finally:
            s.close()


def read_line(s: socket.socket, limit: int = 512) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(1)
        if not data:
            raise EOFError(f"EOF after {buf!r}")
        buf += data
        if len(buf) > limit:
            raise ValueError("line too long")
    return buf[:-1]


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


class ApiTarget(Target):
    """The local socket API: the client itself asks the daemon for a TLS socket
    (ssaproxy.socket, IPPROTO_TLS) and connects straight to the server's address."""

    def connect(self) -> socket.socket:
        import ssaproxy  # noqa: PLC0415 - driver only: --role server (this file) stays stdlib-only

        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        s.settimeout(IO_TIMEOUT)
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, HOSTNAME.encode())
        s.connect(self.addr)
        return s


def ping(t: Target, keep: bool = False):
    s = t.connect()
    try:
        s.sendall(b"PING\n")
        got = read_exact(s, 5)
        if got != b"PONG\n":
            raise RuntimeError(f"expected PONG, got {got!r}")
    except BaseException:
        s.close()
        raise
    if keep:
        return s
    t.finish(s)
    return None


def command(t: Target, line: bytes) -> str:
    s = t.connect()
    try:
        s.sendall(line + b"\n")
        reply = read_line(s).decode()
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return reply


def upload(t: Target, n: int, crc: bool = False) -> float:
    """Client -> server: n bytes; returns seconds from the first byte to the server's OK."""
    s = t.connect()
    try:
        s.sendall(f"SINK {n}{' crc' if crc else ''}\n".encode())
        t0 = time.perf_counter()
        for chunk in pattern_stream(n):
            s.sendall(chunk)
        reply = read_line(s).decode().split()
        elapsed = time.perf_counter() - t0
        if reply[0] != "OK" or int(reply[1]) != n:
            raise RuntimeError(f"server reply {reply}")
        if crc and int(reply[2]) != pattern_crc(n):
            raise RuntimeError("server received different bytes (crc mismatch)")
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return elapsed


def download(t: Target, n: int, crc: bool = False) -> float:
    """Server -> client: n bytes; returns seconds from the request to the last byte."""
    s = t.connect()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        s.sendall(f"SOURCE {n}\n".encode())
        got, c = 0, 0
        while got < n:
            k = s.recv_into(view, min(CHUNK, n - got))
            if k == 0:
                raise EOFError(f"EOF after {got} of {n} bytes")
            if crc:
                c = zlib.crc32(view[:k], c)
            got += k
        elapsed = time.perf_counter() - t0
        if crc and c != pattern_crc(n):
            raise RuntimeError("client received different bytes (crc mismatch)")
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return elapsed


def server_stats(direct: Target) -> dict[str, int]:
    """The server's counters; the STATS connection itself is one handshake (subtract it)."""
    reply = command(direct, b"STATS")
    d = {k: int(v) for k, v in (w.split("=") for w in reply.split())}
    d["handshakes"] -= 1
    if direct.tls_ctx is not None:
        d["tls13"] -= 1
    return d


def conn_storm(t: Target, total: int, concurrency: int, time_limit: float):
    """`total` connections (each: connect, PING/PONG, orderly close), `concurrency` at a time,
    for at most `time_limit` seconds.  Returns (completed, elapsed, latencies, errors)."""
    lock = threading.Lock()
    issued = [0]
    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + time_limit

    def worker():
        while True:
            with lock:
                if issued[0] >= total or time.monotonic() > stop_at:
                    return
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                ping(t)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(time_limit + IO_TIMEOUT * 3)
    elapsed = time.perf_counter() - t0
    return len(lat), elapsed, lat, errors


# =========================================================================== the proxies


class Proc:
    """A proxy (or the server) we start and stop by PID."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: str) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[str] = []

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.starts += 1
        path = os.path.join(self.workdir, f"{self.name}-{self.starts}.log")
        self.logs.append(path)
        with open(path, "wb") as out:  # the child has its own copy once Popen returns
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir)
        wait_listening(self.port, self.proc, self.name)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, self.name)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.start()


_OUTCOME_RE = re.compile(r"\bconn \d+ ([a-z-]+):")


def ssaproxy_outcomes(path: str) -> collections.Counter[str]:
    c: collections.Counter[str] = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            m = _OUTCOME_RE.search(line)
            if m:
                c[m.group(1)] += 1
            elif "Traceback" in line or "Unhandled" in line:
                c["TRACEBACK"] += 1
    return c


def stunnel_problems(path: str) -> collections.Counter[str]:
    c: collections.Counter[str] = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            if "LOG3[" in line or "LOG4[" in line or "LOG2[" in line:
                c[re.sub(r".*LOG\d\[\d*\]: ", "", line.strip())[:90]] += 1
            elif "Connection closed" in line:
                c["closed"] += 1
            elif "Connection reset" in line:
                c["reset"] += 1
            elif "accepted connection" in line:
                c["accepted"] += 1
    return c


# =========================================================================== measurement


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.p = QUICK if args.quick else FULL
        self.deadline = time.monotonic() + self.p["budget"]
        self.work = tempfile.mkdtemp(prefix="ssap-bench-")
        self.server: subprocess.Popen | None = None
        self.server_pids: list[int] = []
        self.iptables_rule: list[str] | None = None
        self.results: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.cpu: dict[tuple[str, str], list[tuple[float, float, float, float]]] = collections.defaultdict(list)
        self.notes: list[str] = []
        self.extra: dict[str, object] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import trustme  # noqa: PLC0415 - driver only: --role server (this file) stays stdlib-only

        ca = trustme.CA()
        leaf = ca.issue_cert(HOSTNAME)
        self.ca_pem = os.path.join(self.work, "ca.pem")
        self.cert_pem = os.path.join(self.work, "server-chain.pem")
        self.key_pem = os.path.join(self.work, "server-key.pem")
        ca.cert_pem.write_to_path(self.ca_pem)
        leaf.private_key_pem.write_to_path(self.key_pem)
        with open(self.cert_pem, "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())

        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open(os.path.join(self.work, "server.log"), "w") as out:  # the child keeps its own copy
            self.server = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--role", "server", "--cert", self.cert_pem,
                 "--key", self.key_pem, "--workers", "2", "--max-seconds", str(int(self.p["budget"] + 60))],
                stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL, text=True)
        ready = self.server.stdout.readline().split()  # type: ignore[union-attr]
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"TLS server did not start (see {self.work}/server.log)")
        self.server_pids = [self.server.pid] + [int(x) for x in ready[1:]]
        wait_listening(SERVER_ADDR[1], self.server, "TLS server")

        self.iptables_rule = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", VIRTUAL_ADDR[0], "--dport",
                              str(VIRTUAL_ADDR[1]), "-j", "REDIRECT", "--to-ports", str(SSAPROXY_PORT)]
        subprocess.run(["iptables", "-w", *self.iptables_rule], check=True)

        conf = os.path.join(self.work, "ssaproxy.toml")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                [policy]
                trust_store = "{self.ca_pem}"

                [api]
                socket = "{self.work}/api.sock"
                mode = "0600"

                [outbound]
                listen = "tcp:{SSAPROXY_PORT}:interface=127.0.0.1"

                [[outbound.route]]
                name = "bench"
                destination = "{VIRTUAL_ADDR[0]}/32"
                ports = [{VIRTUAL_ADDR[1]}]
                tls_port = {SERVER_ADDR[1]}
                hostname = "{HOSTNAME}"
                """))
        twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
        self.ssaproxy = Proc("ssaproxy", [twistd, "-n", "--pidfile=", "ssaproxy", "--config", conf],
                             SSAPROXY_PORT, self.work)

        sconf = os.path.join(self.work, "stunnel.conf")
        with open(sconf, "w") as f:
            f.write(textwrap.dedent(f"""\
                foreground = quiet
                pid =
                syslog = no
                output = {self.work}/stunnel-output.log
                debug = notice

                [bench]
                client = yes
                accept = {STUNNEL_ADDR[0]}:{STUNNEL_ADDR[1]}
                connect = {SERVER_ADDR[0]}:{SERVER_ADDR[1]}
                sni = {HOSTNAME}
                verifyChain = yes
                CAfile = {self.ca_pem}
                checkHost = {HOSTNAME}
                sslVersionMin = TLSv1.2
                sessionResume = no
                options = NO_TICKET
                """))
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel") or "/usr/bin/stunnel4"
        self.stunnel = Proc("stunnel", [stunnel, sconf], STUNNEL_ADDR[1], self.work)

        direct_ctx = ssl.create_default_context(cafile=self.ca_pem)
        self.t_ssa = Target("ssaproxy", VIRTUAL_ADDR, pid_fn=lambda: self.ssaproxy.pid)
        self.t_stu = Target("stunnel", STUNNEL_ADDR, pid_fn=lambda: self.stunnel.pid)
        self.t_dir = Target("direct TLS", SERVER_ADDR, tls_ctx=direct_ctx)
        os.environ["SSAPROXY_SOCKET"] = f"{self.work}/api.sock"
        self.t_api = ApiTarget("ssaproxy API", SERVER_ADDR, pid_fn=lambda: self.ssaproxy.pid)
        self.ssaproxy.start()
        self.stunnel.start()

    def teardown(self) -> None:
        for proc in (getattr(self, "ssaproxy", None), getattr(self, "stunnel", None)):
            if proc is not None:
                rc = proc.stop()
                if rc not in (None, 0, -signal.SIGTERM):
                    self.notes.append(f"{proc.name} exited with status {rc} on SIGTERM")
        if self.server is not None:
            stop_process(self.server, "TLS server")
        if self.iptables_rule:
            subprocess.run(["iptables", "-w", "-t", "nat", "-D", *self.iptables_rule[3:]], capture_output=True)

    # ------------------------------------------------------------------ checks
    def functional_checks(self) -> None:
        log("Functional checks (bytes verified by CRC-32, 8 MB each way):")
        n = 8 * 10**6
        for t in (self.t_dir, self.t_ssa, self.t_stu, self.t_api):
            info = command(t, b"INFO")
            upload(t, n, crc=True)
            download(t, n, crc=True)
            log(f"  {t.name:<11} ok   server saw: {info}")
        # The server's resumption counter works: a client that offers its session is counted.
        first = self.t_dir.connect()
        first.sendall(b"PING\n")
        read_exact(first, 5)  # the TLS 1.3 tickets have arrived by now
        session = first.session
        self.t_dir.finish(first)
        before = server_stats(self.t_dir)
        for _ in range(5):
            raw = socket.create_connection(SERVER_ADDR, timeout=IO_TIMEOUT)
            s = self.t_dir.tls_ctx.wrap_socket(raw, server_hostname=HOSTNAME, session=session)  # type: ignore
            s.sendall(b"PING\n")
            read_exact(s, 5)
            self.t_dir.finish(s)
        res = server_stats(self.t_dir)["resumed"] - before["resumed"]
        log(f"  control     a client offering its session 5 times -> server counted {res} resumed")
        if res != 5:
            self.notes.append(f"the server's resumption counter saw {res} of 5 deliberate resumptions")
        # Resumption: 30 sequential connections through each proxy; the server counts.
        k = 30
        for t in (self.t_ssa, self.t_stu, self.t_api):
            before = server_stats(self.t_dir)
            for _ in range(k):
                ping(t)
            after = server_stats(self.t_dir)
            hs = after["handshakes"] - before["handshakes"] - 1  # minus the second STATS itself
            res = after["resumed"] - before["resumed"]
            self.extra[f"resume-check {t.name}"] = (hs, res)
            log(f"  {t.name:<11} {k} sequential connections -> server saw {hs} handshakes, {res} resumed")
            if res:
                self.notes.append(f"{t.name} resumed {res} of {k} sessions: its conn/s is not all full handshakes")

    # ------------------------------------------------------------------ one measurement with CPU accounting
    def _measure(self, t: Target, fn, *args):
        pids = [t.pid] if t.pid else []
        c0 = [cpu_seconds(p) for p in pids]
        s0 = sum(cpu_seconds(p) for p in self.server_pids)
        me0 = cpu_seconds(os.getpid())
        b0 = system_busy()
        w0 = time.perf_counter()
        value = fn(*args)
        wall = time.perf_counter() - w0
        b1 = system_busy()
        proxy_cpu = sum(cpu_seconds(p) for p in pids) - sum(c0)
        server_cpu = sum(cpu_seconds(p) for p in self.server_pids) - s0
        client_cpu = cpu_seconds(os.getpid()) - me0
        busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * NCPU  # in cores
        other = max(0.0, busy - (proxy_cpu + server_cpu + client_cpu) / wall)
        return value, (wall, proxy_cpu, server_cpu, client_cpu, other)

    def _cpu_text(self, what: str, cpu) -> str:
        wall, proxy, server, client, other = cpu
        if other > 0.25:
            self.notes.append(f"{what}: {other:.2f} cores were busy with something other than this benchmark")
        return (f"cpu (cores): proxy {proxy / wall:.2f} server {server / wall:.2f} client {client / wall:.2f} "
                f"other {other:.2f}")

    def bulk(self, rnd: int, order: list[Target]) -> None:
        n = self.p["bulk_mb"] * 10**6
        for direction, fn in (("upload", upload), ("download", download)):
            for t in order:
                if self.left() < 20:
                    self.notes.append(f"skipped {direction} round {rnd + 1} for {t.name}: global deadline near")
                    continue
                secs, cpu = self._measure(t, fn, t, n)
                mbps = n / secs / 1e6
                self.results[(direction, t.name)].append(mbps)
                self.cpu[(direction, t.name)].append(cpu)
                log(f"  round {rnd + 1} {direction:<8} {t.name:<11} {mbps:8.1f} MB/s   "
                    + self._cpu_text(f"{direction} round {rnd + 1} {t.name}", cpu))

    def conns(self, rnd: int, order: list[Target]) -> None:
        total, conc = self.p["conns"], self.p["concurrency"]
        for t in order:
            if self.left() < 20:
                self.notes.append(f"skipped conn/s round {rnd + 1} for {t.name}: global deadline near")
                continue
            before = server_stats(self.t_dir)
            (done, elapsed, lat, errors), cpu = self._measure(
                t, conn_storm, t, total, conc, min(60.0, self.left() - 15))
            after = server_stats(self.t_dir)
            hs = after["handshakes"] - before["handshakes"] - 1
            res = after["resumed"] - before["resumed"]
            rate = done / elapsed
            self.results[("conns", t.name)].append(rate)
            self.cpu[("conns", t.name)].append(cpu)
            lat.sort()
            p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
            self.results[("p50", t.name)].append(p50)
            self.results[("p99", t.name)].append(p99)
            if done:
                self.results[("cpu_per_conn", t.name)].append(cpu[1] / done * 1000)
            log(f"  round {rnd + 1} conn/s    {t.name:<11} {rate:8.0f} /s  ({done}/{total} ok in {elapsed:.1f}s, "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; server: {hs} handshakes, {res} resumed)\n"
                f"{'':<34}" + self._cpu_text(f"conn/s round {rnd + 1} {t.name}", cpu))
            if errors:
                self.notes.append(f"conn/s round {rnd + 1} {t.name}: {sum(errors.values())} failed: {dict(errors)}")
            # One at a time: the latency of a whole connection when nothing else is queued.
            seq = []
            for _ in range(self.p["seq"]):
                if self.left() < 15:
                    break
                t0 = time.perf_counter()
                ping(t)
                seq.append(time.perf_counter() - t0)
            if seq:
                self.results[("seq_p50", t.name)].append(median(seq) * 1000)
            if res:
                self.notes.append(f"conn/s round {rnd + 1} {t.name}: {res} resumed handshakes")

    def _idle_cycle(self, t: Target, pid: int, n: int, what: str) -> dict[str, int]:
        """Open n connections (each PING/PONG, then left idle), measure, close them all."""
        out = {"rss0": status_kib(pid), "fd0": fd_count(pid)}
        socks: list[socket.socket] = []
        failed = bad_close = 0
        try:
            stop_at = time.monotonic() + min(60.0, self.left() - 15)
            while len(socks) < n and time.monotonic() < stop_at:
                try:
                    socks.append(ping(t, keep=True))
                except Exception:  # noqa: BLE001 - counted and reported
                    failed += 1
                    if failed > 20:
                        break
            time.sleep(1.0)
            out["rss1"], out["fd1"] = status_kib(pid), fd_count(pid)
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
            for s in socks:  # every one should now see the server's clean end, relayed as EOF
                try:
                    s.settimeout(10)
                    if s.recv(1):
                        bad_close += 1
                except OSError:
                    bad_close += 1
                s.close()
        # Leak check: the proxy's descriptors should come back to where they were.
        end = time.monotonic() + 5
        while fd_count(pid) > out["fd0"] and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)
        out["fd2"], out["rss2"], out["n"] = fd_count(pid), status_kib(pid), len(socks)
        if failed:
            self.notes.append(f"{what}: {failed} connections failed to open")
        if bad_close:
            self.notes.append(f"{what}: {bad_close} connections did not end with a clean EOF")
        if out["fd2"] > out["fd0"]:
            self.notes.append(f"{what}: {out['fd2'] - out['fd0']} file descriptors still open 5 s after every "
                              "client closed")
        return out

    def idle(self, rnd: int, order: list[Proc]) -> None:
        n = self.p["idle"]
        for proc in order:
            t = self.t_ssa if proc is self.ssaproxy else self.t_stu
            if self.left() < 25:
                self.notes.append(f"skipped idle round {rnd + 1} for {t.name}: global deadline near")
                continue
            proc.restart()  # a fresh process, so memory freed by earlier tests cannot hide growth
            for _ in range(50):  # warm up: lazy imports, contexts, allocator pools
                ping(t)
            time.sleep(0.5)
            pid = proc.pid
            what = f"idle round {rnd + 1} {t.name}"
            c1 = self._idle_cycle(t, pid, n, what)
            # A second cycle in the same process: RSS after it should not climb again if closed
            # connections give their memory back to the process.
            c2 = self._idle_cycle(t, pid, n, what + " (2nd cycle)")
            per = (c1["rss1"] - c1["rss0"]) / max(1, c1["n"])
            self.results[("idle_rss", t.name)].append(per)
            self.results[("idle_rss_2nd", t.name)].append((c2["rss1"] - c2["rss0"]) / max(1, c2["n"]))
            self.results[("rss_growth_2nd", t.name)].append(c2["rss2"] - c1["rss2"])
            log(f"  round {rnd + 1} idle      {t.name:<11} {per:8.1f} KiB/conn  ({c1['n']} conns: RSS "
                f"{c1['rss0']} -> {c1['rss1']} KiB, after close {c1['rss2']}; 2nd cycle {c2['rss0']} -> "
                f"{c2['rss1']}, after close {c2['rss2']}; fds {c1['fd0']} -> {c1['fd1']} -> {c1['fd2']}, "
                f"2nd -> {c2['fd2']})")

    # ------------------------------------------------------------------ driver
    def versions(self) -> None:
        import OpenSSL  # noqa: PLC0415 - driver only: --role server (this file) stays stdlib-only
        from OpenSSL import SSL  # noqa: PLC0415 - driver only: --role server (this file) stays stdlib-only

        import twisted  # noqa: PLC0415 - driver only: --role server (this file) stays stdlib-only

        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
        out = subprocess.run([stunnel, "-version"], capture_output=True, text=True).stderr.splitlines()
        st = [" ".join(x.split()) for x in out if x.startswith("stunnel ") or x.startswith("Running")]
        log(f"Machine: {NCPU} CPUs, {cpu}, Linux {os.uname().release}")
        log(f"Versions: Python {sys.version.split()[0]}, Twisted {twisted.__version__}, pyOpenSSL "
            f"{OpenSSL.__version__} on {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (ssaproxy); "
            f"{', '.join(st)} (stunnel); {ssl.OPENSSL_VERSION} (Python ssl: server, direct client)")

    def run(self) -> None:
        p = self.p
        self.versions()
        log(f"ssaproxy vs stunnel ({'quick' if self.args.quick else 'full'} mode): {p['rounds']} rounds, "
            f"bulk {p['bulk_mb']} MB, {p['conns']} connections x{p['concurrency']}, {p['idle']} idle connections")
        self.setup()
        self.functional_checks()
        A, B = self.t_ssa, self.t_stu
        for rnd in range(p["rounds"]):
            order = [A, B] if rnd % 2 == 0 else [B, A]
            log(f"Round {rnd + 1}: bulk throughput")
            self.bulk(rnd, order + [self.t_api, self.t_dir])
            log(f"Round {rnd + 1}: new connections per second")
            self.conns(rnd, order + [self.t_api, self.t_dir])
        for proc in (self.ssaproxy, self.stunnel):  # before the idle test restarts them
            self.extra[f"peak {proc.name}"] = (status_kib(proc.pid, "VmHWM"), status_kib(proc.pid, "VmRSS"),
                                               fd_count(proc.pid))
        for rnd in range(p["idle_rounds"]):
            order = [self.ssaproxy, self.stunnel] if rnd % 2 == 0 else [self.stunnel, self.ssaproxy]
            log(f"Round {rnd + 1}: memory per idle connection")
            self.idle(rnd, order)
        self.report()

    def report(self) -> None:
        R = self.results
        rows = [
            ("bulk upload, client->server (MB/s)", "upload", "higher", "{:.1f}"),
            ("bulk download, server->client (MB/s)", "download", "higher", "{:.1f}"),
            ("new connections/s (full handshake)", "conns", "higher", "{:.0f}"),
            ("  latency p50 at that load (ms)", "p50", "lower", "{:.1f}"),
            ("  latency p99 at that load (ms)", "p99", "lower", "{:.1f}"),
            ("one connection at a time, p50 (ms)", "seq_p50", "lower", "{:.2f}"),
            ("proxy CPU per connection (ms)", "cpu_per_conn", "lower", "{:.3f}"),
            ("RSS per idle connection (KiB)", "idle_rss", "lower", "{:.1f}"),
            ("  same, 2nd cycle in same process", "idle_rss_2nd", "lower", "{:.1f}"),
        ]
        n = self.p["bulk_mb"] * 10**6
        log("")
        log("Results: median over rounds; ratio = ssaproxy / stunnel (medians, same run); best = ratio of each")
        log("proxy's best round; 'better' says which direction is good for ssaproxy.  MB = 10^6 bytes.")
        head = (f"{'metric':<40}{'ssaproxy':>11}{'stunnel':>11}{'ratio':>8}{'best':>7}  {'better':<7}"
                f"{'direct TLS':>11}")
        log(head)
        log("-" * len(head))
        for label, key, better, fmt in rows:
            a, b, d = (median(R.get((key, name), [])) for name in ("ssaproxy", "stunnel", "direct TLS"))
            ratio = a / b if b else float("nan")
            pick = max if better == "higher" else min
            xa, xb = R.get((key, "ssaproxy")), R.get((key, "stunnel"))
            best = pick(xa) / pick(xb) if xa and xb and pick(xb) else float("nan")
            dtxt = fmt.format(d) if R.get((key, "direct TLS")) and key != "cpu_per_conn" else "-"
            log(f"{label:<40}{fmt.format(a):>11}{fmt.format(b):>11}{ratio:>8.2f}{best:>7.2f}  {better:<7}{dtxt:>11}")
        log("")
        log("The local socket API (a program using ssaproxy.socket; same daemon), as ratios to stunnel:")
        for label, key, better, fmt in rows[:7]:
            a, b = (median(R.get((key, name), [])) for name in ("ssaproxy API", "stunnel"))
            ratio = a / b if b else float("nan")
            log(f"  {label:<38}{fmt.format(a):>11}{fmt.format(b):>11}{ratio:>8.2f}  {better}")
        # Proxy CPU per GB (an efficiency figure, less sensitive to the machine being shared).
        for key in ("upload", "download"):
            vals = []
            for name in ("ssaproxy", "stunnel"):
                cpus = [c[1] for c in self.cpu.get((key, name), [])]
                vals.append(median(cpus) / (n / 1e9) if cpus else float("nan"))
            label = f"proxy CPU s per GB, {key}"
            log(f"{label:<40}{vals[0]:>11.2f}{vals[1]:>11.2f}{vals[0] / vals[1]:>8.2f}{'':>7}  {'lower':<7}{'-':>11}")
        log("")
        log("All rounds:")
        for (key, name), xs in sorted(R.items()):
            log(f"  {key:<15}{name:<14}" + "  ".join(f"{x:.2f}" for x in xs))
        log("")
        log("Health:")
        total: collections.Counter[str] = collections.Counter()
        for path in self.ssaproxy.logs:
            total += ssaproxy_outcomes(path)
        log(f"  ssaproxy connection outcomes (its log, {len(self.ssaproxy.logs)} processes): {dict(total)}")
        log(f"  stunnel log: {dict(stunnel_problems(os.path.join(self.work, 'stunnel-output.log')))}")
        for name in ("ssaproxy", "stunnel"):
            if f"peak {name}" in self.extra:
                hwm, rss, fds = self.extra[f"peak {name}"]  # type: ignore[misc]
                log(f"  {name} after the bulk and conn/s tests: peak RSS {hwm} KiB, RSS {rss} KiB, {fds} fds")
        for name in ("ssaproxy", "stunnel"):
            growth = R.get(("rss_growth_2nd", name))
            if growth:
                log(f"  {name} RSS after the 2nd idle cycle minus RSS after the 1st, per round (KiB): "
                    f"{[int(g) for g in growth]}")
        if self.server is not None:
            st = server_stats(self.t_dir)
            log(f"  TLS server totals: {st}")
        for note in self.notes:
            log(f"  NOTE: {note}")


def run_inner(args: argparse.Namespace) -> int:
    # SIGTERM from the outer process (its time limit, or Ctrl-C there): unwind through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        bench.teardown()
        log(f"  elapsed: {time.monotonic() - t0:.0f} s")
        if args.keep:
            log(f"  work dir kept (logs, configs): {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    return 0


# =========================================================================== outside the namespace


def run_outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench.py needs root (network namespace, iptables)", file=sys.stderr)
        return 2
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            print(f"bench.py needs {tool}", file=sys.stderr)
            return 2
    ns = f"ssap-bench-{os.getpid()}"
    budget = (QUICK if args.quick else FULL)["budget"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through `finally` below
    subprocess.run(["ip", "netns", "add", ns], check=True)
    inner = None
    rc = 1
    try:
        argv = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inner"]
        if args.quick:
            argv.append("--quick")
        if args.keep:
            argv.append("--keep")
        inner = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            rc = inner.wait(budget + 120)
        except subprocess.TimeoutExpired:
            print(f"bench.py: the run did not finish in {budget + 120:.0f}s; stopping it", file=sys.stderr)
            stop_process(inner, "benchmark", timeout=15)
            rc = 1
    except (KeyboardInterrupt, SystemExit):
        if inner is not None:
            stop_process(inner, "benchmark", timeout=15)
        rc = 130
    finally:
        # Anything of ours still in the namespace (only what this run started can be there).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), sig)
            if not pids:
                break
            time.sleep(1.0)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (< 1 minute)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, certificates)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["server"], help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        return run_server(args)
    if args.inner:
        return run_inner(args)
    return run_outer(args)


if __name__ == "__main__":
    sys.exit(main())
