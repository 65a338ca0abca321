#!/usr/bin/env python3
"""The C library beside a direct OpenSSL client and beside the Python library: the cost of a
connect (with its handshake) and of bulk transfer, client and daemon CPU counted together.

    python benchmarks/clib.py              # 3 rounds: 300 connections, 100 MB each way (~2 minutes)
    python benchmarks/clib.py --quick      # 1 round: 100 connections, 30 MB (under a minute)
    python benchmarks/clib.py --smoke      # every client once at a tiny size (the test's run)
    python benchmarks/clib.py --markdown --json out.json

Four clients do the same work against bench.py's backend (TLS, backend.test, its own CA):

    C libssaproxy           benchmarks/clib_client.c built with $(ssaproxy c-flags): socket(IPPROTO_TLS),
                            TLS_HOSTNAME, connect; the daemon does TLS (the socket API, protocol 2)
    C OpenSSL               the same source built with -DDIRECT_OPENSSL and -lssl -lcrypto: TLS in the
                            program, verifying as the daemon does (CA, name, SNI; no session kept)
    Python ssaproxy.socket  bench_client.ApiTarget: the Python library through the same daemon
    Python ssl              bench_client.Target with an ssl context: TLS in the program

Each client is a process of its own (gcc -O2 builds the C ones in the run), pinned off the
daemon's CPU as bench.py pins its loader.  Per client: N sequential connections (socket to
finished handshake, PING/PONG, orderly end: "connect" is socket() up to the handshake's end),
then M MB down and up through one connection each.  CPU: the client's own (getrusage over its
measured work) and the daemon's (its process tree, from /proc, around the client's run).  It
runs in a network namespace of its own (root, `ip`, `taskset`, `gcc`, libssl-dev).  It
measures; it asserts nothing on timings.  docs/benchmarks.md ("The C library") has the method
and a recorded run.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_client as bc  # noqa: E402 - the sibling modules sit next to this script
import bench_procs as bp  # noqa: E402
from bench_backend import PATTERN, pattern_crc  # noqa: E402
from bench_pki import write_pki  # noqa: E402
from clib_report import CLIENTS, report  # noqa: E402

HERE = Path(__file__).resolve().parent
NCPU = os.cpu_count() or 1
SIZES = {
    "full": dict(rounds=3, conns=300, bulk_mb=100, budget=240.0),
    "quick": dict(rounds=1, conns=100, bulk_mb=30, budget=120.0),
    "smoke": dict(rounds=1, conns=3, bulk_mb=1, budget=90.0),  # every path once; figures meaningless
}



def log(msg: str = "") -> None:
    print(msg, flush=True)


# =========================================================================== the Python clients


def python_client(argv: list[str]) -> int:
    """`clib.py --client ssaproxy|ssl HOST PORT NAME CAFILE PATTERN OP N [check]`: the work and
    the output lines of clib_client.c, with the Python library or Python's ssl."""
    kind, host, port, _name, cafile, _pattern, op, count, *rest = argv
    n, check, addr = int(count), rest[:1] == ["check"], (host, int(port))
    if kind == "ssaproxy":
        import ssaproxy  # noqa: F401, PLC0415 - imported here, before the clock, not in the first connect

        t: bc.Target = bc.ApiTarget("Python ssaproxy.socket", "api", addr)
    else:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET  # as the C OpenSSL client: no session kept or offered
        t = bc.Target("Python ssl", "direct", addr, tls_ctx=ctx)

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    c0, w0 = cpu(), time.perf_counter()
    out: list[str] = []
    if op == "conns":
        pc = time.perf_counter
        for _ in range(n):
            t0 = pc()
            s = t.connect()
            t1 = pc()
            s.sendall(b"PING\n")
            if bc.read_exact(s, 5) != b"PONG\n":
                raise RuntimeError("no PONG")
            t.finish(s)
            out.append(f"connect {(t1 - t0) * 1e6:.1f}\ncycle {(pc() - t0) * 1e6:.1f}")
    elif op == "download":
        out.append(f"bytes {bc.download(t, n, crc=check)[1]}")
    elif op == "upload":
        counted = bc.upload(t, n, crc=True)[1]  # raises on a CRC mismatch
        out.append(f"reply OK {counted} {pattern_crc(n)}")
    elif op == "info":
        out.append(f"reply {bc.command(t, b'INFO')}")
    else:
        return 2
    out.append(f"cpu {cpu() - c0:.6f} wall {time.perf_counter() - w0:.6f}")
    print("\n".join(out), flush=True)
    return 0


