#!/usr/bin/env python3
"""Where the daemon's time goes: one load, one mode, CPU per unit and (optionally) a profile.

    python benchmarks/profile_daemon.py --mode client --load keepalive            # CPU per unit only
    python benchmarks/profile_daemon.py --mode server --load bulk --profile       # + cProfile top
    python benchmarks/profile_daemon.py --mode api --load conns --sample          # + sampled top

Modes (bench.py's client and server, without the other proxies, and the socket API):

* client: plaintext load --> iptables REDIRECT --> ssaproxy outbound --> TLS upstream
  (a threaded Python `ssl` server for backend.test, no session tickets: full handshakes only);
* server: TLS load --> ssaproxy inbound (front.test) --> plaintext backend;
* api: the local socket API (protocol 2): the load asks the daemon for a TLS connection with
  the Python library (`ssaproxy.socket(..., IPPROTO_TLS)`, TLS_HOSTNAME backend.test, connect
  to the upstream's own address) and the daemon does the TLS handshake to client mode's
  upstream; `conns` is the load that matters here (the other loads run through it too).

Loads:

* bulk: one connection uploads, then one downloads, `--mb` MB; unit = MB (10^6 bytes);
* conns: `--n` new connections, `--concurrency` at a time, each a full handshake, PING/PONG
  and a clean close; unit = connection;
* keepalive: `--concurrency` connections each sending `--n` / concurrency 64-byte requests
  and reading a 128-byte answer, one at a time; unit = request; also the client-side p50
  latency, and the p50 of the same loop straight to the upstream (added latency = the
  difference);
* idle: `--n` connections opened (PING/PONG) and held; unit = KiB of daemon RSS per connection.

Each load runs `--repeat` times in one daemon after a warm-up; the median is printed.  The
daemon's CPU is its utime + stime from /proc (the machine is shared: compare CPU per unit, not
rates).  With `--profile` the daemon runs under cProfile, timed in CPU seconds, and the top of
the profile is printed with calls per unit; profiled CPU figures are inflated, so take CPU per unit
from a run without it.  `--sample` profiles with benchmarks/sampler.py instead (CPU-tick stack
samples, weighted by CPU used): no per-call cost, so many small Python calls are not inflated
beside one long C call; it prints self and inclusive µs per unit.  Everything runs in a network
namespace this script creates and deletes; it needs root, `ip` and `iptables`.  Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler  # noqa: E402
from bench_pki import write_pki  # noqa: E402 - a sibling module
from bench_procs import remove_namespace  # noqa: E402

UPSTREAM = ("127.0.0.2", 8443)  # client mode: the TLS upstream
VIRTUAL = ("127.0.0.2", 8080)  # client mode: what the load dials (REDIRECTed to the daemon)
OUT_PORT = 15001
IN_ADDR = ("127.0.0.1", 15443)  # server mode: the inbound listener
BACKEND = ("127.0.0.1", 9000)  # server mode: the plaintext backend
TIMEOUT = 30.0
REQ, ANSWER = 64, 128
BLOCK = b"x" * (1 << 20)


def cpu_split(pid: int) -> tuple[float, float]:
    """The daemon's user and system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(addr: tuple[str, int | str], proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if addr[0] == "unix":  # the API mode's socket: its file appears when the daemon listens
            if os.path.exists(str(addr[1])):
                return
        else:
            with contextlib.suppress(OSError), socket.create_connection(addr, timeout=1):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {addr} after {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError(f"eof after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_line(s: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n") and len(buf) < 100:
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# ====================================================================== the upstream / backend


def serve(args: argparse.Namespace) -> int:
    """PING -> PONG; SINK n -> read n, OK; SOURCE n -> n bytes; ECHO -> 64-byte requests answered
    with 128 bytes; then read to the end (and answer close_notify) and close."""
    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    lsock = socket.create_server((args.host, args.port), backlog=4096)
    deadline = time.monotonic() + args.max_seconds

    def handle(raw: socket.socket) -> None:
        s = raw
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            raw.settimeout(TIMEOUT)
            if ctx is not None:
                s = ctx.wrap_socket(raw, server_side=True)
            cmd = read_line(s).split()
            if cmd[:1] == [b"PING"]:
                s.sendall(b"PONG\n")
            elif cmd[:1] == [b"SINK"]:
                left = int(cmd[1])
                while left > 0:
                    chunk = s.recv(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError("short upload")
                    left -= len(chunk)
                s.sendall(b"OK\n")
            elif cmd[:1] == [b"SOURCE"]:
                left = int(cmd[1])
                while left > 0:
                    k = min(left, len(BLOCK))
                    s.sendall(BLOCK[:k])
                    left -= k
            elif cmd[:1] == [b"ECHO"]:
                answer = b"a" * (ANSWER - 1) + b"\n"
                for _ in range(10**7):
                    req = s.recv(REQ)
                    if not req:
                        break
                    if len(req) < REQ:
                        req += read_exact(s, REQ - len(req))
                    s.sendall(answer)
            for _ in range(10**6):
                if not s.recv(65536):
                    break
            if isinstance(s, ssl.SSLSocket):
                s = s.unwrap()
        with contextlib.suppress(OSError):
            s.close()

    print("READY", flush=True)
    lsock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    return 0


# ====================================================================== the load


class Load:
    def __init__(self, mode: str, ca: str) -> None:
        self.mode = mode
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.options |= ssl.OP_NO_TICKET

    def connect(self, *, direct: bool = False) -> socket.socket:
        """A connection through the daemon (or, `direct`, straight to what it relays to)."""
        if self.mode == "api" and not direct:
            import ssaproxy  # noqa: PLC0415 - only the API mode needs the client library

            s: socket.socket = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
            s.settimeout(TIMEOUT)
            s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
            s.connect(UPSTREAM)
            return s
        if self.mode in ("client", "api"):
            if direct:
                raw = socket.create_connection(UPSTREAM, timeout=TIMEOUT)
                return self.ctx.wrap_socket(raw, server_hostname="backend.test")
            return socket.create_connection(VIRTUAL, timeout=TIMEOUT)
        if direct:
            return socket.create_connection(BACKEND, timeout=TIMEOUT)
        raw = socket.create_connection(IN_ADDR, timeout=TIMEOUT)
        return self.ctx.wrap_socket(raw, server_hostname="front.test")

    @staticmethod
    def close(s: socket.socket) -> None:
        """Our side ends cleanly; wait for the relayed clean end."""
        if isinstance(s, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                s = s.unwrap()
        else:
            s.shutdown(socket.SHUT_WR)
            for _ in range(1000):
                if not s.recv(65536):
                    break
        s.close()

    def bulk(self, mb: int) -> float:
        n = mb * 10**6
        s = self.connect()
        s.sendall(f"SINK {n}\n".encode())
        left = n
        while left > 0:
            k = min(left, len(BLOCK))
            s.sendall(BLOCK[:k])
            left -= k
        if read_line(s) != b"OK\n":
            raise RuntimeError("upload not acknowledged")
        self.close(s)
        s = self.connect()
        s.sendall(f"SOURCE {n}\n".encode())
        read_total = 0
        while read_total < n:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("short download")
            read_total += len(chunk)
        self.close(s)
        return 2 * n / 1e6

    def conns(self, n: int, concurrency: int) -> float:
        counter = iter(range(n))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                try:
                    s = self.connect()
                    s.sendall(b"PING\n")
                    if read_line(s) != b"PONG\n":
                        raise RuntimeError("no PONG")
                    self.close(s)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        if errors:
            print(f"  ! {len(errors)} connections failed, e.g. {errors[0]!r}")
        return float(n - len(errors))

    def keepalive(self, n: int, concurrency: int, *, direct: bool = False) -> tuple[float, float]:
        per = max(1, n // concurrency)
        lat: list[float] = []
        req = b"r" * (REQ - 1) + b"\n"

        def worker() -> None:
            s = self.connect(direct=direct)
            s.sendall(b"ECHO\n")
            mine = []
            for _ in range(per):
                t0 = time.perf_counter()
                s.sendall(req)
                read_exact(s, ANSWER)
                mine.append(time.perf_counter() - t0)
            self.close(s)
            lat.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        return float(len(lat)), statistics.median(lat) * 1e6 if lat else float("nan")

    def idle(self, n: int, pid: int) -> tuple[float, float]:
        before = rss_kib(pid)
        held = []
        try:
            for _ in range(n):
                s = self.connect()
                s.sendall(b"PING\n")
                if read_line(s) != b"PONG\n":
                    raise RuntimeError("no PONG")
                held.append(s)
            time.sleep(1.0)
            after = rss_kib(pid)
        finally:
            for s in held:
                with contextlib.suppress(OSError):
                    self.close(s)
        return float(n), (after - before) / n


# ====================================================================== one run


def issue(work: str) -> tuple[str, str]:
    """The certificate chain and key (for backend.test and front.test), as files."""
    return os.path.join(work, "chain.pem"), os.path.join(work, "key.pem")


def start_peer(args: argparse.Namespace, work: str, ca_pem: str,
               procs: list[subprocess.Popen[bytes]]) -> tuple[str, tuple[str, int | str]]:
    """The upstream (client mode) or backend (server mode), started and listening; returns the
    daemon's configuration and the address it will listen on."""
    me = [sys.executable, os.path.abspath(__file__), "--role", "serve", "--max-seconds", str(args.budget)]
    if args.mode == "api":
        chain, key = issue(work)
        peer, target = [*me, "--host", UPSTREAM[0], "--port", str(UPSTREAM[1]), "--cert", chain, "--key", key], UPSTREAM
        sock = os.path.join(work, "api.sock")
        os.environ["SSAPROXY_SOCKET"] = sock  # the client library reads it
        conf = f"""\
            [policy]
            trust_store = "{ca_pem}"
            [api]
            socket = "{sock}"
            mode = "0600"
            """
        listen = ("unix", sock)
    elif args.mode == "client":
        chain, key = issue(work)
        peer, target = [*me, "--host", UPSTREAM[0], "--port", str(UPSTREAM[1]), "--cert", chain, "--key", key], UPSTREAM
        subprocess.run(["iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", VIRTUAL[0], "--dport",
                        str(VIRTUAL[1]), "-j", "REDIRECT", "--to-ports", str(OUT_PORT)], check=True)
        conf = f"""\
            [policy]
            trust_store = "{ca_pem}"
            [outbound]
            listen = "tcp:{OUT_PORT}:interface=127.0.0.1"
            [[outbound.route]]
            name = "bench"
            destination = "{VIRTUAL[0]}/32"
            ports = [{VIRTUAL[1]}]
            tls_port = {UPSTREAM[1]}
            hostname = "backend.test"
            """
        listen = ("127.0.0.1", OUT_PORT)
    else:
        chain, key = issue(work)
        peer, target = [*me, "--host", BACKEND[0], "--port", str(BACKEND[1])], BACKEND
        conf = f"""\
            [[inbound]]
            name = "bench"
            listen = "tcp:{IN_ADDR[1]}:interface={IN_ADDR[0]}"
            backend = "tcp:{BACKEND[0]}:{BACKEND[1]}"
            certificates = [ {{ chain = "{chain}", key = "{key}" }} ]
            """
        listen = IN_ADDR
    with open(os.path.join(work, "peer.log"), "wb") as out:
        procs.append(subprocess.Popen(peer, stdout=out, stderr=subprocess.STDOUT))
    wait_port(target, procs[-1])
    # One process (the profile is of one core's work) and full handshakes only.
    conf = textwrap.dedent(conf).replace("[policy]\n", "[policy]\nsession_resumption = false\n", 1)
    if "session_resumption" not in conf:
        conf = "[policy]\nsession_resumption = false\n" + conf
    return conf + "\n[daemon]\nworkers = 1\n", listen


UNITS = {"bulk": "MB", "conns": "connection", "keepalive": "request", "idle": "idle connection"}


def measure(args: argparse.Namespace, load: Load, pid: int) -> float:
    """Warm up, run the load `repeat` times, print each run and the median; returns the units
    the daemon served in all (for calls per unit in the profile)."""
    unit = UNITS[args.load]
    if args.load == "bulk":
        warm = load.bulk(max(1, args.mb // 10))
    elif args.load in ("conns", "idle"):
        warm = load.conns(min(50, args.n), args.concurrency)
    else:
        warm = load.keepalive(min(500, args.n), args.concurrency)[0]
    per: list[float] = []
    extras: list[float] = []
    total = 0.0 if args.load == "idle" else warm
    for i in range(args.repeat):
        u0, s0 = cpu_split(pid)
        extra = float("nan")
        if args.load == "bulk":
            units = load.bulk(args.mb)
        elif args.load == "conns":
            units = load.conns(args.n, args.concurrency)
        elif args.load == "keepalive":
            units, extra = load.keepalive(args.n, args.concurrency)
        else:
            units, extra = load.idle(args.n, pid)
        u1, s1 = cpu_split(pid)
        cpu = u1 - u0 + s1 - s0
        total += units
        per.append(cpu / units * 1e6 if units else float("nan"))
        extras.append(extra)
        line = (f"  run {i + 1}: {units:.0f} {unit}s, daemon CPU {cpu:.2f}s (user {u1 - u0:.2f}s, "
                f"system {s1 - s0:.2f}s), {per[-1]:.1f} µs CPU per {unit}")
        if args.load == "bulk":
            line += f" = {units / cpu if cpu else float('nan'):.0f} MB per CPU-second"
        elif args.load == "keepalive":
            line += f", client p50 {extra:.0f} µs"
        elif args.load == "idle":
            line += f", {extra:.1f} KiB RSS per connection"
        print(line, flush=True)
    med = statistics.median(per)
    line = f"{args.mode} {args.load}: median {med:.1f} µs daemon CPU per {unit}"
    if args.load == "bulk":
        line += f" = {1e6 / med:.0f} MB per CPU-second"
    elif args.load == "keepalive":
        direct = statistics.median([load.keepalive(args.n, args.concurrency, direct=True)[1] for _ in range(3)])
        p50 = statistics.median(extras)
        line += f"; client p50 {p50:.0f} µs vs {direct:.0f} µs direct (+{p50 - direct:.0f} µs)"
    elif args.load == "idle":
        line += f"; {statistics.median(extras):.1f} KiB RSS per idle connection"
    print(line, flush=True)
    return total


def run_inner(args: argparse.Namespace) -> int:
    work = tempfile.mkdtemp(prefix="ssap-prof-")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"], check=False)
    ca_pem = str(write_pki(Path(work), "backend.test", "front.test")[2])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conf, listen = start_peer(args, work, ca_pem, procs)
        conf_path = os.path.join(work, "ssaproxy.toml")
        with open(conf_path, "w") as f:
            f.write(conf)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        prof = os.path.join(work, "daemon.prof")
        cmd = [twistd, "-n", "--pidfile=", "ssaproxy", "--config", conf_path]
        if args.profile or args.sample:
            cmd = [sys.executable, os.path.abspath(__file__), "--role", "profiled", "--out", prof,
                   *(["--sample"] if args.sample else []), "--", *cmd]
        with open(os.path.join(work, "daemon.log"), "wb") as out:
            daemon = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        procs.append(daemon)
        wait_port(listen, daemon)
        total = measure(args, Load(args.mode, ca_pem), daemon.pid)
        stop(daemon)
        if args.profile or args.sample:
            if os.path.exists(prof):
                if args.sample:
                    sampler.report(prof, total, UNITS[args.load], args.top, within="mainLoop")
                else:
                    show_profile(prof, total, UNITS[args.load], args.top)
                if args.save_profile:
                    shutil.copyfile(prof, args.save_profile)
            else:
                with open(os.path.join(work, "daemon.log"), errors="replace") as f:
                    print("  ! no profile was written; the daemon's log ends:\n" + "".join(f.readlines()[-15:]))
        print(f"  outcomes: {outcomes(os.path.join(work, 'daemon.log'))}")
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def outcomes(path: str) -> str:
    """The daemon's per-connection records, counted by outcome, and their median duration."""
    counts: dict[str, int] = {}
    durations: list[float] = []
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r"\b(?:(?:conn|inbound) \d+|api session \d+ \S+) (\S+): ", line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
                d = re.search(r" duration=([\d.]+)s", line)
                if d:
                    durations.append(float(d.group(1)))
    med = statistics.median(durations) * 1e3 if durations else float("nan")
    return f"{counts}, median connection duration {med:.1f} ms"


def show_profile(path: str, units: float, unit: str, top: int) -> None:
    out = io.StringIO()
    st = pstats.Stats(path, stream=out)
    st.sort_stats("tottime").print_stats(top)
    stats = st.stats  # type: ignore[attr-defined]
    total_calls = sum(v[1] for v in stats.values())
    print(f"  profile: {total_calls / units:.1f} Python-level calls per {unit} "
          "(the whole daemon run, warm-up included)")
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    print(f"  {'tottime s':>9} {'cumtime s':>9} {'calls/' + unit:>14}  function")
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        short = file.split("site-packages/")[-1].split("wt-perf/")[-1]
        print(f"  {tt:9.3f} {ct:9.3f} {nc / units:14.2f}  {short}:{line}({name})")


def profiled(args: argparse.Namespace) -> int:
    """twistd in this process under cProfile with a CPU-time clock: on a shared machine a
    wall-clock profile charges other processes' time to whatever we were doing when preempted
    (and the time spent waiting in poll).  The profile is written when twistd returns."""
    import cProfile  # noqa: PLC0415 - only in this role

    from twisted.internet import reactor  # noqa: PLC0415 - the default reactor, which twistd then uses
    from twisted.scripts.twistd import run  # noqa: PLC0415 - only in this role

    if args.sample:  # a sampling profile instead (sampler.py): no per-call cost, nothing inflated
        sampling = sampler.Sampler()
        reactor.addSystemEventTrigger("after", "shutdown", sampling.stop, args.out)  # type: ignore[attr-defined]
        sys.argv = [args.cmd[0], *args.cmd[1:]]
        sampling.start()
        run()
        return 0
    prof = cProfile.Profile(time.process_time)

    def dump() -> None:  # twistd ends a SIGTERM by raising it again, so `finally` would be too late
        prof.disable()
        prof.dump_stats(args.out)

    reactor.addSystemEventTrigger("after", "shutdown", dump)  # type: ignore[attr-defined]
    sys.argv = [args.cmd[0], *args.cmd[1:]]
    prof.enable()
    run()
    return 0


def run_outer(args: argparse.Namespace) -> int:
    ns = f"ssap-prof-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inner", *sys.argv[1:]]
        inner = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            return inner.wait(args.budget + 60)
        except subprocess.TimeoutExpired:
            stop(inner)
            return 1
    finally:
        remove_namespace(ns)  # anything still in it was started by this run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["client", "server", "api"], default="client")
    p.add_argument("--load", choices=["bulk", "conns", "keepalive", "idle"], default="keepalive")
    p.add_argument("--profile", action="store_true", help="run the daemon under cProfile and print its top")
    p.add_argument("--sample", action="store_true",
                   help="profile by sampling the daemon's stack on each CPU tick (sampler.py) instead of "
                        "cProfile: figures not inflated by per-call costs")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--save-profile", metavar="FILE", help="keep the profile (pstats format) as FILE")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mb", type=int, default=100, help="bulk: MB each way")
    p.add_argument("--n", type=int, default=None, help="connections or requests per run")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--budget", type=float, default=600.0, help="seconds the whole run may take")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--role", choices=["serve", "profiled"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("cmd", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "serve":
        return serve(args)
    if args.role == "profiled":
        return profiled(args)
    defaults = {"bulk": (0, 1), "conns": (500, 8), "keepalive": (5000, 4), "idle": (300, 8)}[args.load]
    args.n = args.n if args.n is not None else defaults[0]
    args.concurrency = args.concurrency if args.concurrency is not None else defaults[1]
    if args.inner:
        return run_inner(args)
    return run_outer(args)


if __name__ == "__main__":
    sys.exit(main())