# =========================================================================== the run


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = "smoke" if args.smoke else "quick" if args.quick else "full"
        self.p = SIZES[self.size]
        self.deadline = time.monotonic() + float(self.p["budget"])
        self.work = tempfile.mkdtemp(prefix="ssap-clib-")
        self.results: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.checks: list[dict[str, object]] = []
        self.notes: list[str] = []
        self.info: dict[str, object] = {}
        self.backend: subprocess.Popen | None = None
        self.daemon: bp.Proc | None = None
        self.argv: dict[str, list[str]] = {}

    def setup(self) -> None:
        w = self.work
        cpus = None
        if NCPU >= 2:  # the daemon alone on CPU 0; clients and backend on the others
            cpus = "0"
            os.sched_setaffinity(0, set(range(1, NCPU)))
            self.info["pinning"] = "daemon alone on CPU 0; clients and backend on CPU " + ",".join(
                str(c) for c in range(1, NCPU))
        else:
            self.info["pinning"] = "none (1 CPU)"
        chain, key, root = write_pki(Path(w), bp.HOSTNAME)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        self.backend, _ = bp.start_backend(w, str(chain), str(key), float(self.p["budget"]) + 120)
        os.environ["SSAPROXY_SOCKET"] = f"{w}/ssaproxy-api.sock"  # both libraries read it
        self.daemon = bp.ssaproxy_proc(w, str(root), str(chain), str(key), cpus, 1)
        self.daemon.start()
        pattern = Path(w) / "pattern.bin"
        pattern.write_bytes(PATTERN)
        self.ca = str(root)
        common = [bp.BACKEND_TLS[0], str(bp.BACKEND_TLS[1]), bp.HOSTNAME, self.ca, str(pattern)]
        source = str(HERE / "clib_client.c")
        cflags = subprocess.run([shutil.which("ssaproxy") or os.path.join(os.path.dirname(sys.executable), "ssaproxy"),
                                 "c-flags"], capture_output=True, text=True, check=True).stdout.split()
        builds = {"C libssaproxy": cflags, "C OpenSSL": ["-DDIRECT_OPENSSL", "-lssl", "-lcrypto"]}
        for i, (client, flags) in enumerate(builds.items()):
            binary = f"{w}/clib_client_{i}"
            argv = ["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", source, "-o", binary, *flags]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if r.returncode != 0 or r.stderr:
                raise RuntimeError(f"{' '.join(argv)}\n{r.stderr}")
            self.argv[client] = [binary, *common]
        for client, kind in (("Python ssaproxy.socket", "ssaproxy"), ("Python ssl", "ssl")):
            self.argv[client] = [sys.executable, str(HERE / "clib.py"), "--client", kind, *common]

    def teardown(self) -> None:
        if self.daemon is not None:
            rc = self.daemon.stop()
            if rc not in (None, 0, -signal.SIGTERM):
                self.notes.append(f"the daemon exited with status {rc} on SIGTERM")
        if self.backend is not None:
            bp.stop_process(self.backend, "backend")

    def client(self, name: str, *op: str) -> tuple[dict[str, list[str]], float]:
        """Run one client; (its output lines by first word, the daemon's CPU seconds meanwhile)."""
        assert self.daemon is not None and self.daemon.pid is not None
        d0 = bp.cpu_seconds(self.daemon.pid)
        r = subprocess.run([*self.argv[name], *op], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=max(30.0, self.deadline - time.monotonic() + 60))
        daemon_cpu = bp.cpu_seconds(self.daemon.pid) - d0
        if r.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(op)} exited {r.returncode}: {r.stderr[-1500:]}")
        out: dict[str, list[str]] = collections.defaultdict(list)
        for line in r.stdout.splitlines():
            word, _, rest = line.partition(" ")
            out[word].append(rest)
        return out, daemon_cpu

    def check(self, name: str, what: str, sent: int, counted: int) -> None:
        self.checks.append({"client": name, "what": what, "sent": sent, "counted": counted})
        if sent != counted:
            self.notes.append(f"{name} {what}: sent {sent} bytes, counted {counted}")

    def upload_counted(self, name: str, out: dict[str, list[str]], n: int) -> int:
        reply = out["reply"][0].split()
        if reply[0] != "OK" or int(reply[2]) != pattern_crc(n):
            self.notes.append(f"{name} upload: the backend answered {reply} (crc {pattern_crc(n)} expected)")
        return int(reply[1])

    def functional_checks(self) -> None:
        n = min(4, int(self.p["bulk_mb"])) * 10**6
        log(f"Functional checks ({n // 10**6} MB each way, compared byte for byte / by CRC-32):")
        for name in CLIENTS:
            info = self.client(name, "info", "0")[0]["reply"][0]
            down = self.client(name, "download", str(n), "check")[0]
            self.check(name, "checked download", n, int(down["bytes"][0]))
            up = self.client(name, "upload", str(n))[0]
            self.check(name, "checked upload", n, self.upload_counted(name, up, n))
            log(f"  {name:<24} ok   backend saw: {info}")

    def put(self, name: str, figure: str, value: float) -> None:
        self.results[(name, figure)].append(value)

    def measure(self, name: str) -> None:
        n = int(self.p["conns"])
        out, dcpu = self.client(name, "conns", str(n))
        connect = [float(x) for x in out["connect"]]
        ccpu = float(out["cpu"][0].split()[0])
        if len(connect) != n:
            self.notes.append(f"{name}: {len(connect)} of {n} connections reported")
        self.put(name, "connect_p50_us", bc.percentile(connect, 0.5))
        self.put(name, "connect_p99_us", bc.percentile(connect, 0.99))
        self.put(name, "cycle_p50_us", bc.percentile([float(x) for x in out["cycle"]], 0.5))
        self.put(name, "client_cpu_us", ccpu / n * 1e6)
        self.put(name, "daemon_cpu_us", dcpu / n * 1e6)
        self.put(name, "total_cpu_us", (ccpu + dcpu) / n * 1e6)
        log(f"    conns    p50 {bc.percentile(connect, 0.5) / 1e3:7.2f} ms   CPU per connection: client "
            f"{ccpu / n * 1e6:6.0f} us, daemon {dcpu / n * 1e6:6.0f} us")
        b = int(self.p["bulk_mb"]) * 10**6
        for direction in ("download", "upload"):
            out, dcpu = self.client(name, direction, str(b))
            counted = int(out["bytes"][0]) if direction == "download" else self.upload_counted(name, out, b)
            self.check(name, f"bulk {direction}", b, counted)
            cpu_s, wall = (float(x) for x in out["cpu"][0].split()[::2])
            self.put(name, f"{direction}_mbps", b / wall / 1e6)
            self.put(name, f"{direction}_mb_per_cpu", b / 1e6 / max(1e-6, cpu_s + dcpu))
            log(f"    {direction:<8} {b / wall / 1e6:7.1f} MB/s   CPU: client {cpu_s:.2f} s, daemon {dcpu:.2f} s")

    def run(self) -> None:
        self.setup()
        self.info.update(header(self.args, self.size, self.p))
        for k, v in self.info.items():
            log(f"{k}: {v}")
        self.functional_checks()
        before = stats(self.ca)
        for rnd in range(int(self.p["rounds"])):
            order = CLIENTS[rnd % len(CLIENTS):] + CLIENTS[:rnd % len(CLIENTS)]
            for name in order:
                if time.monotonic() > self.deadline - 10:
                    self.notes.append(f"round {rnd + 1}: skipped {name} (the run's budget is spent)")
                    continue
                log(f"  round {rnd + 1}, {name}")
                self.measure(name)
        after = stats(self.ca)
        with open("/proc/loadavg") as f:
            self.info["machine"] = f"{self.info['machine']}, at the end {' '.join(f.read().split()[:3])}"
        self.info["backend during the rounds"] = {k: after[k] - before[k] - (k == "handshakes") for k in after}
        if after["resumed"] != before["resumed"]:
            self.notes.append(f"{after['resumed'] - before['resumed']} handshakes were resumed (full ones expected)")
        assert self.daemon is not None
        self.info["daemon sessions"] = dict(sessions(self.daemon.logs))
        report(self)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump({"info": self.info, "notes": self.notes, "checks": self.checks,
                           "results": [{"client": c, "figure": k, "values": v}
                                       for (c, k), v in sorted(self.results.items())]}, f, indent=1, default=str)


def sessions(paths: list[str]) -> collections.Counter[str]:
    """The daemon's log: API sessions by outcome and verification, and any traceback."""
    rx = re.compile(r"\bapi session \d+ connect ([a-z-]+):.* verified=(\w+)")
    c: collections.Counter[str] = collections.Counter()
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                if m := rx.search(line):
                    c[f"{m.group(1)} verified={m.group(2)}"] += 1
                elif "Traceback" in line or "Unhandled" in line:
                    c["TRACEBACK"] += 1
    return c


def stats(cafile: str) -> dict[str, int]:
    """The backend's counters (the STATS connection is itself one handshake)."""
    ctx = ssl.create_default_context(cafile=cafile)
    line = bc.command(bc.Target("direct", "direct", bp.BACKEND_TLS, tls_ctx=ctx), b"STATS")
    return {k: int(v) for k, v in (x.split("=") for x in line.split())}


def header(args: argparse.Namespace, size: str, p: dict) -> dict[str, object]:
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    with open("/proc/cpuinfo") as f:
        cpu = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "?")
    git = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True)
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git.stdout.strip() or "?",
        "machine": f"{NCPU} CPUs, {cpu}, Linux {os.uname().release}; load average at start {load}",
        "note": args.note or "-",
        "versions": f"Python {sys.version.split()[0]} ({ssl.OPENSSL_VERSION}); {bp.versions()['openssl']} "
                    f"(C OpenSSL client); {' '.join(gcc)} -O2",
        "size": f"{size}: {p['rounds']} round(s), {p['conns']} sequential connections, bulk {p['bulk_mb']} MB "
                "each way, per client",
    }


# =========================================================================== entry points


def run_inner(args: argparse.Namespace) -> int:
    return bp.run_measured(Run(args), args.keep, "logs, binaries")


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        return python_client(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round, smaller sizes (under a minute)")
    size.add_argument("--smoke", action="store_true", help="every client once at a tiny size (figures meaningless)")
    parser.add_argument("--note", default="", help="recorded in the header, e.g. 'machine shared with other work'")
    parser.add_argument("--markdown", action="store_true", help="also print the block for docs/benchmarks.md")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, binaries, certificates)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        args.json = os.path.abspath(args.json)
    if args.inner:
        return run_inner(args)
    budget = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]["budget"]
    return bp.run_in_namespace(__file__, args.json, float(budget) + 180, ("taskset", "gcc"),
                               "a network namespace of its own")


if __name__ == "__main__":
    sys.exit(main())
